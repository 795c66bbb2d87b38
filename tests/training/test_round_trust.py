"""Rounds an admin can trust: one round at a time, the default policy of a campaign's first
round, the checks that hold a round for review, and generated campaigns that meet the import's
rules and open as drafts."""

from __future__ import annotations

import pytest

from annotation.errors import Conflict
from annotation.models import Completion
from tests.factories import CampaignFactory
from training import rounds, services
from training.jobs import generate, lifecycle
from training.jobs import reward_model as reward_model_kind
from training.jobs import round as round_kind
from training.ml.generation import Completion as Sampled
from training.models import ModelVersion, Round

pytestmark = pytest.mark.django_db


def test_a_second_whole_round_is_refused_while_one_is_unfinished(loop):
    first = lifecycle.job_create(
        "round", round_kind.Request(created_by=loop.admin, round=loop.round)
    )
    with pytest.raises(Conflict) as info:
        lifecycle.job_create("round", round_kind.Request(created_by=loop.admin, round=loop.round))
    assert info.value.code == "round_busy" and f"job #{first.pk}" in info.value.message
    # a standalone step on the same round is refused too: the round job's steps train it
    with pytest.raises(Conflict) as info:
        lifecycle.job_create(
            "reward_model",
            reward_model_kind.Request(created_by=loop.admin, round=loop.round),
        )
    assert info.value.code == "round_busy"

    lifecycle.job_cancel(job=first)
    again = lifecycle.job_create(
        "round", round_kind.Request(created_by=loop.admin, round=loop.round)
    )
    assert again.pk != first.pk


def test_a_campaigns_first_round_starts_from_the_policy_that_generated_it(loop):
    services.model_version_register(kind="policy", name="unrelated", path="/elsewhere")
    assert rounds.campaign_policy(loop.campaign) == loop.base  # every completion is the base's
    Completion.objects.filter(prompt__campaign=loop.campaign).update(model_version=None)
    assert rounds.campaign_policy(loop.campaign) is None  # imported, and no default model


def test_imported_completions_default_to_the_default_base_model(loop, settings):
    settings.DEFAULT_BASE_MODEL = loop.base.path
    assert rounds.campaign_policy(CampaignFactory()) == loop.base


def evaluation(delta_reward: float) -> dict:
    return {
        "policy_before": {"reward": 0.1, "kl_ref": 0.0, "examples": []},
        "policy_after": {"reward": 0.1 + delta_reward, "kl_ref": 0.2, "examples": []},
        "delta": {"reward": delta_reward},
    }


def reward_model(pairs: int, accuracy: float) -> ModelVersion:
    return services.model_version_register(
        kind="reward",
        name=f"rm-{pairs}",
        path="/rm",
        metrics={"counts/eval_pairs": pairs, "eval/accuracy": accuracy},
    )


@pytest.mark.parametrize(
    ("pairs", "delta", "warned"),
    [(12, 0.05, ["12 held-out pairs"]), (80, -0.28, ["lowered the reward"]), (80, 0.1, [])],
)
def test_a_round_is_held_for_review_when_a_check_fails(loop, pairs, delta, warned):
    Round.objects.filter(pk=loop.round.pk).update(eval_settings={})  # the defaults: 50, must rise
    rounds.round_record_reward_model(round_id=loop.round.pk, version=reward_model(pairs, 0.417))
    policy = services.model_version_register(kind="policy", name="p", path="/p")
    rnd = rounds.round_record_policy_update(
        round_id=loop.round.pk, version=policy, evaluation=evaluation(delta)
    )
    assert rnd.status == ("needs_review" if warned else "trained")
    assert len(rnd.evaluation["warnings"]) == len(warned)
    for text, warning in zip(warned, rnd.evaluation["warnings"], strict=True):
        assert text in warning
    report = rnd.evaluation["reward_model"]
    assert report["held_out_pairs"] == pairs and report["accuracy"] == 0.417
    low, high = report["accuracy_ci95"]
    assert low < 0.417 < high and (high - low) > (0.4 if pairs == 12 else 0.15)


def test_wilson_interval_matches_the_textbook_value():
    low, high = rounds.wilson_interval(0.5, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)


def sampled(texts: list[str]) -> list[Sampled]:
    return [
        Sampled(prompt_index=0, text=t, token_ids=[1] * max(len(t), 1), eos=True) for t in texts
    ]


def test_empty_and_duplicate_samples_are_drawn_again(monkeypatch):
    draws = iter(
        [
            [sampled(["a", "", "a"]), sampled(["b", "c", "d"])],  # first draw
            [sampled(["e", "a", "f"])],  # the bad row again: "e" and "f" replace the bad ones
        ]
    )
    monkeypatch.setattr("training.ml.generation.generate_completions", lambda *a, **k: next(draws))
    config = generate.SamplingConfig(num_completions=3)
    rows, left = generate.sample("model", ["p", "q"], config, should_stop=lambda: False)
    assert [c.text for c in rows[0]] == ["a", "e", "f"] and left == 0
    assert [c.text for c in rows[1]] == ["b", "c", "d"]


def test_tasks_still_bad_after_resampling_are_dropped_and_counted():
    assert generate._bad(sampled(["x", "", "y"])) == [1]
    assert generate._bad(sampled(["x", "y", "x"])) == [2]
    assert generate._bad(sampled(["x", "y", "z"])) == []
