"""A run stopped after a checkpoint and resumed equals the uninterrupted run: nothing skipped,
nothing repeated (the same prompts and pairs in the same order, the same samples, the same
optimiser state), for PPO, DPO and the reward model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from tests.helpers.preference_pairs import marker_pairs
from training.ml.checkpoint import latest_checkpoint
from training.ml.common import TrainingCancelled
from training.ml.config import DPOConfig, PPOConfig, RewardModelConfig
from training.ml.dpo import run_dpo
from training.ml.ppo import run_ppo
from training.ml.reward_model import train_reward_model

PROMPTS = ["Why does bread go stale?", "Tell me about houseplants.", "Why do we yawn?"]


def _stop_after(step: int):
    """``on_progress`` and ``should_stop`` that stop the run once ``step`` has been reported
    (as a worker that dies after its checkpoint: the state on disk is all that is left)."""
    seen: list[int] = []
    return (lambda s, total, metrics: seen.append(s)), (lambda: bool(seen) and seen[-1] >= step)


def _same_weights(a, b, auto=AutoModelForCausalLM):
    a, b = auto.from_pretrained(a).state_dict(), auto.from_pretrained(b).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_a_resumed_ppo_run_equals_the_uninterrupted_one(tiny_model_dir, tmp_path):
    config = PPOConfig(
        total_steps=4,
        rollout_batch_size=2,  # 3 prompts: batches cross epoch boundaries
        mini_batch_size=1,
        ppo_epochs=2,
        max_new_tokens=5,
        learning_rate=1e-3,
        temperature=1.0,
        missing_eos_penalty=None,
        value_init="zero",
        checkpoint_every=2,
        device="cpu",
    )
    common = {
        "policy_dir": tiny_model_dir,
        "reference_dir": None,
        "reward_model_dir": None,
        "prompts": PROMPTS,
        "config": config,
        "reward_fn": lambda prompts, completions: [len(c) / 10 for c in completions],
    }
    whole = run_ppo(output_dir=tmp_path / "whole", **common)

    on_progress, should_stop = _stop_after(2)
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(TrainingCancelled):
        run_ppo(
            output_dir=tmp_path / "resumed",
            on_progress=on_progress,
            should_stop=should_stop,
            checkpoint_dir=checkpoints,
            **common,
        )
    assert latest_checkpoint(checkpoints).name == "step-000002"
    assert not (tmp_path / "resumed").exists()
    resumed_progress = []
    resumed = run_ppo(
        output_dir=tmp_path / "resumed",
        checkpoint_dir=checkpoints,
        on_progress=lambda step, total, metrics: resumed_progress.append(step),
        **common,
    )
    assert resumed_progress == [3, 4]  # steps 1-2 were not run again
    assert any("resumed from the checkpoint of step 2" in note for note in resumed.notes)
    assert len(resumed.history) == len(whole.history) == 4
    for one, two in zip(whole.history, resumed.history, strict=True):
        for key in ("ppo/reward_raw", "ppo/kl_ref", "ppo/loss", "ppo/beta", "ppo/response_length"):
            assert two[key] == one[key], key
    _same_weights(tmp_path / "whole", tmp_path / "resumed")
    assert not checkpoints.exists()  # removed once the model is published


def test_a_resumed_dpo_run_equals_the_uninterrupted_one(tiny_model_dir, tmp_path):
    config = DPOConfig(
        learning_rate=1e-3, batch_size=3, num_epochs=2, checkpoint_every=2, device="cpu"
    )
    pairs = marker_pairs(7)
    whole = run_dpo(
        policy_dir=tiny_model_dir,
        reference_dir=None,
        pairs=pairs,
        output_dir=tmp_path / "whole",
        config=config,
    )
    on_progress, should_stop = _stop_after(4)
    common = {"policy_dir": tiny_model_dir, "reference_dir": None, "pairs": pairs}
    with pytest.raises(TrainingCancelled):
        run_dpo(
            output_dir=tmp_path / "resumed",
            config=config,
            on_progress=on_progress,
            should_stop=should_stop,
            checkpoint_dir=tmp_path / "ck",
            **common,
        )
    resumed = run_dpo(
        output_dir=tmp_path / "resumed", config=config, checkpoint_dir=tmp_path / "ck", **common
    )
    assert [m["dpo/loss"] for m in resumed.history] == [m["dpo/loss"] for m in whole.history]
    _same_weights(tmp_path / "whole", tmp_path / "resumed")


def test_a_resumed_reward_model_equals_the_uninterrupted_one(tiny_model_dir, tmp_path):
    config = RewardModelConfig(
        learning_rate=1e-3,
        batch_size=4,
        num_epochs=2,
        max_length=32,
        eval_fraction=0.0,
        checkpoint_every=3,
        device="cpu",
    )
    pairs = marker_pairs(12)
    whole = train_reward_model(
        pairs, base_model=tiny_model_dir, output_dir=tmp_path / "whole", config=config
    )
    on_progress, should_stop = _stop_after(3)
    with pytest.raises(TrainingCancelled):
        train_reward_model(
            pairs,
            base_model=tiny_model_dir,
            output_dir=tmp_path / "resumed",
            config=config,
            on_progress=on_progress,
            should_stop=should_stop,
            checkpoint_dir=tmp_path / "ck",
        )
    resumed = train_reward_model(
        pairs,
        base_model=tiny_model_dir,
        output_dir=tmp_path / "resumed",
        config=config,
        checkpoint_dir=tmp_path / "ck",
    )
    assert resumed.steps == whole.steps == 6
    assert resumed.metrics["reward/loss"] == whole.metrics["reward/loss"]
    _same_weights(tmp_path / "whole", tmp_path / "resumed", AutoModelForSequenceClassification)
