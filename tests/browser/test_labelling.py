"""The labeller's ranking page in a real Chromium: keyboard, drag and drop, taps, the guidelines
gate, validation, double submits, server errors, permissions, script injection, and several
tasks in a row with the whole board checked after each.

Card letters follow the assignment's display order: A is ``display_order[0]``, and so on.
"""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from annotation import services
from annotation.models import Assignment, Completion, Ranking
from tests.factories import CampaignFactory, PromptFactory, UserFactory, make_tasks
from tests.helpers.browser import PHONE

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

RANKING_POST = re.compile(r"/api/assignments/\d+/ranking/")


# --- helpers -----------------------------------------------------------------------------------


def open_assignment(user, campaign) -> Assignment:
    return Assignment.objects.get(
        labeller=user, campaign=campaign, status=Assignment.Status.ASSIGNED
    )


def stored_labels(assignment: Assignment) -> dict[str, int | str]:
    """The stored ranking as {letter: label}, letters in the labeller's display order."""
    letters = dict(zip(assignment.display_order, "ABCDEHIJK", strict=False))
    ranking = Ranking.objects.get(assignment=assignment)
    return {letters[item.completion_id]: item.label for item in ranking.items.all()}


def start_labelling(page, campaign) -> None:
    page.goto(f"/campaigns/{campaign.pk}/label/")
    expect(page.locator(".completion")).to_have_count(campaign.completions_per_task)


def slot_letters(page) -> dict[str, str]:
    """What each zone of the board holds, e.g. {"1": "B", "2": "AC", "F": "D", "": ""}."""
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('.board [data-zone]')].map(
            (zone) => [zone.dataset.zone,
                       [...zone.querySelectorAll('.chip-letter')].map((l) => l.textContent)
                       .join('')]))"""
    )


def press(page, *keys: str) -> None:
    for key in keys:
        page.keyboard.press(key)


def expect_next_task(page, previous: Assignment) -> None:
    expect(page).to_have_url(re.compile(rf"/assignments/(?!{previous.pk}/)\d+/$"))
    expect(page.locator("#validation")).to_contain_text("Next task loaded")


def chip(page, letter: str):
    """A card's chip on the ranking board, found by its accessible name."""
    return page.get_by_role("button", name=re.compile(rf"^Completion {letter}:"))


def drag(page, source, target) -> None:
    """Drag with the mouse from the middle of one element to the middle of another."""
    start, end = source.bounding_box(), target.bounding_box()
    page.mouse.move(start["x"] + start["width"] / 2, start["y"] + start["height"] / 2)
    page.mouse.down()
    page.mouse.move(end["x"] + end["width"] / 2, end["y"] + end["height"] / 2, steps=6)
    page.mouse.up()


# --- 1. keyboard -------------------------------------------------------------------------------


def test_keyboard_only_ranking_with_tie_and_fail_then_next_task(
    page, campaign, labeller, output_dir
):
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Your campaigns")).to_be_visible()
    page.get_by_role("link", name=re.compile("Start labelling")).click()
    expect(page.locator(".completion")).to_have_count(4)
    first = open_assignment(labeller, campaign)
    expect(page).to_have_url(re.compile(rf"/assignments/{first.pk}/$"))

    page.keyboard.press("b")  # selecting a card focuses it, with a visible focus ring
    assert page.evaluate("document.activeElement.matches('#card-B:focus-visible')")
    expect(page.get_by_role("article", name="Completion B")).to_have_attribute(
        "aria-current", "true"
    )
    press(page, "a", "1", "b", "2", "c", "2", "d", "f")
    assert slot_letters(page) == {"1": "A", "2": "BC", "3": "", "4": "", "F": "D", "": ""}
    expect(page.locator("#card-C .rank-badge")).to_have_text("Rank 2")
    expect(page.locator("#validation")).to_contain_text("Tie at 2 (B and C)")
    expect(page.locator("#submit")).to_be_enabled()
    page.screenshot(path=str(output_dir / "task-laptop.png"))

    page.keyboard.press("Enter")
    expect_next_task(page, first)
    assert stored_labels(first) == {"A": 1, "B": 2, "C": 2, "D": "F"}
    assert Ranking.objects.get(assignment=first).time_spent_ms > 0
    expect(page.locator("#stat-today")).to_have_text("1")
    # The next task starts clean, with card A selected.
    assert slot_letters(page)[""] == "ABCD"
    expect(page.locator("#card-A")).to_have_class(re.compile("is-selected"))


