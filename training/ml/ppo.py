"""PPO for RLHF, in one file that reads top to bottom (cleanrl style; no TRL).

Following "The N Implementation Details of RLHF with PPO" (Huang et al.) and Ziegler et al. 2019:

* rollout: sample a completion per prompt (temperature, top-p), truncate at the first EOS,
  replace the reward-model score of completions that never emit EOS by a penalty;
* log-probs of the policy and of a frozen reference recomputed on ``[left-padded query |
  response]`` with position ids from the attention mask and ``logits / temperature``;
* reward per token: ``r_t = -β (log π(a_t|s_t) - log π_ref(a_t|s_t))`` on every response token,
  plus the normalised reward-model score on the last one; β fixed or adaptive (target KL, horizon);
* advantages: GAE (gamma = 1, λ = 0.95) on per-token values from a value model initialised from the
  reward model, whitened over the valid tokens;
* update: several epochs over minibatches of

      L = L_policy + c1 · L_VF + c2 · L_ENT

  where ``L_policy = mean(max(-A·r, -A·clip(r, 1-ε, 1+ε)))`` with ``r = π/π_old``,
  ``L_VF = ½ mean(max((V-R)², (V_old + clip(V-V_old, -ε_v, ε_v) - R)²))`` and
  ``L_ENT = -mean(entropy)``: the entropy enters with a minus sign, so minimising ``L`` with
  ``c2 > 0`` *raises* the entropy (a bonus). Means are over valid response tokens. Adam eps 1e-5,
  gradient clipping, dropout off.

Sections marked "plumbing" load models, batch and save; the rest is the algorithm.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from training.ml import device as device_lib
from training.ml.common import (
    ProgressFn,
    StopFn,
    check_stop,
    load_tokenizer,
    publish_dir,
    staging_dir_for,
)
from training.ml.config import PPOConfig
from training.ml.generation import decode_response, eos_token_ids, sample_responses
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
from training.ml.reward_model import RewardModel, load_reward_model

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
    """Replace the score of every completion without EOS by ``penalty`` (``None``: no change)."""
    if penalty is None:
        return scores
    return torch.where(eos, scores, torch.full_like(scores, penalty))


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
    """the trained causal LM (a peft model under LoRA)"""
    reference: torch.nn.Module | None
    """the frozen reference; ``None`` means the policy with its LoRA adapter disabled"""
    value: torch.nn.Module
    """sequence-classification model whose score head, applied at every position, gives values"""
    reward: RewardModel | None
    """the reward model with its normalisation (``training.ml.reward_model``)"""
    reward_fn: RewardFn | None
    """a custom reward used instead of ``reward`` (scores taken as already normalised)"""
    tokenizer: PreTrainedTokenizerBase
    device: torch.device


def _same_dir(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _lora(model: torch.nn.Module, config: PPOConfig, task_type: str) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model  # peft: only for LoRA runs

    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=config.lora_target_modules,
        task_type=task_type,
    )
    return disable_dropout(get_peft_model(model, lora_config))


def load_value_model(
    config: PPOConfig, *, policy_dir: str | Path, reward_model_dir: str | Path | None, tokenizer
) -> torch.nn.Module:
    """The critic: the reward model (default), or the policy's weights with a zero score head."""
    if config.value_init == "reward_model":
        if reward_model_dir is None:
            raise ValueError("value_init='reward_model' needs a reward model; use 'zero'")
        rm_vocab = AutoTokenizer.from_pretrained(reward_model_dir).get_vocab()
        if rm_vocab != tokenizer.get_vocab():
            raise ValueError(
                "value_init='reward_model' needs the reward model to share the policy's "
                "tokenizer; use value_init='zero'"
            )
        with device_lib.quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                reward_model_dir, num_labels=1
            )
    elif config.value_init == "zero":
        with device_lib.quiet_transformers():  # the head is "missing": we zero it just below
            model = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1)
        with torch.no_grad():
            for param in model.score.parameters():
                param.zero_()
    else:
        raise ValueError(f"unknown value_init {config.value_init!r}")
    return disable_dropout(model)


