"""Editing a submitted ranking: a new version, the old one kept (and exported with
``?versions=all``), agreement and pairs following the latest; refused once the task is
reviewed or the campaign closed, or when the edit started from an older version; a different
resubmission still answers 409, the same one 200."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from annotation import services
from annotation.models import Ranking, RankingVersion
from tests.conftest import client_for
from tests.factories import task_completion_ids

pytestmark = pytest.mark.django_db


@pytest.fixture
def submitted(campaign, labeller):
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)
    ids = task_completion_ids(assignment.task)
    services.ranking_submit(
        labeller=labeller,
        assignment=assignment,
        items=[{"completion": c, "rank": i + 1} for i, c in enumerate(ids)],
        time_spent_ms=4000,
    )
    return assignment, ids


def edit(client, assignment, ranks, *, version=1, time_spent_ms=1000, comment=""):
    return client.put(
        f"/api/assignments/{assignment.pk}/ranking/",
        {
            "items": [{"completion": c, "rank": r} for c, r in ranks.items()],
            "time_spent_ms": time_spent_ms,
            "version": version,
            "comment": comment,
        },
        format="json",
    )


def test_an_edit_is_a_new_version_and_the_old_one_is_kept(labeller_client, submitted):
    assignment, (a, b, c, d) = submitted
    response = edit(labeller_client, assignment, {a: 2, b: 1, c: 3, d: "F"}, comment="b first")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["version"] == 2 and body["edited_at"] and body["comment"] == "b first"
    assert {i["completion"]: i["rank"] for i in body["items"]} == {a: 2, b: 1, c: 3, d: "F"}
    ranking = Ranking.objects.get()
    assert ranking.time_spent_ms == 5000  # the first 4 s and the edit's 1 s
    old = RankingVersion.objects.get()
    assert old.version == 1 and old.items == {str(a): 1, str(b): 2, str(c): 3, str(d): 4}
    assert old.time_spent_ms == 4000 and old.submitted_at == ranking.created_at


def test_the_same_edit_again_changes_nothing(labeller_client, submitted):
    assignment, (a, b, c, d) = submitted
    ranks = {a: 2, b: 1, c: 3, d: 4}
    assert edit(labeller_client, assignment, ranks).status_code == 200
    retried = edit(labeller_client, assignment, ranks)  # the same request again: a retry
    assert retried.status_code == 200 and retried.json()["version"] == 2
    again = edit(labeller_client, assignment, ranks, version=2)
    assert again.status_code == 200 and again.json()["version"] == 2
    assert RankingVersion.objects.count() == 1


def test_an_edit_of_an_older_version_is_refused(labeller_client, submitted):
    assignment, (a, b, c, d) = submitted
    assert edit(labeller_client, assignment, {a: 2, b: 1, c: 3, d: 4}).status_code == 200
    stale = edit(labeller_client, assignment, {a: 4, b: 3, c: 2, d: 1}, version=1)
    assert stale.status_code == 409
    assert stale.json()["code"] == "version_conflict" and stale.json()["version"] == 2


def test_a_different_resubmission_still_answers_409_and_the_same_200(labeller_client, submitted):
    assignment, (a, b, c, d) = submitted
    url = f"/api/assignments/{assignment.pk}/ranking/"
    same = [{"completion": c_, "rank": i + 1} for i, c_ in enumerate((a, b, c, d))]
    assert labeller_client.post(url, {"items": same, "time_spent_ms": 1}).status_code == 200
    other = [{"completion": c_, "rank": 4 - i} for i, c_ in enumerate((a, b, c, d))]
    refused = labeller_client.post(url, {"items": other, "time_spent_ms": 1}, format="json")
    assert refused.status_code == 409 and refused.json()["code"] == "already_submitted"
    assert refused.json()["version"] == 1 and "PUT" in refused.json()["detail"]


def test_no_edit_once_reviewed_or_closed(campaign, labeller, other_labeller, submitted, admin_user):
    assignment, (a, b, c, d) = submitted
    other = services.task_assign_next(labeller=other_labeller, campaign=campaign)
    while other.task_id != assignment.task_id:  # bob ranks the same task
        services.ranking_submit(
            labeller=other_labeller,
            assignment=other,
            items=[{"completion": x, "rank": i + 1} for i, x in enumerate(other.display_order)],
            time_spent_ms=10,
        )
        other = services.task_assign_next(labeller=other_labeller, campaign=campaign)
    services.ranking_submit(
        labeller=other_labeller,
        assignment=other,
        items=[{"completion": x, "rank": 1} for x in other.display_order],
        time_spent_ms=10,
    )
    client = client_for(labeller)
    services.campaign_set_status(campaign=campaign, status="closed")
    closed = edit(client, assignment, {a: 2, b: 1, c: 3, d: 4})
    assert closed.status_code == 409 and closed.json()["code"] == "campaign_closed"
    campaign.status = "active"
    campaign.save(update_fields=["status"])
    services.task_adjudicate(reviewer=admin_user, task=assignment.task, decision="consensus")
    reviewed = edit(client, assignment, {a: 2, b: 1, c: 3, d: 4})
    assert reviewed.status_code == 409 and reviewed.json()["code"] == "already_reviewed"
    assert Ranking.objects.get(assignment=assignment).version == 1


def test_nobody_edits_anyone_elses_ranking(other_client, admin_client, submitted):
    assignment, (a, b, c, d) = submitted
    for client in (other_client, admin_client):
        response = edit(client, assignment, {a: 2, b: 1, c: 3, d: 4})
        assert response.status_code == 404
    assert not RankingVersion.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"time_spent_ms": 1, "items": []}, "version"),
        ({"time_spent_ms": 1, "version": 0}, "version"),
        ({"version": 1, "time_spent_ms": -1}, "time_spent_ms"),
        ({"version": 1, "time_spent_ms": 1, "colour": "red"}, "colour"),
    ],
)
def test_bad_edits_answer_400_naming_the_field(labeller_client, submitted, body, field):
    assignment, ids = submitted
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(ids)]
    response = labeller_client.put(
        f"/api/assignments/{assignment.pk}/ranking/", {"items": items, **body}, format="json"
    )
    assert response.status_code == 400 and field in response.json()["errors"]


def test_edit_needs_the_csrf_token_in_the_browser(labeller, submitted):
    assignment, (a, _b, _c, _d) = submitted
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(labeller)
    body = {"items": [{"completion": a, "rank": 1}], "time_spent_ms": 1, "version": 1}
    response = client.put(f"/api/assignments/{assignment.pk}/ranking/", body, format="json")
    assert response.status_code == 403


def test_pairs_and_agreement_follow_the_latest_and_versions_all_exports_both(
    campaign, labeller, submitted, admin_client
):
    assignment, (a, b, c, d) = submitted
    pairs_url = f"/api/campaigns/{campaign.pk}/pairs/"

    def pairs():
        text = b"".join(admin_client.get(pairs_url).streaming_content).decode()
        lines = [json.loads(x) for x in text.splitlines()]
        return {(line["chosen_id"], line["rejected_id"]) for line in lines}

    assert (a, b) in pairs() and (b, a) not in pairs()
    assert edit(client_for(labeller), assignment, {a: 4, b: 3, c: 2, d: 1}).status_code == 200
    assert (b, a) in pairs() and (a, b) not in pairs()
    export = f"/api/campaigns/{campaign.pk}/rankings/export/"
    latest = [
        json.loads(x) for x in b"".join(admin_client.get(export).streaming_content).splitlines()
    ]
    assert [(r["version"], r["latest"]) for r in latest] == [(2, True)]
    every = [
        json.loads(x)
        for x in b"".join(admin_client.get(export + "?versions=all").streaming_content).splitlines()
    ]
    assert [(r["version"], r["latest"]) for r in every] == [(1, False), (2, True)]
    first = {item["id"]: item["rank"] for item in every[0]["completions"]}
    assert first == {a: 1, b: 2, c: 3, d: 4}
    assert every[0]["ranking"] == every[1]["ranking"]
