"""The labeller page's browser tests. Their fixtures (Playwright + Debian's Chromium, shared with
tests/dashboard/) are in tests/helpers/browser_fixtures.py, a plugin of tests/conftest.py."""

from __future__ import annotations

import os

# Playwright's sync API runs an event loop in this thread; Django's ORM refuses to run in a
# thread with a running loop unless told that this is fine.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
