"""Many labellers at the same instant: overlap never exceeded, nothing lost, nothing doubled.

Needs PostgreSQL: the guarantee rests on row locks (SELECT ... FOR UPDATE SKIP LOCKED). CI runs
it against the real server.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import connection
from django.db.models import Count

from annotation import services
from annotation.models import Assignment, Ranking, RankingItem, Task
from tests.conftest import client_for
from tests.factories import CampaignFactory, UserFactory, make_tasks
from tests.helpers.threads import run_all

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="row-lock concurrency needs PostgreSQL"
    ),
]

LABELLERS = 64


def _setup(*, tasks: int, overlap: int):
    campaign = CampaignFactory(overlap=overlap, completions_per_task=4)
    make_tasks(campaign, tasks)
    users = [UserFactory(username=f"worker{i}") for i in range(LABELLERS)]
    services.campaign_add_members(campaign=campaign, users=users)
    return campaign, users


def test_next_task_never_exceeds_overlap_under_concurrency():
    campaign, users = _setup(tasks=20, overlap=3)
    handed: list[int] = []
    lock = threading.Lock()

    def ask(user):
        response = client_for(user).post(f"/api/campaigns/{campaign.pk}/next-task/")
        assert response.status_code in (200, 204), response.content
        if response.status_code == 200:
            with lock:
                handed.append(response.json()["id"])

    run_all(ask, users)
    per_task = Counter(Assignment.objects.get(pk=pk).task_id for pk in handed)
    assert len(handed) == 60  # 20 tasks x 3 slots, 64 askers: 4 get nothing
    assert max(per_task.values()) == 3
    assert all(t.active_count == per_task[t.pk] for t in Task.objects.all())
    # Breadth first: slots were filled on whole tasks, so every task is full.
    assert set(per_task.values()) == {3}


def test_concurrent_labelling_loses_nothing_and_never_over_ranks():
    campaign, users = _setup(tasks=30, overlap=3)
    submitted: list[int] = []
    lock = threading.Lock()

    def label(user):
        client = client_for(user)
        for _ in range(10):
            response = client.post(f"/api/campaigns/{campaign.pk}/next-task/")
            if response.status_code == 204:
                return
            assert response.status_code == 200, response.content
            body = response.json()
            items = [
                {"completion": c["id"], "rank": i + 1} for i, c in enumerate(body["completions"])
            ]
            url = f"/api/assignments/{body['id']}/ranking/"
            result = client.post(url, {"items": items, "time_spent_ms": 5}, format="json")
            assert result.status_code == 201, result.content
            # A flaky-network retry of the same submit must not create a second ranking.
            retry = client.post(url, {"items": items, "time_spent_ms": 5}, format="json")
            assert retry.status_code == 200 and retry.json()["id"] == result.json()["id"]
            with lock:
                submitted.append(result.json()["id"])

    run_all(label, users)
    assert len(submitted) == 90 == len(set(submitted))
    assert Ranking.objects.count() == len(submitted)
    assert RankingItem.objects.count() == 4 * len(submitted)
    over = Task.objects.annotate(n=Count("rankings")).filter(n__gt=3)
    assert not over.exists()
    assert all(t.submitted_count == t.active_count == 3 for t in Task.objects.all())
    assert not Assignment.objects.filter(status="assigned").exists()


def test_one_labeller_double_clicking_gets_one_lease():
    campaign, users = _setup(tasks=10, overlap=3)
    labeller = users[0]
    got: list[int] = []
    lock = threading.Lock()

    def ask(_):
        response = client_for(labeller).post(f"/api/campaigns/{campaign.pk}/next-task/")
        with lock:
            got.append(response.json()["id"])

    run_all(ask, users[:8])
    assert len(set(got)) == 1
    assert Assignment.objects.filter(labeller=labeller).count() == 1
