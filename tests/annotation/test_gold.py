"""Gold tasks: import and marking, mixing into the queues, no leak into exports or agreement,
agreement with the references (a drifting labeller is flagged), onboarding."""

from __future__ import annotations

import csv
import io
import json
import random

import pytest
from django.db import connection
from django.test import Client

from annotation import agreement_figures, exports, selectors, services
from annotation.errors import Conflict, PermissionDenied
from annotation.importing import ImportFailed, parse_import
from annotation.models import Assignment, Completion, Membership, Ranking, Task
from tests.conftest import client_for
from tests.factories import (
    CampaignFactory,
    ModelVersionFactory,
    UserFactory,
    make_tasks,
    task_completion_ids,
)
from tests.helpers.threads import run_all
from training import exports as training_exports
from training.ml.synthetic import GOLD_WORDS, SyntheticLabeller, synthetic_ranking

pytestmark = pytest.mark.django_db

FILLER = ("stock", "brick", "hand", "cloud", "drift", "sun", "mud", "rain", "frost", "wind")
GOLD = sorted(GOLD_WORDS)


def texts_for(task: int, n: int = 4) -> list[str]:
    """N completions whose gold scores are far apart: completion k has 3k gold words of 12."""
    rng = random.Random(task)
    texts = []
    for k in range(n):
        words = [rng.choice(GOLD) for _ in range(3 * k)] + [
            rng.choice(FILLER) for _ in range(12 - 3 * k)
        ]
        rng.shuffle(words)
        texts.append(" ".join(words))
    return texts


def jsonl_lines(real: int, gold: int, *, n: int = 4) -> bytes:
    lines = []
    for t in range(real + gold):
        texts = texts_for(t, n)
        line = {"id": f"p{t}", "prompt": f"Prompt {t}: say something nice", "completions": texts}
        if t >= real:
            line["gold"] = synthetic_ranking(texts)  # the noise-free synthetic labeller
        lines.append(json.dumps(line))
    return "\n".join(lines).encode()


def setup_campaign(*, real: int, gold: int, labellers: list, admin=None, **settings):
    campaign = CampaignFactory(completions_per_task=4, created_by=admin, **settings)
    services.campaign_import(campaign=campaign, data=jsonl_lines(real, gold), filename="g.jsonl")
    services.campaign_add_members(campaign=campaign, users=labellers)
    return campaign


def texts_of(assignment: Assignment) -> list[str]:
    by_id = dict(assignment.task.completions.values_list("id", "text"))
    return [by_id[c] for c in assignment.display_order]


def label_all(campaign, user, labeller: SyntheticLabeller, *, limit: int = 1000) -> list[Task]:
    """The user ranks whatever they are handed with the synthetic labeller; returns the tasks."""
    done = []
    for _ in range(limit):
        assignment = services.task_assign_next(labeller=user, campaign=campaign)
        if assignment is None:
            break
        labels = labeller.rank(texts_of(assignment))
        items = [
            {"completion": c, "rank": label}
            for c, label in zip(assignment.display_order, labels, strict=True)
        ]
        services.ranking_submit(
            labeller=user, assignment=assignment, items=items, time_spent_ms=1000
        )
        done.append(assignment.task)
    return done


@pytest.fixture
def always_gold(monkeypatch):
    monkeypatch.setattr(services.assignment, "_gold_draw", lambda: 0.0)


@pytest.fixture
def alternate_gold(monkeypatch):
    draws = iter([0.0, 0.99] * 10_000)
    monkeypatch.setattr(services.assignment, "_gold_draw", lambda: next(draws))


# --- Import and marking -------------------------------------------------------------------------


def test_import_makes_gold_tasks_with_their_reference():
    campaign = setup_campaign(real=2, gold=1, labellers=[])
    gold = Task.objects.get(campaign=campaign, is_gold=True)
    texts = dict(gold.completions.values_list("id", "text"))
    reference = {int(c): label for c, label in gold.gold_ranking.items()}
    assert sorted(reference.values()) == [1, 2, 3, 4]
    best = min(reference, key=reference.get)
    assert sum(w in GOLD_WORDS for w in texts[best].split()) == 9
    assert Task.objects.filter(campaign=campaign, is_gold=False).count() == 2


