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

Several processes (under ``torchrun``, see ``training.ml.launch``): when a ``torch.distributed``
process group is initialised, :func:`train_reward_model` places that module as
``training.ml.parallel`` says: sharded per decoder layer with FSDP2 (``shard: fsdp``) or a
replica per process with averaged gradients (``shard: none``). Every rank builds the same split,
the same shuffled global batches and the same initial weights from the seed; each takes every
N-th pair of each global batch (``batch_size`` stays the global batch, so the optimisation is
the one-process optimisation). Evaluation and normalisation are split the same way and the
scores all-gathered, so their metrics cover the whole set; only rank 0 reports progress and
writes the output directory, gathered from the shards. One process is the world of size 1:
the same code, with nothing wrapped.
"""

from __future__ import annotations

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
    fit_sequence,
    last_token_index,
    num_batches,
    sequence_suffix,
    split_by_prompt,
)
from training.ml.device import (
    autocast,
    device_name,
    pick_device,
    quiet_transformers,
    seeded,
)
from training.ml.parallel import (
    Placement,
    all_gather_objects,
    all_reduce_sum,
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
from training.ml.prompts import sequence_prefix
from training.ml.publishing import write_config_normalization
from training.ml.records import PreferencePair, Prompt
from training.ml.weights import apply_lora, is_peft, lora_config, save_full_model, source_dtype

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
    margins: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bradley-Terry loss on reward differences ``d = r_chosen - r_rejected``.

    Per pair: ``-logsigmoid(d - m)`` with ``m`` the pair's margin (Llama 2's m(r) from
    preference strength; 0 without ``margins``: plain Bradley-Terry); for a tie pair
    ``-0.5*logsigmoid(d) - 0.5*logsigmoid(-d)`` (``soft_label``), ``d**2`` (``squared``) or 0
    (``drop``). Each is multiplied by its weight, then ``reduction="mean"`` divides the sum by
    the number of pairs (all weights 1 give the plain mean; a weight-0.5 pair counts half
    whatever else is in the batch) and ``"sum"`` does not.
    """
    d = r_chosen.float() - r_rejected.float()
    per_pair = -F.logsigmoid(d if margins is None else d - margins.to(d))
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
    """The final linear layer producing the score (``score`` in decoder models; the trained
    copy of a LoRA model's ``score``)."""
    if is_peft(model):
        model = model.get_base_model()
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if head is not None and hasattr(head, "modules_to_save"):  # peft's trained copy
            head = head.modules_to_save[head.active_adapter]
            if isinstance(head, nn.Linear):
                return head
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


def reward_model_config(name_or_path: str | Path, *, pad_token_id: int | None) -> Any:
    """The transformers config of a reward model on ``name_or_path``: 1 label, dropout 0."""
    config = AutoConfig.from_pretrained(str(name_or_path), num_labels=1)
    disable_dropout_in_config(config)
    config.pad_token_id = pad_token_id
    return config


