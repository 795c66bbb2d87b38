"""What every sampling engine takes and returns (``training.ml.generation``'s Hugging Face
engine and ``training.ml.vllm_engine``'s vLLM engine): the settings, the sampled token ids, and
the cut at the first EOS. Plain data; no engine here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

EngineName = Literal["hf", "vllm"]
"""An engine that sampled completions (what is recorded with them)."""


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample, for any engine."""

    temperature: float
    """sampling temperature; 0 is greedy"""
    eos_token_ids: tuple[int, ...]
    """ids that end a response (kept in it): the tokenizer's EOS, the end-of-turn token"""
    top_p: float = 1.0
    """nucleus mass; 1.0 disables it"""
    max_new_tokens: int = 64
    """response tokens at most, EOS included"""
    top_k: int = 0
    """0: off. PPO recomputes log-probs from the full ``logits / temperature``, so the engines
    must sample from that distribution: nothing here sets it"""
    seed: int | None = None
    """HF: torch's global RNG is seeded with this around the whole call (``None``: the caller
    seeds it, or gives per-chunk seeds); vLLM: the base of the per-request seeds when the
    caller gives none"""


@dataclass
class SampledResponses:
    """What an engine (``sample``) returns, aligned with its input queries."""

    responses: list[list[int]] = field(default_factory=list)
    """response token ids per query, truncated after the first EOS (which is kept)"""
    eos: list[bool] = field(default_factory=list)
    """whether each response ended with EOS"""


def truncate_at_eos(
    token_ids: Sequence[int], eos_token_ids: Iterable[int]
) -> tuple[list[int], bool]:
    """Cut ``token_ids`` right after the first EOS; return ``(tokens, emitted_eos)``."""
    eos_set = set(eos_token_ids)
    for i, token in enumerate(token_ids):
        if token in eos_set:
            return list(token_ids[: i + 1]), True
    return list(token_ids), False