def load_models(
    config: PPOConfig,
    *,
    policy_dir: str | Path,
    reference_dir: str | Path | None,
    reward_model_dir: str | Path | None,
    reward_fn: RewardFn | None = None,
    device: torch.device,
) -> PPOModels:
    """Load policy, reference, value model and reward model (dropout off everywhere)."""
    reference_dir = reference_dir or policy_dir
    tokenizer = load_tokenizer(policy_dir, padding_side="left")
    policy = load_causal_lm(policy_dir, trainable=True)
    value = load_value_model(
        config, policy_dir=policy_dir, reward_model_dir=reward_model_dir, tokenizer=tokenizer
    )
    reference: torch.nn.Module | None
    if config.use_lora:
        policy = _lora(policy, config, "CAUSAL_LM")
        value = _lora(value, config, "SEQ_CLS")  # peft keeps the score head fully trainable
    if config.use_lora and _same_dir(reference_dir, policy_dir):
        reference = None
    else:
        reference = load_causal_lm(reference_dir, trainable=False).to(device)
    return PPOModels(
        policy=policy.to(device),
        reference=reference,
        value=value.to(device),
        reward=None if reward_fn else load_reward_model(reward_model_dir, device=str(device)),
        reward_fn=reward_fn,
        tokenizer=tokenizer,
        device=device,
    )


def response_values(value_model: torch.nn.Module, batch: QueryResponseBatch) -> torch.Tensor:
    """(B, R) fp32 values ``V(s_t)``: the score head on the hidden state that predicts response
    token ``t`` (columns ``C-1 .. C+R-2``), so ``V_t`` sees the query and ``response[:t]``."""
    model = value_model.get_base_model() if hasattr(value_model, "get_base_model") else value_model
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position_ids_from_attention_mask(batch.attention_mask),
        use_cache=False,
    ).last_hidden_state
    hidden = hidden[:, batch.context_length - 1 : -1]
    with torch.autocast(device_type=hidden.device.type, enabled=False):  # the head in fp32
        values = model.score(hidden.float()).squeeze(-1)
    return values * batch.response_mask.to(values.dtype)


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


# ================================================================================================
# Algorithm: rollout and update
# ================================================================================================


@dataclass
class Rollout:
    """One rollout: episodes with everything the update needs (tensors on the model device)."""

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
    """(B,) the score used as the final reward: normalised RM score, or the no-EOS penalty"""
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


