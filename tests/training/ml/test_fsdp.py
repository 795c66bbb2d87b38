"""FSDP2 on 2 CPU processes (gloo) equals 1 process: the reward model, DPO and PPO, each run
through its launcher (torchrun, then ``python -m training.ml train-*`` on every rank) with
``shard: fsdp`` and once in this process on the same global batches.

Tolerance: fp32 on the CPU, the two runs differ only in the order of floating-point sums (each
process sums its share of a batch, then the shares are averaged): losses and metrics agree to
1e-4 relative, parameters to 1e-4 relative + 1e-5 absolute after every step of the run, scores of
the saved models to 1e-4. The sharded runs' directories are written by rank 0 from the gathered
full state dict and load with ``from_pretrained``.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from tests.helpers.preference_pairs import marker_pairs
from training.ml.config import DPOConfig, PPOConfig, RewardModelConfig
from training.ml.dpo import run_dpo
from training.ml.launch import (
    run_dpo_distributed,
    run_ppo_distributed,
    train_reward_model_distributed,
)
from training.ml.ppo import run_ppo
from training.ml.reward_model import NORMALIZATION_FILE, load_reward_model, train_reward_model

pytestmark = pytest.mark.slow

RTOL, ATOL = 1e-4, 1e-5

PROMPTS = [
    "Why does bread go stale?",
    [{"role": "user", "content": "How does a kettle know when to stop?"}],
    "Tell me about houseplants.",
    [{"role": "user", "content": "Why do we yawn?"}],
]


def _assert_same_weights(a_dir, b_dir, auto=AutoModelForCausalLM):
    a = auto.from_pretrained(a_dir).state_dict()
    b = auto.from_pretrained(b_dir).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=RTOL, atol=ATOL, msg=key)


def _assert_same_history(sharded, single, keys):
    assert len(sharded) == len(single)
    for two, one in zip(sharded, single, strict=True):
        for key in keys:
            assert two[key] == pytest.approx(one[key], rel=RTOL, abs=ATOL), key


# ---- reward model ------------------------------------------------------------------------------


def test_reward_model_sharded_on_two_processes_equals_one_process(tiny_model_dir, tmp_path):
    config = RewardModelConfig(
        num_epochs=1,
        learning_rate=1e-3,
        batch_size=8,
        micro_batch_size=3,  # uneven micro-batches: every rank still runs as many passes
        max_length=40,
        eval_fraction=0.2,
        device="cpu",
        gpus=2,
        shard="fsdp",
        gradient_checkpointing=True,
    )
    pairs = marker_pairs(30)
    progress = []
    sharded = train_reward_model_distributed(
        pairs,
        base_model=tiny_model_dir,
        output_dir=tmp_path / "fsdp",
        config=config,
        on_progress=lambda *report: progress.append(report),
    )
    single_progress = []
    single = train_reward_model(
        pairs,
        base_model=tiny_model_dir,
        output_dir=tmp_path / "one",
        config=config,  # gpus=2 but called in this process: the world of size 1
        on_progress=lambda *report: single_progress.append(report),
    )
    assert any("FSDP2 per decoder layer" in note for note in sharded.notes)
    assert sharded.steps == single.steps == 3
    _assert_same_history(
        [m for _, _, m in progress[:-1]],
        [m for _, _, m in single_progress[:-1]],
        ("reward/loss", "reward/grad_norm", "reward/accuracy"),
    )
    for key in ("eval/loss", "eval/accuracy", "reward/norm_offset", "reward/norm_scale"):
        assert sharded.metrics[key] == pytest.approx(single.metrics[key], rel=RTOL, abs=ATOL)
    _assert_same_weights(tmp_path / "fsdp", tmp_path / "one", AutoModelForSequenceClassification)
    texts = [("Q:", " a banana in the soup"), ("Q:", " a cat in the soup")]
    a = load_reward_model(tmp_path / "fsdp", device="cpu").score(texts)
    b = load_reward_model(tmp_path / "one", device="cpu").score(texts)
    assert a == pytest.approx(b, rel=RTOL, abs=ATOL)


# ---- DPO ---------------------------------------------------------------------------------------


def test_dpo_sharded_on_two_processes_equals_one_process(tiny_model_dir, tmp_path):
    config = DPOConfig(
        learning_rate=1e-3,
        batch_size=5,  # odd: one rank gets a weight-0 dummy pair
        max_prompt_tokens=24,
        max_completion_tokens=16,
        device="cpu",
        gpus=2,
        shard="fsdp",
    )
    pairs = marker_pairs(10)
    sharded = run_dpo_distributed(
        policy_dir=tiny_model_dir,
        reference_dir=None,
        pairs=pairs,
        output_dir=tmp_path / "fsdp",
        config=config,
    )
    single = run_dpo(
        policy_dir=tiny_model_dir,
        reference_dir=None,
        pairs=pairs,
        output_dir=tmp_path / "one",
        config=config,
    )
    assert sharded.steps == single.steps == 2
    _assert_same_history(
        sharded.history, single.history, ("dpo/loss", "dpo/margin", "dpo/grad_norm")
    )
    _assert_same_weights(tmp_path / "fsdp", tmp_path / "one")
    info = json.loads((tmp_path / "fsdp" / "dpo_run.json").read_text())
    assert "FSDP2" in info["placement"]


# ---- PPO ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def normalised_reward_model(tiny_model_dir, tmp_path_factory):
    """A reward model on the tiny base whose stored normalisation is not the identity (the
    critic's head is rescaled by it)."""
    out = tmp_path_factory.mktemp("rm") / "rm"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=1
    ).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    (out / NORMALIZATION_FILE).write_text(
        json.dumps({"offset": 0.3, "scale": 2.0, "source": "test", "num_samples": 8})
    )
    return out


