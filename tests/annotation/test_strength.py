"""Preference strength: the pure rules (gaps, pair levels, margins, signed values), a submit
that carries it (validated, stored, idempotent), its pairs' strength and margin in the export,
the reward-model pairs' margins, and Krippendorff's alpha (interval) on it."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from annotation import services, strength
from annotation.models import Ranking
from tests.conftest import client_for
from tests.factories import CampaignFactory, UserFactory, make_tasks, task_completion_ids

# --- pure rules ---------------------------------------------------------------------------------


def test_gaps_are_between_adjacent_ranks_with_ties_one_tier_and_f_in_none():
    labels = {1: 1, 2: 2, 3: 2, 4: "F", 5: 4}
    assert strength.tiers(labels) == [[1], [2, 3], [5]]
    assert strength.gap_count(labels) == 2
    assert strength.gap_count({1: 1, 2: 1}) == 0


@pytest.mark.parametrize(
    ("chosen", "rejected", "expected"),
    [(1, 2, 1), (2, 5, 2), (1, 5, 3), (5, 1, 3), (2, 3, None), (1, 4, None)],
)
def test_a_pairs_level_is_the_sum_of_the_gaps_between_capped_at_the_top(chosen, rejected, expected):
    labels = {1: 1, 2: 2, 3: 2, 4: "F", 5: 3}
    assert strength.pair_level(labels, [1, 2], chosen, rejected, scale="llama2") == expected


def test_margins_and_signed_values_by_hand():
    assert [strength.margin(level) for level in (0, 1, 2, 3)] == [0.0, 1 / 3, 2 / 3, 1.0]
    labels = {1: 2, 2: 1}
    assert strength.signed_value(labels, [0], 1, 2, scale="llama2") == -1.0  # 2 better, level 0
    assert strength.signed_value(labels, [3], 2, 1, scale="helpsteer") == 3.0
    assert strength.signed_value({1: 1, 2: 1}, [], 1, 2, scale="llama2") == 0.0
    assert strength.signed_value({1: 1, 2: "F"}, [], 1, 2, scale="llama2") is None


@pytest.mark.parametrize(
    ("given_", "scale", "field"),
    [
        (None, "llama2", "strength"),
        ([1, 1], "llama2", "strength"),
        ([4], "llama2", "strength[0]"),
        ([0], "helpsteer", "strength[0]"),
        ([True], "llama2", "strength[0]"),
        ([1], "none", "strength"),
    ],
)
def test_validate_names_the_field(given_, scale, field):
    with pytest.raises(strength.StrengthError) as caught:
        strength.validate(given_, labels={1: 1, 2: 2}, scale=scale)
    assert caught.value.field == field


def test_a_justification_is_one_line_and_helpsteer_only():
    labels = {1: 1, 2: 2}
    assert strength.validate([2], labels=labels, scale="helpsteer", justification=" ok ") == (
        [2],
        "ok",
    )
    for scale, text in (("llama2", "why"), ("helpsteer", "two\nlines"), ("helpsteer", "x" * 301)):
        with pytest.raises(strength.StrengthError) as caught:
            strength.validate([2], labels=labels, scale=scale, justification=text)
        assert caught.value.field == "justification"


ranks = st.lists(st.one_of(st.integers(1, 4), st.just("F")), min_size=2, max_size=5)


@given(labels=ranks, data=st.data())
def test_a_pairs_level_never_exceeds_the_scale_and_grows_with_distance(labels, data):
    items = dict(enumerate(labels, start=1))
    gaps = strength.gap_count(items)
    levels = data.draw(st.lists(st.integers(0, 3), min_size=gaps, max_size=gaps))
    assert strength.validate(levels, labels=items, scale="llama2")[0] == levels
    layers = strength.tiers(items)
    for i in range(len(layers)):
        for j in range(i + 1, len(layers)):
            level = strength.pair_level(items, levels, layers[i][0], layers[j][0], scale="llama2")
            assert 0 <= level <= 3
            if j + 1 < len(layers):  # one more gap never makes it smaller
                further = strength.pair_level(
                    items, levels, layers[i][0], layers[j + 1][0], scale="llama2"
                )
                assert further >= level


# --- stored, exported, trained on --------------------------------------------------------------


@pytest.fixture
def world(admin_user):
    campaign = CampaignFactory(
        completions_per_task=3, overlap=2, strength_scale="llama2", created_by=admin_user
    )
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    services.campaign_add_members(campaign=campaign, users=[alice, bob])
    make_tasks(campaign, 2)
    return {"campaign": campaign, "alice": alice, "bob": bob, "admin": admin_user}


def submit(client, assignment, ranks, **extra):
    ids = task_completion_ids(assignment.task)
    return client.post(
        f"/api/assignments/{assignment.pk}/ranking/",
        {
            "items": [{"completion": c, "rank": r} for c, r in zip(ids, ranks, strict=True)],
            "time_spent_ms": 1000,
            **extra,
        },
        format="json",
    )


@pytest.mark.django_db
def test_a_submit_carries_its_strength_checked_and_stored(world):
    assignment = services.task_assign_next(labeller=world["alice"], campaign=world["campaign"])
    client = client_for(world["alice"])
    missing = submit(client, assignment, [1, 2, 3])
    assert missing.status_code == 400 and "strength" in missing.json()["errors"]
    wrong = submit(client, assignment, [1, 2, 3], strength=[1, 9])
    assert wrong.status_code == 400 and "strength[1]" in wrong.json()["errors"]
    ok = submit(client, assignment, [1, 2, 3], strength=[3, 0])
    assert ok.status_code == 201 and ok.json()["strength"] == [3, 0]
    assert Ranking.objects.get().strength == [3, 0]
    assert submit(client, assignment, [1, 2, 3], strength=[3, 0]).status_code == 200
    assert submit(client, assignment, [1, 2, 3], strength=[2, 0]).status_code == 409


@pytest.mark.django_db
def test_pairs_carry_strength_and_margin_and_reach_the_reward_model(world):
    from training.exports import preference_pairs

    campaign = world["campaign"]
    for user, levels in ((world["alice"], [3, 0]), (world["bob"], [1, 2])):
        while assignment := services.task_assign_next(labeller=user, campaign=campaign):
            ids = task_completion_ids(assignment.task)
            services.ranking_submit(
                labeller=user,
                assignment=assignment,
                items=[{"completion": c, "rank": i + 1} for i, c in enumerate(ids)],
                time_spent_ms=10,
                strength=levels,
            )
    response = client_for(world["admin"]).get(f"/api/campaigns/{campaign.pk}/pairs/")
    lines = [json.loads(x) for x in b"".join(response.streaming_content).splitlines()]
    alice = [x for x in lines if x["labeller"] == world["alice"].pk]
    # first > second: 3; second > third: 0; first > third: 3 + 0 = 3
    assert sorted((x["strength"], x["margin"]) for x in alice) == sorted(
        [(0, 0.0), (3, 1.0), (3, 1.0)] * 2
    )
    bob = sorted(x["strength"] for x in lines if x["labeller"] == world["bob"].pk)
    assert bob == sorted([1, 2, 3] * 2)
    pairs = preference_pairs(campaign_ids=[campaign.pk])
    assert sorted(round(p.margin, 3) for p in pairs) == sorted(
        [0.0, 1.0, 1.0, 0.333, 0.667, 1.0] * 2
    )
    figures = client_for(world["admin"]).get(f"/api/campaigns/{campaign.pk}/agreement/").json()
    alpha = figures["strength_alpha"]
    assert alpha["level"] == "interval" and alpha["n"] == 6  # 2 tasks x 3 completion pairs
    assert alpha["value"] is not None and alpha["value"] < 1


@pytest.mark.django_db
def test_a_campaign_without_a_scale_refuses_a_strength(campaign, labeller):
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)
    response = submit(client_for(labeller), assignment, [1, 2, 3, 4], strength=[1, 1, 1])
    assert response.status_code == 400 and "strength" in response.json()["errors"]