def load_reward_backbone(
    name_or_path: str | Path,
    *,
    seed: int,
    lora: RewardModelConfig | None = None,
    device: torch.device | None = None,
) -> tuple[nn.Module, Any, list]:
    """Load ``AutoModelForSequenceClassification`` (1 label, fp32, dropout 0) and init its head.

    ``lora`` (a config with ``use_lora``): LoRA adapters with the head trained in full; on CUDA
    the frozen base is then loaded in bf16. Returns ``(model, tokenizer, names of the dropout
    settings zeroed)``.
    """
    tokenizer = load_tokenizer(name_or_path, padding_side=None)  # as saved: collate pads
    config = AutoConfig.from_pretrained(str(name_or_path), num_labels=1)
    zeroed = disable_dropout_in_config(config)
    config.pad_token_id = tokenizer.pad_token_id
    use_lora = lora is not None and lora.use_lora
    dtype = frozen_dtype(device) if use_lora and device is not None else torch.float32
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(name_or_path), config=config, dtype=dtype
        )
    for module in model.modules():  # some architectures hard-code their dropout
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    init_reward_head(model, seed=seed)
    if use_lora:
        model = apply_lora(model, lora, "SEQ_CLS")
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
    architectures (encoders, which pool their first token: [CLS], see
    ``training.ml.data.encode_sequences``) fall back to the model's own logits.
    """
    inner = model.get_base_model() if is_peft(model) else model
    head = getattr(inner, "score", None)
    if head is None or not (isinstance(head, nn.Linear) or hasattr(head, "modules_to_save")):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits.float().sum(-1)  # the one label (a new tensor, not a view)
    backbone = inner.base_model
    kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if position_ids is not None and _accepts_position_ids(backbone):
        kwargs["position_ids"] = position_ids
    hidden = backbone(**kwargs, use_cache=False)[0]
    index = last_token_index(attention_mask).to(hidden.device)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
    head_dtype = next(head.parameters()).dtype
    with torch.autocast(device_type=pooled.device.type, enabled=False):
        # sum over the one output: a new tensor, not a view (FSDP2 hooks the root's output)
        return head(pooled.float().to(head_dtype)).float().sum(-1)


class LastTokenScorer(nn.Module):
    """``nn.Module`` view of :func:`sequence_scores`: ``scorer(input_ids, attention_mask,
    position_ids) -> [batch]`` raw rewards.

    Training and scoring run through this wrapper so that FSDP2 (``training.ml.parallel``)
    shards one root module whose ``forward`` does the whole computation.
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


