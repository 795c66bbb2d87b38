"""The admin dashboard's training pages (staff only): jobs, their live page, model versions."""