LIMITS = {"completions_per_task": 3, "max_text_chars": 100, "max_bytes": 10_000}


@pytest.mark.parametrize(
    ("gold", "field", "message"),
    [
        ([1, 2], "gold", "must be a list of 3 labels, one per completion"),
        ("1,2,3", "gold", "must be a list of 3 labels, one per completion"),
        ([1, 2, 4], "gold[2]", "must be between 1 and 3"),
        ([1, True, 2], "gold[1]", 'must be an integer 1..3 or "F"'),
        ([2, 2, 2], "gold", "says no completion is better than another"),
    ],
)
def test_import_refuses_bad_gold_with_line_and_field(gold, field, message):
    lines = [
        json.dumps({"prompt": "fine", "completions": ["a", "b", "c"], "gold": [1, 2, 3]}),
        json.dumps({"prompt": "bad", "completions": ["a", "b", "c"], "gold": gold}),
    ]
    with pytest.raises(ImportFailed) as info:
        parse_import("\n".join(lines).encode(), fmt="jsonl", **LIMITS)
    assert [(e.line, e.field, e.message) for e in info.value.errors] == [(2, field, message)]


def test_import_gold_follows_the_campaign_rules_and_needs_completions():
    lines = [
        json.dumps({"prompt": "no completions", "gold": [1, 2, 3]}),
        json.dumps({"prompt": "tie", "completions": ["a", "b", "c"], "gold": [1, 1, 2]}),
        json.dumps({"prompt": "fail", "completions": ["a", "b", "c"], "gold": [1, 2, "F"]}),
    ]
    with pytest.raises(ImportFailed) as info:
        parse_import(
            "\n".join(lines).encode(), fmt="jsonl", allow_ties=False, allow_fail=False, **LIMITS
        )
    assert [(e.line, e.field) for e in info.value.errors] == [
        (1, "gold"),
        (2, "gold"),
        (3, "gold[2]"),
    ]


def test_csv_gold_column_is_a_json_list():
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["prompt", "completion_1", "completion_2", "completion_3", "gold"])
    writer.writerow(["ok", "a", "b", "c", "[3, 1, 2]"])
    writer.writerow(["bad", "a", "b", "c", "[3, 1"])
    with pytest.raises(ImportFailed) as info:
        parse_import(rows.getvalue().encode(), fmt="csv", **LIMITS)
    assert [(e.line, e.field) for e in info.value.errors] == [(3, "gold")]
    good = parse_import(rows.getvalue().encode().rsplit(b"\r\nbad", 1)[0], fmt="csv", **LIMITS)
    assert good[0].gold == (3, 1, 2)


def test_import_api_reports_bad_gold_by_line(admin_client):
    campaign = CampaignFactory(completions_per_task=2)
    body = "\n".join(
        [
            json.dumps({"prompt": "x", "completions": ["a", "b"], "gold": [1, 2]}),
            json.dumps({"prompt": "y", "completions": ["a", "b"], "gold": [1, 3]}),
        ]
    )
    upload = io.BytesIO(body.encode())
    upload.name = "gold.jsonl"
    response = admin_client.post(
        f"/api/campaigns/{campaign.pk}/import/", {"file": upload}, format="multipart"
    )
    assert response.status_code == 400
    assert response.json()["errors"] == {"line 2: gold[1]": ["must be between 1 and 2"]}
    assert not Task.objects.filter(campaign=campaign).exists()


