"""Evaluating policies on held-out prompts: reward, KL to the reference, length, EOS rate.

Plain torch + transformers (no Django), like the rest of ``training.ml``: the round runner
(``training.jobs.update.evaluate_update``) calls :func:`evaluate_policies` with model directories
and prompts, and stores what it returns on the Round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.ml.common import StopFn, check_stop, load_tokenizer
from training.ml.synthetic import GOLD_KINDS, GoldKind


@dataclass
class EvalSettings:
    """How a round evaluates a policy update on held-out prompts (stored on the Round)."""

    eval_fraction: float = 0.2
    """share of the prompts held out of PPO training and used for evaluation, picked by a hash of
    the prompt text: the same prompts stay held out round after round"""
    max_prompts: int = 32
    """evaluate on at most this many held-out prompts"""
    samples_per_prompt: int = 4
    """completions sampled per held-out prompt from each policy"""
    temperature: float = 0.7
    """sampling temperature; the KL uses logits / temperature as PPO does"""
    max_new_tokens: int = 48
    """longest evaluated completion, in tokens"""
    seed: int = 1234
    """sampling seed: the same for every policy and round, so they are compared on equal terms"""
    gold_score: bool = False
    """also report ``training.ml.synthetic.gold_score`` (meaningful when the labels came from the
    synthetic labeller, whose hidden preference it is)"""
    gold: GoldKind = "rules"
    """which hidden preference ``gold_score`` is: the synthetic labeller's ``rules`` or its
    ``network`` (``training.ml.synthetic.GoldNetwork``); the one the labels came from"""
    min_held_out_pairs: int = 50
    """a round whose reward model was evaluated on fewer held-out pairs is held for review (its
    accuracy says little)"""
    reward_must_not_fall: bool = True
    """a round whose update lowered the reward on held-out prompts is held for review"""

    def __post_init__(self) -> None:
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError("eval_fraction must be in [0, 1)")
        if self.min_held_out_pairs < 0:
            raise ValueError("min_held_out_pairs must be >= 0")
        for name in ("max_prompts", "samples_per_prompt", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.gold not in GOLD_KINDS:
            raise ValueError(f"gold must be one of {', '.join(GOLD_KINDS)}")


EXAMPLES = 4
"""Held-out prompts whose first sample each policy's result shows, the same prompts for every
policy (where a practitioner spots a degenerate update first)."""


def _examples(prompts: Sequence[Any], completions: Sequence[Any]) -> list[dict[str, str]]:
    """The first completion of each of the first :data:`EXAMPLES` prompts, with its prompt."""
    examples: dict[int, dict[str, str]] = {}
    for completion in completions:
        if completion.prompt_index in examples:
            continue
        if len(examples) == EXAMPLES:
            break
        prompt = prompts[completion.prompt_index]
        if not isinstance(prompt, str):  # chat messages: the last one asked
            prompt = str(prompt[-1].get("content", "")) if prompt else ""
        examples[completion.prompt_index] = {"prompt": prompt, "completion": completion.text}
    return list(examples.values())


def evaluate_policies(
    policies: dict[str, str | Path],
    *,
    reference: str | Path,
    reward_model: str | Path | None,
    prompts: Sequence[Any],
    settings: EvalSettings,
    device: str | None = None,
    should_stop: StopFn | None = None,
) -> dict[str, dict[str, Any]]:
    """Sample ``settings.samples_per_prompt`` completions per prompt from each policy (same
    seed for all) and measure, per policy:

    * ``reward``: mean normalised reward-model score (None without a reward model);
    * ``kl_ref``: mean over samples of ``Σ_t log π(a_t|·) - log π_ref(a_t|·)`` with
      ``logits / temperature``, the Monte-Carlo estimate of KL(π‖π_ref) PPO reports;
    * ``kl_previous`` (every policy after the first): the same against the first policy;
    * ``gold_score`` (when ``settings.gold_score``): the synthetic labeller's hidden score
      (``settings.gold`` says which);
    * ``response_length`` (tokens), ``eos_rate`` and a few ``examples``.

    The policies and the reference must share a tokenizer (as PPO requires).
    """
    import torch  # torch and the models: the web process imports EvalSettings

    from training.ml import device as device_lib
    from training.ml.config import SamplingConfig
    from training.ml.generation import generate_with_model
    from training.ml.policy import (
        build_query_response_batch,
        encode_prompt,
        load_causal_lm,
        sequence_logprobs,
    )
    from training.ml.reward_model import load_reward_model
    from training.ml.synthetic import expected_gold_score

    torch_device = device_lib.pick_device(device)
    names = list(policies)
    tokenizer = load_tokenizer(policies[names[0]], padding_side="left")
    sampling = SamplingConfig(
        num_completions=settings.samples_per_prompt,
        temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens,
        seed=settings.seed,
        device=str(torch_device),
    )
    queries = [encode_prompt(tokenizer, p) for p in prompts]
    samples = {}
    for name in names:
        model = load_causal_lm(policies[name], device=torch_device)
        samples[name] = [
            c for row in generate_with_model(model, tokenizer, prompts, sampling) for c in row
        ]
        del model
        check_stop(should_stop, "stopped during the evaluation")

    @torch.no_grad()
    def logprobs(model_dir: str | Path) -> dict[str, torch.Tensor]:
        model = load_causal_lm(model_dir, device=torch_device)
        out = {}
        for name in names:
            completions = samples[name]
            rows = []
            for start in range(0, len(completions), 16):
                chunk = completions[start : start + 16]
                batch = build_query_response_batch(
                    [queries[c.prompt_index] for c in chunk],
                    [list(c.token_ids) for c in chunk],
                    pad_token_id=tokenizer.pad_token_id,
                ).to(torch_device)
                with device_lib.autocast(torch_device):
                    rows.append(
                        sequence_logprobs(model, batch, temperature=settings.temperature)
                        .float()
                        .cpu()
                    )
            out[name] = torch.cat(rows)
        return out

    paths = {name: str(path) for name, path in policies.items()}
    by_path: dict[str, dict[str, torch.Tensor]] = {}
    for path in dict.fromkeys([*paths.values(), str(reference)]):
        by_path[path] = logprobs(path)
    reward = load_reward_model(reward_model, device=str(torch_device)) if reward_model else None

    results: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        completions = samples[name]
        texts = [c.text for c in completions]
        own = by_path[paths[name]][name]
        result: dict[str, Any] = {
            "kl_ref": float((own - by_path[str(reference)][name]).mean()),
            "response_length": sum(len(c.token_ids) for c in completions) / len(completions),
            "eos_rate": sum(c.eos for c in completions) / len(completions),
            "reward": None,
            "samples": len(completions),
        }
        if i > 0:
            result["kl_previous"] = float((own - by_path[paths[names[0]]][name]).mean())
        if reward is not None:
            pairs = [(prompts[c.prompt_index], c.text) for c in completions]
            scores = reward.score(pairs, batch_size=32)
            result["reward"] = sum(scores) / len(scores)
        if settings.gold_score:
            result["gold_score"] = expected_gold_score(texts, gold=settings.gold)
        result["examples"] = _examples(prompts, completions)
        results[name] = result
    return results