def _pair_margins(
    pairs: Sequence[EncodedPair], *, config: RewardModelConfig, device: torch.device
) -> torch.Tensor | None:
    """Each pair's margin m(r), or None when the config turns them off or none is set."""
    values = [getattr(p, "margin", 0.0) for p in pairs]
    if not getattr(config, "use_margins", True) or not any(values):
        return None
    return torch.tensor(values, dtype=torch.float32, device=device)


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
    placement: Placement | None = None,
) -> dict[str, float]:
    """One optimiser step on ``pairs`` (micro-batched if configured); returns ``reward/*``.

    ``pairs`` is the global batch, the same on every process; this one takes every N-th pair
    (:func:`~training.ml.parallel.equal_shares`: padded with a weight-0 pair so that every
    process runs as many micro-batches). Its loss, the sum over its pairs divided by
    ``len(pairs)``, is backpropagated times N and the gradients averaged over the processes
    (FSDP2's reduce-scatter, or :func:`~training.ml.parallel.reduce_gradients` for replicas):
    the gradient of the global batch's mean loss, as in one process. The metrics cover the
    global batch (scores gathered from every process).
    """
    placement = placement or Placement(device=device)
    optimizer.zero_grad(set_to_none=True)
    share = equal_shares(pairs, placement.world)
    micro = config.micro_batch_size or len(share.items)
    rows: list[tuple[float, float, bool]] = []
    loss_total = 0.0
    for chunk, real in zip(chunks(share.items, micro), chunks(share.real, micro), strict=True):
        rc, rr = _forward_pairs(scorer, chunk, pad_token_id=pad_token_id, device=device)
        weights, ties = _pair_tensors(chunk, use_weights=config.use_weights, device=device)
        keep = torch.tensor(real, dtype=torch.float32, device=device)
        weights = keep if weights is None else weights * keep
        loss = preference_loss(
            rc,
            rr,
            weights=weights,
            ties=ties,
            tie_loss=config.tie_loss,
            reduction="sum",
            margins=_pair_margins(chunk, config=config, device=device),
        ) / len(pairs)
        (loss * loss_scale(placement)).backward()
        loss_total += loss.item()
        for c, r, pair, is_real in zip(
            rc.detach().float().tolist(), rr.detach().float().tolist(), chunk, real, strict=True
        ):
            if is_real:
                rows.append((c, r, pair.tie))
    params = [p for group in optimizer.param_groups for p in group["params"]]  # the shards
    reduce_gradients(params, placement)
    grad_norm = clip_grad_norm(params, config.max_grad_norm)
    optimizer.step()
    if placement.world.size > 1:
        rows = [row for shard in all_gather_objects(rows, placement) for row in shard]
        loss_total = float(all_reduce_sum([loss_total], placement)[0])
    rc_all = torch.tensor([c for c, _, _ in rows])
    rr_all = torch.tensor([r for _, r, _ in rows])
    ties_all = torch.tensor([t for _, _, t in rows], dtype=torch.bool)
    metrics = pair_metrics(rc_all, rr_all, ties=ties_all, prefix="reward")
    metrics["reward/loss"] = loss_total
    metrics["reward/grad_norm"] = grad_norm
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
    placement: Placement | None = None,
) -> dict[str, float]:
    """Loss and :func:`pair_metrics` (with accuracy per round) on ``pairs``, no gradients.

    Several processes: each scores every N-th pair (padded to equal shares, since a sharded
    scorer needs every process in every forward pass) and the scores are all-gathered, so every
    process returns the metrics of the whole set.
    """
    placement = placement or Placement(device=device)
    rc, rr = torch.zeros(0), torch.zeros(0)
    if pairs:
        share = equal_shares(pairs, placement.world)
        was_training = scorer.training
        scorer.eval()
        rcs, rrs = [], []
        with torch.no_grad():
            for chunk in chunks(share.items, config.eval_batch_size):
                check_stop(should_stop, _CANCELLED)
                c, r = _forward_pairs(scorer, chunk, pad_token_id=pad_token_id, device=device)
                rcs.append(c.cpu())
                rrs.append(r.cpu())
        scorer.train(was_training)
        local = list(zip(torch.cat(rcs).tolist(), torch.cat(rrs).tolist(), strict=True))
        scores = _gather_strided(local[: share.num_real], placement)
        rc = torch.tensor([c for c, _ in scores])
        rr = torch.tensor([r for _, r in scores])
    weights, ties = _pair_tensors(pairs, use_weights=config.use_weights, device=torch.device("cpu"))
    metrics = pair_metrics(rc, rr, ties=ties, rounds=[p.round for p in pairs], prefix=prefix)
    loss_ties = ties if config.tie_loss != "drop" else torch.zeros_like(ties)
    keep = ties.logical_not() | loss_ties
    margins = _pair_margins(pairs, config=config, device=torch.device("cpu"))
    if keep.any():
        metrics[f"{prefix}/loss"] = preference_loss(
            rc[keep],
            rr[keep],
            weights=None if weights is None else weights[keep],
            ties=loss_ties[keep],
            tie_loss=config.tie_loss,
            margins=None if margins is None else margins[keep],
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
    placement: Placement | None = None,
) -> RewardNormalization:
    """Offset and scale making the raw scores of ``samples`` mean 0, std 1 (population std).

    At most ``config.reference_max_samples`` samples are used (a seeded random subset); none
    (``reference_max_samples: 0`` or no samples) gives the identity. A constant score gives
    scale 1. Several processes: each scores every N-th sample and the scores are all-gathered,
    so every process fits the same normalisation on all of them.
    """
    placement = placement or Placement(device=device)
    samples = list(samples)
    if len(samples) > config.reference_max_samples:
        samples = random.Random(config.seed).sample(samples, config.reference_max_samples)
    if not samples:
        return RewardNormalization(source="none")
    encoded = encode_sequences(
        tokenizer,
        [p for p, _ in samples],
        [c for _, c in samples],
        max_length=config.max_length,
        append_eos=config.append_eos,
    )
    share = equal_shares([e.input_ids for e in encoded], placement.world)
    was_training = scorer.training
    scorer.eval()
    raw = _score_sequences(
        scorer,
        share.items,
        pad_token_id=tokenizer.pad_token_id,
        batch_size=config.eval_batch_size,
        device=device,
        should_stop=should_stop,
    )
    scorer.train(was_training)
    raw = _gather_strided(raw[: share.num_real], placement)
    offset = statistics.fmean(raw)
    scale = statistics.pstdev(raw) if len(raw) > 1 else 0.0
    if not scale > 1e-8:
        scale = 1.0
    return RewardNormalization(offset=offset, scale=scale, source=source, num_samples=len(raw))


