"""PPO for RLHF, in one file that reads top to bottom (cleanrl style; no TRL).

Following "The N Implementation Details of RLHF with PPO" (Huang et al.) and Ziegler et al. 2019:

* rollout: sample a completion per prompt (temperature, top-p), truncate at the first EOS (or
  the chat template's end-of-turn token), score what the policy saw (the truncated query) and
  wrote, and subtract a penalty from the score of completions that never stop (TRL's
  ``missing_eos_penalty``);
* log-probs of the policy and of a frozen reference recomputed on ``[left-padded query |
  response]`` with position ids from the attention mask and ``logits / temperature``;
* reward per token: ``r_t = -β (log π(a_t|s_t) - log π_ref(a_t|s_t))`` on every response token,
  plus the normalised reward-model score on the last one; β fixed or adaptive (target KL, horizon);
* advantages: GAE (gamma = 1, λ = 0.95) on per-token values from a value model initialised from the
  reward model (its head rescaled by the reward's normalisation, so it predicts on the scale of
  its targets), whitened over the valid tokens;
* update: several epochs over minibatches of

      L = L_policy + c1 · L_VF + c2 · L_ENT

  where ``L_policy = mean(max(-A·r, -A·clip(r, 1-ε, 1+ε)))`` with ``r = π/π_old``,
  ``L_VF = ½ mean(max((V-R)², (V_old + clip(V-V_old, -ε_v, ε_v) - R)²))`` and
  ``L_ENT = -mean(entropy)``: the entropy enters with a minus sign, so minimising ``L`` with
  ``c2 > 0`` *raises* the entropy (a bonus). Means are over valid response tokens. Adam eps 1e-5,
  gradient clipping, dropout off.

Rollouts are sampled by Hugging Face ``generate`` on the policy itself or, where vLLM is installed
and the device is CUDA, by a colocated vLLM engine that gets the policy's weights after every
update (``training.ml.vllm_engine``; ``rollout_engine``); either way the log-probs of the loss
are recomputed here, and the run's notes and ``ppo_run.json`` say which engine sampled.

Sections marked "plumbing" load models, batch and save; the rest is the algorithm. Under
``torchrun`` the policy and the critic are sharded with FSDP2 and every process runs an equal
share of each rollout and minibatch (``training.ml.parallel``); actor and critic have their own
learning rates; the adaptive KL controller's horizon defaults to a tenth of the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from training.ml import device as device_lib
from training.ml.common import ProgressFn, StopFn, check_stop, load_tokenizer
from training.ml.config import PPOConfig
from training.ml.generation import HFEngine, decode_response, eos_token_ids
from training.ml.parallel import (
    Placement,
    all_gather_objects,
    all_reduce_sum,
    clip_grad_norm,
    eval_mode,
    frozen_dtype,
    loss_scale,
    placement_for,
    prepare_frozen,
    prepare_trained,
    reduce_gradients,
)
from training.ml.policy import (
    Prompt,
    QueryResponseBatch,
    build_query_response_batch,
    disable_dropout,
    encode_prompt,
    entropy_from_logits,
    load_causal_lm,
    position_ids_from_attention_mask,
    provenance,
    response_logprobs,
)
from training.ml.reward_model import (
    RewardModel,
    load_reward_model,
    read_normalization,
    reward_model_config,
)
from training.ml.sampling import SamplingSettings
from training.ml.vllm_engine import VLLMEngine, choose_engine, launch_vllm
from training.ml.weights import apply_lora, save_policy

RewardFn = Callable[[Sequence[Prompt], Sequence[str]], Sequence[float]]
"""A custom reward in place of a reward model: ``(prompts, completions) -> scores``."""

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "PPOResult",
    "annealed_learning_rate",
    "compute_rewards",
    "entropy_from_logits",
    "gae",
    "masked_mean",
    "masked_var",
    "ppo_policy_loss",
    "ppo_total_loss",
    "ppo_value_loss",
    "run_ppo",
    "whiten",
]


@dataclass
class PPOResult:
    """What :func:`run_ppo` returns."""

    output_dir: Path
    """the directory holding the new policy"""
    steps: int
    """PPO steps completed"""
    metrics: dict[str, float]
    """metrics of the last step"""
    history: list[dict[str, float]] = field(default_factory=list)
    """metrics of every step"""
    notes: list[str] = field(default_factory=list)
    """how the run was placed and its models initialised (for the job's log)"""


# ================================================================================================
# Algorithm: small functions on tensors (tests call these with hand-computed values)
# ================================================================================================


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over positions where ``mask`` is 1 (Bessel-corrected when ``unbiased``)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1).clamp(min=1)
    return var