def test_admin_marks_and_unmarks_a_gold_task_through_the_api(admin_client, campaign):
    task = campaign.tasks.order_by("id").first()
    ids = task_completion_ids(task)
    url = f"/api/campaigns/{campaign.pk}/tasks/{task.pk}/gold/"
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(ids)]
    response = admin_client.post(url, {"items": items}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["is_gold"] is True
    assert response.json()["reference"] == items
    task.refresh_from_db()
    assert task.is_gold and task.gold_ranking == {str(c): i + 1 for i, c in enumerate(ids)}

    response = admin_client.delete(url)
    assert response.status_code == 200 and response.json() == {
        "task": task.pk,
        "is_gold": False,
        "reference": None,
    }
    task.refresh_from_db()
    assert not task.is_gold and task.target_overlap == campaign.overlap


def test_marking_gold_refuses_bad_references_naming_the_field(admin_client, campaign):
    task = campaign.tasks.order_by("id").first()
    ids = task_completion_ids(task)
    url = f"/api/campaigns/{campaign.pk}/tasks/{task.pk}/gold/"
    bad_rank = [{"completion": c, "rank": 9 if i == 1 else i + 1} for i, c in enumerate(ids)]
    response = admin_client.post(url, {"items": bad_rank}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {"items[1].rank": ["must be between 1 and 4"]}
    missing = [{"completion": ids[0], "rank": 1}]
    response = admin_client.post(url, {"items": missing}, format="json")
    assert response.status_code == 400 and "items" in response.json()["errors"]
    response = admin_client.post(url, {"items": "first"}, format="json")
    assert response.status_code == 400 and "items" in response.json()["errors"]
    assert not Task.objects.get(pk=task.pk).is_gold


def test_gold_admin_actions_are_refused_to_labellers(labeller_client, campaign, outsider_client):
    task = campaign.tasks.order_by("id").first()
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(task_completion_ids(task))]
    url = f"/api/campaigns/{campaign.pk}/tasks/{task.pk}/gold/"
    assert labeller_client.post(url, {"items": items}, format="json").status_code == 403
    assert labeller_client.delete(url).status_code == 403
    assert labeller_client.get(f"/api/campaigns/{campaign.pk}/gold/").status_code == 403
    patch = labeller_client.patch(f"/api/campaigns/{campaign.pk}/", {"gold_rate": 0.5})
    assert patch.status_code == 403
    # Someone outside the campaign does not learn it exists.
    assert outsider_client.post(url, {"items": items}, format="json").status_code == 404
    assert not Task.objects.get(pk=task.pk).is_gold


def test_marking_a_task_of_another_campaign_answers_404(admin_client, campaign):
    other = CampaignFactory()
    task = make_tasks(other, 1)[0]
    url = f"/api/campaigns/{campaign.pk}/tasks/{task.pk}/gold/"
    assert admin_client.post(url, {"items": []}, format="json").status_code == 404


def test_campaign_settings_api_validates_the_new_fields(admin_client, labeller_client, campaign):
    url = f"/api/campaigns/{campaign.pk}/"
    for body, field in [
        ({"gold_rate": 1.5}, "gold_rate"),
        ({"onboarding_threshold": -0.1}, "onboarding_threshold"),
        ({"overlap_min": 5}, "overlap_min"),  # above the overlap (2)
        ({"task_order": "by-vibes"}, "task_order"),
        ({"reopen_below": "half"}, "reopen_below"),
        ({"onboarding_gold_tasks": -1}, "onboarding_gold_tasks"),
    ]:
        response = admin_client.patch(url, body, format="json")
        assert response.status_code == 400, body
        assert field in response.json()["errors"], response.json()
    response = admin_client.patch(
        url, {"gold_rate": 0.1, "onboarding_gold_tasks": 3, "task_order": "random"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["gold_rate"] == 0.1 and response.json()["task_order"] == "random"
    # Labellers see the campaign but none of these settings.
    seen = labeller_client.get(url).json()
    assert "gold_rate" not in seen and "onboarding_gold_tasks" not in seen
    assert "task_order" not in seen and "overlap_min" not in seen


# --- Mixing and privacy -------------------------------------------------------------------------


def test_gold_tasks_are_mixed_in_at_the_rate_and_have_no_overlap_cap(always_gold):
    users = [UserFactory() for _ in range(5)]
    campaign = setup_campaign(real=3, gold=2, labellers=users, overlap=2, gold_rate=0.2)
    for user in users:
        first = services.task_assign_next(labeller=user, campaign=campaign)
        assert first.task.is_gold  # the draw said gold
        items = [{"completion": c, "rank": i + 1} for i, c in enumerate(first.display_order)]
        services.ranking_submit(labeller=user, assignment=first, items=items, time_spent_ms=10)
    gold = Task.objects.filter(campaign=campaign, is_gold=True).order_by("id")
    # Five labellers ranked the first gold task although the overlap is 2.
    assert gold[0].submitted_count == 5 == gold[0].active_count <= gold[0].target_overlap
    assert gold[1].submitted_count == 0


def test_no_gold_without_a_rate_and_never_gold_alone(monkeypatch):
    monkeypatch.setattr(services.assignment, "_gold_draw", lambda: 0.5)
    user = UserFactory()
    campaign = setup_campaign(real=2, gold=2, labellers=[user], overlap=1, gold_rate=0.4)
    tasks = label_all(campaign, user, SyntheticLabeller(noise=0.0))
    assert [t.is_gold for t in tasks] == [False, False]  # 0.5 >= 0.4: real; then nothing left


def test_gold_assignment_looks_like_any_other(always_gold, labeller):
    campaign = setup_campaign(real=1, gold=1, labellers=[labeller], overlap=1, gold_rate=0.5)
    client = client_for(labeller)
    gold = client.post(f"/api/campaigns/{campaign.pk}/next-task/").json()
    assert Assignment.objects.get(pk=gold["id"]).task.is_gold
    items = [{"completion": c["id"], "rank": i + 1} for i, c in enumerate(gold["completions"])]
    submitted = client.post(
        f"/api/assignments/{gold['id']}/ranking/?next=1",
        {"items": items, "time_spent_ms": 5},
        format="json",
    ).json()
    real = submitted["next"]["assignment"]
    assert not Assignment.objects.get(pk=real["id"]).task.is_gold
    assert set(gold) == set(real)
    assert "gold" not in json.dumps(gold).lower()
    mine = client.get(f"/api/rankings/?campaign={campaign.pk}").json()["results"]
    assert [r["assignment"] for r in mine] == [gold["id"]]
    assert all(r["task"] is None for r in mine)  # task ids follow the import order
    assert "gold" not in json.dumps(mine).lower()


# --- Exports and agreement ----------------------------------------------------------------------


def ranked_by_three(*, admin, overlap: int, noise: float):
    """4 real and 3 gold tasks (gold rate 0.5), every task ranked by three synthetic
    labellers (seeds 0-2) as far as the overlap lets them."""
    users = [UserFactory(username=f"ann{i}") for i in range(3)]
    campaign = setup_campaign(
        real=4, gold=3, labellers=users, admin=admin, overlap=overlap, gold_rate=0.5
    )
    for i, user in enumerate(users):
        label_all(campaign, user, SyntheticLabeller(noise=noise, seed=i))
    return campaign


def test_gold_rankings_never_leak_into_exports_or_agreement(alternate_gold, admin_user):
    campaign = ranked_by_three(admin=admin_user, overlap=3, noise=0.2)
    gold_ids = set(
        Task.objects.filter(campaign=campaign, is_gold=True).values_list("pk", flat=True)
    )
    gold_prompts = {f"Prompt {t}: say something nice" for t in (4, 5, 6)}
    assert Ranking.objects.filter(task_id__in=gold_ids).count() == 9  # all ranked by everyone
    client = client_for(admin_user)

    def body(response) -> str:
        assert response.status_code == 200, response.content
        return b"".join(response.streaming_content).decode()

    for aggregate in ("none", "majority", "ranked_pairs", "bradley_terry"):
        text = body(client.get(f"/api/campaigns/{campaign.pk}/pairs/", {"aggregate": aggregate}))
        records = [json.loads(line) for line in text.splitlines()]
        assert records and not {r["task"] for r in records} & gold_ids
        assert not {r["prompt"] for r in records} & gold_prompts
    for fmt in ("jsonl", "csv"):
        text = body(client.get(f"/api/campaigns/{campaign.pk}/rankings/export/", {"format": fmt}))
        assert "Prompt 0" in text
        assert not any(prompt in text for prompt in gold_prompts)
    pairs = training_exports.preference_pairs(campaign_ids=[campaign.pk])
    assert pairs and not {p.prompt for p in pairs} & gold_prompts
    assert {r.task_id for r in exports.ranking_rows(campaign_ids=[campaign.pk])}.isdisjoint(
        gold_ids
    )
    figures = agreement_figures.campaign_agreement(campaign=campaign)
    assert figures.rankings == 12 and figures.tasks == 4  # real tasks only
    agreement = client.get(f"/api/campaigns/{campaign.pk}/agreement/", {"resamples": 0}).json()
    assert agreement["rankings"] == 12


def test_gold_prompts_are_not_policy_prompts_or_normalisation_samples(admin_user):
    campaign = setup_campaign(real=3, gold=2, labellers=[], admin=admin_user)
    records = training_exports.campaign_prompts(campaign_ids=[campaign.pk])
    assert sorted(r.prompt for r in records) == [
        f"Prompt {t}: say something nice" for t in (0, 1, 2)
    ]
    version = ModelVersionFactory()
    Completion.objects.filter(prompt__campaign=campaign).update(model_version=version)
    samples = training_exports.reference_samples(
        campaign_ids=[campaign.pk], model_version_id=version.pk
    )
    assert len(samples) == 3 * 4
    assert {prompt for prompt, _ in samples} == {r.prompt for r in records}


def test_progress_counts_real_tasks_and_gold_apart(alternate_gold, admin_user):
    campaign = ranked_by_three(admin=admin_user, overlap=2, noise=0.0)
    progress = selectors.campaign_progress(campaign=campaign)
    assert (progress.tasks, progress.tasks_complete, progress.tasks_in_progress) == (4, 4, 0)
    assert (progress.rankings, progress.target_rankings) == (8, 8)
    gold_rankings = Ranking.objects.filter(campaign=campaign, task__is_gold=True).count()
    assert gold_rankings > 0
    assert (progress.gold_tasks, progress.gold_rankings) == (3, gold_rankings)
    for row in selectors.labeller_progress(campaign=campaign):
        assert row.remaining == 0  # gold tasks nobody ranked yet are not work left
    body = client_for(admin_user).get(f"/api/campaigns/{campaign.pk}/progress/").json()
    assert body["campaign"]["tasks"] == 4 and body["campaign"]["gold_tasks"] == 3


# --- Agreement with gold ------------------------------------------------------------------------


def test_gold_estimate_is_strict_pairwise_agreement_with_the_reference():
    reference = {1: 1, 2: 2, 3: 3, 4: 4}
    # One swapped neighbour pair: 5 of 6 strict pairs agree.
    estimate = agreement_figures.gold_estimate([(7, {1: 1, 2: 2, 3: 4, 4: 3})], {7: reference})
    assert estimate.value == pytest.approx(5 / 6) and estimate.n == 6
    # A tie is not a strict pair; F is a bottom tier (F below every ranked one).
    estimate = agreement_figures.gold_estimate([(7, {1: 1, 2: 1, 3: 2, 4: "F"})], {7: reference})
    assert estimate.n == 5 and estimate.value == 1.0
    # Two tasks, a bootstrap interval over them.
    estimate = agreement_figures.gold_estimate(
        [(7, {1: 4, 2: 3, 3: 2, 4: 1}), (8, dict(reference))], {7: reference, 8: reference}
    )
    assert estimate.value == 0.5 and estimate.n == 12
    assert estimate.ci_low == 0.0 and estimate.ci_high == 1.0
    assert agreement_figures.gold_estimate([], {7: reference}).value is None


def test_a_drifting_labeller_is_flagged_by_gold_agreement(alternate_gold, admin_user):
    users = [UserFactory(username=name) for name in ("steady", "careful", "drifter")]
    campaign = setup_campaign(
        real=30,  # real work outlasts the gold tasks: gold is mixed in until it runs out
        gold=24,
        labellers=users,
        admin=admin_user,
        overlap=3,
        gold_rate=0.5,
        onboarding_threshold=0.7,
    )
    labellers = {
        "steady": SyntheticLabeller(noise=0.05, seed=1),
        "careful": SyntheticLabeller(noise=0.05, seed=2),
        # Honest for its first 24 rankings (about 12 gold), inverted after.
        "drifter": SyntheticLabeller(noise=0.05, seed=3, flip_after=24),
    }
    for user in users:
        label_all(campaign, user, labellers[user.username])

    table = agreement_figures.gold_table(
        campaign=campaign, rule=agreement_figures.GoldRule(threshold=0.7, block=6)
    )
    rows = {row.username: row for row in table.rows}
    assert table.gold_tasks == 24 and all(row.tasks == 24 for row in rows.values())
    assert table.rows[0].username == "drifter"  # flagged first
    drifter = rows["drifter"]
    assert drifter.flagged and "last 6 gold tasks" in drifter.flag_reason
    assert drifter.latest.value < 0.2
    assert drifter.drift[0].agreement.value > 0.9 and drifter.drift[-1].agreement.value < 0.2
    assert [p.label for p in drifter.drift] == [
        "gold tasks 1-6",
        "gold tasks 7-12",
        "gold tasks 13-18",
        "gold tasks 19-24",
    ]
    for name in ("steady", "careful"):
        assert not rows[name].flagged and rows[name].agreement.value > 0.9
        low, high = rows[name].agreement.ci_low, rows[name].agreement.ci_high
        assert low <= rows[name].agreement.value <= high

    # The labeller quality table (API) carries the gold column and the flag.
    response = client_for(admin_user).get(
        f"/api/campaigns/{campaign.pk}/labellers/", {"resamples": 200}
    )
    assert response.status_code == 200
    api_rows = {row["username"]: row for row in response.json()["labellers"]}
    assert api_rows["drifter"]["flagged"] and api_rows["drifter"]["gold_flagged"]
    assert "gold references" in api_rows["drifter"]["flag_reason"]
    assert api_rows["steady"]["gold_agreement"]["key"] == "gold_agreement"
    assert api_rows["steady"]["gold_agreement"]["value"] > 0.9
    assert api_rows["steady"]["gold_tasks"] == 24 and not api_rows["steady"]["gold_flagged"]
    for key in ("agreement", "tasks", "fail_rate", "tie_rate", "robust_z", "flagged"):
        assert key in api_rows["steady"]  # the existing keys stay

    gold = client_for(admin_user).get(
        f"/api/campaigns/{campaign.pk}/gold/", {"block": 12, "resamples": 100}
    )
    assert gold.status_code == 200
    body = {row["username"]: row for row in gold.json()["labellers"]}
    assert [p["label"] for p in body["drifter"]["drift"]] == ["gold tasks 1-12", "gold tasks 13-24"]
    assert body["drifter"]["flagged"] and body["drifter"]["onboarding"] == "off"
    weekly = client_for(admin_user).get(f"/api/campaigns/{campaign.pk}/gold/", {"drift": "week"})
    assert len(weekly.json()["labellers"][0]["drift"]) == 1


def test_gold_table_query_is_validated(admin_client, campaign):
    response = admin_client.get(f"/api/campaigns/{campaign.pk}/gold/", {"drift": "daily"})
    assert response.status_code == 400 and "drift" in response.json()["errors"]
    response = admin_client.get(f"/api/campaigns/{campaign.pk}/gold/", {"block": 1})
    assert response.status_code == 400 and "block" in response.json()["errors"]


# --- Onboarding ---------------------------------------------------------------------------------


def test_onboarding_gives_only_gold_then_real_tasks_to_a_good_labeller(labeller):
    campaign = setup_campaign(
        real=4, gold=5, labellers=[labeller], overlap=1, onboarding_gold_tasks=3
    )
    tasks = label_all(campaign, labeller, SyntheticLabeller(noise=0.0), limit=4)
    assert [t.is_gold for t in tasks] == [True, True, True, False]
    membership = Membership.objects.get(campaign=campaign, user=labeller)
    assert membership.onboarding_passed_at is not None and membership.onboarding_agreement == 1.0


def test_failing_onboarding_is_reported_not_looped(labeller, admin_user):
    campaign = setup_campaign(
        real=4,
        gold=5,
        labellers=[labeller],
        admin=admin_user,
        overlap=1,
        onboarding_gold_tasks=3,
        onboarding_threshold=0.7,
    )
    tasks = label_all(campaign, labeller, SyntheticLabeller(noise=0.0, invert=True), limit=3)
    assert [t.is_gold for t in tasks] == [True, True, True]
    client = client_for(labeller)
    for _ in range(2):  # asking again answers the same, and hands out nothing
        response = client.post(f"/api/campaigns/{campaign.pk}/next-task/")
        assert response.status_code == 403
        body = response.json()
        assert body["code"] == "onboarding_failed"
        assert body["onboarding"]["agreement"] == 0.0 and body["onboarding"]["tasks"] == 3
    assert Assignment.objects.filter(labeller=labeller).count() == 3
    # The labelling page says what happened, not "Not a labeller here".
    browser = Client()
    browser.force_login(labeller)
    page = browser.get(f"/campaigns/{campaign.pk}/label/")
    assert page.status_code == 403
    text = page.content.decode()
    assert "Qualification not passed" in text and "Not a labeller here" not in text
    assert "agree 0.00 with the reference rankings; 0.70 is needed" in text
    gold = client_for(admin_user).get(f"/api/campaigns/{campaign.pk}/gold/").json()
    assert gold["labellers"][0]["onboarding"] == "failed"
    # An admin lowering the threshold lets them in.
    services.campaign_update(campaign=campaign, onboarding_threshold=0.0)
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)
    assert assignment is not None and not assignment.task.is_gold


def test_onboarding_without_gold_tasks_says_so(labeller):
    campaign = setup_campaign(
        real=2, gold=0, labellers=[labeller], overlap=1, onboarding_gold_tasks=2
    )
    with pytest.raises(Conflict) as info:
        services.task_assign_next(labeller=labeller, campaign=campaign)
    assert info.value.code == "onboarding_unavailable"


def test_onboarding_decides_on_fewer_gold_tasks_when_no_more_are_left(labeller):
    campaign = setup_campaign(
        real=2, gold=2, labellers=[labeller], overlap=1, onboarding_gold_tasks=5
    )
    tasks = label_all(campaign, labeller, SyntheticLabeller(noise=0.0, invert=True), limit=2)
    assert [t.is_gold for t in tasks] == [True, True]
    with pytest.raises(PermissionDenied) as info:
        services.task_assign_next(labeller=labeller, campaign=campaign)
    assert info.value.extra["onboarding"]["tasks"] == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="row-lock concurrency needs PostgreSQL"
)
def test_gold_mixing_keeps_every_count_right_under_concurrency():
    users = [UserFactory(username=f"worker{i}") for i in range(32)]
    campaign = setup_campaign(real=10, gold=3, labellers=users, overlap=3, gold_rate=0.5)

    def label(user):
        client = client_for(user)
        for _ in range(20):
            response = client.post(f"/api/campaigns/{campaign.pk}/next-task/")
            if response.status_code == 204:
                return
            assert response.status_code == 200, response.content
            body = response.json()
            items = [
                {"completion": c["id"], "rank": i + 1} for i, c in enumerate(body["completions"])
            ]
            result = client.post(
                f"/api/assignments/{body['id']}/ranking/",
                {"items": items, "time_spent_ms": 5},
                format="json",
            )
            assert result.status_code == 201, result.content

    run_all(label, users)
    for task in Task.objects.filter(campaign=campaign):
        ranked = Ranking.objects.filter(task=task).count()
        assert task.submitted_count == task.active_count == ranked <= task.target_overlap
        if not task.is_gold:
            assert ranked == 3  # the real tasks were all filled, never beyond the overlap
    gold_rankings = Ranking.objects.filter(task__is_gold=True).count()
    assert 0 < gold_rankings <= 3 * len(users)
    assert not Assignment.objects.filter(status="assigned").exists()


def test_gold_is_not_served_once_the_real_work_is_done(monkeypatch, labeller):
    draws = iter([0.9, 0.0, 0.0])
    monkeypatch.setattr(services.assignment, "_gold_draw", lambda: next(draws))
    campaign = setup_campaign(real=1, gold=3, labellers=[labeller], overlap=1, gold_rate=0.5)
    tasks = label_all(campaign, labeller, SyntheticLabeller(noise=0.0))
    assert [t.is_gold for t in tasks] == [False]  # then the draw says gold, but nothing is real


def test_a_late_ranking_of_a_gold_task_is_kept_even_when_others_took_it(always_gold):
    users = [UserFactory() for _ in range(2)]
    campaign = setup_campaign(real=2, gold=1, labellers=users, overlap=1, gold_rate=0.5)
    late = services.task_assign_next(labeller=users[0], campaign=campaign)
    assert late.task.is_gold
    services.assignments_expire(now=late.lease_expires_at)
    other = services.task_assign_next(labeller=users[1], campaign=campaign)
    assert other.task_id == late.task_id
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(late.display_order)]
    result = services.ranking_submit(
        labeller=users[0], assignment=late, items=items, time_spent_ms=5
    )
    assert result.created
    task = Task.objects.get(pk=late.task_id)
    assert task.active_count == 2 <= task.target_overlap and task.submitted_count == 1