# --- 2. drag and drop --------------------------------------------------------------------------


def test_drag_and_drop_ranking_is_submitted(page, log_in, campaign, labeller):
    log_in(page, labeller)
    start_labelling(page, campaign)
    first = open_assignment(labeller, campaign)

    drag(page, page.locator("#card-B .completion-head"), page.locator('.slot[data-zone="1"]'))
    drag(page, chip(page, "A"), page.locator('.slot[data-zone="3"]'))
    drag(page, page.locator("#card-D .completion-head"), page.locator('.slot[data-zone="2"]'))
    drag(page, chip(page, "C"), page.locator("#fail-zone"))
    # Changing one's mind: C from F to rank 4.
    drag(page, chip(page, "C"), page.locator('.slot[data-zone="4"]'))
    assert slot_letters(page) == {"1": "B", "2": "D", "3": "A", "4": "C", "F": "", "": ""}

    page.get_by_role("button", name=re.compile("^Submit")).click()
    expect_next_task(page, first)
    assert stored_labels(first) == {"A": 3, "B": 1, "C": 4, "D": 2}


# --- 3. guidelines gate ------------------------------------------------------------------------


def test_guidelines_gate_and_reacknowledgement_after_new_version(
    page, log_in, campaign, admin_user
):
    carol = UserFactory(username="carol")
    services.campaign_add_members(campaign=campaign, users=[carol])
    log_in(page, carol)

    page.goto(f"/campaigns/{campaign.pk}/label/")
    expect(page).to_have_url(re.compile(rf"/campaigns/{campaign.pk}/guidelines/\?next="))
    expect(page.locator("#guidelines-text h1")).to_have_text("Rank by correctness")
    page.get_by_role("button", name=re.compile("I have read version 1")).click()
    expect(page.locator(".completion")).to_have_count(4)
    first = open_assignment(carol, campaign)

    # The guidelines stay one key away on the task page.
    page.keyboard.press("g")
    expect(page.locator("#guidelines-panel")).to_be_visible()
    expect(page.locator("#guidelines-panel h1")).to_have_text("Rank by correctness")
    page.keyboard.press("Escape")
    expect(page.locator("#guidelines-panel")).to_be_hidden()

    press(page, "1", "2", "3", "4")  # A is selected first; each key moves on to the next card
    services.guideline_publish(
        campaign=campaign, text="# Version two\n\nPrefer *short* answers.", created_by=admin_user
    )
    page.keyboard.press("Enter")

    # The ranking is stored under v1; the next task waits behind the new guidelines.
    expect(page).to_have_url(re.compile(rf"/campaigns/{campaign.pk}/guidelines/"))
    assert Ranking.objects.get(assignment=first).guideline.version == 1
    assert stored_labels(first) == {"A": 1, "B": 2, "C": 3, "D": 4}
    expect(page.locator("#guidelines-text h1")).to_have_text("Version two")
    expect(page.locator(".notice")).to_contain_text("version 2")
    page.get_by_role("button", name=re.compile("I have read version 2")).click()
    expect(page.locator(".completion")).to_have_count(4)
    assert open_assignment(carol, campaign).pk != first.pk


# --- 4. incomplete rankings --------------------------------------------------------------------


