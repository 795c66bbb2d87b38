"""DPO: a policy update straight from preference pairs, no reward model (Rafailov et al. 2023).

    L = -log sigmoid(β·[log πθ(y_w|x) - log π_ref(y_w|x)] - β·[log πθ(y_l|x) - log π_ref(y_l|x)])

``y_w`` is the chosen completion, ``y_l`` the rejected one; ``log π(y|x)`` is the sum of the
completion tokens' log-probs (EOS included) given the prompt. The reference log-probs never change,
so they are computed once, before training, and the reference model is freed. Sequences are
``[left-padded prompt | right-padded completion + EOS]`` with position ids from the attention mask,
as in PPO (``training.ml.policy``); completions end with the end-of-turn token
(``training.ml.prompts``). Pairs marked as ties carry no preference and are skipped.

Memory (``training.ml.parallel``): the policy is sharded per decoder layer with FSDP2 over the
processes of a ``torchrun`` job (``shard: fsdp``), or replicated with averaged gradients; the
reference is loaded in bf16 on CUDA, sharded alike, and freed once its log-probs are cached;
with LoRA and the starting policy as reference, the reference is the policy with its adapter
off. Each process takes an equal share of every global batch; the loss is the global batch's
weighted mean, so N processes make the steps one process makes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from training.ml import device as device_lib
from training.ml.common import (
    ProgressFn,
    StopFn,
    check_stop,
    load_tokenizer,
)
from training.ml.config import DPOConfig
from training.ml.parallel import (
    Placement,
    all_gather_objects,
    chunks,
    clip_grad_norm,
    equal_shares,
    frozen_dtype,
    loss_scale,
    placement_for,
    prepare_frozen,
    prepare_trained,
    reduce_gradients,
)
from training.ml.policy import (
    Prompt,
    build_query_response_batch,
    encode_prompt,
    encode_response,
    load_causal_lm,
    provenance,
    sequence_logprobs,
)
from training.ml.weights import apply_lora, save_policy


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
    placement: Placement | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached reference log-probs of every pair, (N,) each, on CPU. Several processes: each
    computes an equal share (strided, padded: a sharded model needs every process in every
    pass) and every process gets all of them."""
    placement = placement or Placement(device=device)
    share = equal_shares(pairs, placement.world)
    chosen, rejected = [], []
    for chunk in chunks(share.items, batch_size):
        check_stop(should_stop, "DPO stopped")
        c, r = pair_logprobs(model, chunk, pad_token_id=pad_token_id, device=device)
        chosen.extend(c.float().cpu().tolist())
        rejected.extend(r.float().cpu().tolist())
    local = list(zip(chosen, rejected, strict=True))[: share.num_real]
    shards = all_gather_objects(local, placement)
    size = placement.world.size
    ordered = [shards[i % size][i // size] for i in range(len(pairs))]
    return torch.tensor([c for c, _ in ordered]), torch.tensor([r for _, r in ordered])


def load_policy(policy_dir: str | Path, config: DPOConfig, placement: Placement) -> torch.nn.Module:
    """The trained policy: fp32 weights (masters), or a frozen base in bf16 on CUDA with fp32
    LoRA adapters; placed (sharded) by ``placement``."""
    dtype = frozen_dtype(placement.device) if config.use_lora else torch.float32
    policy = load_causal_lm(policy_dir, trainable=True, dtype=dtype)
    if config.use_lora:
        policy = apply_lora(policy, config, "CAUSAL_LM")
    return prepare_trained(policy, placement)


def dpo_step(
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Sequence[EncodedDPOPair],
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    config: DPOConfig,
    pad_token_id: int,
    placement: Placement,
) -> dict[str, float]:
    """One optimiser step on the global ``batch`` (its reference log-probs beside it): this
    process's equal share is forwarded, its loss is its pairs' weighted losses over the global
    batch's total weight (so the processes' gradients add up to the one-process gradient),
    returns the ``dpo/*`` metrics of the global batch."""
    device = placement.device
    share = equal_shares(list(range(len(batch))), placement.world)
    local = [batch[i] for i in share.items]
    chosen, rejected = pair_logprobs(policy, local, pad_token_id=pad_token_id, device=device)
    index = torch.tensor(share.items)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        chosen.float(),
        rejected.float(),
        ref_chosen[index].to(device),
        ref_rejected[index].to(device),
        config.beta,
    )
    weights = torch.tensor([p.weight for p in local], device=device)
    weights = weights * torch.tensor(share.real, dtype=weights.dtype, device=device)
    total_weight = sum(p.weight for p in batch)
    loss = (losses * weights).sum() / max(total_weight, 1e-8)
    optimizer.zero_grad(set_to_none=True)
    (loss * loss_scale(placement)).backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]  # the shards
    reduce_gradients(params, placement)
    grad_norm = clip_grad_norm(params, config.max_grad_norm)
    optimizer.step()
    rows = [
        (float(c), float(r), float(lo) * w / max(total_weight, 1e-8))
        for c, r, lo, w, real in zip(
            chosen_rewards.tolist(),
            rejected_rewards.tolist(),
            losses.detach().tolist(),
            [p.weight for p in local],
            share.real,
            strict=True,
        )
        if real
    ]
    rows = [row for part in all_gather_objects(rows, placement) for row in part]
    margin = torch.tensor([c - r for c, r, _ in rows])
    return {
        "dpo/loss": sum(lo for _, _, lo in rows),
        "dpo/accuracy": float((margin > 0).float().mean()),
        "dpo/margin": float(margin.mean()),
        "dpo/chosen_reward": sum(c for c, _, _ in rows) / len(rows),
        "dpo/rejected_reward": sum(r for _, r, _ in rows) / len(rows),
        "dpo/grad_norm": grad_norm,
    }


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
    checkpoint_dir: str | Path | None = None,
) -> DPOResult:
    """Train the policy in ``policy_dir`` with DPO on ``pairs``; save it to ``output_dir``
    (which must not exist; it appears only when training completed).

    ``reference_dir`` defaults to ``policy_dir``. ``on_progress(step, total, metrics)`` follows
    every optimiser step; ``should_stop()`` is polled before each and a true answer raises
    :class:`TrainingCancelled` with nothing written. ``metadata`` (e.g. the data snapshot id) is
    copied into ``dpo_run.json``. ``checkpoint_dir``: the training state is saved there every
    ``config.checkpoint_every`` steps and resumed from when present. Under ``torchrun`` every
    process calls this with the same arguments (see the module docstring); only rank 0 reports
    and writes.
    """
    from training.ml.checkpoint import Checkpointer

    config = config or DPOConfig()
    output_dir = Path(output_dir)
    if output_dir.exists():
        raise FileExistsError(f"{output_dir} already exists")
    placement = placement_for(config)
    device = placement.device
    if not placement.world.is_main:
        on_progress = None
    tokenizer = load_tokenizer(policy_dir, padding_side="left")
    pad = tokenizer.pad_token_id
    encoded, counts = encode_pairs(tokenizer, pairs, config)
    if not encoded:
        raise ValueError("no usable pairs (all ties, or none given)")
    reference_dir = reference_dir or policy_dir
    adapter_off = config.use_lora and Path(reference_dir).resolve() == Path(policy_dir).resolve()

    with device_lib.seeded(config.seed, device):
        cached = {"pad_token_id": pad, "device": device, "batch_size": config.reference_batch_size}
        if adapter_off:  # the reference is the policy with its adapter switched off
            policy = load_policy(policy_dir, config, placement)
            with policy.disable_adapter():
                ref_chosen, ref_rejected = reference_logprobs(
                    policy, encoded, should_stop=should_stop, placement=placement, **cached
                )
        else:  # a separate frozen reference, freed before the policy is loaded
            reference = prepare_frozen(
                load_causal_lm(reference_dir, dtype=frozen_dtype(device)), placement
            )
            ref_chosen, ref_rejected = reference_logprobs(
                reference, encoded, should_stop=should_stop, placement=placement, **cached
            )
            del reference
            policy = load_policy(policy_dir, config, placement)
        optimizer = torch.optim.Adam(
            [p for p in policy.parameters() if p.requires_grad],
            lr=config.learning_rate,
            eps=config.adam_eps,
        )
        checkpoints = Checkpointer(
            Path(checkpoint_dir) if checkpoint_dir else None, config.checkpoint_every, placement
        )
        resumed = checkpoints.load_latest(modules=policy, optimizer=optimizer)
        step = int(resumed["step"]) if resumed else 0
        history: list[dict[str, float]] = list(resumed["history"]) if resumed else []
        rng = random.Random(config.seed)
        steps_per_epoch = -(-len(encoded) // config.batch_size)
        total = config.num_epochs * steps_per_epoch
        done = 0
        for _epoch in range(config.num_epochs):
            order = list(range(len(encoded)))
            rng.shuffle(order)
            for idx in chunks(order, config.batch_size):
                done += 1
                if done <= step:
                    continue  # trained before the checkpoint this run resumed from
                check_stop(should_stop, "DPO stopped")
                step += 1
                step_start = time.perf_counter()
                lr = config.learning_rate * min(1.0, step / max(config.warmup_steps, 1))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                index = torch.tensor(idx)
                metrics = dpo_step(
                    policy,
                    optimizer,
                    [encoded[i] for i in idx],
                    ref_chosen[index],
                    ref_rejected[index],
                    config=config,
                    pad_token_id=pad,
                    placement=placement,
                )
                metrics["dpo/learning_rate"] = lr
                metrics["dpo/pairs_per_s"] = len(idx) / (time.perf_counter() - step_start)
                history.append(metrics)
                if on_progress is not None:
                    on_progress(step, total, metrics)
                if checkpoints.due(step, total):
                    checkpoints.save(
                        step, modules=policy, optimizer=optimizer, state={"history": history}
                    )

    check_stop(should_stop, "DPO stopped")
    run_info = {
        "algorithm": "dpo",
        "config": asdict(config),
        "seed": config.seed,
        "steps": step,
        "policy_dir": str(policy_dir),
        "reference_dir": str(reference_dir),
        "reference": "policy with its LoRA adapter off" if adapter_off else str(reference_dir),
        "placement": placement.describe(),
        "counts": counts,
        "final_metrics": history[-1],
        "history": history,
        "device": device_lib.device_name(device),
        "metadata": dict(metadata or {}),
        **provenance(),
    }
    save_policy(
        policy,
        placement,
        policy_dir=policy_dir,
        output_dir=output_dir,
        fields=config,
        run_info=run_info,
        run_file="dpo_run.json",
    )
    checkpoints.remove()
    return DPOResult(output_dir, step, history[-1], counts, history)
