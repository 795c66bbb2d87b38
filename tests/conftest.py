from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = ("tests.helpers.browser_fixtures",)
"""The browser fixtures, shared by tests/browser/ and tests/dashboard/ (pytest accepts
``pytest_plugins`` only in the root conftest)."""

CI_ALLOWED_SKIPS = ("not implemented in annotation.agreement",)
"""Skips CI accepts: reference figures of statistics the project does not report. Any other skip
in CI means a component the test needs is missing (a browser, PostgreSQL, Redis, a tool), which
would hide that the behaviour was never tested, so there it fails."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (os.environ.get("CI") and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
    if not any(allowed in reason for allowed in CI_ALLOWED_SKIPS):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {reason}"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny local causal LM + tokenizer directory (no pretraining), built once per session.

    Loadable with ``AutoModelForCausalLM``, ``AutoModelForSequenceClassification`` (num_labels=1)
    and ``AutoTokenizer``. Treat it as read-only: copy it before writing into it. Shared by the
    training tests and the dashboard's browser tests.
    """
    from training.ml.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture
def admin_user(db):
    from tests.factories import AdminFactory

    return AdminFactory(username="admin")


def _user(username):
    from tests.factories import UserFactory

    return UserFactory(username=username)


@pytest.fixture
def labeller(db):
    return _user("alice")


@pytest.fixture
def other_labeller(db):
    return _user("bob")


@pytest.fixture
def outsider(db):
    """A labeller who is a member of no campaign in the test."""
    return _user("mallory")


def celery_worker_command(*, queues: str, name: str, pool: str = "solo") -> list[str]:
    """The command line of a real Celery worker for tests: one task at a time, no gossip or
    mingle (nothing to wait for at start), named ``name@host``."""
    return [
        *(sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues),
        *("--concurrency", "1", "--prefetch-multiplier", "1", "--pool", pool),
        *("--without-gossip", "--without-mingle", "-n", f"{name}@%h", "--loglevel", "WARNING"),
    ]


def client_for(user):
    """An API client authenticated as ``user`` (anonymous for None)."""
    from rest_framework.test import APIClient

    client = APIClient()
    if user is not None:
        client.force_authenticate(user=user)
    return client


@pytest.fixture
def api_client():
    return client_for(None)


@pytest.fixture
def admin_client(admin_user):
    return client_for(admin_user)


@pytest.fixture
def labeller_client(labeller):
    return client_for(labeller)


@pytest.fixture
def other_client(other_labeller):
    return client_for(other_labeller)


@pytest.fixture
def outsider_client(outsider):
    return client_for(outsider)


@pytest.fixture
def campaign(db, labeller, other_labeller, admin_user):
    """An active campaign (N=4, k=2) with 5 tasks, two members and acknowledged guidelines."""
    from annotation import services
    from tests.factories import CampaignFactory, make_tasks

    campaign = CampaignFactory(overlap=2, created_by=admin_user)
    services.campaign_add_members(campaign=campaign, users=[labeller, other_labeller])
    guideline = services.guideline_publish(
        campaign=campaign, text="# Rank by correctness", created_by=admin_user
    )
    for user in (labeller, other_labeller):
        services.guideline_acknowledge(user=user, guideline=guideline)
    make_tasks(campaign, 5)
    return campaign


@pytest.fixture(autouse=True)
def _fast_password_hasher(settings):
    """Hashing with PBKDF2 costs ~100 ms a user; tests need no such strength."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _private_cache(settings):
    """Each test gets an empty in-process cache (login-failure counts live there), never the
    shared Redis that CI's Celery tests use."""
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "t"}
    }
    from django.core.cache import cache

    cache.clear()
