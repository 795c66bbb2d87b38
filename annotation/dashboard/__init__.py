"""The admin dashboard: campaign and quality pages (staff only). Training pages live in
``training.dashboard``. Views only call services, selectors and the quality functions."""
