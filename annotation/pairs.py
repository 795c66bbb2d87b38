"""Turn one labeller's ranking of N completions into pairwise preferences.

Pure module: plain types in, plain types out, no Django. The Django service layer and
``training.exports`` call :func:`expand_ranking` on the stored ranking items; the agreement and
consensus modules use :func:`preference` for the same rules.

A ranking maps completion id -> label. A label is a rank (``1`` = best; equal ranks = a tie; the
numbers only matter through their order, so ``1, 1, 3`` and ``1, 1, 2`` mean the same) or
:data:`FAIL` (``"F"``): the labeller marked the completion as failed instead of ranking it.

Rules (the same everywhere in the project):
    * two ranked completions with different ranks give one pair, the smaller rank number chosen;
      a strict ranking of N completions gives exactly N·(N-1)/2 pairs;
    * two completions with the same rank give no pair, or a tie pair when ``ties=True``;
    * ``fail_policy="drop"`` (default): completions marked F give no pairs at all;
      ``fail_policy="rank_last"``: F completions are a bottom tier, every ranked completion beats
      every F one; F vs F gives nothing (not even a tie pair: two failures say nothing about
      which is better, and a tie pair would teach a reward model that they are equally good).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

FAIL: Final = "F"
"""The label of a completion marked as failed (not ranked)."""

Label = int | Literal["F"]
"""A rank (1 = best, equal ranks = tie) or :data:`FAIL`."""

FailPolicy = Literal["drop", "rank_last"]
"""How completions marked F enter pairs: left out, or a bottom tier below every ranked one."""

Preference = Literal[-1, 0, 1]
"""The answer on one completion pair (a, b) with a < b: 1 = a better, 0 = tie, -1 = b better."""


@dataclass(frozen=True, slots=True)
class Pair:
    """One pairwise preference: ``chosen`` is better than ``rejected`` (completion ids).

    For a tie pair (``tie=True``) chosen/rejected are just the two ids, the lower id first.
    """

    chosen: int
    rejected: int
    tie: bool = False


def validate_ranking(items: Mapping[int, Label]) -> None:
    """Raise ``ValueError`` unless every key is an int id and every label a rank >= 1 or F."""
    for completion_id, label in items.items():
        if isinstance(completion_id, bool) or not isinstance(completion_id, int):
            raise ValueError(f"completion id must be an int, got {completion_id!r}")
        if label == FAIL:
            continue
        if isinstance(label, bool) or not isinstance(label, int) or label < 1:
            raise ValueError(
                f"label of completion {completion_id} must be a rank >= 1 or 'F', got {label!r}"
            )


def preference(a: Label, b: Label, *, fail_policy: FailPolicy = "drop") -> Preference | None:
    """The preference between two labelled completions a and b, or ``None`` for no answer.

    ``1``: a is better, ``-1``: b is better, ``0``: a tie. ``None`` when either is F under
    ``"drop"``, and for F vs F under ``"rank_last"`` (see the module docstring).
    """
    a_fail, b_fail = a == FAIL, b == FAIL
    if a_fail or b_fail:
        if fail_policy == "drop" or (a_fail and b_fail):
            return None
        return -1 if a_fail else 1
    if a == b:
        return 0
    return 1 if a < b else -1  # type: ignore[operator]  # both are ints here


def _order_key(item: tuple[int, Label]) -> tuple[int, int, int]:
    """Best first: ranked completions by rank, then F ones; the completion id breaks ties."""
    completion_id, label = item
    if label == FAIL:
        return (1, 0, completion_id)
    return (0, label, completion_id)  # type: ignore[return-value]  # label is an int here


def expand_ranking(
    items: Mapping[int, Label], *, ties: bool = False, fail_policy: FailPolicy = "drop"
) -> list[Pair]:
    """All pairwise preferences implied by one ranking (see the module docstring for the rules).

    Deterministic order: completions are sorted best first (by rank, F last, then by id) and
    the pairs come out in that order, ``(1st, 2nd), (1st, 3rd), ..., (2nd, 3rd), ...``.
    Raises ``ValueError`` on a label that is neither a rank >= 1 nor ``"F"``.
    """
    validate_ranking(items)
    ordered = sorted(items.items(), key=_order_key)
    pairs: list[Pair] = []
    for i, (id_a, label_a) in enumerate(ordered):
        for id_b, label_b in ordered[i + 1 :]:
            answer = preference(label_a, label_b, fail_policy=fail_policy)
            if answer is None:
                continue
            if answer == 0:
                if ties:
                    pairs.append(Pair(chosen=min(id_a, id_b), rejected=max(id_a, id_b), tie=True))
            else:  # best-first order: a is never worse than b, so the answer is 1
                pairs.append(Pair(chosen=id_a, rejected=id_b))
    return pairs
