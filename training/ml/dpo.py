"""DPO: a policy update straight from preference pairs, no reward model (Rafailov et al. 2023).

    L = -log sigmoid(β·[log πθ(y_w|x) - log π_ref(y_w|x)] - β·[log πθ(y_l|x) - log π_ref(y_l|x)])

``y_w`` is the chosen completion, ``y_l`` the rejected one; ``log π(y|x)`` is the sum of the
completion tokens' log-probs (EOS included) given the prompt. The reference log-probs never change,
so they are computed once, before training, and the reference model is freed. Sequences are
``[left-padded prompt | right-padded completion + EOS]`` with position ids from the attention mask,
as in PPO (``training.ml.policy``). Pairs marked as ties carry no preference and are skipped.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from training.ml import device as device_lib
from training.ml.common import (
    ProgressFn,
    StopFn,
    check_stop,
    load_tokenizer,
    publish_dir,
    staging_dir_for,
)
from training.ml.config import DPOConfig
from training.ml.policy import (
    Prompt,
    build_query_response_batch,
    encode_prompt,
    encode_response,
    load_causal_lm,
    provenance,
    sequence_logprobs,
)


class PairLike(Protocol):
    """Anything with ``.prompt``, ``.chosen`` and ``.rejected`` (e.g. ``data.PreferencePair``);
    optional ``.weight`` (default 1) and ``.tie`` (default False) are honoured."""

    prompt: Prompt
    chosen: str
    rejected: str


@dataclass
class DPOResult:
    """What :func:`run_dpo` returns."""

    output_dir: Path
    """the directory holding the new policy"""
    steps: int
    """optimiser steps taken"""
    metrics: dict[str, float]
    """metrics of the last step"""
    counts: dict[str, int] = field(default_factory=dict)
    """pairs used, ties skipped, truncations"""
    history: list[dict[str, float]] = field(default_factory=list)
    """metrics of every step"""


# --- algorithm ----------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses and implicit rewards ``β·(log πθ - log π_ref)`` of both completions.

    All inputs (N,) sequence log-probs; returns ``(losses, chosen_rewards, rejected_rewards)``,
    the rewards detached.
    """
    chosen_logratio = policy_chosen_logps - reference_chosen_logps
    rejected_logratio = policy_rejected_logps - reference_rejected_logps
    losses = -F.logsigmoid(beta * (chosen_logratio - rejected_logratio))
    return losses, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


def weighted_mean(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The batch loss: per-pair losses averaged with the pairs' weights (e.g. labeller
    agreement), so a pair of weight 0 contributes nothing; 0 for a batch of weight 0."""
    return (losses * weights).sum() / weights.sum().clamp(min=1e-8)


# --- plumbing: encoding and log-probs -----------------------------------------------------------


@dataclass(frozen=True)
class EncodedDPOPair:
    """Token ids of one pair."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    weight: float
    truncated: bool


def encode_pairs(
    tokenizer: Any, pairs: Sequence[PairLike], config: DPOConfig
) -> tuple[list[EncodedDPOPair], dict[str, int]]:
    """Tokenise the pairs (ties skipped); returns them with counts of what happened."""
    encoded: list[EncodedDPOPair] = []
    counts = {"pairs": 0, "ties_skipped": 0, "truncated": 0}
    for pair in pairs:
        if getattr(pair, "tie", False):
            counts["ties_skipped"] += 1
            continue
        prompt = encode_prompt(tokenizer, pair.prompt)
        chosen = encode_response(tokenizer, pair.chosen)
        rejected = encode_response(tokenizer, pair.rejected)
        limit = config.max_completion_tokens
        truncated = (
            len(prompt) > config.max_prompt_tokens or len(chosen) > limit or len(rejected) > limit
        )
        weight = float(getattr(pair, "weight", 1.0)) if config.use_weights else 1.0
        encoded.append(
            EncodedDPOPair(
                prompt[-config.max_prompt_tokens :],
                chosen[:limit],
                rejected[:limit],
                weight,
                truncated,
            )
        )
        counts["pairs"] += 1
        counts["truncated"] += truncated
    return encoded, counts


def pair_logprobs(
    model: torch.nn.Module,
    pairs: Sequence[EncodedDPOPair],
    *,
    pad_token_id: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log π(chosen|prompt), log π(rejected|prompt))``, each (N,), from one forward pass over
    the 2N sequences."""
    queries = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    batch = build_query_response_batch(queries, responses, pad_token_id=pad_token_id).to(device)
    with device_lib.autocast(device):
        logps = sequence_logprobs(model, batch)
    return logps[: len(pairs)], logps[len(pairs) :]


@torch.no_grad()
def reference_logprobs(
    model: torch.nn.Module,
    pairs: Sequence[EncodedDPOPair],
    *,
    pad_token_id: int,
    device: torch.device,
    batch_size: int,
    should_stop: StopFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached reference log-probs of every pair, (N,) each, on CPU."""
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        check_stop(should_stop, "DPO stopped")
        c, r = pair_logprobs(
            model, pairs[start : start + batch_size], pad_token_id=pad_token_id, device=device
        )
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    return torch.cat(chosen), torch.cat(rejected)