def test_incomplete_ranking_cannot_be_submitted_and_names_what_is_missing(
    page, log_in, campaign, labeller
):
    log_in(page, labeller)
    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    start_labelling(page, campaign)

    press(page, "a", "1", "b", "2")
    submit = page.locator("#submit")
    expect(submit).to_be_disabled()
    expect(page.locator("#validation")).to_have_text(re.compile(r"Still to rank: C and D\."))

    page.keyboard.press("Enter")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#validation")).to_contain_text(
        "Not ready to submit: still to rank C and D"
    )
    submit.click(force=True)  # a disabled button: the click goes nowhere
    page.wait_for_timeout(300)
    assert posts == []
    assert not Ranking.objects.exists()

    # Clearing a card brings it back to the list.
    press(page, "a", "Backspace")
    expect(page.locator("#validation")).to_contain_text("Still to rank: A, C and D.")


# --- 5. double submits and lost responses ------------------------------------------------------


def test_double_click_and_double_enter_store_one_ranking(page, log_in, campaign, labeller):
    log_in(page, labeller)
    posts = []
    page.on(
        "request",
        lambda r: (
            posts.append(r.url) if r.method == "POST" and RANKING_POST.search(r.url) else None
        ),
    )
    start_labelling(page, campaign)
    first = open_assignment(labeller, campaign)

    press(page, "1", "2", "3", "4")
    page.locator("#submit").dblclick()
    page.keyboard.press("Enter")
    page.keyboard.press("Enter")
    expect_next_task(page, first)

    assert len(posts) == 1
    assert Ranking.objects.filter(assignment=first).count() == 1
    assert Ranking.objects.filter(labeller=labeller).count() == 1


def test_lost_response_is_retried_and_stores_one_ranking(page, log_in, campaign, labeller):
    """The server stores the ranking but the answer never arrives: the page retries, and the
    idempotent API answers 200 with the same ranking."""
    log_in(page, labeller)
    seen = []

    def lose_first_answer(route):
        seen.append(route.request.url)
        if len(seen) == 1:
            route.fetch()  # reaches the server, which stores the ranking...
            route.abort("connectionreset")  # ...but the page never hears back
        else:
            route.continue_()

    page.route(RANKING_POST, lose_first_answer)
    start_labelling(page, campaign)
    first = open_assignment(labeller, campaign)

    press(page, "2", "1", "f", "3")
    page.keyboard.press("Enter")
    expect(page.locator("#error")).to_contain_text("No connection to the server")
    expect_next_task(page, first)

    assert len(seen) == 2
    assert Ranking.objects.filter(labeller=labeller).count() == 1
    assert stored_labels(first) == {"A": 2, "B": 1, "C": "F", "D": 3}
    # The first submit created it; the retry's 200 does not count twice.
    expect(page.locator("#stat-today")).to_have_text("0")


# --- 6. server errors --------------------------------------------------------------------------


def test_server_error_keeps_the_ranking_on_the_page_and_across_a_reload(
    page, log_in, campaign, labeller
):
    log_in(page, labeller)
    calls = []

    def fail_first(route):
        calls.append(route.request.url)
        if len(calls) == 1:
            route.fulfill(status=500, content_type="text/html", body="<h1>Server Error (500)</h1>")
        else:
            route.continue_()

    page.route(RANKING_POST, fail_first)
    start_labelling(page, campaign)
    first = open_assignment(labeller, campaign)

    press(page, "d", "1", "c", "2", "b", "2", "a", "3")
    before = slot_letters(page)
    assert before == {"1": "D", "2": "BC", "3": "A", "4": "", "F": "", "": ""}
    page.keyboard.press("Enter")

    error = page.get_by_role("alert")
    expect(error).to_contain_text("The server had a problem (error 500)")
    expect(error).to_contain_text("Your ranking is kept")
    assert slot_letters(page) == before
    expect(page.locator("#submit")).to_be_enabled()
    assert not Ranking.objects.exists()

    page.reload()  # sessionStorage brings the ranking back
    expect(page.locator(".completion")).to_have_count(4)
    assert slot_letters(page) == before

    page.get_by_role("button", name=re.compile("^Submit")).click()
    expect_next_task(page, first)
    assert stored_labels(first) == {"A": 3, "B": 2, "C": 2, "D": 1}


