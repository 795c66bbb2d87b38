"""Playwright's setup for the browser tests: Debian's Chromium, its flags, the viewports, and the
folder screenshots go to (the fixtures using them are in tests/helpers/browser_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
OUTPUT_DIR = Path(__file__).resolve().parents[2] / "test-output"
LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}
