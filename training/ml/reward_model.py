"""Reward model: a scalar head on a causal LM, trained on human preference pairs.

Reads top to bottom:
    1. the loss and the metrics (pure tensor functions, tested with known values);
    2. the model: load a base with one output, dropout off, head init N(0, 1/(hidden+1)), and
       read the score at the last real token (found from the attention mask, never from token ids,
       so PAD == EOS is safe; positions from the mask, so left and right padding agree);
    3. training: split by prompt, tokenise with counted truncation, Adam(eps 1e-5) with the
       learning rate annealed to 0 and gradient clipping, cooperative cancellation;
    4. normalisation on reference-policy samples (mean 0, std 1), saved beside the weights;
    5. scoring for PPO and evaluation: :func:`load_reward_model`, :func:`score_texts`.

The output directory is an ordinary Hugging Face directory (``AutoModelForSequenceClassification``
loads it, e.g. for OpenRLHF) plus ``reward_normalization.json`` and ``reward_model.json`` (config,
data counts, metrics, seed, versions: the checkpoint describes itself).

Precision and devices: see ``training.ml.device`` (bf16 autocast on CUDA, fp32 on CPU). The
training loop runs every forward pass through one :class:`LastTokenScorer` module.

Data parallel (under ``torchrun``, see ``training.ml.launch``): when a ``torch.distributed``
process group is initialised, :func:`train_reward_model` wraps that module in
``DistributedDataParallel``. Every rank builds the same split, the same shuffled global batches
and the same initial weights from the seed; each takes every N-th pair of each global batch
(``batch_size`` stays the global batch, so the optimisation is the one-process optimisation),
DDP all-reduces the gradients and the ranks stay identical. Evaluation and normalisation are
sharded the same way and the scores all-gathered, so their metrics cover the whole set; only
rank 0 reports progress and writes the output directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import inspect
import json
import math
import random
import shutil
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from training.ml.common import (
    ProgressFn,
    StopFn,
    check_stop,
    load_tokenizer,
    publish_dir,
    staging_dir_for,
)

# Re-exported for the callers outside training.ml that still import it from here; new code
# imports it from training.ml.common.
from training.ml.common import TrainingCancelled as TrainingCancelled
from training.ml.config import RewardModelConfig, TieLoss
from training.ml.data import (
    EncodedPair,
    EncodedSequence,
    batches,
    collate,
    encode_pairs,
    encode_sequences,
    last_token_index,
    num_batches,
    split_by_prompt,
)
from training.ml.device import (
    SINGLE_PROCESS,
    World,
    autocast,
    backend_for,
    current_world,
    device_name,
    pick_device,
    quiet_transformers,
    seeded,
)
from training.ml.records import PreferencePair, Prompt

NORMALIZATION_FILE = "reward_normalization.json"
INFO_FILE = "reward_model.json"

_CANCELLED = "reward model training cancelled"


@dataclass(frozen=True, slots=True)
class RewardNormalization:
    """``normalised = (raw - offset) / scale``: mean 0, std 1 on the reference samples."""

    offset: float = 0.0
    scale: float = 1.0
    source: str = "identity"
    """``reference_samples``, ``training_completions`` (no reference given) or ``identity``"""
    num_samples: int = 0

    def apply(self, raw: float) -> float:
        return (raw - self.offset) / self.scale


@dataclass
class RewardModelResult:
    """What :func:`train_reward_model` produced."""

    output_dir: Path
    metrics: dict[str, float]
    """final metrics: ``eval/*`` on held-out prompts, ``reward/*`` averaged over the last epoch"""
    counts: dict[str, int]
    """pairs, prompts, ties and truncations per split"""
    normalization: RewardNormalization
    steps: int
    seconds: float
    device: str
    notes: list[str] = field(default_factory=list)
    replica_checksums: list[str] = field(default_factory=list)
    """``check_replicas=True``: the parameter checksum of each rank, in rank order"""


# --------------------------------------------------------------------------------------------
# 1. Loss and metrics (algorithm)
# --------------------------------------------------------------------------------------------


def preference_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    ties: torch.Tensor | None = None,
    tie_loss: TieLoss = "soft_label",
    reduction: str = "mean",
) -> torch.Tensor:
    """Bradley-Terry loss on reward differences ``d = r_chosen - r_rejected``.

    Per pair: ``-logsigmoid(d)``; for a tie pair ``-0.5*logsigmoid(d) - 0.5*logsigmoid(-d)``
    (``soft_label``), ``d**2`` (``squared``) or 0 (``drop``). Each is multiplied by its weight, then
    ``reduction="mean"`` divides the sum by the number of pairs (all weights 1 give the plain
    mean; a weight-0.5 pair counts half whatever else is in the batch) and ``"sum"`` does not.
    """
    d = r_chosen.float() - r_rejected.float()
    per_pair = -F.logsigmoid(d)
    if ties is not None and bool(ties.any()):
        if tie_loss == "soft_label":
            tie_term = -0.5 * F.logsigmoid(d) - 0.5 * F.logsigmoid(-d)
        elif tie_loss == "squared":
            tie_term = d.pow(2)
        elif tie_loss == "drop":
            tie_term = torch.zeros_like(d)
        else:
            raise ValueError(f"unknown tie_loss {tie_loss!r}")
        per_pair = torch.where(ties.to(torch.bool), tie_term, per_pair)
    if weights is not None:
        per_pair = per_pair * weights.to(per_pair)
    if reduction == "sum":
        return per_pair.sum()
    if reduction == "mean":
        return per_pair.mean()
    raise ValueError(f"unknown reduction {reduction!r}")


def pair_metrics(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    *,
    ties: torch.Tensor | None = None,
    rounds: Sequence[int] | None = None,
    prefix: str = "reward",
) -> dict[str, float]:
    """Accuracy (strict ``>``: equal scores count as wrong), score-tie rate, margins, reward stats.

    Accuracy, tie rate and margin are over non-tie pairs; ``{prefix}/tie_pair_abs_diff`` is the
    mean ``|r_a - r_b|`` over pairs labelled tie. Keys with no pairs to average are left out.
    """
    rc, rr = r_chosen.detach().float().cpu(), r_rejected.detach().float().cpu()
    tie_mask = (
        torch.zeros_like(rc, dtype=torch.bool) if ties is None else ties.detach().cpu().bool()
    )
    strict = ~tie_mask
    out: dict[str, float] = {f"{prefix}/pairs": float(len(rc))}
    if strict.any():
        out[f"{prefix}/accuracy"] = (rc[strict] > rr[strict]).float().mean().item()
        out[f"{prefix}/tie_rate"] = (rc[strict] == rr[strict]).float().mean().item()
        out[f"{prefix}/margin"] = (rc[strict] - rr[strict]).mean().item()
    if tie_mask.any():
        out[f"{prefix}/tie_pair_abs_diff"] = (rc[tie_mask] - rr[tie_mask]).abs().mean().item()
    both = torch.cat([rc, rr])
    out[f"{prefix}/reward_mean"] = both.mean().item()
    out[f"{prefix}/reward_std"] = both.std(unbiased=False).item()
    out[f"{prefix}/chosen_mean"] = rc.mean().item()
    out[f"{prefix}/rejected_mean"] = rr.mean().item()
    if rounds is not None:
        round_tensor = torch.tensor(list(rounds))
        for value in sorted(set(round_tensor.tolist())):
            mask = (round_tensor == value) & strict
            if mask.any():
                out[f"{prefix}/accuracy_round_{value}"] = (
                    (rc[mask] > rr[mask]).float().mean().item()
                )
    return out


# --------------------------------------------------------------------------------------------
# 2. The model
# --------------------------------------------------------------------------------------------


def disable_dropout_in_config(config: Any) -> list[str]:
    """Set every dropout probability in a transformers config to 0; returns the names changed."""
    changed = []
    for key, value in config.to_dict().items():
        is_dropout = "dropout" in key or key.endswith("pdrop")
        if is_dropout and isinstance(value, float) and value != 0.0:
            setattr(config, key, 0.0)
            changed.append(key)
    return changed


def reward_head(model: nn.Module) -> nn.Linear | None:
    """The final linear layer producing the score (``score`` in decoder models)."""
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            return head
        if head is not None and isinstance(getattr(head, "out_proj", None), nn.Linear):
            return head.out_proj
    return None


def init_reward_head(model: nn.Module, *, seed: int) -> None:
    """Head weights ~ N(0, 1/(hidden+1)) (std 1/sqrt(hidden+1)), bias 0 if there is one."""
    head = reward_head(model)
    if head is None:
        raise ValueError(f"no reward head found on {type(model).__name__}")
    with seeded(seed), torch.no_grad():
        nn.init.normal_(head.weight, mean=0.0, std=1.0 / math.sqrt(head.in_features + 1))
        if head.bias is not None:
            head.bias.zero_()


def load_reward_backbone(name_or_path: str | Path, *, seed: int) -> tuple[nn.Module, Any, list]:
    """Load ``AutoModelForSequenceClassification`` (1 label, fp32, dropout 0) and init its head.

    Returns ``(model, tokenizer, names of the dropout settings zeroed)``.
    """
    tokenizer = load_tokenizer(name_or_path, padding_side=None)  # as saved: collate pads
    config = AutoConfig.from_pretrained(str(name_or_path), num_labels=1)
    zeroed = disable_dropout_in_config(config)
    config.pad_token_id = tokenizer.pad_token_id
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(name_or_path), config=config, dtype=torch.float32
        )
    for module in model.modules():  # some architectures hard-code their dropout
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    init_reward_head(model, seed=seed)
    return model, tokenizer, zeroed


def _accepts_position_ids(module: nn.Module) -> bool:
    return "position_ids" in inspect.signature(module.forward).parameters


def sequence_scores(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Raw reward of each row, read at its last real token: shape ``[batch]``, float32.

    For decoder models (a ``score`` head on every position) the backbone runs once and the head is
    applied, in fp32, to the hidden state at :func:`last_token_index` of the attention mask. Other
    architectures (encoders pooling a CLS token) fall back to the model's own logits.
    """
    head = getattr(model, "score", None)
    if not isinstance(head, nn.Linear):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
    backbone = model.base_model
    kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if position_ids is not None and _accepts_position_ids(backbone):
        kwargs["position_ids"] = position_ids
    hidden = backbone(**kwargs, use_cache=False)[0]
    index = last_token_index(attention_mask).to(hidden.device)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
    with torch.autocast(device_type=pooled.device.type, enabled=False):
        return head(pooled.float().to(head.weight.dtype)).squeeze(-1).float()


class LastTokenScorer(nn.Module):
    """``nn.Module`` view of :func:`sequence_scores`: ``scorer(input_ids, attention_mask,
    position_ids) -> [batch]`` raw rewards.

    Training runs through this wrapper so that a data-parallel wrapper (``accelerator.prepare`` or
    ``DistributedDataParallel``) can wrap one module whose ``forward`` does the whole computation.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return sequence_scores(self.model, input_ids, attention_mask, position_ids)


def _score_sequences(
    scorer: nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    batch_size: int,
    device: torch.device,
    should_stop: StopFn | None = None,
) -> list[float]:
    """Raw scores for token-id sequences, batched longest-first (original order returned)."""
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    scores = [0.0] * len(sequences)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            check_stop(should_stop, _CANCELLED)
            chunk = order[start : start + batch_size]
            batch = collate([sequences[i] for i in chunk], pad_token_id=pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device):
                values = scorer(**batch).tolist()
            for i, value in zip(chunk, values, strict=True):
                scores[i] = value
    return scores


# --------------------------------------------------------------------------------------------
# 3-4. Training, evaluation, normalisation
# --------------------------------------------------------------------------------------------


def lr_multiplier(step: int, *, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate factor at optimiser step ``step`` (0-based): warmup, then anneal to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def _pair_tensors(
    pairs: Sequence[EncodedPair], *, use_weights: bool, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor]:
    weights = (
        torch.tensor([p.weight for p in pairs], dtype=torch.float32, device=device)
        if use_weights
        else None
    )
    ties = torch.tensor([p.tie for p in pairs], dtype=torch.bool, device=device)
    return weights, ties


def _forward_pairs(
    scorer: nn.Module, pairs: Sequence[EncodedPair], *, pad_token_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of chosen and rejected in one forward pass (2 x len(pairs) rows)."""
    rows = [p.chosen.input_ids for p in pairs] + [p.rejected.input_ids for p in pairs]
    batch = {k: v.to(device) for k, v in collate(rows, pad_token_id=pad_token_id).items()}
    with autocast(device):
        scores = scorer(**batch)
    return scores[: len(pairs)], scores[len(pairs) :]


def train_step(
    scorer: nn.Module,
    optimizer: torch.optim.Optimizer,
    pairs: Sequence[EncodedPair],
    *,
    config: RewardModelConfig,
    pad_token_id: int,
    device: torch.device,
    world: World = SINGLE_PROCESS,
) -> dict[str, float]:
    """One optimiser step on ``pairs`` (micro-batched if configured); returns ``reward/*``.

    Data parallel (``world.size`` > 1, ``scorer`` wrapped in ``DistributedDataParallel``):
    ``pairs`` is the global batch, the same on every rank, and this rank takes
    ``pairs[rank::size]``. Its loss is multiplied by ``size`` so that DDP's gradient average is
    the gradient of the global-batch loss, as in one process. A rank left without a pair (a batch
    smaller than the world) runs one pair at loss weight 0 so that it still joins the all-reduce.
    The metrics cover the global batch (scores gathered from every rank).
    """
    optimizer.zero_grad(set_to_none=True)
    local, idle = pairs, False
    if world.size > 1:
        local = list(pairs[world.rank :: world.size])
        if not local:
            local, idle = [pairs[0]], True
    micro = config.micro_batch_size or len(local)
    all_rc, all_rr, loss_total = [], [], 0.0
    for start in range(0, len(local), micro):
        chunk = local[start : start + micro]
        accumulate = start + micro < len(local) and hasattr(scorer, "no_sync")
        with scorer.no_sync() if accumulate else contextlib.nullcontext():  # all-reduce once
            rc, rr = _forward_pairs(scorer, chunk, pad_token_id=pad_token_id, device=device)
            weights, ties = _pair_tensors(chunk, use_weights=config.use_weights, device=device)
            loss = preference_loss(
                rc, rr, weights=weights, ties=ties, tie_loss=config.tie_loss, reduction="sum"
            ) / len(pairs)
            if world.size > 1:
                loss = loss * (0.0 if idle else world.size)  # DDP divides by size
            loss.backward()
        loss_total += loss.item()
        all_rc.append(rc.detach())
        all_rr.append(rr.detach())
    params = [p for p in scorer.parameters() if p.requires_grad]
    max_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()
    rc, rr = torch.cat(all_rc), torch.cat(all_rr)
    ties = torch.tensor([p.tie for p in local])
    if world.size > 1:
        keep = 0 if idle else len(local)
        rows = (rc[:keep].float().tolist(), rr[:keep].float().tolist(), ties[:keep].tolist())
        shards = _all_gather((*rows, loss_total), world)
        rc = torch.tensor([x for shard in shards for x in shard[0]])
        rr = torch.tensor([x for shard in shards for x in shard[1]])
        ties = torch.tensor([x for shard in shards for x in shard[2]], dtype=torch.bool)
        loss_total = sum(shard[3] for shard in shards) / world.size
    metrics = pair_metrics(rc, rr, ties=ties, prefix="reward")
    metrics["reward/loss"] = loss_total
    metrics["reward/grad_norm"] = float(grad_norm)
    return metrics


def evaluate(
    scorer: nn.Module,
    pairs: Sequence[EncodedPair],
    *,
    config: RewardModelConfig,
    pad_token_id: int,
    device: torch.device,
    prefix: str = "eval",
    should_stop: StopFn | None = None,
    world: World = SINGLE_PROCESS,
) -> dict[str, float]:
    """Loss and :func:`pair_metrics` (with accuracy per round) on ``pairs``, no gradients.

    Data parallel: each rank scores ``pairs[rank::size]`` with the unwrapped module and the
    scores are all-gathered, so every rank returns the metrics of the whole set.
    """
    local = pairs if world.size == 1 else pairs[world.rank :: world.size]
    was_training = scorer.training
    scorer.eval()
    rcs, rrs = [], []
    with torch.no_grad():
        for start in range(0, len(local), config.eval_batch_size):
            check_stop(should_stop, _CANCELLED)
            chunk = local[start : start + config.eval_batch_size]
            rc, rr = _forward_pairs(scorer, chunk, pad_token_id=pad_token_id, device=device)
            rcs.append(rc.cpu())
            rrs.append(rr.cpu())
    scorer.train(was_training)
    rc, rr = (torch.cat(rcs), torch.cat(rrs)) if rcs else (torch.zeros(0), torch.zeros(0))
    if world.size > 1:
        scores = _gather_strided(list(zip(rc.tolist(), rr.tolist(), strict=True)), world)
        rc = torch.tensor([c for c, _ in scores])
        rr = torch.tensor([r for _, r in scores])
    weights, ties = _pair_tensors(pairs, use_weights=config.use_weights, device=torch.device("cpu"))
    metrics = pair_metrics(rc, rr, ties=ties, rounds=[p.round for p in pairs], prefix=prefix)
    loss_ties = ties if config.tie_loss != "drop" else torch.zeros_like(ties)
    keep = ties.logical_not() | loss_ties
    if keep.any():
        metrics[f"{prefix}/loss"] = preference_loss(
            rc[keep],
            rr[keep],
            weights=None if weights is None else weights[keep],
            ties=loss_ties[keep],
            tie_loss=config.tie_loss,
        ).item()
    return metrics


def fit_normalization(
    scorer: nn.Module,
    tokenizer: Any,
    samples: Sequence[tuple[Prompt, str]],
    *,
    config: RewardModelConfig,
    device: torch.device,
    source: str,
    should_stop: StopFn | None = None,
    world: World = SINGLE_PROCESS,
) -> RewardNormalization:
    """Offset and scale making the raw scores of ``samples`` mean 0, std 1 (population std).

    At most ``config.reference_max_samples`` samples are used (a seeded random subset). A
    constant score gives scale 1. Data parallel: each rank scores every N-th sample and the scores
    are all-gathered, so every rank fits the same normalisation on all of them.
    """
    samples = list(samples)
    if len(samples) > config.reference_max_samples:
        samples = random.Random(config.seed).sample(samples, config.reference_max_samples)
    encoded = encode_sequences(
        tokenizer,
        [p for p, _ in samples],
        [c for _, c in samples],
        max_length=config.max_length,
        append_eos=config.append_eos,
    )
    was_training = scorer.training
    scorer.eval()
    raw = _score_sequences(
        scorer,
        [e.input_ids for e in encoded[world.rank :: world.size]],
        pad_token_id=tokenizer.pad_token_id,
        batch_size=config.eval_batch_size,
        device=device,
        should_stop=should_stop,
    )
    scorer.train(was_training)
    if world.size > 1:
        raw = _gather_strided(raw, world)
    offset = statistics.fmean(raw)
    scale = statistics.pstdev(raw) if len(raw) > 1 else 0.0
    if not scale > 1e-8:
        scale = 1.0
    return RewardNormalization(offset=offset, scale=scale, source=source, num_samples=len(raw))


def _all_gather(value: Any, world: World) -> list[Any]:
    """``value`` from every rank, in rank order (picklable values; a collective call)."""
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, value)
    return gathered


def _gather_strided(local: list[Any], world: World) -> list[Any]:
    """Inverse of ``items[rank::size]``: every rank gets the whole list in its original order."""
    shards = _all_gather(local, world)
    total = sum(len(shard) for shard in shards)
    return [shards[i % world.size][i // world.size] for i in range(total)]


def parameter_checksum(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (name, dtype, shape, bytes): equal iff identical."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    return {"torch": torch.__version__, "transformers": transformers.__version__}


def train_reward_model(
    pairs: Sequence[PreferencePair],
    *,
    base_model: str | Path,
    output_dir: str | Path,
    config: RewardModelConfig | None = None,
    reference_samples: Sequence[tuple[Prompt, str]] | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    metadata: Mapping[str, Any] | None = None,
    check_replicas: bool = False,
) -> RewardModelResult:
    """Train a reward model on ``pairs`` from ``base_model`` and write it to ``output_dir``.

    ``reference_samples``: (prompt, completion) pairs from the reference policy on the campaign's
    prompts, used to normalise the reward; without them the training pairs' chosen and rejected
    completions are used (noted in the result). ``on_progress(step, total, metrics)`` is called
    after every optimiser step with ``reward/*`` metrics, then once more with ``step == total``
    carrying the ``eval/*`` metrics. ``should_stop()`` is polled between steps (and batches of
    evaluation/normalisation); True raises :class:`TrainingCancelled` and nothing is written.
    ``metadata`` (e.g. the data snapshot id) is copied into ``reward_model.json``.

    The directory is written to a hidden temp sibling and renamed into place when complete
    (an existing ``output_dir`` is replaced).

    Inside an initialised ``torch.distributed`` process group (``torchrun``, see
    ``training.ml.launch``) every rank calls this with the same arguments and trains data
    parallel (see the module docstring); only rank 0 calls ``on_progress`` and writes
    ``output_dir``, every rank returns the same metrics. ``should_stop`` must then be None: the
    launcher cancels by terminating the processes. ``check_replicas`` (a debug aid): every rank
    hashes its parameters after training, a mismatch raises, and the hashes are returned in
    ``result.replica_checksums``.
    """
    config = config or RewardModelConfig()
    output_dir = Path(output_dir).resolve()
    started = time.perf_counter()
    world = current_world()
    device = pick_device(config.device)
    notes: list[str] = []
    if not pairs:
        raise ValueError("no preference pairs to train on")
    if world.size > 1:
        if should_stop is not None:
            raise ValueError("should_stop is not polled under torchrun: terminate the processes")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if not world.is_main:
            on_progress = None

    # -- data (plumbing) --
    train_pairs, eval_pairs = split_by_prompt(
        pairs, eval_fraction=config.eval_fraction, seed=config.seed
    )
    model, tokenizer, zeroed = load_reward_backbone(base_model, seed=config.seed)
    if zeroed:
        notes.append(f"dropout set to 0: {', '.join(zeroed)}")
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        notes.append("tokenizer has PAD == EOS; scores are read via the attention mask")
    encode = {"max_length": config.max_length, "append_eos": config.append_eos}
    train_enc, train_trunc = encode_pairs(tokenizer, train_pairs, **encode)
    eval_enc, eval_trunc = encode_pairs(tokenizer, eval_pairs, **encode)
    tie_dropped = 0
    if config.tie_loss == "drop":
        tie_dropped = sum(p.tie for p in train_enc)
        train_enc = [p for p in train_enc if not p.tie]
    if not train_enc:
        raise ValueError("no training pairs left after the split")
    counts = {
        "train_pairs": len(train_enc),
        "eval_pairs": len(eval_enc),
        "train_prompts": len({p.prompt_id for p in train_pairs}),
        "eval_prompts": len({p.prompt_id for p in eval_pairs}),
        "train_tie_pairs": sum(p.tie for p in train_enc),
        "eval_tie_pairs": sum(p.tie for p in eval_enc),
        "tie_pairs_dropped": tie_dropped,
        "train_prompt_truncated": train_trunc.prompt_truncated,
        "train_completion_truncated": train_trunc.completion_truncated,
        "eval_prompt_truncated": eval_trunc.prompt_truncated,
        "eval_completion_truncated": eval_trunc.completion_truncated,
    }

    # -- optimisation (algorithm) --
    model.to(device)
    scorer = LastTokenScorer(model)  # the module a data-parallel wrapper would wrap
    scorer.train()  # dropout probabilities are all 0, so train() == eval() numerically
    trained: nn.Module = scorer
    if world.size > 1:  # plumbing: DDP all-reduces the gradients during backward()
        trained = nn.parallel.DistributedDataParallel(
            scorer,
            device_ids=[device.index] if device.type == "cuda" else None,
            forward_sync_buffers=False,  # no trained buffers; ranks may run unequal micro-batches
        )
        per_rank = math.ceil(config.batch_size / world.size)
        notes.append(
            f"data parallel on {world.size} processes ({backend_for(device)}): global batch "
            f"{config.batch_size} pairs, up to {per_rank} per process and step"
        )
    optimizer = torch.optim.AdamW(
        [p for p in scorer.parameters() if p.requires_grad],
        lr=config.learning_rate,
        betas=config.adam_betas,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = num_batches(len(train_enc), config.batch_size)
    total = config.num_epochs * steps_per_epoch
    warmup = int(config.warmup_fraction * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_multiplier(s, total=total, warmup=warmup, schedule=config.lr_schedule),
    )
    pad_id = tokenizer.pad_token_id
    step = 0
    last_epoch: list[dict[str, float]] = []
    for epoch in range(config.num_epochs):
        last_epoch = []
        shuffle_seed = config.seed * 1_000_003 + epoch
        for index in batches(len(train_enc), config.batch_size, shuffle_seed=shuffle_seed):
            check_stop(should_stop, _CANCELLED)
            lr = scheduler.get_last_lr()[0]
            metrics = train_step(
                trained,
                optimizer,
                [train_enc[i] for i in index],
                config=config,
                pad_token_id=pad_id,
                device=device,
                world=world,
            )
            scheduler.step()
            step += 1
            metrics["reward/lr"] = lr
            metrics["reward/epoch"] = epoch + len(last_epoch) / steps_per_epoch
            last_epoch.append(metrics)
            if on_progress is not None:
                on_progress(step, total, metrics)

    # -- evaluation and normalisation (the unwrapped module: ranks score unequal shards) --
    checksums: list[str] = []
    if check_replicas:
        checksums = [parameter_checksum(model)]
        if world.size > 1:
            checksums = _all_gather(checksums[0], world)
        if len(set(checksums)) > 1:
            raise RuntimeError(f"parameters differ across ranks: {checksums}")
    final: dict[str, float] = {}
    for key in ("reward/loss", "reward/accuracy", "reward/tie_rate", "reward/margin"):
        values = [m[key] for m in last_epoch if key in m]
        if values:
            final[key] = statistics.fmean(values)
    if eval_enc:
        check_stop(should_stop, _CANCELLED)
        final.update(
            evaluate(
                scorer,
                eval_enc,
                config=config,
                pad_token_id=pad_id,
                device=device,
                should_stop=should_stop,
                world=world,
            )
        )
    if reference_samples:
        samples, source = list(reference_samples), "reference_samples"
    else:
        samples = [(p.prompt, p.chosen) for p in train_pairs]
        samples += [(p.prompt, p.rejected) for p in train_pairs]
        source = "training_completions"
        notes.append(
            "no reference samples given: reward normalised on the training pairs' chosen and "
            "rejected completions"
        )
    normalization = fit_normalization(
        scorer,
        tokenizer,
        samples,
        config=config,
        device=device,
        source=source,
        should_stop=should_stop,
        world=world,
    )
    final["reward/norm_offset"] = normalization.offset
    final["reward/norm_scale"] = normalization.scale
    check_stop(should_stop, _CANCELLED)
    if on_progress is not None:
        on_progress(total, total, dict(final))

    # -- write (plumbing) --
    seconds = time.perf_counter() - started
    result = RewardModelResult(
        output_dir=output_dir,
        metrics=final,
        counts=counts,
        normalization=normalization,
        steps=step,
        seconds=seconds,
        device=device_name(device),
        notes=notes,
        replica_checksums=checksums,
    )
    if world.is_main:
        _save(model, tokenizer, result, config=config, base_model=base_model, metadata=metadata)
    return result


def _save(
    model: nn.Module,
    tokenizer: Any,
    result: RewardModelResult,
    *,
    config: RewardModelConfig,
    base_model: str | Path,
    metadata: Mapping[str, Any] | None,
) -> None:
    staging = staging_dir_for(result.output_dir)
    try:
        model.to("cpu")
        with quiet_transformers():
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        (staging / NORMALIZATION_FILE).write_text(
            json.dumps(asdict(result.normalization), indent=2) + "\n"
        )
        info = {
            "kind": "reward_model",
            "base_model": str(base_model),
            "config": config.to_dict(),
            "seed": config.seed,
            "counts": result.counts,
            "metrics": result.metrics,
            "normalization": asdict(result.normalization),
            "steps": result.steps,
            "seconds": round(result.seconds, 3),
            "device": result.device,
            "notes": result.notes,
            "versions": _versions(),
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "metadata": dict(metadata or {}),
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        publish_dir(staging, result.output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------
# 5. Scoring
# --------------------------------------------------------------------------------------------


@dataclass
class RewardModel:
    """A loaded reward model with its normalisation, ready to score (prompt, completion) pairs."""

    model: nn.Module
    tokenizer: Any
    normalization: RewardNormalization
    max_length: int
    append_eos: bool
    device: torch.device

    def raw_scores(
        self, prompts_and_completions: Sequence[tuple[Prompt, str]], batch_size: int = 32
    ) -> list[float]:
        """Unnormalised scores, tokenised exactly as in training (same truncation, EOS)."""
        encoded: list[EncodedSequence] = encode_sequences(
            self.tokenizer,
            [p for p, _ in prompts_and_completions],
            [c for _, c in prompts_and_completions],
            max_length=self.max_length,
            append_eos=self.append_eos,
        )
        return _score_sequences(
            LastTokenScorer(self.model),
            [e.input_ids for e in encoded],
            pad_token_id=self.tokenizer.pad_token_id,
            batch_size=batch_size,
            device=self.device,
        )

    def score(
        self,
        prompts_and_completions: Sequence[tuple[Prompt, str]],
        batch_size: int = 32,
        *,
        normalized: bool = True,
    ) -> list[float]:
        """Scores, normalised (mean 0, std 1 on the reference samples) unless told otherwise."""
        raw = self.raw_scores(prompts_and_completions, batch_size)
        return [self.normalization.apply(r) for r in raw] if normalized else raw


def load_reward_model(model_dir: str | Path, *, device: str | None = None) -> RewardModel:
    """Load a directory written by :func:`train_reward_model` (or any 1-label HF classifier:
    then normalisation is the identity and ``max_length`` the tokenizer's, capped at 2048)."""
    model_dir = Path(model_dir)
    torch_device = pick_device(device)
    tokenizer = load_tokenizer(model_dir, padding_side=None)
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), dtype=torch.float32
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(torch_device).eval()
    normalization = RewardNormalization()
    if (model_dir / NORMALIZATION_FILE).exists():
        normalization = RewardNormalization(
            **json.loads((model_dir / NORMALIZATION_FILE).read_text())
        )
    max_length, append_eos = min(int(tokenizer.model_max_length), 2048), True
    if (model_dir / INFO_FILE).exists():
        saved = json.loads((model_dir / INFO_FILE).read_text())["config"]
        max_length, append_eos = saved["max_length"], saved["append_eos"]
    return RewardModel(
        model=model,
        tokenizer=tokenizer,
        normalization=normalization,
        max_length=max_length,
        append_eos=append_eos,
        device=torch_device,
    )


def score_texts(
    model_dir: str | Path,
    prompts_and_completions: Sequence[tuple[Prompt, str]],
    batch_size: int = 32,
    *,
    device: str | None = None,
    normalized: bool = True,
) -> list[float]:
    """Normalised reward of each (prompt, completion). Loads the model on every call: for
    repeated scoring (PPO) keep a :func:`load_reward_model` instance instead."""
    reward_model = load_reward_model(model_dir, device=device)
    return reward_model.score(prompts_and_completions, batch_size, normalized=normalized)