def test_busy_server_is_retried_with_backoff_and_the_user_is_told(page, log_in, campaign, labeller):
    log_in(page, labeller)
    calls = []

    def busy_once(route):
        calls.append(route.request.url)
        if len(calls) == 1:
            route.fulfill(
                status=503,
                headers={"Retry-After": "1"},
                content_type="application/json",
                body=json.dumps({"detail": "busy", "code": "busy"}),
            )
        else:
            route.continue_()

    page.route(RANKING_POST, busy_once)
    start_labelling(page, campaign)
    first = open_assignment(labeller, campaign)
    press(page, "1", "1", "2", "2")
    page.keyboard.press("Enter")
    expect(page.locator("#error")).to_contain_text("The server is busy: trying to submit again")
    expect_next_task(page, first)
    expect(page.locator("#error")).to_be_hidden()
    assert stored_labels(first) == {"A": 1, "B": 1, "C": 2, "D": 2}


# --- 7. permissions ----------------------------------------------------------------------------


def test_labeller_cannot_open_another_labellers_assignment(
    page, log_in, campaign, labeller, other_labeller
):
    bobs = services.task_assign_next(labeller=other_labeller, campaign=campaign)
    log_in(page, labeller)

    response = page.goto(f"/assignments/{bobs.pk}/")
    assert response.status == 404
    assert page.request.get(f"/api/assignments/{bobs.pk}/").status == 404
    assert page.request.get(f"/assignments/{bobs.pk + 1000}/").status == 404


# --- 8. no script injection --------------------------------------------------------------------


def test_html_in_completions_prompt_and_guidelines_is_shown_as_text(
    page, log_in, labeller, admin_user
):
    campaign = CampaignFactory(completions_per_task=2, overlap=1, allow_fail=False)
    services.campaign_add_members(campaign=campaign, users=[labeller])
    guideline = services.guideline_publish(
        campaign=campaign,
        text=(
            "# Careful\n\n<script>window.pwned = 'guideline script'; alert(1)</script>\n\n"
            "<img src=x onerror=\"window.pwned = 'guideline img'; alert(2)\">\n\n"
            "[click me](javascript:alert(3))"
        ),
        created_by=admin_user,
    )
    services.guideline_acknowledge(user=labeller, guideline=guideline)
    prompt = PromptFactory(campaign=campaign, text="Is <b>this</b> bold? <script>alert(4)</script>")
    img = "<img src=x onerror=\"window.pwned = 'completion img'; alert(5)\">"
    script = "<script>window.pwned = 'completion script'; alert(6)</script>\n```html\n<i>x</i>\n```"
    completions = [
        Completion.objects.create(prompt=prompt, text=img, source="test"),
        Completion.objects.create(prompt=prompt, text=script, source="test"),
    ]
    services.tasks_create(campaign=campaign, groups=[(prompt, completions)])
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    log_in(page, labeller)

    start_labelling(page, campaign)
    bodies = page.locator(".completion-body")
    texts = {bodies.nth(0).inner_text(), bodies.nth(1).inner_text()}
    assert img in texts
    assert "<script>window.pwned = 'completion script'; alert(6)</script>\n<i>x</i>" in texts
    expect(page.locator("#prompt-text")).to_have_text(
        "Is <b>this</b> bold? <script>alert(4)</script>"
    )
    for where in ("#cards", "#prompt-text"):
        assert page.locator(f"{where} :is(img, script, b, i)").count() == 0
    expect(page.locator("#fail-zone")).to_be_hidden()

    page.keyboard.press("?")
    panel = page.locator("#guidelines-panel")
    expect(panel).to_contain_text("<script>window.pwned = 'guideline script'; alert(1)</script>")
    assert panel.locator("script, img, a[href^='javascript']").count() == 0

    page.goto(f"/campaigns/{campaign.pk}/guidelines/")
    assert page.locator("#guidelines-text script, #guidelines-text img").count() == 0
    page.wait_for_timeout(200)  # give a broken image's onerror the time to fire, were there one
    assert page.evaluate("window.pwned") is None
    assert dialogs == []


# --- phone -------------------------------------------------------------------------------------


