"""The commands of ``python -m training.ml`` that train and generate from data files (TRL's
shapes and the project's exports, read by :mod:`training.ml.pair_files`): ``dpo``, ``ppo``,
``generate``, and the fixed evaluation file of ``train-reward`` (``--eval-pairs``).

``train-dpo`` and ``train-ppo`` (in ``__main__``) run what ``training.ml.launch`` wrote for a
job; these take files a person has. Configs: a JSON file of the config class's fields
(``--config``), then the few options given on the command line. Torch is imported only by the
command that runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from training.ml.pair_files import read_pairs, read_prompts


def _config(cls_name: str, args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
    from training.ml import config as configs

    data = json.loads(args.config.read_text()) if args.config else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return configs.config_from_dict(getattr(configs, cls_name), data)


def _printer(step: int, total: int, metrics: dict[str, float]) -> None:
    if step == total or step % 10 == 0:
        shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
        print(f"[{step}/{total}] {shown}", flush=True)


def evaluate_fixed_pairs(model_dir: str | Path, pairs_path: str | Path) -> dict[str, float]:
    """Accuracy of a trained reward model on a fixed file of pairs (ties left out; a tied score
    counts as wrong), with its size: ``{"fixed_eval/accuracy", "fixed_eval/pairs"}``."""
    from training.ml.reward_model import load_reward_model

    pairs = [p for p in read_pairs(pairs_path) if not p.tie]
    model = load_reward_model(model_dir)
    chosen = model.raw_scores([(p.prompt, p.chosen) for p in pairs])
    rejected = model.raw_scores([(p.prompt, p.rejected) for p in pairs])
    right = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    return {"fixed_eval/accuracy": right / len(pairs), "fixed_eval/pairs": float(len(pairs))}


# ---- dpo --------------------------------------------------------------------------------------


def _run_dpo(args: argparse.Namespace) -> int:
    from training.ml.dpo import run_dpo

    pairs = read_pairs(args.pairs)
    config = _config(
        "DPOConfig",
        args,
        {
            "beta": args.beta,
            "learning_rate": args.lr,
            "num_epochs": args.epochs,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "device": args.device,
        },
    )
    result = run_dpo(
        policy_dir=args.policy,
        reference_dir=args.reference,
        pairs=pairs,
        output_dir=args.out,
        config=config,
        on_progress=_printer,
    )
    print(json.dumps({"steps": result.steps, "metrics": result.metrics}, indent=2, default=str))
    return 0


def add_dpo(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dpo",
        help="DPO on a pairs file (standard, conversational or implicit-prompt JSONL/Parquet)",
        description="Direct preference optimisation of --policy on the pairs of --pairs "
        "(training.ml.pair_files says which shapes), against --reference (default: the policy).",
    )
    p.add_argument("--pairs", type=Path, required=True)
    p.add_argument("--policy", required=True, help="policy model directory or hub id")
    p.add_argument("--reference", help="KL reference (default: the starting policy)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--config", type=Path, help="JSON file of DPOConfig fields")
    p.add_argument("--beta", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device")
    p.set_defaults(run=_run_dpo)


# ---- ppo --------------------------------------------------------------------------------------


def _run_ppo(args: argparse.Namespace) -> int:
    from training.ml.ppo import run_ppo

    prompts = read_prompts(args.prompts)
    config = _config(
        "PPOConfig",
        args,
        {
            "total_steps": args.steps,
            "learning_rate": args.lr,
            "max_new_tokens": args.max_new_tokens,
            "seed": args.seed,
            "device": args.device,
        },
    )
    result = run_ppo(
        policy_dir=args.policy,
        reference_dir=args.reference,
        reward_model_dir=args.reward_model,
        prompts=prompts,
        output_dir=args.out,
        config=config,
        on_progress=_printer,
    )
    print(json.dumps({"steps": result.steps, "metrics": result.metrics}, indent=2, default=str))
    return 0


def add_ppo(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ppo",
        help="PPO of a policy against a reward model, on a file of prompts",
        description="Prompts: JSONL/Parquet of {prompt} (text or messages) or {messages}, or a "
        "pairs file (its distinct prompts).",
    )
    p.add_argument("--prompts", type=Path, required=True)
    p.add_argument("--policy", required=True)
    p.add_argument("--reward-model", required=True)
    p.add_argument("--reference", help="KL reference (default: the starting policy)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--config", type=Path, help="JSON file of PPOConfig fields")
    p.add_argument("--steps", type=int, help="total_steps")
    p.add_argument("--lr", type=float)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device")
    p.set_defaults(run=_run_ppo)


# ---- generate ---------------------------------------------------------------------------------


def _run_generate(args: argparse.Namespace) -> int:
    from training.ml.generation import generate_completions

    prompts = read_prompts(args.prompts)
    config = _config(
        "SamplingConfig",
        args,
        {
            "num_completions": args.num_completions,
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "seed": args.seed,
            "device": args.device,
        },
    )
    outputs = generate_completions(args.model, prompts, config)
    out = sys.stdout if args.out is None else args.out.open("w", encoding="utf-8")
    try:
        for prompt, completions in zip(prompts, outputs, strict=True):
            texts = [getattr(c, "text", c) for c in completions]
            line = {"prompt": prompt} if isinstance(prompt, str) else {"messages": prompt}
            line["completions"] = [{"text": t, "source": str(args.model)} for t in texts]
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def add_generate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="sample completions for a file of prompts (JSONL the task import reads)",
        description="Writes one line per prompt: {prompt, completions: [{text, source}]}; "
        "with N = --num-completions that is the task import's format.",
    )
    p.add_argument("--prompts", type=Path, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", type=Path, help="JSONL to write (default: stdout)")
    p.add_argument("--config", type=Path, help="JSON file of SamplingConfig fields")
    p.add_argument("--num-completions", type=int)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device")
    p.set_defaults(run=_run_generate)


COMMANDS = [add_dpo, add_ppo, add_generate]
