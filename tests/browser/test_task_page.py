"""The task page in a real Chromium: markdown behind the campaign's switch (sanitised as the
guidelines are), the comment box, keys for Expand, Skip and scrolling a long card, the legend
in view on a 1366x768 laptop, a "not ready" message said once, and the side-by-side pairwise
layout of N = 2 with one key per choice."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from annotation import services
from annotation.models import Assignment, Completion, Ranking
from tests.factories import CampaignFactory, make_tasks

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

MARKDOWN = (
    "**Bold** claim with `inline code`:\n\n- first\n- second\n\n<script>window.pwned=1</script>"
)
LONG = "\n\n".join(f"Paragraph {i}: " + "words " * 40 for i in range(30))


def campaign_with(admin, labeller, *, n=4, tasks=2, **settings):
    campaign = CampaignFactory(completions_per_task=n, overlap=1, created_by=admin, **settings)
    services.campaign_add_members(campaign=campaign, users=[labeller])
    make_tasks(campaign, tasks)
    return campaign


def open_task(page, campaign):
    page.goto(f"/campaigns/{campaign.pk}/label/")
    expect(page.locator(".completion")).to_have_count(campaign.completions_per_task)
    return Assignment.objects.get(campaign=campaign, status=Assignment.Status.ASSIGNED)


@pytest.mark.parametrize("switch", [True, False])
def test_markdown_is_rendered_only_where_the_campaign_says(
    page, log_in, labeller, admin_user, switch
):
    campaign = campaign_with(admin_user, labeller, render_markdown=switch, tasks=1)
    Completion.objects.filter(prompt__campaign=campaign).update(text=MARKDOWN)
    log_in(page, labeller)
    open_task(page, campaign)
    card = page.locator("#card-A .completion-body")
    if switch:
        expect(card.locator("strong")).to_have_text("Bold")
        expect(card.locator("code")).to_have_text("inline code")
        expect(card.locator("li")).to_have_count(2)
    else:
        expect(card).to_contain_text("**Bold** claim")
        expect(card.locator("strong")).to_have_count(0)
    expect(card.locator("script")).to_have_count(0)
    assert page.evaluate("window.pwned") is None


def test_expand_skip_and_scrolling_have_keys(page, log_in, labeller, admin_user):
    campaign = campaign_with(admin_user, labeller)
    Completion.objects.filter(prompt__campaign=campaign).update(text=LONG)
    log_in(page, labeller)
    open_task(page, campaign)
    page.keyboard.press("b")
    body = page.locator("#card-B .completion-body")
    assert body.evaluate("b => b.scrollTop") == 0
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    assert body.evaluate("b => b.scrollTop") > 0  # the selected long answer scrolled
    assert page.locator("#card-A .completion-body").evaluate("b => b.scrollTop") == 0
    page.keyboard.press("PageDown")
    assert body.evaluate("b => b.scrollTop") > 120
    page.keyboard.press("x")
    expect(page.locator("#card-B.is-expanded")).to_have_count(1)
    expect(page.locator("#card-B .expand")).to_have_attribute("aria-expanded", "true")
    page.keyboard.press("x")
    expect(page.locator("#card-B.is-expanded")).to_have_count(0)
    page.keyboard.press("s")
    expect(page.locator("#skip-dialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#skip-dialog")).to_be_hidden()


@pytest.mark.parametrize("n", [4, 9])
def test_the_legend_stays_in_view_on_a_laptop_and_not_ready_is_said_once(
    page, log_in, labeller, admin_user, output_dir, n
):
    campaign = campaign_with(admin_user, labeller, n=n)
    log_in(page, labeller)
    open_task(page, campaign)
    legend = page.locator(".keys dl")
    expect(legend).to_be_visible()
    page.screenshot(path=str(output_dir / f"task-laptop-n{n}.png"))
    box = legend.bounding_box()
    assert box["y"] >= 0 and box["y"] + box["height"] <= 768, box
    board = page.locator(".board")
    if n == 4:  # nothing to scroll on the board: every slot, the comment and the legend show
        assert board.evaluate("b => b.scrollHeight <= b.clientHeight + 1"), "the board scrolls"
    page.mouse.wheel(0, 600)  # the page scrolled: the legend is still there
    box = legend.bounding_box()
    assert box["y"] >= 0 and box["y"] + box["height"] <= 768, box
    page.keyboard.press("a")
    page.keyboard.press("1")
    page.keyboard.press("Enter")
    text = page.locator("#validation").text_content()
    assert text.count("still to rank") + text.count("Still to rank") == 1, text
    page.keyboard.press("Enter")
    text = page.locator("#validation").text_content()
    assert text.count("still to rank") + text.count("Still to rank") == 1, text


def test_two_answers_side_by_side_with_one_key_per_choice(
    page, log_in, labeller, admin_user, output_dir
):
    campaign = campaign_with(admin_user, labeller, n=2, tasks=3)
    Completion.objects.filter(prompt__campaign=campaign).update(text=LONG)
    log_in(page, labeller)
    first = open_task(page, campaign)
    a, b = (page.locator(f"#card-{x}").bounding_box() for x in "AB")
    assert abs(a["y"] - b["y"]) < 2 and b["x"] > a["x"] + a["width"] - 2  # side by side
    expect(page.locator("#choices .choice")).to_have_count(4)
    expect(page.locator(".keys-pairwise")).to_be_visible()
    page.keyboard.press("2")
    expect(page.locator('[data-choice="b"]')).to_have_attribute("aria-pressed", "true")
    page.screenshot(path=str(output_dir / "task-pairwise.png"))
    page.keyboard.press("Enter")
    expect(page.locator("#validation")).to_contain_text("Next task loaded")
    labels = {i.completion_id: i.label for i in Ranking.objects.get(assignment=first).items.all()}
    assert labels == {first.display_order[0]: 2, first.display_order[1]: 1}
    second = Assignment.objects.get(campaign=campaign, status=Assignment.Status.ASSIGNED)
    page.keyboard.press("3")
    page.keyboard.press("Enter")
    expect(page.locator("#validation")).to_contain_text("Next task loaded")
    assert {i.label for i in Ranking.objects.get(assignment=second).items.all()} == {1}
    third = Assignment.objects.get(campaign=campaign, status=Assignment.Status.ASSIGNED)
    page.get_by_role("button", name="Both fail (F)").click()
    page.keyboard.press("Control+Enter")  # Enter alone would press the focused button again
    expect(page.locator("#done")).to_be_visible()
    assert {i.label for i in Ranking.objects.get(assignment=third).items.all()} == {"F"}


def test_strength_is_captured_by_keys(page, log_in, labeller, admin_user, output_dir):
    """Llama 2's four levels on a pairwise task (one gap), and on N = 3 two gaps, each chosen
    with Shift+1..4 on the gap above the selected card; the page refuses to submit until every
    gap has its level."""
    pairwise = campaign_with(admin_user, labeller, n=2, tasks=1, strength_scale="llama2")
    log_in(page, labeller)
    first = open_task(page, pairwise)
    expect(page.locator("#strength")).to_be_visible()
    expect(page.locator(".keys-strength")).to_be_visible()
    page.keyboard.press("1")  # A better
    page.keyboard.press("Enter")
    expect(page.locator("#validation")).to_contain_text("say how much better A over B")
    page.keyboard.press("Shift+Digit4")  # significantly better
    expect(page.get_by_role("button", name="A over B: significantly better")).to_have_attribute(
        "aria-pressed", "true"
    )
    page.screenshot(path=str(output_dir / "task-strength-pairwise.png"))
    page.keyboard.press("Enter")
    expect(page.locator("#done")).to_be_visible()
    assert Ranking.objects.get(assignment=first).strength == [3]

    ranked = campaign_with(admin_user, labeller, n=3, tasks=1, strength_scale="helpsteer")
    second = open_task(page, ranked)
    expect(page.locator("#justification")).to_be_visible()
    for key in ("a", "1", "b", "2", "c", "3"):
        page.keyboard.press(key)
    page.keyboard.press("b")
    page.keyboard.press("Shift+Digit3")  # A over B: much better (helpsteer 3)
    page.keyboard.press("c")
    page.keyboard.press("Shift+Digit1")  # B over C: slightly better
    page.locator("#justification").fill("A answers, B half, C not")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#done")).to_be_visible()
    ranking = Ranking.objects.get(assignment=second)
    assert ranking.strength == [3, 1] and ranking.justification == "A answers, B half, C not"