def test_ppo_sharded_on_two_processes_equals_one_process(
    tiny_model_dir, normalised_reward_model, tmp_path
):
    config = PPOConfig(
        total_steps=2,
        rollout_batch_size=4,
        mini_batch_size=4,  # one minibatch: its gradient does not depend on how it is split
        ppo_epochs=2,
        forward_batch_size=2,  # each process's share (2) is whole chunks: the same samples
        max_new_tokens=6,
        learning_rate=1e-3,
        value_learning_rate=3e-4,
        temperature=1.0,
        missing_eos_penalty=None,
        device="cpu",
        gpus=2,
        shard="fsdp",
    )
    common = {
        "policy_dir": tiny_model_dir,
        "reference_dir": tiny_model_dir,
        "reward_model_dir": normalised_reward_model,
        "prompts": PROMPTS,
        "config": config,
    }
    sharded = run_ppo_distributed(output_dir=tmp_path / "fsdp", **common)
    single = run_ppo(output_dir=tmp_path / "one", **common)
    keys = (
        "ppo/reward_raw",
        "ppo/kl_ref",
        "ppo/response_length",
        "ppo/loss",
        "ppo/policy_loss",
        "ppo/value_loss",
        "ppo/approx_kl",
        "ppo/policy_grad_norm",
        "ppo/value_grad_norm",
        "ppo/entropy",
    )
    _assert_same_history(sharded.history, single.history, keys)
    assert any("FSDP2" in note for note in sharded.notes)
    _assert_same_weights(tmp_path / "fsdp", tmp_path / "one")
    # the sharded run's policy scores (its logits) as the single run's
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "fsdp")
    ids = tokenizer(["Why does bread go stale?"], return_tensors="pt")["input_ids"]
    logits = [
        AutoModelForCausalLM.from_pretrained(tmp_path / name)(input_ids=ids).logits
        for name in ("fsdp", "one")
    ]
    torch.testing.assert_close(logits[0], logits[1], rtol=RTOL, atol=ATOL)
