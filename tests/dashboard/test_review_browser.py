"""Review and adjudication in a real Chromium: a reviewer opens the review queue, finds the
disputed task first, writes an adjudicated ranking with a note, and the campaign's exports then
carry the task's provenance ("adjudicated") and the reviewer's ranking as its consensus; the
labeller then sees on their rankings where the decision differed from them."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from annotation import services
from annotation.models import Adjudication, Membership, Ranking
from tests.factories import UserFactory
from tests.helpers.campaigns import ranked_campaign

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PLANS = [
    {"alice": [1, 2, 3], "bob": [1, 2, 3]},  # agreed
    {"alice": [1, 2, 3], "bob": [3, 2, 1]},  # disputed
]


def lines(page, url: str) -> list[dict]:
    response = page.request.get(url)
    assert response.status == 200, response.text()
    return [json.loads(line) for line in response.text().splitlines()]


def test_a_reviewer_adjudicates_a_disputed_task_and_the_export_shows_it(
    new_page, log_in, admin_user, output_dir
):
    campaign, ids, users = ranked_campaign(PLANS, completions=3, admin=admin_user)
    reviewer = UserFactory(username="rita")
    services.campaign_add_members(
        campaign=campaign, users=[reviewer], role=Membership.Role.REVIEWER
    )
    disputed = Ranking.objects.filter(items__completion_id=ids[1][0]).first().task
    a, b, c = ids[1]

    page = new_page()
    log_in(page, reviewer)
    page.goto(f"/dashboard/campaigns/{campaign.pk}/")
    page.get_by_role("link", name="Review", exact=True).click()
    rows = page.locator("#review-queue tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text(f"#{disputed.pk}")  # the lowest agreement first
    expect(rows.first).to_contain_text("unresolved")
    rows.first.get_by_role("link").click()
    expect(page.locator("#review-rankings thead")).to_contain_text("alice")
    expect(page.locator("#review-rankings thead")).to_contain_text("bob")
    expect(page.locator("#review-comments")).to_contain_text("30.0 s")

    page.get_by_label("Adjudicated rank of A").select_option("2")
    page.get_by_label("Adjudicated rank of B").select_option("1")
    page.get_by_label("Adjudicated rank of C").select_option("3")
    page.get_by_label(re.compile("^Note")).fill("B is the only answer that is right")
    page.screenshot(path=str(output_dir / "review-task.png"), full_page=True)
    page.locator("#submit-written").click()
    expect(page.locator(".messages")).to_contain_text(f"Task {disputed.pk} adjudicated")
    decision = Adjudication.objects.get(task=disputed)
    assert decision.items == {str(a): 2, str(b): 1, str(c): 3}
    assert decision.reviewer == reviewer and decision.decision == "written"

    exporter = new_page()
    log_in(exporter, admin_user)
    pairs = lines(exporter, f"/api/campaigns/{campaign.pk}/pairs/?provenance=adjudicated")
    assert {line["task"] for line in pairs} == {disputed.pk}
    assert all(line["provenance"] == "adjudicated" for line in pairs)
    consensus = lines(exporter, f"/api/campaigns/{campaign.pk}/pairs/?aggregate=ranked_pairs")
    mine = {(x["chosen_id"], x["rejected_id"]) for x in consensus if x["task"] == disputed.pk}
    assert mine == {(b, a), (b, c), (a, c)}
    rankings = lines(exporter, f"/api/campaigns/{campaign.pk}/rankings/export/")
    settled = {r["task"]: r["provenance"] for r in rankings}
    assert settled[disputed.pk] == "adjudicated" and set(settled.values()) == {
        "adjudicated",
        "unanimous",
    }

    labeller = new_page()
    log_in(labeller, users["alice"])
    labeller.goto("/history/")
    feedback = labeller.locator(".feedback")
    expect(feedback).to_have_count(1)
    expect(feedback).to_contain_text("differs from yours on 1 of 3 pairs: A\u2013B")
    expect(feedback).to_contain_text("B is the only answer that is right")
    expect(labeller.locator("#history")).not_to_contain_text("bob")