def test_phone_tap_a_card_then_a_slot(new_page, log_in, campaign, labeller, output_dir):
    page = new_page(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    log_in(page, labeller)
    start_labelling(page, campaign)
    first = open_assignment(labeller, campaign)
    page.screenshot(path=str(output_dir / "task-phone.png"))

    for letter, zone in [("C", "1"), ("A", "2"), ("D", "2"), ("B", "F")]:
        page.locator(f"#card-{letter} .completion-head").tap()
        page.locator(f'.board [data-zone="{zone}"] .slot-target').tap()
    assert slot_letters(page) == {"1": "C", "2": "AD", "3": "", "4": "", "F": "B", "": ""}
    page.screenshot(path=str(output_dir / "task-phone-ranked.png"))

    page.locator("#submit").tap()
    expect_next_task(page, first)
    assert stored_labels(first) == {"A": 2, "B": "F", "C": 1, "D": 2}


# --- skip, no ties, nothing left ---------------------------------------------------------------


def test_skip_with_a_reason_then_rank_the_last_task_and_see_all_done(page, log_in, labeller):
    campaign = CampaignFactory(completions_per_task=3, overlap=1, allow_ties=False)
    services.campaign_add_members(campaign=campaign, users=[labeller])
    make_tasks(campaign, 2)
    log_in(page, labeller)
    start_labelling(page, campaign)
    first = open_assignment(labeller, campaign)

    page.get_by_role("button", name="Skip…").click()
    page.get_by_label("The task is broken").check()
    page.get_by_role("button", name="Skip task").click()
    expect(page).to_have_url(re.compile(rf"/assignments/(?!{first.pk}/)\d+/$"))
    first.refresh_from_db()
    assert first.status == Assignment.Status.SKIPPED
    assert first.skip_reason.startswith("The task is broken")
    second = open_assignment(labeller, campaign)

    # No ties here: a card put on a taken slot swaps places with the card there.
    expect(page.locator("#tie-note")).to_contain_text("No ties in this campaign")
    press(page, "a", "1", "b", "2", "b", "1")
    assert slot_letters(page) == {"1": "B", "2": "A", "3": "", "F": "", "": "C"}
    press(page, "c", "3")
    page.keyboard.press("Control+Enter")
    expect(page.get_by_role("heading", name="All done")).to_be_visible()
    assert stored_labels(second) == {"A": 2, "B": 1, "C": 3}


# --- several tasks in a row: the board holds exactly the current task's cards ------------------
#
# Issue 17: a card marked F stayed in the F area of every later task (showTask rebuilt the slots
# and the tray, not the F area), where it read as the new task's card of the same letter, and
# clicking it threw. After every task these tests compare the whole board with the assignment.

LETTERS = "ABCDEHIJK"


def assignment_on_page(page) -> Assignment:
    """The assignment whose task the page shows (its URL names it)."""
    return Assignment.objects.get(pk=int(re.search(r"/assignments/(\d+)/", page.url)[1]))


def expect_board_of(page, assignment: Assignment, zones: dict[str, str]) -> None:
    """The page shows exactly ``assignment``'s cards, and its board holds one chip per card, in
    the zones ``zones`` names ({"1": "B", "F": "AD"}; every other zone empty), each chip with
    its card's letter, text and rank: nothing from any other task, anywhere on the page."""
    order = list(assignment.display_order)
    texts = dict(Completion.objects.filter(pk__in=order).values_list("pk", "text"))
    cards = page.evaluate(
        "[...document.querySelectorAll('.completion')].map((card) => Number(card.dataset.id))"
    )
    assert cards == order
    chips = page.evaluate(
        """() => [...document.querySelectorAll('.chip')].map((chip) => ({
            zone: chip.closest('.board [data-zone]')?.dataset.zone ?? null,
            id: Number(chip.dataset.id),
            letter: chip.querySelector('.chip-letter').textContent,
            snippet: chip.querySelector('.chip-snippet').textContent,
            name: chip.getAttribute('aria-label'),
        }))"""
    )
    assert sorted(chip["id"] for chip in chips) == sorted(order), chips
    for chip in chips:
        letter = LETTERS[order.index(chip["id"])]
        label = {"": "not ranked", "F": "f: fail"}.get(chip["zone"], f"rank {chip['zone']}")
        assert chip["letter"] == letter, chip
        assert texts[chip["id"]].startswith(chip["snippet"].removesuffix("…")), chip
        assert chip["name"].startswith(f"Completion {letter}: {label}"), chip
    empty = {str(rank): "" for rank in range(1, len(order) + 1)} | {"F": "", "": ""}
    assert slot_letters(page) == empty | zones


def expect_fresh_task(page, previous: Assignment) -> Assignment:
    """The next task is on the page, every card unranked and A selected; answers it."""
    expect_next_task(page, previous)
    current = assignment_on_page(page)
    expect_board_of(page, current, {"": LETTERS[: len(current.display_order)]})
    expect(page.locator("#fail-zone .chip")).to_have_count(0)
    expect(page.locator("#card-A")).to_have_class(re.compile("is-selected"))
    return current


def tap_ranks(page, moves: list[tuple[str, str]]) -> None:
    """On a phone: tap each card, then the zone to put it in."""
    for letter, zone in moves:
        page.locator(f"#card-{letter} .completion-head").tap()
        page.locator(f'.board [data-zone="{zone}"] .slot-target').tap()


def test_several_tasks_in_a_row_show_only_each_tasks_cards_with_keys_ties_f_and_drag(
    page, log_in, campaign, labeller
):
    log_in(page, labeller)
    start_labelling(page, campaign)
    task = assignment_on_page(page)
    expect_board_of(page, task, {"": "ABCD"})

    # 1. Keys: a tie at 2 and D marked F.
    press(page, "a", "1", "b", "2", "c", "2", "d", "f")
    expect_board_of(page, task, {"1": "A", "2": "BC", "F": "D"})
    page.keyboard.press("Enter")
    done, task = task, expect_fresh_task(page, task)
    assert stored_labels(done) == {"A": 1, "B": 2, "C": 2, "D": "F"}

    # 2. Drag: cards and chips onto slots and F, a tie at 2.
    drag(page, page.locator("#card-B .completion-head"), page.locator('.slot[data-zone="1"]'))
    drag(page, chip(page, "A"), page.locator("#fail-zone"))
    drag(page, chip(page, "C"), page.locator('.slot[data-zone="2"]'))
    drag(page, page.locator("#card-D .completion-head"), page.locator('.slot[data-zone="2"]'))
    expect_board_of(page, task, {"1": "B", "2": "CD", "F": "A"})
    page.get_by_role("button", name=re.compile("^Submit")).click()
    done, task = task, expect_fresh_task(page, task)
    assert stored_labels(done) == {"A": "F", "B": 1, "C": 2, "D": 2}

    # 3. Keys: two cards F, one of them cleared with Backspace and ranked, arrows to move.
    press(page, "1", "f", "f", "ArrowLeft", "Backspace")
    expect_board_of(page, task, {"1": "A", "F": "B", "": "CD"})
    press(page, "3", "4", "b", "2", "ArrowLeft", "f")
    expect_board_of(page, task, {"2": "B", "3": "C", "4": "D", "F": "A"})
    page.keyboard.press("Control+Enter")
    done, task = task, expect_fresh_task(page, task)
    assert stored_labels(done) == {"A": "F", "B": 2, "C": 3, "D": 4}

    # 4. Clicks: a card, then the F target; the following cards go on with the slots alone.
    page.locator("#card-A .completion-body").click()
    page.locator("#fail-zone .slot-target").click()
    for rank in ("1", "1", "2"):
        page.locator(f'.slot[data-zone="{rank}"] .slot-target').click()
    expect_board_of(page, task, {"1": "BC", "2": "D", "F": "A"})
    page.get_by_role("button", name=re.compile("^Submit")).click()
    done, task = task, expect_fresh_task(page, task)
    assert stored_labels(done) == {"A": "F", "B": 1, "C": 1, "D": 2}

    # 5. The last task; then no card or chip of any task is left on the page.
    press(page, "4", "3", "2", "1")
    expect_board_of(page, task, {"1": "D", "2": "C", "3": "B", "4": "A"})
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="All done")).to_be_visible()
    assert stored_labels(task) == {"A": 4, "B": 3, "C": 2, "D": 1}
    expect(page.locator(".chip")).to_have_count(0)


