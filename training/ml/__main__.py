"""Command line for the ML code: ``python -m training.ml <command> ...``.

Commands:
    build-tiny     build (or reuse) the tiny local model, optionally pretrained on local docs
    train-reward   train a reward model from a JSONL file of preference pairs; sharded over
                   processes under ``torchrun --nproc_per_node N -m training.ml train-reward ...``
                   (see ``training.ml.launch``)
    train-dpo      DPO from a JSON file of keyword arguments (``training.ml.launch`` writes it)
    train-ppo      PPO from a JSON file of keyword arguments (``training.ml.launch`` writes it)
    plan           will a job fit? memory per GPU from the model's config, no weights loaded
    dpo            DPO on a pairs file (TRL's shapes; training.ml.data_commands)
    ppo            PPO against a reward model on a file of prompts
    generate       sample completions for a file of prompts, as the task import reads them

To add a command: write ``_add_<name>(subparsers)`` that registers a parser with
``set_defaults(run=<function taking the parsed args, returning an exit code>)`` and append it to
``COMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from training.ml.common import ProgressFn
from training.ml.config import RewardModelConfig
from training.ml.data_commands import COMMANDS as DATA_COMMANDS
from training.ml.data_commands import evaluate_fixed_pairs
from training.ml.pair_files import PairFileError, read_pairs
from training.ml.records import PreferencePair


def _printer(every: int) -> ProgressFn:
    def on_progress(step: int, total: int, metrics: dict[str, float]) -> None:
        if step % every == 0 or step == total:
            shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
            print(f"[{step}/{total}] {shown}", flush=True)

    return on_progress


# ---- build-tiny ------------------------------------------------------------------------------


def _run_build_tiny(args: argparse.Namespace) -> int:
    # torch: each subcommand imports only what it runs
    from training.ml.tiny import build_tiny_model, collect_pretrain_files

    pretrain_files = collect_pretrain_files(args.pretrain_dir) if args.pretrain_dir else None
    if args.pretrain_dir and not pretrain_files:
        print(f"no .html or .txt files under {args.pretrain_dir}", file=sys.stderr)
        return 2
    if args.pretrain_steps and not pretrain_files:
        print("--pretrain-steps needs --pretrain-dir", file=sys.stderr)
        return 2
    started = time.perf_counter()
    out = build_tiny_model(
        args.out,
        seed=args.seed,
        corpus_files=args.corpus_file,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        pretrain_files=pretrain_files,
        pretrain_steps=args.pretrain_steps if pretrain_files else 0,
        on_progress=_printer(every=50),
    )
    print(f"tiny model ready in {out} ({time.perf_counter() - started:.1f} s)")
    return 0


def _add_build_tiny(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("build-tiny", help="build the tiny local model (no hub needed)")
    p.add_argument("--out", type=Path, required=True, help="model directory to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=2048, help="upper bound of the BPE vocab")
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument(
        "--corpus-file",
        type=Path,
        action="append",
        default=[],
        help="extra .txt/.html file for the tokenizer (repeatable)",
    )
    p.add_argument(
        "--pretrain-dir",
        type=Path,
        help="directory of .html (preferred) or .txt files, e.g. /usr/share/doc/python3/html",
    )
    p.add_argument("--pretrain-steps", type=int, default=0, help="causal-LM steps (0: none)")
    p.set_defaults(run=_run_build_tiny)


# ---- train-reward ----------------------------------------------------------------------------


def _read_pairs(path: Path) -> list[PreferencePair]:
    """Pairs in TRL's shapes or the project's (``training.ml.pair_files``); a bad line raises
    ``PairFileError`` (``path:line: field: reason``, printed by :func:`main`)."""
    return read_pairs(path)


def _read_references(path: Path) -> list[tuple]:
    with path.open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [(row["prompt"], row["completion"]) for row in rows]


def _run_train_reward(args: argparse.Namespace) -> int:
    from training.ml.device import process_group  # torch: only for the subcommand that trains
    from training.ml.launch import progress_line, write_result
    from training.ml.reward_model import train_reward_model

    base = json.loads(args.config.read_text()) if args.config else {}
    overrides = {
        "num_epochs": args.epochs,
        "learning_rate": args.lr,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "eval_fraction": args.eval_fraction,
        "seed": args.seed,
        "device": args.device,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    config = RewardModelConfig.from_dict(base)

    def print_json(step: int, total: int, metrics: dict[str, float]) -> None:
        print(progress_line(step, total, metrics), flush=True)

    with process_group(config.device) as world:  # joins torchrun's group, if there is one
        result = train_reward_model(
            _read_pairs(args.pairs),
            base_model=args.base,
            output_dir=args.out,
            config=config,
            reference_samples=_read_references(args.reference) if args.reference else None,
            on_progress=print_json if args.progress == "json" else _printer(every=10),
            metadata=json.loads(args.metadata.read_text()) if args.metadata else None,
            check_replicas=args.check_replicas,
            checkpoint_dir=args.checkpoint_dir,
        )
    if not world.is_main:
        return 0
    fixed = evaluate_fixed_pairs(args.out, args.eval_pairs) if args.eval_pairs else {}
    if args.progress == "json" and fixed:
        print(json.dumps({"fixed_eval": fixed}), flush=True)
    if args.result:
        write_result(result, args.result)
    if args.progress == "text":
        summary = {"metrics": result.metrics, "counts": result.counts, "notes": result.notes}
        if args.eval_pairs:
            summary["metrics"] = {**summary["metrics"], **fixed}
        print(json.dumps(summary, indent=2))
    return 0


def _add_train_reward(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-reward",
        help="train a reward model on JSONL pairs",
        description="Pairs (JSONL, .gz or Parquet) in TRL's shapes: standard (prompt, chosen, "
        "rejected), conversational (message lists) or implicit prompt (chosen/rejected "
        "dialogues, as raw HH); optional prompt_id, weight, tie, round. Unset options keep "
        "the RewardModelConfig defaults.",
    )
    p.add_argument("--pairs", type=Path, required=True)
    p.add_argument(
        "--eval-pairs",
        type=Path,
        help="a fixed file of held-out pairs: the trained model's accuracy on it is reported "
        "(fixed_eval/accuracy) beside the split's own",
    )
    p.add_argument("--base", required=True, help="base model directory or hub id")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-length", type=int)
    p.add_argument("--eval-fraction", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument(
        "--config", type=Path, help="JSON file of RewardModelConfig fields (the options above win)"
    )
    p.add_argument("--reference", type=Path, help="JSONL of reference samples (prompt, completion)")
    p.add_argument("--metadata", type=Path, help="JSON object copied into reward_model.json")
    p.add_argument(
        "--progress",
        choices=("text", "json"),
        default="text",
        help="text: a line every 10 steps and a summary; json: one JSON object per step on "
        'stdout, {"step", "total", "metrics"} (rank 0 only), for a parent process to relay',
    )
    p.add_argument("--result", type=Path, help="rank 0 writes the result here as JSON")
    p.add_argument(
        "--check-replicas",
        action="store_true",
        help="debug: fail unless every rank ends with identical parameters",
    )
    p.add_argument("--checkpoint-dir", type=Path, help="save/resume the training state here")
    p.set_defaults(run=_run_train_reward)


# ---- train-dpo, train-ppo ------------------------------------------------------------------


def _run_policy_job(args: argparse.Namespace) -> int:
    """Run DPO or PPO with the keyword arguments in ``--job`` (what ``training.ml.launch``
    writes): every rank of a torchrun job runs this; rank 0 prints progress lines and writes
    the result."""
    from training.ml.config import DPOConfig, PPOConfig, config_from_dict
    from training.ml.device import process_group
    from training.ml.launch import pair_from_json, progress_line

    job = json.loads(args.job.read_text())

    def print_json(step: int, total: int, metrics: dict[str, float]) -> None:
        print(progress_line(step, total, metrics), flush=True)

    common = {"output_dir": args.out, "on_progress": print_json}
    if args.command == "train-dpo":
        from training.ml.dpo import run_dpo

        config = config_from_dict(DPOConfig, job.pop("config"))
        job["pairs"] = [pair_from_json(row) for row in job["pairs"]]
        with process_group(config.device) as world:
            result = run_dpo(config=config, **job, **common)
        summary = {"counts": result.counts}
    else:
        from training.ml.ppo import run_ppo

        config = config_from_dict(PPOConfig, job.pop("config"))
        with process_group(config.device) as world:
            result = run_ppo(config=config, **job, **common)
        summary = {"notes": result.notes}
    if world.is_main and args.result:
        data = {
            "steps": result.steps,
            "metrics": result.metrics,
            "history": result.history,
            **summary,
        }
        args.result.write_text(json.dumps(data, default=str))
    return 0


def _add_policy_jobs(subparsers: argparse._SubParsersAction) -> None:
    for name, what in (("train-dpo", "DPO"), ("train-ppo", "PPO")):
        p = subparsers.add_parser(
            name,
            help=f"{what} from a JSON file of keyword arguments (run under torchrun)",
            description=f"{what} with the keyword arguments of run_{what.lower()} in --job "
            '("config" an object of its config fields); progress as one JSON line per step.',
        )
        p.add_argument("--job", type=Path, required=True)
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--result", type=Path, help="rank 0 writes the result here as JSON")
        p.set_defaults(run=_run_policy_job)


# ---- plan ----------------------------------------------------------------------------------


def _add_plan(subparsers: argparse._SubParsersAction) -> None:
    from training.ml.preflight import add_plan_arguments, run_plan_command

    p = subparsers.add_parser(
        "plan",
        help="memory per GPU a job needs, from the model's config (no weights loaded)",
        description="Estimate the memory of a reward-model, DPO, PPO or generate job per GPU "
        "and say whether it fits, and what would make it fit.",
    )
    add_plan_arguments(p)
    p.set_defaults(run=run_plan_command)


COMMANDS = [
    _add_build_tiny,
    _add_train_reward,
    _add_policy_jobs,
    _add_plan,
    *DATA_COMMANDS,
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.ml", description=__doc__.split("\n")[0]
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(subparsers)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except PairFileError as exc:  # a bad line of an input file: where and why, no traceback
        print(str(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
