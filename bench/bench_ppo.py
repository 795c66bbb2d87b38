"""Benchmark of one PPO step: rollout tokens per second and update seconds.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_ppo.py [--device cuda] [--batch-size 16]
        [--max-new-tokens 32] [--steps 3] [--model-dir DIR] [--reward-model-dir DIR] [--lora]

By default the policy and the reference are the tiny local model (``training.ml.tiny``, built on
first use under ``var/bench/``) and the reward model is the same network with a fresh scalar head.
The first step is a warm-up; the figures are medians over the ``--steps`` that follow:

* rollout tokens/s: response tokens sampled (up to and including EOS) per second of ``generate``;
* rollout seconds: sampling + reward scoring + the no-grad log-prob/value passes;
* update seconds: ``ppo_epochs`` passes of minibatch forward/backward/Adam steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from training.ml.config import PPOConfig
from training.ml.device import device_name, pick_device
from training.ml.ppo import run_ppo
from training.ml.tiny import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]

PROMPTS = [
    "Why does bread go stale?",
    [{"role": "user", "content": "How does a kettle know when to stop?"}],
    "Explain why we yawn.",
    [{"role": "user", "content": "How do I keep a houseplant alive?"}],
]


def make_reward_model(model_dir: Path, out: Path) -> Path:
    """The model's backbone with a new scalar head: a stand-in reward model of the same size."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def parameter_count(model_dir: Path) -> int:
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--model-dir", type=Path, help="policy/reference (default: tiny model)")
    parser.add_argument("--reward-model-dir", type=Path, help="default: policy + fresh head")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per rollout")
    parser.add_argument("--mini-batch-size", type=int, default=8)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="measured steps after 1 warm-up")
    parser.add_argument("--lora", action="store_true", help="LoRA policy, reference = adapter off")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = pick_device(args.device)
    model_dir = args.model_dir or build_tiny_model(ROOT / "var" / "bench" / "tiny", seed=0)
    config = PPOConfig(
        seed=args.seed,
        total_steps=1 + args.steps,
        rollout_batch_size=args.batch_size,
        mini_batch_size=args.mini_batch_size,
        ppo_epochs=args.ppo_epochs,
        max_new_tokens=args.max_new_tokens,
        forward_batch_size=args.batch_size,
        temperature=1.0,
        learning_rate=1e-5,
        use_lora=args.lora,
        value_init="zero" if args.lora else "reward_model",
        device=str(device),
    )
    history: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        reward_dir = args.reward_model_dir or make_reward_model(model_dir, Path(tmp) / "rm")
        run_ppo(
            policy_dir=model_dir,
            reference_dir=model_dir,
            reward_model_dir=reward_dir,
            prompts=PROMPTS * (args.batch_size // len(PROMPTS) + 1),
            output_dir=Path(tmp) / "policy",
            config=config,
            on_progress=lambda step, total, metrics: history.append(metrics),
        )
    measured = history[1:]

    def median(key: str) -> float:
        return statistics.median(m[key] for m in measured)

    figures = {
        "device": device_name(device),
        "model_dir": str(model_dir),
        "parameters": parameter_count(model_dir),
        "episodes_per_step": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "mean_response_length": median("ppo/response_length"),
        "rollout_tokens_per_s": round(median("ppo/rollout_tokens_per_s"), 1),
        "rollout_seconds": round(median("ppo/rollout_seconds"), 4),
        "update_seconds": round(median("ppo/update_seconds"), 4),
        "step_seconds": round(median("ppo/step_seconds"), 4),
        "measured_steps": len(measured),
        "lora": args.lora,
    }
    print(f"device: {figures['device']}")
    print(
        f"rollout: {figures['rollout_tokens_per_s']:.0f} tokens/s "
        f"({figures['rollout_seconds']:.3f} s per rollout of {args.batch_size} x "
        f"{figures['mean_response_length']:.1f} tokens); update: {figures['update_seconds']:.3f} s "
        f"({args.ppo_epochs} epochs x {-(-args.batch_size // args.mini_batch_size)} minibatches)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
