"""The labelling hot path stays cheap: a fixed, small number of queries per request."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_next_task_and_submit_query_counts(
    campaign, labeller_client, django_assert_max_num_queries
):
    with django_assert_max_num_queries(12):
        response = labeller_client.post(f"/api/campaigns/{campaign.pk}/next-task/")
    assert response.status_code == 200
    body = response.json()
    items = [{"completion": c["id"], "rank": i + 1} for i, c in enumerate(body["completions"])]
    with django_assert_max_num_queries(9):
        submitted = labeller_client.post(
            f"/api/assignments/{body['id']}/ranking/",
            {"items": items, "time_spent_ms": 10},
            format="json",
        )
    assert submitted.status_code == 201
