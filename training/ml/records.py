"""The records that cross from the Django side into ``training.ml``: plain frozen dataclasses,
importable without torch (the web process builds them for exports and never loads torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Prompt = str | list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class PreferencePair:
    """One comparison: ``chosen`` was preferred over ``rejected`` for ``prompt``.

    For a tie (``tie=True``) the order of chosen and rejected carries no meaning.
    """

    prompt: Prompt
    """plain text, or chat messages ``[{"role": ..., "content": ...}]`` (chat template applied)"""
    chosen: str
    rejected: str
    prompt_id: str | int
    """identifies the prompt: the train/eval split never puts one prompt on both sides"""
    weight: float = 1.0
    """multiplies this pair's loss (e.g. labeller agreement or vote margin)"""
    margin: float = 0.0
    """Llama 2's margin m(r) of a strict pair, from the labeller's preference strength: the loss
    is -log sigmoid(r_chosen - r_rejected - margin) (0: plain Bradley-Terry)"""
    tie: bool = False
    """labellers judged both completions equally good"""
    round: int = 0
    """campaign round the comparison came from (accuracy is reported per round)"""