def _save_atomically(
    model: torch.nn.Module, *, policy_dir: str | Path, output_dir: Path, run_info: dict
) -> None:
    tmp = staging_dir_for(output_dir)
    try:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(policy_dir).save_pretrained(tmp)
        (tmp / "dpo_run.json").write_text(json.dumps(run_info, indent=2, sort_keys=True) + "\n")
        publish_dir(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- entry point --------------------------------------------------------------------------------


def run_dpo(
    *,
    policy_dir: str | Path,
    reference_dir: str | Path | None,
    pairs: Sequence[PairLike],
    output_dir: str | Path,
    config: DPOConfig | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> DPOResult:
    """Train the policy in ``policy_dir`` with DPO on ``pairs``; save it to ``output_dir``
    (which must not exist; it appears only when training completed).

    ``reference_dir`` defaults to ``policy_dir``. ``on_progress(step, total, metrics)`` follows
    every optimiser step; ``should_stop()`` is polled before each and a true answer raises
    :class:`TrainingCancelled` with nothing written. ``metadata`` (e.g. the data snapshot id) is
    copied into ``dpo_run.json``.
    """
    config = config or DPOConfig()
    output_dir = Path(output_dir)
    if output_dir.exists():
        raise FileExistsError(f"{output_dir} already exists")
    device = device_lib.pick_device(config.device)
    tokenizer = load_tokenizer(policy_dir, padding_side="left")
    pad = tokenizer.pad_token_id
    encoded, counts = encode_pairs(tokenizer, pairs, config)
    if not encoded:
        raise ValueError("no usable pairs (all ties, or none given)")

    with device_lib.seeded(config.seed, device):
        reference = load_causal_lm(reference_dir or policy_dir, device=device)
        ref_chosen, ref_rejected = reference_logprobs(
            reference,
            encoded,
            pad_token_id=pad,
            device=device,
            batch_size=config.reference_batch_size,
            should_stop=should_stop,
        )
        del reference
        policy = load_causal_lm(policy_dir, device=device, trainable=True)
        optimizer = torch.optim.Adam(
            policy.parameters(), lr=config.learning_rate, eps=config.adam_eps
        )
        rng = random.Random(config.seed)
        steps_per_epoch = -(-len(encoded) // config.batch_size)
        total = config.num_epochs * steps_per_epoch
        history: list[dict[str, float]] = []
        step = 0
        for _epoch in range(config.num_epochs):
            order = list(range(len(encoded)))
            rng.shuffle(order)
            for start in range(0, len(order), config.batch_size):
                check_stop(should_stop, "DPO stopped")
                step += 1
                step_start = time.perf_counter()
                lr = config.learning_rate * min(1.0, step / max(config.warmup_steps, 1))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                idx = order[start : start + config.batch_size]
                chosen, rejected = pair_logprobs(
                    policy, [encoded[i] for i in idx], pad_token_id=pad, device=device
                )
                losses, chosen_rewards, rejected_rewards = dpo_loss(
                    chosen.float(),
                    rejected.float(),
                    ref_chosen[idx].to(device),
                    ref_rejected[idx].to(device),
                    config.beta,
                )
                weights = torch.tensor([encoded[i].weight for i in idx], device=device)
                loss = weighted_mean(losses, weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    policy.parameters(), config.max_grad_norm
                )
                optimizer.step()
                margin = chosen_rewards - rejected_rewards
                metrics = {
                    "dpo/loss": float(loss.detach()),
                    "dpo/accuracy": float((margin > 0).float().mean()),
                    "dpo/margin": float(margin.mean()),
                    "dpo/chosen_reward": float(chosen_rewards.mean()),
                    "dpo/rejected_reward": float(rejected_rewards.mean()),
                    "dpo/grad_norm": float(grad_norm),
                    "dpo/learning_rate": lr,
                    "dpo/pairs_per_s": len(idx) / (time.perf_counter() - step_start),
                }
                history.append(metrics)
                if on_progress is not None:
                    on_progress(step, total, metrics)

    check_stop(should_stop, "DPO stopped")
    run_info = {
        "algorithm": "dpo",
        "config": asdict(config),
        "seed": config.seed,
        "steps": step,
        "policy_dir": str(policy_dir),
        "reference_dir": str(reference_dir or policy_dir),
        "counts": counts,
        "final_metrics": history[-1],
        "history": history,
        "device": device_lib.device_name(device),
        "metadata": dict(metadata or {}),
        **provenance(),
    }
    _save_atomically(policy, policy_dir=policy_dir, output_dir=output_dir, run_info=run_info)
    return DPOResult(output_dir, step, history[-1], counts, history)
