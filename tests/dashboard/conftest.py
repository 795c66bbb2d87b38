"""The browser fixtures (Playwright + Debian's Chromium) and the tiny model, shared with the
labeller page's browser tests and the training tests."""

from tests.browser.conftest import browser, log_in, new_page, output_dir, page  # noqa: F401
from tests.training.conftest import tiny_model_dir  # noqa: F401
