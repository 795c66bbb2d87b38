"""The browser fixtures: Playwright against Debian's Chromium and pytest-django's live server.

A pytest plugin, registered by ``pytest_plugins`` in tests/conftest.py, so that the labeller
page's tests (tests/browser/) and the dashboard's (tests/dashboard/) share these fixtures without
one conftest importing another. The conftest of each of those folders lets Django's ORM run in
Playwright's thread (``DJANGO_ALLOW_ASYNC_UNSAFE``).

One browser per test module (starting Chromium costs about a second); every test gets a fresh
context, so cookies and sessionStorage never leak between tests. A test fails on any JavaScript
error the page throws.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.browser import CHROMIUM, CHROMIUM_ARGS, LAPTOP, OUTPUT_DIR


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium to run the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser, live_server):
    """``new_page(viewport=..., **options)``: a page in a fresh context on the live server."""
    contexts = []
    errors: list[str] = []

    def factory(viewport: dict | None = None, **options):
        context = browser.new_context(
            base_url=live_server.url, viewport=viewport or LAPTOP, **options
        )
        context.set_default_timeout(10_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    yield factory
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(new_page):
    return new_page()


@pytest.fixture
def log_in(live_server):
    """``log_in(page, user)``: a session cookie from ``force_login``, no form (faster)."""
    from django.conf import settings
    from django.test import Client

    def log_in(page, user) -> None:
        client = Client()
        client.force_login(user)
        cookie = client.cookies[settings.SESSION_COOKIE_NAME]
        page.context.add_cookies(
            [{"name": settings.SESSION_COOKIE_NAME, "value": cookie.value, "url": live_server.url}]
        )

    return log_in


@pytest.fixture(scope="session")
def output_dir() -> Path:
    OUTPUT_DIR.mkdir(exist_ok=True)
    return OUTPUT_DIR
