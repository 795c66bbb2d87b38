"""DPO: the loss against hand-computed values, then one real step on the tiny model."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch

from training.ml.common import TrainingCancelled, load_tokenizer
from training.ml.config import DPOConfig
from training.ml.dpo import (
    dpo_loss,
    encode_pairs,
    pair_logprobs,
    run_dpo,
    weighted_mean,
)
from training.ml.policy import load_causal_lm


def test_dpo_loss_matches_hand_computation():
    # Pair 0, beta = 0.1: chosen log-ratio -1 - (-1.5) = 0.5, rejected -2 - (-1.5) = -0.5
    #   logit = 0.1 * (0.5 - (-0.5)) = 0.1;  loss = -log sigmoid(0.1) = log(1 + e^-0.1) = 0.644397
    # Pair 1: chosen log-ratio -3 - (-2) = -1, rejected -1 - (-2) = 1
    #   logit = 0.1 * (-1 - 1) = -0.2;       loss = log(1 + e^0.2) = 0.798139
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        torch.tensor([-1.0, -3.0]),
        torch.tensor([-2.0, -1.0]),
        torch.tensor([-1.5, -2.0]),
        torch.tensor([-1.5, -2.0]),
        beta=0.1,
    )
    torch.testing.assert_close(
        losses, torch.tensor([math.log1p(math.exp(-0.1)), math.log1p(math.exp(0.2))])
    )
    torch.testing.assert_close(chosen_rewards, torch.tensor([0.05, -0.1]))
    torch.testing.assert_close(rejected_rewards, torch.tensor([-0.05, 0.1]))


def test_dpo_loss_is_log_2_when_policy_equals_reference():
    logps = torch.tensor([-4.0, -7.0])
    losses, _, _ = dpo_loss(logps, logps + 1, logps, logps + 1, beta=0.5)
    torch.testing.assert_close(losses, torch.full((2,), math.log(2)))


def test_the_batch_loss_weighs_each_pair_by_its_weight():
    losses = torch.tensor([1.0, 4.0, 10.0])
    assert weighted_mean(losses, torch.tensor([1.0, 1.0, 0.0])).item() == pytest.approx(2.5)
    assert weighted_mean(losses, torch.tensor([2.0, 1.0, 1.0])).item() == pytest.approx(4.0)
    assert weighted_mean(losses, torch.zeros(3)).item() == 0.0


@dataclass(frozen=True)
class Pair:
    prompt: object
    chosen: str
    rejected: str
    tie: bool = False
    weight: float = 1.0


PAIRS = [
    Pair("Why does bread go stale?", " The starch lines up and squeezes out water.", " Cheese."),
    Pair([{"role": "user", "content": "Why do we yawn?"}], "Nobody is sure.", "Bread."),
    Pair("Hello", "a", "b", tie=True),
]


def _loss_on(model_dir, reference_dir, pairs, beta):
    tokenizer = load_tokenizer(model_dir, padding_side="left")
    encoded, _ = encode_pairs(tokenizer, pairs, DPOConfig())
    device = torch.device("cpu")
    with torch.no_grad():
        pc, pr = pair_logprobs(
            load_causal_lm(model_dir), encoded, pad_token_id=tokenizer.pad_token_id, device=device
        )
        rc, rr = pair_logprobs(
            load_causal_lm(reference_dir),
            encoded,
            pad_token_id=tokenizer.pad_token_id,
            device=device,
        )
    return float(dpo_loss(pc, pr, rc, rr, beta)[0].mean())


def test_one_dpo_step_lowers_the_loss_on_the_training_pairs(tiny_model_dir, tmp_path):
    config = DPOConfig(beta=0.5, learning_rate=1e-3, batch_size=2, device="cpu")
    progress = []

    result = run_dpo(
        policy_dir=tiny_model_dir,
        reference_dir=tiny_model_dir,
        pairs=PAIRS,
        output_dir=tmp_path / "policy",
        config=config,
        on_progress=lambda *args: progress.append(args),
    )

    assert result.steps == 1 and result.counts == {"pairs": 2, "ties_skipped": 1, "truncated": 0}
    (step, total, metrics) = progress[0]
    assert (step, total) == (1, 1)
    assert metrics["dpo/loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]
    assert json.loads((tmp_path / "policy" / "dpo_run.json").read_text())["steps"] == 1
    after = _loss_on(tmp_path / "policy", tiny_model_dir, PAIRS[:2], beta=0.5)
    assert after < math.log(2) - 1e-3


def test_cancelled_dpo_leaves_no_directory(tiny_model_dir, tmp_path):
    with pytest.raises(TrainingCancelled):
        run_dpo(
            policy_dir=tiny_model_dir,
            reference_dir=None,
            pairs=PAIRS,
            output_dir=tmp_path / "policy",
            config=DPOConfig(device="cpu"),
            should_stop=lambda: True,
        )
    assert list(tmp_path.iterdir()) == []


def test_pair_weights_are_encoded_unless_use_weights_is_off(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir, padding_side="left")
    pairs = [Pair("Why?", "Because.", "No.", weight=0.25), Pair("How?", "Slowly.", "Eh.")]
    encoded, _ = encode_pairs(tokenizer, pairs, DPOConfig())
    assert [pair.weight for pair in encoded] == [0.25, 1.0]
    encoded, _ = encode_pairs(tokenizer, pairs, DPOConfig(use_weights=False))
    assert [pair.weight for pair in encoded] == [1.0, 1.0]


def test_a_pair_of_weight_zero_teaches_the_policy_nothing(tiny_model_dir, tmp_path):
    """Trained on [a (weight 1), b (weight 0)] in one batch, the policy ends where training on
    a alone takes it."""
    from transformers import AutoModelForCausalLM

    config = DPOConfig(beta=0.5, learning_rate=1e-3, batch_size=2, device="cpu")
    a = PAIRS[0]
    b = Pair(PAIRS[1].prompt, PAIRS[1].chosen, PAIRS[1].rejected, weight=0.0)
    weights = {}
    for name, pairs in {"both": [a, b], "alone": [a]}.items():
        run_dpo(
            policy_dir=tiny_model_dir,
            reference_dir=tiny_model_dir,
            pairs=pairs,
            output_dir=tmp_path / name,
            config=config,
        )
        weights[name] = AutoModelForCausalLM.from_pretrained(tmp_path / name).state_dict()
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.equal(before[k], weights["alone"][k]) for k in before)  # it learned
    for key, value in weights["alone"].items():
        torch.testing.assert_close(weights["both"][key], value, rtol=1e-4, atol=1e-6)


def test_lora_dpo_uses_the_policy_with_its_adapter_off_as_reference(tiny_model_dir, tmp_path):
    config = DPOConfig(
        beta=0.5,
        learning_rate=1e-2,
        batch_size=2,
        device="cpu",
        use_lora=True,
        lora_r=4,
        gradient_checkpointing=True,
    )
    result = run_dpo(
        policy_dir=tiny_model_dir,
        reference_dir=None,
        pairs=PAIRS,
        output_dir=tmp_path / "policy",
        config=config,
    )
    # the adapter starts at zero, so the first step's policy is its reference: loss log 2
    assert result.history[0]["dpo/loss"] == pytest.approx(math.log(2), abs=1e-5)
    info = json.loads((tmp_path / "policy" / "dpo_run.json").read_text())
    assert info["reference"] == "policy with its LoRA adapter off"
    assert not (tmp_path / "policy" / "adapter_config.json").exists()  # merged
    after = _loss_on(tmp_path / "policy", tiny_model_dir, PAIRS[:2], beta=0.5)
    assert after < math.log(2) - 1e-3