def whiten(
    x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the valid positions; invalid positions become 0.

    ``shift_mean=False`` only rescales (the mean is added back), as for rewards.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def compute_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ``-β·(log π - log π_ref)`` plus ``scores`` on each row's last valid token.

    Shapes: scores (B,), the rest (B, T); ``mask`` is 1 on valid response tokens, which form a
    prefix of each row. Returns ``(rewards, kl)``, both (B, T) and 0 where ``mask`` is 0; ``kl`` is
    the per-token estimate ``log π - log π_ref`` (its row sum estimates KL(π‖π_ref)).
    """
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    has_tokens = mask.sum(dim=1) > 0
    rewards[rows, last] += scores.to(rewards.dtype) * has_tokens.to(rewards.dtype)
    return rewards, kl


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens; returns ``(advantages, returns)``.

    ``δ_t = r_t + gamma·V_{t+1} - V_t`` (``V`` past the last valid token is 0: the episode ends
    at EOS or at the length limit) and ``A_t = δ_t + gamma·λ·A_{t+1}``; ``returns = A + V``.
    All (B, T), 0 where ``mask`` is 0.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_advantage = (delta + gamma * lam * last_advantage) * mask[:, t]
        advantages[:, t] = last_advantage
    returns = (advantages + values) * mask
    return advantages, returns


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate ``mean(max(-A·r, -A·clip(r, 1-ε, 1+ε)))``, ``r = exp(logπ - logπ_old)``.

    Returns ``(loss, {"clipfrac", "approx_kl"})``: the fraction of tokens where the clipped term
    is the larger one, and ``mean((r - 1) - log r)`` (Schulman's low-variance KL(π_old‖π)
    estimator), both over valid tokens.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return loss, {"clipfrac": clipfrac, "approx_kl": approx_kl}


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ``½ mean(max((V - R)², (V_old + clip(V - V_old, ±ε_v) - R)²))``.

    Returns ``(loss, clipfrac)``: the fraction of valid tokens where the clipped error is larger.
    """
    delta = torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    values_clipped = old_values + delta
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((loss_clipped > loss_unclipped).to(values.dtype), mask)
    return loss, clipfrac


def ppo_total_loss(
    policy_loss: torch.Tensor,
    value_loss: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    *,
    vf_coef: float,
    ent_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, L_ENT)`` with ``L = L_policy + c1·L_VF + c2·L_ENT`` and ``L_ENT = -mean(entropy)``
    over valid tokens: minimising ``L`` with ``c2 > 0`` raises the entropy (a bonus)."""
    entropy_loss = -masked_mean(entropy, mask)
    return policy_loss + vf_coef * value_loss + ent_coef * entropy_loss, entropy_loss


def annealed_learning_rate(learning_rate: float, step: int, total_steps: int) -> float:
    """The learning rate of PPO step ``step`` (1-based) with ``anneal_lr``: linear from
    ``learning_rate`` at step 1 down to ``learning_rate / total_steps`` at the last step
    (it would reach 0 one step after the end)."""
    return learning_rate * (1 - (step - 1) / total_steps)


def apply_missing_eos_penalty(
    scores: torch.Tensor, eos: torch.Tensor, penalty: float | None
) -> torch.Tensor:
    """Subtract ``penalty`` (>= 0) from the score of every completion without EOS, TRL's
    ``missing_eos_penalty``: the reward model's judgement is kept, a completion that never
    stops is only worse by that much (``None`` or 0: no change)."""
    if not penalty:
        return scores
    if penalty < 0:
        raise ValueError("missing_eos_penalty must be >= 0: it is subtracted")
    return torch.where(eos, scores, scores - penalty)


def value_head_from_reward(
    weight: torch.Tensor, bias: torch.Tensor | None, *, offset: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A value head on the normalised reward's scale from the reward model's head: the reward
    model outputs ``w·h + b`` (raw), its scores are used as ``(raw - offset) / scale``, so the
    critic starts at ``(w / scale)·h + (b - offset) / scale`` and its step-1 targets (returns of
    normalised scores) are on the scale it predicts. Returns ``(weight, bias)``, (1, H) and (1,).
    """
    bias = torch.zeros(weight.shape[0], dtype=weight.dtype) if bias is None else bias
    return weight / scale, (bias - offset) / scale


class FixedKLController:
    """A constant β."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class AdaptiveKLController:
    """β adapted towards a target KL (Ziegler et al. 2019, "Fine-Tuning Language Models from
    Human Preferences", eq. 2):

        e = clip(KL / target - 1, -0.2, 0.2);    β ← β · (1 + e · n_steps / horizon)

    ``current_kl`` is the mean over episodes of the summed per-token KL; ``n_steps`` the number of
    episodes in the rollout.
    """

    def __init__(self, kl_coef: float, target: float = 6.0, horizon: int = 10000) -> None:
        self.value = kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value


# ================================================================================================
# Plumbing: models, reward scoring, batching
# ================================================================================================


@dataclass
class PPOModels:
    """Everything a PPO step touches."""

    policy: torch.nn.Module
    """the trained causal LM (a peft model under LoRA; FSDP2-sharded under ``shard: fsdp``)"""
    reference: torch.nn.Module | None
    """the frozen reference; ``None`` means the policy with its LoRA adapter disabled"""
    value: TokenValues
    """the critic: per-token values from a backbone and a linear head"""
    reward: RewardModel | None
    """the reward model with its normalisation (``training.ml.reward_model``)"""
    reward_fn: RewardFn | None
    """a custom reward used instead of ``reward`` (scores taken as already normalised)"""
    tokenizer: PreTrainedTokenizerBase
    placement: Placement
    reward_shares_vocab: bool = False
    """the reward model reads the policy's token ids as they are (same vocabulary)"""
    engine: HFEngine | VLLMEngine | None = None
    """what samples the rollouts (:func:`rollout_engine`); ``None``: HF generate on the policy"""

    @property
    def device(self) -> torch.device:
        return self.placement.device


class TokenValues(torch.nn.Module):
    """The critic: ``V(s_t)`` for every response token of a batch, the linear ``head`` (with a
    bias, fp32) on the hidden state that predicts token ``t`` (columns ``C-1 .. C+R-2``), so
    ``V_t`` sees the query and ``response[:t]``. One module whose ``forward`` does it all: the
    root FSDP2 shards."""

    def __init__(self, model: torch.nn.Module, head: torch.nn.Linear) -> None:
        super().__init__()
        self.model = model
        """the backbone (a transformer without its LM or score head; peft-wrapped under LoRA)"""
        self.head = head

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int
    ) -> torch.Tensor:
        hidden = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_attention_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state
        hidden = hidden[:, context_length - 1 : -1]
        with torch.autocast(device_type=hidden.device.type, enabled=False):  # the head in fp32
            # sum over the one output: a new tensor, not a view (FSDP2 hooks the root's output)
            return self.head(hidden.float().to(self.head.weight.dtype)).sum(-1)


def response_values(value_model: TokenValues, batch: QueryResponseBatch) -> torch.Tensor:
    """(B, R) fp32 values of the response tokens, 0 on padding."""
    values = value_model(batch.input_ids, batch.attention_mask, batch.context_length).float()
    return values * batch.response_mask.to(values.dtype)


def _same_dir(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def load_value_model(
    config: PPOConfig,
    *,
    policy_dir: str | Path,
    reward_model_dir: str | Path | None,
    tokenizer: PreTrainedTokenizerBase,
    dtype: torch.dtype = torch.float32,
) -> tuple[TokenValues, str]:
    """The critic and a line saying how it was initialised: the reward model's backbone with
    its head rescaled by the stored normalisation (:func:`value_head_from_reward`), or the
    policy's backbone with a zero head."""
    if config.value_init == "reward_model":
        if reward_model_dir is None:
            raise ValueError("value_init='reward_model' needs a reward model; use 'zero'")
        rm_vocab = AutoTokenizer.from_pretrained(reward_model_dir).get_vocab()
        if rm_vocab != tokenizer.get_vocab():
            raise ValueError(
                "value_init='reward_model' needs the reward model to share the policy's "
                "tokenizer; use value_init='zero'"
            )
        source = reward_model_dir
    elif config.value_init == "zero":
        source = policy_dir
    else:
        raise ValueError(f"unknown value_init {config.value_init!r}")
    hf_config = reward_model_config(source, pad_token_id=tokenizer.pad_token_id)
    with device_lib.quiet_transformers():  # from the policy the head is "missing": set below
        model = AutoModelForSequenceClassification.from_pretrained(
            str(source), config=hf_config, dtype=dtype
        )
    disable_dropout(model)
    score = model.score
    head = torch.nn.Linear(score.in_features, 1, bias=True, dtype=torch.float32)
    with torch.no_grad():
        if config.value_init == "reward_model":
            norm = read_normalization(reward_model_dir)
            weight, bias = value_head_from_reward(
                score.weight.float(),
                None if score.bias is None else score.bias.float(),
                offset=norm.offset,
                scale=norm.scale,
            )
            head.weight.copy_(weight)
            head.bias.copy_(bias)
            how = (
                f"value model from the reward model, head rescaled by its normalisation "
                f"(offset {norm.offset:.4g}, scale {norm.scale:.4g})"
            )
        else:
            head.weight.zero_()
            head.bias.zero_()
            how = "value model from the policy's backbone with a zero head"
    backbone = getattr(model, model.base_model_prefix)
    if config.use_lora:
        backbone = apply_lora(backbone, config, "FEATURE_EXTRACTION")
    else:
        backbone.requires_grad_(True)
    return TokenValues(backbone, head), how


def load_models(
    config: PPOConfig,
    *,
    policy_dir: str | Path,
    reference_dir: str | Path | None,
    reward_model_dir: str | Path | None,
    reward_fn: RewardFn | None = None,
    placement: Placement,
    notes: list[str] | None = None,
) -> PPOModels:
    """Load and place policy, reference, value model and reward model (dropout off everywhere).

    Trained models (policy, critic) keep fp32 weights; under LoRA their frozen base is bf16 on
    CUDA. The reference and the reward model are frozen, loaded in bf16 on CUDA, and sharded
    like the trained models under FSDP. Under LoRA with the starting policy as reference, the
    reference is the policy with its adapter off.
    """
    notes = notes if notes is not None else []
    reference_dir = reference_dir or policy_dir
    tokenizer = load_tokenizer(policy_dir, padding_side="left")
    trained_dtype = frozen_dtype(placement.device) if config.use_lora else torch.float32
    policy = load_causal_lm(policy_dir, trainable=True, dtype=trained_dtype)
    if config.use_lora:
        policy = apply_lora(policy, config, "CAUSAL_LM")
    value, how = load_value_model(
        config,
        policy_dir=policy_dir,
        reward_model_dir=reward_model_dir,
        tokenizer=tokenizer,
        dtype=trained_dtype,
    )
    notes.append(how)
    policy = prepare_trained(policy, placement)
    value = prepare_trained(value, placement)
    reference: torch.nn.Module | None
    if config.use_lora and _same_dir(reference_dir, policy_dir):
        reference = None
        notes.append("reference: the policy with its LoRA adapter off")
    else:
        reference = prepare_frozen(
            load_causal_lm(reference_dir, dtype=frozen_dtype(placement.device)), placement
        )
    reward = None
    if reward_fn is None:
        reward = load_reward_model(reward_model_dir, placement=placement)
    shares = reward is not None and reward.tokenizer.get_vocab() == tokenizer.get_vocab()
    if reward is not None:
        notes.append(
            "reward model scores the policy's own tokens (truncated query and response)"
            if shares
            else "reward model has another vocabulary: it scores the text of the truncated "
            "query the policy saw and of the response"
        )
    return PPOModels(
        policy=policy,
        reference=reference,
        value=value,
        reward=reward,
        reward_fn=reward_fn,
        tokenizer=tokenizer,
        placement=placement,
        reward_shares_vocab=shares,
    )


def reference_logprobs(
    models: PPOModels, batch: QueryResponseBatch, temperature: float
) -> torch.Tensor:
    """log π_ref of the response tokens: the reference model, or the policy with LoRA off."""
    if models.reference is None:
        with models.policy.disable_adapter():
            return response_logprobs(models.policy, batch, temperature=temperature)[0]
    return response_logprobs(models.reference, batch, temperature=temperature)[0]


def prompt_batches(num_prompts: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless batches of prompt indices: shuffled epochs, each prompt once per epoch."""
    if num_prompts == 0:
        raise ValueError("no prompts")
    rng = random.Random(seed)
    pending: list[int] = []
    while True:
        while len(pending) < batch_size:
            epoch = list(range(num_prompts))
            rng.shuffle(epoch)
            pending.extend(epoch)
        yield pending[:batch_size]
        pending = pending[batch_size:]


def derived_seed(seed: int, *parts: int) -> int:
    """A seed for one draw of the run (a step's sampling chunk, an epoch's minibatch order):
    a function of the run's seed and where it is, not of what was drawn before, so a resumed
    run and a run split over processes draw what an uninterrupted single process draws."""
    value = seed
    for part in parts:
        value = (value * 1_000_003 + part + 1) % (2**61 - 1)
    return value


def masked_moments(
    x: torch.Tensor, mask: torch.Tensor, placement: Placement
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (Bessel-corrected) variance of ``x`` over the valid positions of every
    process: what :func:`masked_mean` and :func:`masked_var` give on one process."""
    m = mask.to(x.dtype)
    total, count = all_reduce_sum([float((x * m).sum()), float(m.sum())], placement).tolist()
    mean = total / max(count, 1.0)
    squares = float(all_reduce_sum([float((((x - mean) ** 2) * m).sum())], placement)[0])
    var = squares / max(count, 1.0) * count / max(count - 1.0, 1.0)
    return torch.tensor(mean, dtype=x.dtype), torch.tensor(var, dtype=x.dtype)


def whiten_over_processes(
    x: torch.Tensor, mask: torch.Tensor, placement: Placement, eps: float = 1e-8
) -> torch.Tensor:
    """:func:`whiten` with the statistics of the whole rollout (every process's share)."""
    if placement.world.size == 1:
        return whiten(x, mask, eps=eps)
    mean, var = masked_moments(x, mask, placement)
    return (x - mean) * torch.rsqrt(var + eps) * mask.to(x.dtype)


# ================================================================================================
# Algorithm: rollout and update
# ================================================================================================


@dataclass
class Rollout:
    """One rollout (this process's share of it): episodes with everything the update needs
    (tensors on the model device)."""

    batch: QueryResponseBatch
    logprobs: torch.Tensor
    """(B, R) log π_old of the response tokens (temperature-scaled)"""
    ref_logprobs: torch.Tensor
    """(B, R) log π_ref of the response tokens (temperature-scaled)"""
    values: torch.Tensor
    """(B, R) V_old"""
    entropy: torch.Tensor
    """(B, R) per-token entropy of π_old"""
    scores: torch.Tensor
    """(B,) the score used as the final reward: normalised RM score minus the no-EOS penalty"""
    rm_raw: torch.Tensor
    """(B,) raw reward-model output"""
    rm_normalized: torch.Tensor
    """(B,) normalised reward-model score (before the no-EOS penalty)"""
    eos: torch.Tensor
    """(B,) whether each completion emitted EOS"""
    generated_tokens: int
    """response tokens generated (up to and including EOS)"""
    generation_seconds: float
    """wall time of sampling"""


def episode_share(num_episodes: int, placement: Placement) -> range:
    """The episodes of a rollout this process samples: its contiguous block of
    ``num_episodes / world.size`` (a multiple of the world size, checked by :func:`run_ppo`)."""
    per_rank = num_episodes // placement.world.size
    return range(placement.world.rank * per_rank, (placement.world.rank + 1) * per_rank)


@torch.no_grad()
def rollout(
    models: PPOModels,
    prompts: Sequence[Prompt],
    config: PPOConfig,
    *,
    step: int = 1,
    should_stop: StopFn | None = None,
) -> Rollout:
    """Sample, score and evaluate this process's share of one batch of episodes (no
    gradients). ``prompts`` is the step's global batch; the sampling of each chunk of
    ``forward_batch_size`` episodes is seeded by (seed, step, first episode)."""
    tokenizer, device, placement = models.tokenizer, models.device, models.placement
    queries = [encode_prompt(tokenizer, p) for p in prompts]
    if config.max_prompt_tokens is not None:
        queries = [q[-config.max_prompt_tokens :] for q in queries]
    all_queries = [q for q in queries for _ in range(config.samples_per_prompt)]
    episode_prompts = [p for p in prompts for _ in range(config.samples_per_prompt)]
    share = episode_share(len(all_queries), placement)
    queries = [all_queries[i] for i in share]
    episode_prompts = [episode_prompts[i] for i in share]

    engine = models.engine or hf_engine(models, config)
    settings = SamplingSettings(
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        eos_token_ids=tuple(sorted(eos_token_ids(tokenizer, models.policy))),
    )
    start = time.perf_counter()
    with eval_mode(models.policy):  # generate with its KV cache, even under checkpointing
        sampled = engine.sample_share(
            all_queries,
            share,
            settings,
            seed_of=lambda first: derived_seed(config.seed, step, first),
            should_stop=should_stop,
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    generation_seconds = time.perf_counter() - start
    check_stop(should_stop, "PPO stopped after generation")

    batch = build_query_response_batch(
        queries, sampled.responses, pad_token_id=tokenizer.pad_token_id
    ).to(device)
    entropy_mode = True if config.ent_coef else "detached"
    parts: dict[str, list[torch.Tensor]] = {"lp": [], "ref": [], "v": [], "ent": []}
    for i in range(0, len(queries), config.forward_batch_size):
        sub = batch.select(slice(i, i + config.forward_batch_size))
        with device_lib.autocast(device):
            logprobs, entropy = response_logprobs(
                models.policy, sub, temperature=config.temperature, with_entropy=entropy_mode
            )
            parts["lp"].append(logprobs)
            parts["ent"].append(entropy)
            parts["ref"].append(reference_logprobs(models, sub, config.temperature))
            parts["v"].append(response_values(models.value, sub))

    rm_raw, rm_normalized = score_episodes(
        models, episode_prompts, queries, sampled.responses, config.reward_batch_size
    )
    eos = torch.tensor(sampled.eos, dtype=torch.bool)
    scores = apply_missing_eos_penalty(rm_normalized, eos, config.missing_eos_penalty)
    return Rollout(
        batch=batch,
        logprobs=torch.cat(parts["lp"]),
        ref_logprobs=torch.cat(parts["ref"]),
        values=torch.cat(parts["v"]),
        entropy=torch.cat(parts["ent"]),
        scores=scores.to(device),
        rm_raw=rm_raw,
        rm_normalized=rm_normalized,
        eos=eos,
        generated_tokens=sum(len(r) for r in sampled.responses),
        generation_seconds=generation_seconds,
    )


def hf_engine(models: PPOModels, config: PPOConfig) -> HFEngine:
    """Hugging Face generate on the policy, ``forward_batch_size`` episodes per call, every
    process stepping until all are done when the policy is sharded."""
    return HFEngine(
        models.policy,
        pad_token_id=models.tokenizer.pad_token_id,
        batch_size=config.forward_batch_size,
        device=models.device,
        synced_gpus=models.placement.sharded,
    )


def rollout_engine(
    models: PPOModels, config: PPOConfig, *, policy_dir: str | Path
) -> HFEngine | VLLMEngine:
    """The engine ``config.rollout_engine`` chooses on this device: HF generate on the policy,
    or vLLM on the starting policy's directory, colocated with the trainer (every process of
    the node, one tensor-parallel group) and asleep until the first rollout."""
    placement = models.placement
    if choose_engine(config.rollout_engine, placement.device) == "hf":
        return hf_engine(models, config)
    return launch_vllm(
        policy_dir,
        device=placement.device,
        dtype=frozen_dtype(placement.device),
        gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        seed=config.seed,
        world=placement.world,
        colocated=True,
    )


def score_episodes(
    models: PPOModels,
    prompts: Sequence[Prompt],
    queries: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(raw, normalised)`` scores, (N,) fp32 on CPU, of what the policy saw and wrote: the
    truncated query (``max_prompt_tokens``), never the full original prompt, so a rollout's cost
    is bounded by ``max_prompt_tokens + max_new_tokens``. A reward model sharing the policy's
    vocabulary reads the very token ids; another reads their text. ``reward_fn`` gets the
    original prompts and the completions' text."""
    tokenizer = models.tokenizer
    completions = [decode_response(tokenizer, r) for r in responses]
    if models.reward_fn is not None:
        scores = torch.tensor([float(x) for x in models.reward_fn(prompts, completions)])
        return scores, scores
    assert models.reward is not None
    if models.reward_shares_vocab:
        raw = models.reward.raw_scores_of_tokens(queries, responses, batch_size)
    else:
        seen = [tokenizer.decode(list(q), skip_special_tokens=True) for q in queries]
        raw = models.reward.raw_scores(list(zip(seen, completions, strict=True)), batch_size)
    normalized = [models.reward.normalization.apply(r) for r in raw]
    return torch.tensor(raw), torch.tensor(normalized)


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def ppo_update(
    models: PPOModels,
    optimizer: torch.optim.Optimizer,
    roll: Rollout,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    config: PPOConfig,
    *,
    step: int = 1,
    should_stop: StopFn | None = None,
) -> dict[str, float]:
    """``ppo_epochs`` passes of minibatch gradient steps on ``L = L_policy + c1·L_VF + c2·L_ENT``;
    returns the mean of each loss statistic over all minibatches.

    Several processes: every global minibatch of ``mini_batch_size`` episodes takes an equal
    share from each process's rollout (its own episodes, in an order seeded by (seed, step,
    epoch)). The means of the loss are over the minibatch's valid tokens on every process, so
    each process scales its masked means by its share of those tokens, and the averaged
    gradients are the one-process gradients of that minibatch. Without an entropy bonus
    (``ent_coef`` 0) the entropy is a metric computed outside the graph.
    """
    placement = models.placement
    sums: dict[str, float] = {}
    count = 0
    episodes = roll.batch.input_ids.shape[0]
    local_mini = config.mini_batch_size // placement.world.size
    # the optimiser's own parameter objects: under FSDP2 ``module.parameters()`` returns the
    # gathered (unsharded) tensors of a root that has just run forward, whose gradients are not
    # the ones reduced into the shards
    policy_params, value_params = (group["params"] for group in optimizer.param_groups)
    entropy_mode = True if config.ent_coef else "detached"
    for epoch in range(config.ppo_epochs):
        generator = torch.Generator().manual_seed(derived_seed(config.seed, step, epoch))
        order = torch.randperm(episodes, generator=generator).to(models.device)
        for start in range(0, episodes, local_mini):
            check_stop(should_stop, "PPO stopped during the update")
            idx = order[start : start + local_mini]
            sub = roll.batch.select(idx)
            mask = sub.response_mask
            local_tokens = float(mask.sum())
            global_tokens = float(all_reduce_sum([local_tokens], placement)[0])
            share = local_tokens / max(global_tokens, 1.0)
            with device_lib.autocast(models.device):
                logprobs, entropy = response_logprobs(
                    models.policy, sub, temperature=config.temperature, with_entropy=entropy_mode
                )
                values = response_values(models.value, sub)
            # --- the loss (fp32)
            policy_loss, policy_stats = ppo_policy_loss(
                logprobs, roll.logprobs[idx], advantages[idx], mask, config.clip_range
            )
            value_loss, value_clipfrac = ppo_value_loss(
                values, roll.values[idx], returns[idx], mask, config.clip_range_value
            )
            loss, entropy_loss = ppo_total_loss(
                policy_loss,
                value_loss,
                entropy,
                mask,
                vf_coef=config.vf_coef,
                ent_coef=config.ent_coef,
            )
            # --- the step (this process's share of the minibatch's mean, times the world size)
            optimizer.zero_grad(set_to_none=True)
            (loss * share * loss_scale(placement)).backward()
            reduce_gradients(policy_params + value_params, placement)
            policy_grad = clip_grad_norm(policy_params, config.max_grad_norm)
            value_grad = clip_grad_norm(value_params, config.max_grad_norm)
            optimizer.step()
            local = {
                "ppo/loss": loss,
                "ppo/policy_loss": policy_loss,
                "ppo/value_loss": value_loss,
                "ppo/entropy_loss": entropy_loss,
                "ppo/clipfrac": policy_stats["clipfrac"],
                "ppo/approx_kl": policy_stats["approx_kl"],
                "ppo/value_clipfrac": value_clipfrac,
            }
            keys = list(local)
            reduced = all_reduce_sum([float(local[k].detach()) * share for k in keys], placement)
            stats = dict(zip(keys, reduced.tolist(), strict=True))
            stats["ppo/policy_grad_norm"] = policy_grad
            stats["ppo/value_grad_norm"] = value_grad
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            count += 1
    return {key: total / count for key, total in sums.items()}


def rollout_metrics(
    roll: Rollout,
    rewards: torch.Tensor,
    kl: torch.Tensor,
    kl_coef: float,
    placement: Placement | None = None,
) -> dict[str, float]:
    """Per-step monitoring over the whole rollout (every process's share): reward, KL to the
    reference, β, entropy, length, EOS rate, values."""
    placement = placement or Placement(device=rewards.device)
    mask = roll.batch.response_mask
    lengths = mask.sum(dim=1).float()
    per_episode = {
        "ppo/reward_raw": roll.rm_raw.float(),
        "ppo/reward_normalized": roll.rm_normalized.float(),
        "ppo/score": roll.scores.float().cpu(),
        "ppo/reward_total": rewards.sum(dim=1).float().cpu(),
        "ppo/kl_ref": kl.sum(dim=1).float().cpu(),
        "ppo/response_length": lengths.cpu(),
        "ppo/eos_rate": roll.eos.float(),
    }
    per_token = {"ppo/entropy": roll.entropy, "ppo/value_mean": roll.values}
    m = mask.float()
    keys = [*per_episode, *per_token]
    local = [float(v.sum()) for v in per_episode.values()]
    local += [float((v.float() * m).sum()) for v in per_token.values()]
    local += [float(len(lengths)), float(m.sum()), float(roll.generated_tokens)]
    totals = all_reduce_sum(local, placement).tolist()
    episodes, tokens, generated = totals[-3:]
    metrics = {
        key: totals[i] / max(episodes if i < len(per_episode) else tokens, 1.0)
        for i, key in enumerate(keys)
    }
    seconds = max(all_gather_objects(roll.generation_seconds, placement))
    metrics["ppo/beta"] = kl_coef
    metrics["ppo/rollout_tokens"] = generated
    metrics["ppo/rollout_tokens_per_s"] = generated / max(seconds, 1e-9)
    return metrics


# ================================================================================================
# Entry point
# ================================================================================================


def check_split(config: PPOConfig, placement: Placement) -> None:
    """Refuse batch sizes the processes cannot share equally (every process must run as many
    forward passes of a sharded model)."""
    size = placement.world.size
    episodes = config.rollout_batch_size * config.samples_per_prompt
    if episodes % size or config.mini_batch_size % size:
        raise ValueError(
            f"on {size} processes, rollout_batch_size x samples_per_prompt ({episodes}) and "
            f"mini_batch_size ({config.mini_batch_size}) must be multiples of {size}"
        )


def run_ppo(
    *,
    policy_dir: str | Path,
    reference_dir: str | Path | None,
    reward_model_dir: str | Path | None,
    prompts: Sequence[Prompt],
    output_dir: str | Path,
    config: PPOConfig | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    metadata: Mapping[str, Any] | None = None,
    reward_fn: RewardFn | None = None,
    checkpoint_dir: str | Path | None = None,
) -> PPOResult:
    """Train the policy in ``policy_dir`` with PPO against the reward model; save it to
    ``output_dir`` (which must not exist yet; it appears only when training completed).

    ``reference_dir`` is the frozen KL reference (``None``: the starting policy; for iterated
    rounds pass the round-0 base). ``prompts`` are strings or chat-message lists. Exactly one of
    ``reward_model_dir`` and ``reward_fn`` (a custom reward, e.g. the synthetic gold score; needs
    ``value_init="zero"``) gives the scores.
    ``on_progress(step, total, metrics)`` is called after every step; ``should_stop()`` is polled
    between and within steps, and a true answer raises :class:`TrainingCancelled` with nothing
    written. ``metadata`` (e.g. the data snapshot id, the round) is copied into ``ppo_run.json``.
    ``checkpoint_dir``: the training state (both models, the optimiser, β, the history) is saved
    there every ``config.checkpoint_every`` steps and resumed from when present; a resumed run
    equals the uninterrupted one (prompt order and sampling are functions of seed and step).

    Under ``torchrun`` every process calls this with the same arguments: each samples and
    trains on an equal share of every rollout (``rollout_batch_size x samples_per_prompt`` and
    ``mini_batch_size`` must be multiples of the number of processes), advantages are whitened
    and metrics computed over the whole rollout, and rank 0 reports and writes.
    """
    from training.ml.checkpoint import Checkpointer

    config = config or PPOConfig()
    output_dir = Path(output_dir)
    if output_dir.exists():
        raise FileExistsError(f"{output_dir} already exists")
    if (reward_model_dir is None) == (reward_fn is None):
        raise ValueError("give exactly one of reward_model_dir and reward_fn")
    placement = placement_for(config)
    check_split(config, placement)
    if not placement.world.is_main:
        on_progress = None
    device = placement.device
    history: list[dict[str, float]] = []
    notes: list[str] = [placement.describe()]
    with device_lib.seeded(config.seed, device), contextlib.ExitStack() as cleanup:
        models = load_models(
            config,
            policy_dir=policy_dir,
            reference_dir=reference_dir,
            reward_model_dir=reward_model_dir,
            reward_fn=reward_fn,
            placement=placement,
            notes=notes,
        )
        value_lr = config.value_learning_rate
        value_lr = config.learning_rate if value_lr is None else value_lr
        optimizer = torch.optim.Adam(
            [
                {"params": _trainable(models.policy), "lr": config.learning_rate},
                {"params": _trainable(models.value), "lr": value_lr},
            ],
            eps=config.adam_eps,
        )
        peak_lrs = [config.learning_rate, value_lr]
        horizon = config.resolved_kl_horizon
        kl_controller = (
            AdaptiveKLController(config.kl_coef, config.kl_target, horizon)
            if config.adaptive_kl
            else FixedKLController(config.kl_coef)
        )
        trained = torch.nn.ModuleDict({"policy": models.policy, "value": models.value})
        checkpoints = Checkpointer(
            Path(checkpoint_dir) if checkpoint_dir else None, config.checkpoint_every, placement
        )
        resumed = checkpoints.load_latest(modules=trained, optimizer=optimizer)
        done = 0
        if resumed:
            done = int(resumed["step"])
            history = list(resumed["history"])
            kl_controller.value = float(resumed["kl_coef"])
            notes.append(f"resumed from the checkpoint of step {done}")
        engine = rollout_engine(models, config, policy_dir=policy_dir)
        cleanup.callback(engine.close)
        models = dataclasses.replace(models, engine=engine)
        notes.append(engine.describe())
        if resumed:
            engine.sync_weights(models.policy)  # the checkpoint's policy, not the starting one
        batches = prompt_batches(len(prompts), config.rollout_batch_size, config.seed)
        for _ in range(done):
            next(batches)  # the prompts of the steps done before the checkpoint
        for step in range(done + 1, config.total_steps + 1):
            check_stop(should_stop, f"PPO stopped before step {step}")
            for group, peak in zip(optimizer.param_groups, peak_lrs, strict=True):
                group["lr"] = (
                    annealed_learning_rate(peak, step, config.total_steps)
                    if config.anneal_lr
                    else peak
                )
            step_start = time.perf_counter()
            roll = rollout(
                models,
                [prompts[i] for i in next(batches)],
                config,
                step=step,
                should_stop=should_stop,
            )
            mask = roll.batch.response_mask
            beta = kl_controller.value
            rewards, kl = compute_rewards(roll.scores, roll.logprobs, roll.ref_logprobs, mask, beta)
            advantages, returns = gae(
                rewards, roll.values, mask, gamma=config.gamma, lam=config.lam
            )
            if config.whiten_advantages:
                advantages = whiten_over_processes(advantages, mask, placement)
            rollout_seconds = time.perf_counter() - step_start

            update_start = time.perf_counter()
            update_stats = ppo_update(
                models,
                optimizer,
                roll,
                advantages,
                returns,
                config,
                step=step,
                should_stop=should_stop,
            )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            update_seconds = time.perf_counter() - update_start
            if engine.name == "vllm" and step < config.total_steps:
                sync_start = time.perf_counter()
                engine.sync_weights(models.policy)  # the next rollout samples the new policy
                update_stats["ppo/weight_sync_seconds"] = time.perf_counter() - sync_start

            metrics = {
                **rollout_metrics(roll, rewards, kl, beta, placement),
                **update_stats,
            }
            episodes = config.rollout_batch_size * config.samples_per_prompt
            kl_controller.update(metrics["ppo/kl_ref"], episodes)
            metrics.update(
                {
                    "ppo/beta_next": kl_controller.value,
                    "ppo/kl_horizon": float(horizon),
                    "ppo/learning_rate": optimizer.param_groups[0]["lr"],
                    "ppo/value_learning_rate": optimizer.param_groups[1]["lr"],
                    "ppo/rollout_seconds": rollout_seconds,
                    "ppo/update_seconds": update_seconds,
                    "ppo/step_seconds": time.perf_counter() - step_start,
                }
            )
            history.append(metrics)
            if on_progress is not None:
                on_progress(step, config.total_steps, metrics)
            for key in ("ppo/loss", "ppo/policy_loss", "ppo/value_loss"):
                if not math.isfinite(metrics[key]):
                    raise FloatingPointError(f"{key} is {metrics[key]} at step {step}")
            if checkpoints.due(step, config.total_steps):
                checkpoints.save(
                    step,
                    modules=trained,
                    optimizer=optimizer,
                    state={"history": history, "kl_coef": kl_controller.value},
                )

        check_stop(should_stop, "PPO stopped before saving")
        run_info = {
            "algorithm": "ppo",
            "config": asdict(config),
            "seed": config.seed,
            "steps": config.total_steps,
            "policy_dir": str(policy_dir),
            "reference_dir": str(reference_dir or policy_dir),
            "reward_model_dir": str(reward_model_dir) if reward_model_dir else None,
            "reward_fn": getattr(reward_fn, "__qualname__", None) if reward_fn else None,
            "num_prompts": len(prompts),
            "kl_horizon": horizon,
            "rollout_engine": engine.name,
            "notes": notes,
            "final_metrics": history[-1] if history else {},
            "history": history,
            "metadata": dict(metadata or {}),
            **provenance(),
            "device": device_lib.device_name(device),
        }
        save_policy(
            models.policy,
            placement,
            policy_dir=policy_dir,
            output_dir=output_dir,
            fields=config,
            run_info=run_info,
            run_file="ppo_run.json",
        )
        checkpoints.remove()
    return PPOResult(
        output_dir=output_dir,
        steps=config.total_steps,
        metrics=history[-1] if history else {},
        history=history,
        notes=notes,
    )
