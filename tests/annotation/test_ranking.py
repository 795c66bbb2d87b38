"""Submitting rankings: every validation error, ties and F per campaign, idempotency."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from annotation import services
from annotation.models import Assignment, Ranking, RankingItem, Task

pytestmark = pytest.mark.django_db


@pytest.fixture
def assignment(campaign, labeller):
    return services.task_assign_next(labeller=labeller, campaign=campaign)


def submit(client, assignment, items, time_spent_ms=1200, **extra):
    return client.post(
        f"/api/assignments/{assignment.pk}/ranking/",
        {"items": items, "time_spent_ms": time_spent_ms, **extra},
        format="json",
    )


def ids(assignment):
    return list(assignment.display_order)


def test_full_ranking_with_tie_and_fail_is_stored(labeller_client, assignment):
    a, b, c, d = ids(assignment)
    items = [
        {"completion": a, "rank": 1},
        {"completion": b, "rank": 2},
        {"completion": c, "rank": 2},
        {"completion": d, "rank": "F"},
    ]
    response = submit(labeller_client, assignment, items, comment="c and b equally good")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["items"] == items and body["guideline_version"] == 1
    ranking = Ranking.objects.get()
    assert ranking.time_spent_ms == 1200 and ranking.comment == "c and b equally good"
    stored = {i.completion_id: i.label for i in RankingItem.objects.filter(ranking=ranking)}
    assert stored == {a: 1, b: 2, c: 2, d: "F"}
    task = Task.objects.get(pk=assignment.task_id)
    assert (task.active_count, task.submitted_count) == (1, 1)
    assignment.refresh_from_db()
    assert assignment.status == "submitted"


@pytest.mark.parametrize(
    ("make_items", "field", "reason"),
    [
        (
            lambda a, b, c, d: [
                {"completion": a, "rank": 1},
                {"completion": b, "rank": 2},
                {"completion": c, "rank": 3},
            ],
            "items",
            "are not ranked",
        ),
        (
            lambda a, b, c, d: [
                {"completion": a, "rank": 1},
                {"completion": a, "rank": 2},
                {"completion": c, "rank": 3},
                {"completion": d, "rank": 4},
            ],
            "items[1].completion",
            "is ranked more than once",
        ),
        (
            lambda a, b, c, d: [
                {"completion": a, "rank": 1},
                {"completion": b, "rank": 2},
                {"completion": c, "rank": 3},
                {"completion": 999999, "rank": 4},
            ],
            "items[3].completion",
            "is not part of this task",
        ),
        (
            lambda a, b, c, d: [
                {"completion": a, "rank": 0},
                {"completion": b, "rank": 2},
                {"completion": c, "rank": 3},
                {"completion": d, "rank": 4},
            ],
            "items[0].rank",
            "must be between 1 and 4",
        ),
        (
            lambda a, b, c, d: [
                {"completion": a, "rank": 5},
                {"completion": b, "rank": 2},
                {"completion": c, "rank": 3},
                {"completion": d, "rank": 4},
            ],
            "items[0].rank",
            "must be between 1 and 4",
        ),
        (
            lambda a, b, c, d: [
                {"completion": a, "rank": "best"},
                {"completion": b, "rank": 2},
                {"completion": c, "rank": 3},
                {"completion": d, "rank": 4},
            ],
            "items[0].rank",
            'must be an integer rank or "F"',
        ),
        (
            lambda a, b, c, d: [{"completion": "x", "rank": 1}],
            "items[0].completion",
            "A valid integer is required.",
        ),
        (lambda a, b, c, d: [{"rank": 1}], "items[0].completion", "This field is required."),
        (lambda a, b, c, d: [], "items", "This list may not be empty."),
        (lambda a, b, c, d: "1,2,3,4", "items", 'Expected a list of items but got type "str".'),
    ],
)
def test_invalid_rankings_are_refused_with_the_field(
    labeller_client, assignment, make_items, field, reason
):
    response = submit(labeller_client, assignment, make_items(*ids(assignment)))
    assert response.status_code == 400
    body = response.json()
    assert field in body["errors"], body
    assert any(reason in message for message in body["errors"][field]), body
    assert not Ranking.objects.exists()


def test_missing_or_negative_time_spent_is_refused(labeller_client, assignment):
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(ids(assignment))]
    response = labeller_client.post(
        f"/api/assignments/{assignment.pk}/ranking/", {"items": items}, format="json"
    )
    assert response.status_code == 400 and "time_spent_ms" in response.json()["errors"]
    response = submit(labeller_client, assignment, items, time_spent_ms=-1)
    assert response.status_code == 400 and "time_spent_ms" in response.json()["errors"]


def test_ties_refused_where_the_campaign_forbids_them(campaign, labeller_client, assignment):
    campaign.allow_ties = False
    campaign.save()
    a, b, c, d = ids(assignment)
    items = [
        {"completion": a, "rank": 1},
        {"completion": b, "rank": 1},
        {"completion": c, "rank": 3},
        {"completion": d, "rank": 4},
    ]
    response = submit(labeller_client, assignment, items)
    assert response.status_code == 400
    assert response.json()["errors"] == {
        "items": ["this campaign does not allow ties (equal ranks)"]
    }


def test_fail_refused_where_the_campaign_forbids_it(campaign, labeller_client, assignment):
    campaign.allow_fail = False
    campaign.save()
    a, b, c, d = ids(assignment)
    items = [
        {"completion": a, "rank": 1},
        {"completion": b, "rank": 2},
        {"completion": c, "rank": 3},
        {"completion": d, "rank": "F"},
    ]
    response = submit(labeller_client, assignment, items)
    assert response.status_code == 400
    assert response.json()["errors"] == {"items[3].rank": ["this campaign does not allow F (fail)"]}


def test_same_submit_twice_is_idempotent(labeller_client, assignment):
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(ids(assignment))]
    first = submit(labeller_client, assignment, items)
    second = submit(labeller_client, assignment, list(reversed(items)), time_spent_ms=1300)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert Ranking.objects.count() == 1
    assert Task.objects.get(pk=assignment.task_id).submitted_count == 1


def test_different_submit_after_the_first_is_a_conflict(labeller_client, assignment):
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(ids(assignment))]
    submit(labeller_client, assignment, items)
    changed = [{**items[0], "rank": 4}, *items[1:3], {**items[3], "rank": 1}]
    response = submit(labeller_client, assignment, changed)
    assert response.status_code == 409
    assert response.json()["code"] == "already_submitted"
    assert Ranking.objects.count() == 1


def test_submit_after_skip_is_a_conflict(labeller, labeller_client, assignment):
    services.assignment_skip(labeller=labeller, assignment=assignment, reason="unsure")
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(ids(assignment))]
    response = submit(labeller_client, assignment, items)
    assert response.status_code == 409 and response.json()["code"] == "assignment_skipped"


def test_browser_submit_needs_csrf_token(labeller, assignment):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(labeller)
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(ids(assignment))]
    url = f"/api/assignments/{assignment.pk}/ranking/"
    refused = client.post(url, {"items": items, "time_spent_ms": 1}, format="json")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    client.get("/")  # sets the csrftoken cookie, as the page does
    token = client.cookies["csrftoken"].value
    accepted = client.post(
        url, {"items": items, "time_spent_ms": 1}, format="json", HTTP_X_CSRFTOKEN=token
    )
    assert accepted.status_code == 201


def test_labeller_reads_back_their_ranking(labeller_client, assignment):
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(ids(assignment))]
    submit(labeller_client, assignment, items)
    response = labeller_client.get(f"/api/assignments/{assignment.pk}/ranking/")
    assert response.status_code == 200 and response.json()["items"] == items


def test_submit_with_next_hands_out_the_next_task_in_one_request(labeller_client, assignment):
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(ids(assignment))]
    response = labeller_client.post(
        f"/api/assignments/{assignment.pk}/ranking/?next=1",
        {"items": items, "time_spent_ms": 10},
        format="json",
    )
    assert response.status_code == 201
    nxt = response.json()["next"]
    assert nxt["reason"] is None
    assert Assignment.objects.get(pk=nxt["assignment"]["id"]).task_id != assignment.task_id
    assert len(nxt["assignment"]["completions"]) == 4


def test_submit_with_next_says_why_there_is_none(campaign, labeller_client, assignment, admin_user):
    services.guideline_publish(campaign=campaign, text="v2", created_by=admin_user)
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(ids(assignment))]
    response = labeller_client.post(
        f"/api/assignments/{assignment.pk}/ranking/?next=1",
        {"items": items, "time_spent_ms": 10},
        format="json",
    )
    assert response.status_code == 201
    assert response.json()["next"]["assignment"] is None
    assert response.json()["next"]["reason"] == "guidelines_not_acknowledged"
