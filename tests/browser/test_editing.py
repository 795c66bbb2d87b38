"""Revisiting and editing in a real Chromium: a labeller ranks a task with a comment, finds it
again on their rankings page by searching, edits it with the keyboard (a new version, the old
one kept), and the pairs export follows the edit."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from annotation.models import Assignment, Ranking, RankingVersion
from tests.conftest import client_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def slot_letters(page) -> dict[str, str]:
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('.board [data-zone]')].map(
            (zone) => [zone.dataset.zone,
                       [...zone.querySelectorAll('.chip-letter')].map((l) => l.textContent)
                       .join('')]))"""
    )


def pairs(admin, campaign) -> set[tuple[int, int]]:
    response = client_for(admin).get(f"/api/campaigns/{campaign.pk}/pairs/")
    lines = b"".join(response.streaming_content).decode().splitlines()
    return {(x["chosen_id"], x["rejected_id"]) for x in map(json.loads, lines)}


def test_a_labeller_edits_a_ranking_and_the_pairs_follow(
    page, log_in, campaign, labeller, admin_user, output_dir
):
    log_in(page, labeller)
    page.goto(f"/campaigns/{campaign.pk}/label/")
    expect(page.locator(".completion")).to_have_count(4)
    first = Assignment.objects.get(labeller=labeller, status=Assignment.Status.ASSIGNED)
    a, b, c, d = first.display_order
    for key in ("a", "1", "b", "2", "c", "3", "d", "4"):
        page.keyboard.press(key)
    page.locator("#comment").fill("C rambles")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#validation")).to_contain_text("Next task loaded")
    expect(page.locator("#comment")).to_have_value("")  # the next task starts without it
    ranking = Ranking.objects.get(assignment=first)
    assert ranking.comment == "C rambles"
    assert (a, d) in pairs(admin_user, campaign)

    page.goto("/")
    page.get_by_role("link", name="Your rankings").click()
    prompt = first.task.prompt.text
    page.get_by_label("Search your rankings").fill(prompt)
    page.get_by_role("button", name="Search").click()
    expect(page.locator(".history-item")).to_have_count(1)
    page.get_by_role("link", name=f"Edit your ranking #{first.pk}").click()
    expect(page).to_have_url(re.compile(rf"/assignments/{first.pk}/edit/$"))
    expect(page.get_by_role("heading", name=re.compile("Edit your ranking"))).to_be_visible()
    assert slot_letters(page) == {"1": "A", "2": "B", "3": "C", "4": "D", "F": "", "": ""}
    expect(page.locator("#comment")).to_have_value("C rambles")
    expect(page.locator("#skip")).to_have_count(0)
    for key in ("d", "1", "a", "4"):
        page.keyboard.press(key)
    assert slot_letters(page)["1"] == "AD" or slot_letters(page)["1"] == "D"
    page.screenshot(path=str(output_dir / "edit-ranking.png"))
    page.keyboard.press("Control+Enter")
    expect(page).to_have_url(re.compile(rf"/history/#ranking-{ranking.pk}$"))
    expect(page.locator(f"#ranking-{ranking.pk}")).to_contain_text("version 2")

    ranking.refresh_from_db()
    assert ranking.version == 2
    assert {i.completion_id: i.label for i in ranking.items.all()} == {d: 1, b: 2, c: 3, a: 4}
    assert RankingVersion.objects.get(ranking=ranking).items == {
        str(a): 1,
        str(b): 2,
        str(c): 3,
        str(d): 4,
    }
    now = pairs(admin_user, campaign)
    assert (d, a) in now and (a, d) not in now
