"""Reward-model benchmark on real human preferences (Anthropic HH-RLHF, harmless-base test split).

Trains the tiny local model (built on the fly, cached) and any model directory given with
``--model`` on a slice of the 2,312 pairs in
``../shared/data/anthropic-hh-rlhf/harmless-base-test.jsonl.gz`` and reports, per model: held-out
accuracy (strict ``>``), score-tie rate, training pairs per second, truncation counts, device.

Each record holds two whole dialogues sharing the prefix up to the final ``"\\n\\nAssistant:"``;
that prefix is the prompt (prompt_id = the prompt text, so repeated prompts never straddle the
split) and the rest is the completion. Records whose prefixes differ are skipped and counted.

Reference figures: GPT-2-large reaches 0.737 on the full harmless split, below 0.60 usually means
a bug -- but a 2-layer, 64-wide model trained from scratch on a few hundred pairs is expected near
chance (0.5); the bench measures the pipeline and throughput, not the tiny model's quality.

Usage (CPU here, CUDA elsewhere):
    python bench/bench_reward_model.py --pairs 512 --epochs 1 --max-length 256
    python bench/bench_reward_model.py --model /models/gpt2 --lr 1e-5 --device cuda --pairs 2312
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.ml.config import RewardModelConfig  # noqa: E402
from training.ml.records import PreferencePair  # noqa: E402
from training.ml.reward_model import train_reward_model  # noqa: E402
from training.ml.tiny import build_tiny_model  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "anthropic-hh-rlhf" / "harmless-base-test.jsonl.gz"
MARKER = "\n\nAssistant:"


def load_hh_pairs(path: Path, limit: int | None = None) -> tuple[list[PreferencePair], int]:
    """Parse HH records into pairs (prompt = shared prefix through the last Assistant marker).

    Returns (pairs, number of records skipped because chosen and rejected differ before it).
    """
    pairs, skipped = [], 0
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            chosen, rejected = row["chosen"], row["rejected"]
            cut_c, cut_r = chosen.rfind(MARKER), rejected.rfind(MARKER)
            if cut_c < 0 or cut_r < 0:
                skipped += 1
                continue
            prompt = chosen[: cut_c + len(MARKER)]
            if rejected[: cut_r + len(MARKER)] != prompt:
                skipped += 1
                continue
            pairs.append(
                PreferencePair(
                    prompt=prompt,
                    chosen=chosen[cut_c + len(MARKER) :],
                    rejected=rejected[cut_r + len(MARKER) :],
                    prompt_id=prompt,
                )
            )
            if limit is not None and len(pairs) >= limit:
                break
    return pairs, skipped


def bench_one(name: str, model_dir: Path, pairs: list[PreferencePair], args, lr: float) -> dict:
    config = RewardModelConfig(
        num_epochs=args.epochs,
        learning_rate=lr,
        batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size,
        max_length=args.max_length,
        eval_fraction=args.eval_fraction,
        seed=args.seed,
        device=args.device,
    )
    stamps: list[tuple[int, float]] = []

    def on_progress(step: int, total: int, metrics: dict[str, float]) -> None:
        if "reward/lr" in metrics:  # a training step (the final call carries eval metrics)
            stamps.append((step, time.perf_counter()))
        if step % 10 == 0 and "reward/loss" in metrics and "reward/lr" in metrics:
            print(f"  [{name}] step {step}/{total} loss {metrics['reward/loss']:.4f}", flush=True)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-rm-") as tmp:
        result = train_reward_model(
            pairs,
            base_model=str(model_dir),
            output_dir=Path(tmp) / "rm",
            config=config,
            on_progress=on_progress,
        )
    wall = time.perf_counter() - started
    train_pairs = result.counts["train_pairs"]
    # throughput between the first and last step callbacks (excludes loading and tokenising)
    if len(stamps) >= 2:
        steps_timed = stamps[-1][0] - stamps[0][0]
        pairs_timed = steps_timed * min(args.batch_size, train_pairs)
        pairs_per_s = pairs_timed / (stamps[-1][1] - stamps[0][1])
    else:
        pairs_per_s = train_pairs * args.epochs / wall
    m = result.metrics
    return {
        "model": name,
        "device": result.device,
        "train_pairs": train_pairs,
        "eval_pairs": result.counts["eval_pairs"],
        "epochs": args.epochs,
        "lr": lr,
        "max_length": args.max_length,
        "eval_accuracy": m.get("eval/accuracy"),
        "eval_tie_rate": m.get("eval/tie_rate"),
        "eval_loss": m.get("eval/loss"),
        "train_loss_last_epoch": m.get("reward/loss"),
        "train_pairs_per_s": round(pairs_per_s, 2),
        "wall_s": round(wall, 1),
        "prompt_truncated": result.counts["train_prompt_truncated"]
        + result.counts["eval_prompt_truncated"],
        "completion_truncated": result.counts["train_completion_truncated"]
        + result.counts["eval_completion_truncated"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pairs", type=int, default=512, help="slice size (first N records)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--micro-batch-size", type=int, default=0)
    parser.add_argument("--eval-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument(
        "--model", type=Path, action="append", default=[], help="extra model dir (repeatable)"
    )
    parser.add_argument("--lr", type=float, default=1e-5, help="learning rate for --model dirs")
    parser.add_argument("--tiny-lr", type=float, default=1e-3, help="learning rate, tiny model")
    parser.add_argument("--no-tiny", action="store_true", help="skip the tiny model")
    parser.add_argument(
        "--tiny-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "rlhf-bench-tiny",
        help="where the tiny model is built (cached)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    pairs, skipped = load_hh_pairs(args.data, limit=args.pairs)
    print(
        f"{len(pairs)} pairs from {args.data.name} ({skipped} skipped: prefixes differ); "
        f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}",
        flush=True,
    )
    runs: list[tuple[str, Path, float]] = []
    if not args.no_tiny:
        runs.append(("tiny", build_tiny_model(args.tiny_dir), args.tiny_lr))
    runs += [(str(path), path, args.lr) for path in args.model]
    results = [bench_one(name, path, pairs, args, lr) for name, path, lr in runs]

    print()
    header = ("model", "device", "train", "eval", "acc", "tie", "pairs/s", "wall_s", "trunc p/c")
    print("{:<24} {:<28} {:>6} {:>5} {:>6} {:>5} {:>8} {:>7} {:>10}".format(*header))
    for r in results:
        print(
            f"{r['model'][-24:]:<24} {r['device'][:28]:<28} {r['train_pairs']:>6} "
            f"{r['eval_pairs']:>5} {r['eval_accuracy']:>6.3f} {r['eval_tie_rate']:>5.3f} "
            f"{r['train_pairs_per_s']:>8.1f} {r['wall_s']:>7.1f} "
            f"{r['prompt_truncated']:>5}/{r['completion_truncated']}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