def _gather_strided(local: list[Any], placement: Placement) -> list[Any]:
    """Inverse of ``items[rank::size]``: every process gets the whole list in its original
    order."""
    shards = all_gather_objects(local, placement)
    total = sum(len(shard) for shard in shards)
    size = placement.world.size
    return [shards[i % size][i // size] for i in range(total)]


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
    checkpoint_dir: str | Path | None = None,
) -> RewardModelResult:
    """Train a reward model on ``pairs`` from ``base_model`` and write it to ``output_dir``.

    ``reference_samples``: (prompt, completion) pairs from the reference policy on the campaign's
    prompts, used to normalise the reward; without them the training pairs' chosen and rejected
    completions are used (noted in the result). ``on_progress(step, total, metrics)`` is called
    after every optimiser step with ``reward/*`` metrics, then once more with ``step == total``
    carrying the ``eval/*`` metrics. ``should_stop()`` is polled between steps (and batches of
    evaluation/normalisation); True raises :class:`TrainingCancelled` and nothing is written.
    ``metadata`` (e.g. the data snapshot id) is copied into ``reward_model.json``.
    ``checkpoint_dir``: where the training state is saved every ``config.checkpoint_every``
    steps and resumed from if a checkpoint is there (``training.ml.checkpoint``); removed once
    the model is published.

    The directory is written to a hidden temp sibling and renamed into place when complete
    (an existing ``output_dir`` is replaced).

    Inside an initialised ``torch.distributed`` process group (``torchrun``, see
    ``training.ml.launch``) every rank calls this with the same arguments and trains as the
    module docstring says; only rank 0 calls ``on_progress`` and writes ``output_dir``, every
    rank returns the same metrics. ``should_stop`` must then be None: the launcher cancels by
    terminating the processes. ``check_replicas`` (a debug aid, for ``shard: none``): every
    rank hashes its parameters after training, a mismatch raises, and the hashes are returned
    in ``result.replica_checksums`` (sharded: one hash, of the gathered model).
    """
    from training.ml.checkpoint import Checkpointer  # torch.distributed.checkpoint: lazily

    config = config or RewardModelConfig()
    output_dir = Path(output_dir).resolve()
    started = time.perf_counter()
    placement = placement_for(config)
    world, device = placement.world, placement.device
    notes: list[str] = []
    if not pairs:
        raise ValueError("no preference pairs to train on")
    if world.size > 1:
        if should_stop is not None:
            raise ValueError("should_stop is not polled under torchrun: terminate the processes")
        if not world.is_main:
            on_progress = None

    # -- data (plumbing) --
    train_pairs, eval_pairs = split_by_prompt(
        pairs, eval_fraction=config.eval_fraction, seed=config.seed
    )
    model, tokenizer, zeroed = load_reward_backbone(
        base_model, seed=config.seed, lora=config, device=device
    )
    if zeroed:
        notes.append(f"dropout set to 0: {', '.join(zeroed)}")
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        notes.append("tokenizer has PAD == EOS; scores are read via the attention mask")
    notes.extend(sequence_format_notes(tokenizer))
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
    scorer = LastTokenScorer(model)  # the root module FSDP2 shards
    scorer.train()  # dropout probabilities are all 0, so train() == eval() numerically
    scorer = prepare_trained(scorer, placement)
    if world.size > 1:
        per_rank = math.ceil(config.batch_size / world.size)
        notes.append(
            f"data parallel on {world.size} processes ({placement.describe()}): global batch "
            f"{config.batch_size} pairs, up to {per_rank} per process and step"
        )
    elif placement.gradient_checkpointing:
        notes.append("gradient checkpointing on")
    if config.use_lora:
        notes.append(f"LoRA r={config.lora_r} alpha={config.lora_alpha}; head trained in full")
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
    checkpoints = Checkpointer(
        Path(checkpoint_dir) if checkpoint_dir else None, config.checkpoint_every, placement
    )
    resumed = checkpoints.load_latest(modules=scorer, optimizer=optimizer)
    step = int(resumed["step"]) if resumed else 0
    history: list[dict[str, float]] = list(resumed["history"]) if resumed else []
    if resumed:
        notes.append(f"resumed from the checkpoint of step {step}")
    pad_id = tokenizer.pad_token_id
    for epoch in range(config.num_epochs):
        shuffle_seed = config.seed * 1_000_003 + epoch
        epoch_batches = batches(len(train_enc), config.batch_size, shuffle_seed=shuffle_seed)
        for index_in_epoch, index in enumerate(epoch_batches):
            if epoch * steps_per_epoch + index_in_epoch < step:
                continue  # done before the checkpoint this run resumed from
            check_stop(should_stop, _CANCELLED)
            lr = config.learning_rate * lr_multiplier(
                step, total=total, warmup=warmup, schedule=config.lr_schedule
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            metrics = train_step(
                scorer,
                optimizer,
                [train_enc[i] for i in index],
                config=config,
                pad_token_id=pad_id,
                device=device,
                placement=placement,
            )
            step += 1
            metrics["reward/lr"] = lr
            metrics["reward/epoch"] = epoch + index_in_epoch / steps_per_epoch
            history.append(metrics)
            if on_progress is not None:
                on_progress(step, total, metrics)
            if checkpoints.due(step, total):
                checkpoints.save(
                    step, modules=scorer, optimizer=optimizer, state={"history": history}
                )
    last_epoch = history[-steps_per_epoch:]

    # -- evaluation and normalisation --
    checksums: list[str] = []
    if check_replicas:
        if placement.sharded:
            from training.ml.parallel import full_state_dict

            state = full_state_dict(scorer, placement)
            checksums = [_state_checksum(state)] if world.is_main else []
            checksums = all_gather_objects(checksums, placement)[0]
        else:
            checksums = all_gather_objects(parameter_checksum(model), placement)
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
                placement=placement,
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
        placement=placement,
    )
    if normalization.source == "none":
        notes.append("reference_max_samples is 0: no reward normalisation (identity)")
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
    _save(
        scorer,
        tokenizer,
        result,
        config=config,
        base_model=base_model,
        metadata=metadata,
        placement=placement,
    )
    checkpoints.remove()
    return result


def _state_checksum(state: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def sequence_format_notes(tokenizer: Any) -> list[str]:
    """What the job log should say about how sequences are framed: an encoder's [CLS]/[SEP]
    instead of BOS/EOS, and where the score is read."""
    if tokenizer.eos_token_id is None and getattr(tokenizer, "sep_token_id", None) is not None:
        return [
            f"encoder tokenizer without BOS/EOS: sequences framed as {tokenizer.cls_token} "
            f"prompt completion {tokenizer.sep_token}; the score is the model's pooled "
            f"{tokenizer.cls_token} output"
        ]
    return []


def _save(
    scorer: nn.Module,
    tokenizer: Any,
    result: RewardModelResult,
    *,
    config: RewardModelConfig,
    base_model: str | Path,
    metadata: Mapping[str, Any] | None,
    placement: Placement,
) -> None:
    """Rank 0 writes the model (gathered from the shards, LoRA merged, in the base's dtype),
    its tokenizer and the two JSON files to a temp sibling, then renames it into place. Every
    process calls this (gathering is collective)."""
    staging = staging_dir_for(result.output_dir) if placement.world.is_main else None
    try:
        hf_config = reward_model_config(base_model, pad_token_id=tokenizer.pad_token_id)

        def template() -> nn.Module:
            model = AutoModelForSequenceClassification.from_config(hf_config)
            if config.use_lora:
                from peft import get_peft_model

                model = get_peft_model(model, lora_config(config, "SEQ_CLS"))
            return model

        save_full_model(
            scorer,
            placement,
            directory=staging,
            build_template=template,
            prefix="model.",
            dtype=source_dtype(hf_config),
        )
        if staging is None:
            return
        with quiet_transformers():
            tokenizer.save_pretrained(staging)
        (staging / NORMALIZATION_FILE).write_text(
            json.dumps(asdict(result.normalization), indent=2) + "\n"
        )
        # The same normalisation in config.json, as OpenRLHF reads it (mean/std).
        write_config_normalization(
            staging, offset=result.normalization.offset, scale=result.normalization.scale
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
        if staging is not None:
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
    scorer: nn.Module | None = None
    """the module every scoring pass runs (FSDP2's root when sharded); default
    ``LastTokenScorer(model)``"""

    def __post_init__(self) -> None:
        if self.scorer is None:
            self.scorer = LastTokenScorer(self.model)

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
        return self.raw_scores_of_ids([e.input_ids for e in encoded], batch_size)

    def raw_scores_of_tokens(
        self,
        prompt_ids: Sequence[Sequence[int]],
        completion_ids: Sequence[Sequence[int]],
        batch_size: int = 32,
    ) -> list[float]:
        """Unnormalised scores of token ids in this model's vocabulary (a policy sharing its
        tokenizer: the very tokens it saw and wrote, no re-tokenising), framed as in training:
        BOS/[CLS] first unless there already, the end-of-turn token appended unless there
        already, the prompt cut on its left to fit ``max_length``."""
        prefix_id = sequence_prefix(self.tokenizer)
        suffix = sequence_suffix(self.tokenizer, append_eos=self.append_eos)
        sequences = []
        for prompt, completion in zip(prompt_ids, completion_ids, strict=True):
            prompt, completion = list(prompt), list(completion)
            if prefix_id is not None and prompt[:1] == [prefix_id]:
                prompt = prompt[1:]
            if suffix and completion[-1:] == suffix:
                completion = completion[:-1]
            prefix = [prefix_id] if prefix_id is not None else []
            fitted = fit_sequence(
                prompt, completion, max_length=self.max_length, prefix=prefix, suffix=suffix
            )
            sequences.append(fitted.input_ids)
        return self.raw_scores_of_ids(sequences, batch_size)

    def raw_scores_of_ids(self, sequences: Sequence[Sequence[int]], batch_size: int) -> list[float]:
        assert self.scorer is not None
        return _score_sequences(
            self.scorer,
            sequences,
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


def read_normalization(model_dir: str | Path) -> RewardNormalization:
    """The normalisation stored beside a reward model's weights (identity when there is none)."""
    path = Path(model_dir) / NORMALIZATION_FILE
    if not path.exists():
        return RewardNormalization()
    return RewardNormalization(**json.loads(path.read_text()))


def load_reward_model(
    model_dir: str | Path, *, device: str | None = None, placement: Placement | None = None
) -> RewardModel:
    """Load a directory written by :func:`train_reward_model` (or any 1-label HF classifier:
    then normalisation is the identity and ``max_length`` the tokenizer's, capped at 2048).

    Frozen: loaded in bf16 on CUDA (``training.ml.parallel.frozen_dtype``), fp32 elsewhere; with
    a sharding ``placement`` its scorer is sharded like the trained models (then every process
    must score as many batches).
    """
    model_dir = Path(model_dir)
    torch_device = placement.device if placement is not None else pick_device(device)
    tokenizer = load_tokenizer(model_dir, padding_side=None)
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), dtype=frozen_dtype(torch_device)
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    scorer = LastTokenScorer(model)
    scorer = prepare_frozen(scorer, placement or Placement(device=torch_device))
    normalization = read_normalization(model_dir)
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
        scorer=scorer,
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