def test_a_labeller_cannot_tell_gold_from_real_tasks_through_the_api(alternate_gold, labeller):
    """Everything a labeller's client sees while ranking (the task it is handed, the answer to
    its submit, its progress before and after) is recorded per task, then every field is tried
    as a tell: none may split the gold tasks from the real ones."""
    campaign = setup_campaign(real=6, gold=6, labellers=[labeller], overlap=1, gold_rate=0.5)
    client = client_for(labeller)
    remaining = client.get(f"/api/campaigns/{campaign.pk}/progress/").json()["labellers"][0][
        "remaining"
    ]
    seen = []
    task = client.post(f"/api/campaigns/{campaign.pk}/next-task/").json()
    while task:
        items = [{"completion": c["id"], "rank": i + 1} for i, c in enumerate(task["completions"])]
        response = client.post(
            f"/api/assignments/{task['id']}/ranking/?next=1",
            {"items": items, "time_spent_ms": 5},
            format="json",
        )
        progress = client.get(f"/api/campaigns/{campaign.pk}/progress/").json()["labellers"][0]
        body = response.json()
        gold = Assignment.objects.get(pk=task["id"]).task.is_gold
        seen.append(
            {
                "gold": gold,
                "status": response.status_code,
                "task_keys": tuple(sorted(task)),
                # The import's ids (p0.. with gold last) and sources would tell: never shown.
                "provenance": (
                    task["prompt"]["external_id"],
                    json.dumps(task["prompt"]["metadata"]),
                    tuple(c["source"] for c in task["completions"]),
                ),
                "ranking_keys": tuple(sorted(k for k in body if k != "next")),
                "drop": remaining - progress["remaining"],
                "last": progress["remaining"] == 0,
            }
        )
        remaining = progress["remaining"]
        task = body["next"]["assignment"]
    golds = [s for s in seen if s["gold"]]
    reals = [s for s in seen if not s["gold"]]
    assert golds and reals  # both kinds were served
    for tell in ("status", "task_keys", "ranking_keys", "provenance"):
        assert {s[tell] for s in golds} == {s[tell] for s in reals}, tell
    # Every submit but the very last takes exactly one off what is left, gold or real.
    assert {s["drop"] for s in seen if not s["last"]} == {1}
