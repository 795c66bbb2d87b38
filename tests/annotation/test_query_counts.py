"""The labelling hot path stays cheap: a fixed, small number of queries per request.

Six statements for the next task, five for a submit, plus the transaction's two (a savepoint and
its release inside the test's transaction; BEGIN and COMMIT in production). Next task: the
membership lock (with the campaign), the labeller's open lease, the task lock (with the
prompt), the completions, the assignment insert, the task's count. Submit: the assignment and
task locks (with campaign and guideline), the ranking, its items, the task's counts, the
assignment's status. (A token
request adds its lookup; these clients are authenticated directly.)
"""

from __future__ import annotations

import json

import pytest
from django.db import connection

from annotation import services
from annotation.models import Task
from tests.factories import CampaignFactory, make_tasks

pytestmark = pytest.mark.django_db


def test_next_task_and_submit_query_counts(campaign, labeller_client, django_assert_num_queries):
    with django_assert_num_queries(8):
        response = labeller_client.post(f"/api/campaigns/{campaign.pk}/next-task/")
    assert response.status_code == 200
    body = response.json()
    items = [{"completion": c["id"], "rank": i + 1} for i, c in enumerate(body["completions"])]
    with django_assert_num_queries(7):
        submitted = labeller_client.post(
            f"/api/assignments/{body['id']}/ranking/",
            {"items": items, "time_spent_ms": 10},
            format="json",
        )
    assert submitted.status_code == 201


def test_a_token_request_adds_one_lookup(campaign, labeller, django_assert_num_queries):
    from rest_framework.test import APIClient

    from accounts.services import token_create

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_create(user=labeller)[1]}")
    # The first use records when the token was used (then at most once a minute).
    assert client.get(f"/api/campaigns/{campaign.pk}/").status_code == 200
    with django_assert_num_queries(9):  # the token and its user in one statement
        response = client.post(f"/api/campaigns/{campaign.pk}/next-task/")
    assert response.status_code == 200


def test_submit_with_the_next_task_is_one_request(
    campaign, labeller_client, django_assert_num_queries
):
    body = labeller_client.post(f"/api/campaigns/{campaign.pk}/next-task/").json()
    items = [{"completion": c["id"], "rank": i + 1} for i, c in enumerate(body["completions"])]
    with django_assert_num_queries(15):  # submit and next task, one transaction each
        submitted = labeller_client.post(
            f"/api/assignments/{body['id']}/ranking/?next=1",
            {"items": items, "time_spent_ms": 10},
            format="json",
        )
    assert submitted.status_code == 201
    assert submitted.json()["next"]["assignment"]["id"] != body["id"]


@pytest.mark.parametrize(("tasks", "refreshed"), [(10, 0), (60, 1)])
def test_a_large_import_refreshes_the_planner_statistics_on_commit(
    tasks, refreshed, monkeypatch, django_capture_on_commit_callbacks
):
    """A campaign imported a moment ago is unknown to PostgreSQL's statistics: the planner
    could hand out tasks by sorting the whole campaign on every request until autovacuum runs."""
    calls = []
    monkeypatch.setattr(services.imports, "task_statistics_refresh", lambda: calls.append(1))
    campaign = CampaignFactory(completions_per_task=2)
    lines = [json.dumps({"prompt": f"p{i}", "completions": ["a", "b"]}) for i in range(tasks)]
    with django_capture_on_commit_callbacks(execute=True):
        services.campaign_import(
            campaign=campaign, data="\n".join(lines).encode(), filename="x.jsonl"
        )
    assert len(calls) == refreshed


@pytest.mark.django_db(transaction=True)
def test_refreshing_the_statistics_runs_on_either_database(django_assert_num_queries):
    """ANALYZE on PostgreSQL (the planner then knows the tasks' count); nothing on SQLite."""
    campaign = CampaignFactory(completions_per_task=2)
    make_tasks(campaign, 37)
    if connection.vendor != "postgresql":
        with django_assert_num_queries(0):
            services.task_statistics_refresh()
        return
    with django_assert_num_queries(1):
        services.task_statistics_refresh()
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = %s", [Task._meta.db_table])
        assert cursor.fetchone()[0] == Task.objects.count() == 37