@torch.no_grad()
def rollout(
    models: PPOModels,
    prompts: Sequence[Prompt],
    config: PPOConfig,
    *,
    should_stop: StopFn | None = None,
) -> Rollout:
    """Sample, score and evaluate one batch of episodes (no gradients)."""
    tokenizer, device = models.tokenizer, models.device
    queries = [encode_prompt(tokenizer, p) for p in prompts]
    if config.max_prompt_tokens is not None:
        queries = [q[-config.max_prompt_tokens :] for q in queries]
    queries = [q for q in queries for _ in range(config.samples_per_prompt)]
    episode_prompts = [p for p in prompts for _ in range(config.samples_per_prompt)]

    start = time.perf_counter()
    sampled = sample_responses(
        models.policy,
        queries,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_ids=eos_token_ids(tokenizer, models.policy),
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.forward_batch_size,
        should_stop=should_stop,
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    generation_seconds = time.perf_counter() - start
    check_stop(should_stop, "PPO stopped after generation")

    batch = build_query_response_batch(
        queries, sampled.responses, pad_token_id=tokenizer.pad_token_id
    ).to(device)
    parts: dict[str, list[torch.Tensor]] = {"lp": [], "ref": [], "v": [], "ent": []}
    for i in range(0, len(queries), config.forward_batch_size):
        sub = batch.select(slice(i, i + config.forward_batch_size))
        with device_lib.autocast(device):
            logprobs, entropy = response_logprobs(
                models.policy, sub, temperature=config.temperature, with_entropy=True
            )
            parts["lp"].append(logprobs)
            parts["ent"].append(entropy)
            parts["ref"].append(reference_logprobs(models, sub, config.temperature))
            parts["v"].append(response_values(models.value, sub))

    completions = [decode_response(tokenizer, r) for r in sampled.responses]
    rm_raw, rm_normalized = score_completions(
        models, episode_prompts, completions, config.reward_batch_size
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


def score_completions(
    models: PPOModels, prompts: Sequence[Prompt], completions: Sequence[str], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(raw, normalised)`` scores, (N,) fp32 on CPU, from the reward model or ``reward_fn``."""
    if models.reward_fn is not None:
        scores = torch.tensor([float(x) for x in models.reward_fn(prompts, completions)])
        return scores, scores
    assert models.reward is not None
    raw = models.reward.raw_scores(list(zip(prompts, completions, strict=True)), batch_size)
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
    should_stop: StopFn | None = None,
) -> dict[str, float]:
    """``ppo_epochs`` passes of minibatch gradient steps on ``L = L_policy + c1·L_VF + c2·L_ENT``;
    returns the mean of each loss statistic over all minibatches."""
    sums: dict[str, float] = {}
    count = 0
    episodes = roll.batch.input_ids.shape[0]
    policy_params, value_params = _trainable(models.policy), _trainable(models.value)
    for _epoch in range(config.ppo_epochs):
        order = torch.randperm(episodes).to(models.device)
        for start in range(0, episodes, config.mini_batch_size):
            check_stop(should_stop, "PPO stopped during the update")
            idx = order[start : start + config.mini_batch_size]
            sub = roll.batch.select(idx)
            mask = sub.response_mask
            with device_lib.autocast(models.device):
                logprobs, entropy = response_logprobs(
                    models.policy, sub, temperature=config.temperature, with_entropy=True
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
            # --- the step
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            policy_grad = torch.nn.utils.clip_grad_norm_(policy_params, config.max_grad_norm)
            value_grad = torch.nn.utils.clip_grad_norm_(value_params, config.max_grad_norm)
            optimizer.step()
            stats = {
                "ppo/loss": loss,
                "ppo/policy_loss": policy_loss,
                "ppo/value_loss": value_loss,
                "ppo/entropy_loss": entropy_loss,
                "ppo/clipfrac": policy_stats["clipfrac"],
                "ppo/approx_kl": policy_stats["approx_kl"],
                "ppo/value_clipfrac": value_clipfrac,
                "ppo/policy_grad_norm": policy_grad,
                "ppo/value_grad_norm": value_grad,
            }
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            count += 1
    return {key: total / count for key, total in sums.items()}


def rollout_metrics(
    roll: Rollout, rewards: torch.Tensor, kl: torch.Tensor, kl_coef: float
) -> dict[str, float]:
    """Per-step monitoring: reward, KL to the reference, β, entropy, length, EOS rate, values."""
    mask = roll.batch.response_mask
    lengths = mask.sum(dim=1).float()
    return {
        "ppo/reward_raw": float(roll.rm_raw.mean()),
        "ppo/reward_normalized": float(roll.rm_normalized.mean()),
        "ppo/score": float(roll.scores.mean()),
        "ppo/reward_total": float(rewards.sum(dim=1).mean()),
        "ppo/kl_ref": float(kl.sum(dim=1).mean()),
        "ppo/beta": kl_coef,
        "ppo/entropy": float(masked_mean(roll.entropy, mask)),
        "ppo/value_mean": float(masked_mean(roll.values, mask)),
        "ppo/response_length": float(lengths.mean()),
        "ppo/eos_rate": float(roll.eos.float().mean()),
        "ppo/rollout_tokens": float(roll.generated_tokens),
        "ppo/rollout_tokens_per_s": roll.generated_tokens / max(roll.generation_seconds, 1e-9),
    }


# ================================================================================================
# Plumbing: saving
# ================================================================================================


def save_policy_atomically(
    models: PPOModels, *, policy_dir: str | Path, output_dir: Path, run_info: dict
) -> None:
    """Write the policy (LoRA merged in), its tokenizer and ``ppo_run.json`` to a hidden temp
    sibling of ``output_dir``, then rename it into place: ``output_dir`` appears only complete."""
    tmp = staging_dir_for(output_dir)
    try:
        policy = models.policy
        if hasattr(policy, "merge_and_unload"):
            policy = policy.merge_and_unload()
        policy.save_pretrained(tmp)
        # the tokenizer as shipped (its own padding side), not our left-padded copy
        AutoTokenizer.from_pretrained(policy_dir).save_pretrained(tmp)
        (tmp / "ppo_run.json").write_text(json.dumps(run_info, indent=2, sort_keys=True) + "\n")
        publish_dir(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ================================================================================================
# Entry point
# ================================================================================================


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
    """
    config = config or PPOConfig()
    output_dir = Path(output_dir)
    if output_dir.exists():
        raise FileExistsError(f"{output_dir} already exists")
    if (reward_model_dir is None) == (reward_fn is None):
        raise ValueError("give exactly one of reward_model_dir and reward_fn")
    device = device_lib.pick_device(config.device)
    history: list[dict[str, float]] = []
    with device_lib.seeded(config.seed, device):
        models = load_models(
            config,
            policy_dir=policy_dir,
            reference_dir=reference_dir,
            reward_model_dir=reward_model_dir,
            reward_fn=reward_fn,
            device=device,
        )
        optimizer = torch.optim.Adam(
            _trainable(models.policy) + _trainable(models.value),
            lr=config.learning_rate,
            eps=config.adam_eps,
        )
        kl_controller = (
            AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
            if config.adaptive_kl
            else FixedKLController(config.kl_coef)
        )
        batches = prompt_batches(len(prompts), config.rollout_batch_size, config.seed)
        for step in range(1, config.total_steps + 1):
            check_stop(should_stop, f"PPO stopped before step {step}")
            if config.anneal_lr:
                for group in optimizer.param_groups:
                    group["lr"] = annealed_learning_rate(
                        config.learning_rate, step, config.total_steps
                    )
            step_start = time.perf_counter()
            roll = rollout(
                models, [prompts[i] for i in next(batches)], config, should_stop=should_stop
            )
            mask = roll.batch.response_mask
            beta = kl_controller.value
            rewards, kl = compute_rewards(roll.scores, roll.logprobs, roll.ref_logprobs, mask, beta)
            advantages, returns = gae(
                rewards, roll.values, mask, gamma=config.gamma, lam=config.lam
            )
            if config.whiten_advantages:
                advantages = whiten(advantages, mask)
            rollout_seconds = time.perf_counter() - step_start

            update_start = time.perf_counter()
            update_stats = ppo_update(
                models, optimizer, roll, advantages, returns, config, should_stop=should_stop
            )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            update_seconds = time.perf_counter() - update_start

            episodes = mask.shape[0]
            kl_controller.update(float(kl.sum(dim=1).mean()), episodes)
            metrics = {
                **rollout_metrics(roll, rewards, kl, beta),
                **update_stats,
                "ppo/beta_next": kl_controller.value,
                "ppo/learning_rate": optimizer.param_groups[0]["lr"],
                "ppo/rollout_seconds": rollout_seconds,
                "ppo/update_seconds": update_seconds,
                "ppo/step_seconds": time.perf_counter() - step_start,
            }
            history.append(metrics)
            if on_progress is not None:
                on_progress(step, config.total_steps, metrics)
            for key in ("ppo/loss", "ppo/policy_loss", "ppo/value_loss"):
                if not math.isfinite(metrics[key]):
                    raise FloatingPointError(f"{key} is {metrics[key]} at step {step}")

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
            "final_metrics": history[-1] if history else {},
            "history": history,
            "metadata": dict(metadata or {}),
            **provenance(),
            "device": device_lib.device_name(device),
        }
        save_policy_atomically(
            models, policy_dir=policy_dir, output_dir=output_dir, run_info=run_info
        )
    return PPOResult(
        output_dir=output_dir,
        steps=config.total_steps,
        metrics=history[-1] if history else {},
        history=history,
    )