def test_several_tasks_in_a_row_on_a_phone_show_only_each_tasks_cards(
    new_page, log_in, campaign, labeller, output_dir
):
    page = new_page(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    log_in(page, labeller)
    start_labelling(page, campaign)
    task = assignment_on_page(page)

    tap_ranks(page, [("C", "1"), ("A", "F"), ("D", "F"), ("B", "2")])
    expect_board_of(page, task, {"1": "C", "2": "B", "F": "AD"})
    page.locator("#submit").tap()
    done, task = task, expect_fresh_task(page, task)
    assert stored_labels(done) == {"A": "F", "B": 2, "C": 1, "D": "F"}
    # On a phone a chip shows only its letter: a chip left over would read "A is already F".
    page.screenshot(path=str(output_dir / "task-phone-next.png"))

    tap_ranks(page, [("B", "1"), ("D", "1"), ("A", "F"), ("C", "3")])
    # The chips on the board move as the cards do: A from F to 2, then C from 3 to F.
    for letter, zone in [("A", "2"), ("C", "F")]:
        chip(page, letter).tap()
        page.locator(f'.board [data-zone="{zone}"] .slot-target').tap()
    expect_board_of(page, task, {"1": "BD", "2": "A", "F": "C"})
    page.locator("#submit").tap()
    done, task = task, expect_fresh_task(page, task)
    assert stored_labels(done) == {"A": 2, "B": 1, "C": "F", "D": 1}

    tap_ranks(page, [("A", "1"), ("B", "2"), ("C", "3"), ("D", "4")])
    page.locator("#submit").tap()
    expect_fresh_task(page, task)


def test_skip_reload_and_swaps_without_ties_keep_each_board_to_its_own_task(page, log_in, labeller):
    campaign = CampaignFactory(completions_per_task=3, overlap=1, allow_ties=False)
    services.campaign_add_members(campaign=campaign, users=[labeller])
    make_tasks(campaign, 3)
    log_in(page, labeller)
    start_labelling(page, campaign)
    task = assignment_on_page(page)

    # 1. Half ranked, with an F, then skipped.
    press(page, "a", "f", "b", "1")
    expect_board_of(page, task, {"1": "B", "F": "A", "": "C"})
    page.get_by_role("button", name="Skip…").click()
    page.get_by_label("The task is broken").check()
    page.get_by_role("button", name="Skip task").click()
    expect(page).to_have_url(re.compile(rf"/assignments/(?!{task.pk}/)\d+/$"))
    expect(page.locator("#validation")).to_contain_text("Skipped. Next task loaded.")
    task = assignment_on_page(page)
    expect_board_of(page, task, {"": "ABC"})

    # 2. A swap (the card displaced goes back to the tray) and an F, kept across a reload.
    press(page, "a", "1", "b", "1", "c", "f")
    expect_board_of(page, task, {"1": "B", "F": "C", "": "A"})
    page.reload()
    expect(page.locator(".completion")).to_have_count(3)
    expect_board_of(page, task, {"1": "B", "F": "C", "": "A"})
    press(page, "a", "2", "c", "1")  # C leaves F for slot 1: B, there before, takes C's F
    expect_board_of(page, task, {"1": "C", "2": "A", "F": "B"})
    page.keyboard.press("Enter")
    done, task = task, expect_fresh_task(page, task)
    assert stored_labels(done) == {"A": 2, "B": "F", "C": 1}

    # 3. The last task.
    press(page, "1", "2", "3")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="All done")).to_be_visible()
    expect(page.locator(".chip")).to_have_count(0)
