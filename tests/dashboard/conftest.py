"""The dashboard's browser tests take the browser fixtures (tests/helpers/browser_fixtures.py)
and the tiny model (``tiny_model_dir``) from tests/conftest.py."""

from __future__ import annotations

import os

# Playwright's sync API runs an event loop in this thread; Django's ORM refuses to run in a
# thread with a running loop unless told that this is fine.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
