"""Faults on the request path: the database or the cache going away, oversized uploads."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import OperationalError

from annotation import services
from annotation.models import Prompt, Ranking
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def test_database_outage_answers_503_with_retry_after(campaign, labeller, monkeypatch):
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)

    def down(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(services, "ranking_submit", down)
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(assignment.display_order)]
    response = client_for(labeller).post(
        f"/api/assignments/{assignment.pk}/ranking/",
        {"items": items, "time_spent_ms": 5},
        format="json",
    )
    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    assert response.json()["code"] == "unavailable"
    assert not Ranking.objects.exists()


def test_database_outage_on_a_page_answers_503(client, labeller, monkeypatch):
    from annotation import selectors

    def down(**kwargs):
        raise OperationalError("the database system is shutting down")

    monkeypatch.setattr(selectors, "campaign_list_for", down)
    client.force_login(labeller)
    response = client.get("/")
    assert response.status_code == 503 and response["Retry-After"] == "2"
    assert b"retry" in response.content.lower()


def test_logins_still_work_when_the_cache_is_down(client, labeller, settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
        }
    }
    bad = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    assert bad.status_code == 200
    good = client.post(
        "/accounts/login/", {"username": "alice", "password": "correct horse battery"}
    )
    assert good.status_code == 302


def test_a_100_mb_import_is_refused_before_it_is_read(campaign, admin_user, settings):
    settings.IMPORT_MAX_BYTES = 50 * 1024 * 1024
    before = Prompt.objects.count()
    upload = SimpleUploadedFile("huge.jsonl", b"x" * (100 * 1024 * 1024))
    response = client_for(admin_user).post(
        f"/api/campaigns/{campaign.pk}/import/", {"file": upload}, format="multipart"
    )
    assert response.status_code == 400
    assert response.json()["lines"] == [
        {
            "line": 0,
            "field": "file",
            "message": "file is 104,857,600 bytes; the limit is 52,428,800",
        }
    ]
    assert Prompt.objects.count() == before
