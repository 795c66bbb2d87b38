"""Preference strength: how much better, on a campaign's scale. Pure: no Django.

Two scales (``Campaign.strength_scale``):

* ``llama2`` — Llama 2's four levels (Touvron et al. 2023, section 3.2.1): 0 negligibly better
  or unsure, 1 slightly better, 2 better, 3 significantly better;
* ``helpsteer`` — HelpSteer3's -3..3 preference (with an optional one-line justification): its
  sign is the ranking's direction, so the magnitude is stored, 1 slightly better, 2 better,
  3 much better (a tie, 0, is an equal rank).

**Where strength is stored.** One level per *adjacent rank gap*: the ranked completions form
tiers by rank (1 = best; equal ranks one tier; F completions are not ranked and form none), and
``strength[k]`` says how much better tier k is than tier k + 1. For N = 2 that is the pair's one
level (none for a tie); for N > 2 a labeller answers N - 1 questions at most, each about two
neighbours, which is what the ranking page can ask with one key per gap.

**Pairs.** The strength of a pair (chosen, rejected) from different tiers is the sum of the
gaps between them, capped at the top of the scale (A slightly better than B, B slightly better
than C: A better than C); a tie pair or a pair with an F completion has none. Its **margin** is
Llama 2's m(r) in -log sigmoid(r_c - r_r - m(r)) with their "small" margins: level / 3 (0, 1/3, 2/3,
1 on llama2; 1/3, 2/3, 1 on helpsteer).

**Agreement.** :func:`signed_value` puts a labeller's answer on one completion pair on one
interval scale (ties 0; llama2 ±1..±4, the level + 1, since "negligibly better" is still a
preference; helpsteer ±1..±3, HelpSteer3's own numbers), for Krippendorff's alpha (interval).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

FAIL: Final = "F"

Scale = Literal["none", "llama2", "helpsteer"]
SCALES: Final[tuple[str, ...]] = ("none", "llama2", "helpsteer")

LEVELS: Final[Mapping[str, tuple[int, ...]]] = {"llama2": (0, 1, 2, 3), "helpsteer": (1, 2, 3)}
"""The levels each scale stores per gap."""

LEVEL_NAMES: Final[Mapping[str, Mapping[int, str]]] = {
    "llama2": {
        0: "negligibly better or unsure",
        1: "slightly better",
        2: "better",
        3: "significantly better",
    },
    "helpsteer": {1: "slightly better", 2: "better", 3: "much better"},
}

MAX_JUSTIFICATION: Final = 300


class StrengthError(ValueError):
    """A strength that does not fit the ranking or the scale; ``field`` names it."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def tiers(labels: Mapping[int, Any]) -> list[list[int]]:
    """The ranked completions grouped by rank, best first (F completions are in none)."""
    ranks = sorted({label for label in labels.values() if label != FAIL})
    return [sorted(c for c, label in labels.items() if label == rank) for rank in ranks]


def gap_count(labels: Mapping[int, Any]) -> int:
    """How many levels a ranking with these labels carries: one per adjacent rank gap."""
    return max(0, len(tiers(labels)) - 1)


def validate(
    strength: Any, *, labels: Mapping[int, Any], scale: str, justification: Any = ""
) -> tuple[list[int] | None, str]:
    """``(levels, justification)`` checked against the ranking and the campaign's scale.

    With a scale, one level per gap is required (``strength[k]`` for gap k, best first); with
    none, no strength and no justification may be given. Raises :class:`StrengthError` naming
    the field (``strength``, ``strength[1]``, ``justification``).
    """
    justification = "" if justification is None else justification
    if not isinstance(justification, str):
        raise StrengthError("must be text", field="justification")
    justification = justification.strip()
    if "\n" in justification:
        raise StrengthError("must be one line", field="justification")
    if len(justification) > MAX_JUSTIFICATION:
        raise StrengthError(
            f"must be at most {MAX_JUSTIFICATION} characters", field="justification"
        )
    if scale == "none":
        if strength not in (None, []):
            raise StrengthError("this campaign asks no preference strength", field="strength")
        if justification:
            raise StrengthError("this campaign asks no preference strength", field="justification")
        return None, ""
    if scale not in LEVELS:
        raise StrengthError(f"unknown scale {scale!r}", field="strength")
    if justification and scale != "helpsteer":
        raise StrengthError("only the helpsteer scale takes a justification", field="justification")
    gaps = gap_count(labels)
    if strength is None:
        if gaps == 0:
            return [], justification
        raise StrengthError(
            f"say how much better for each of the {gaps} rank gap(s)", field="strength"
        )
    if not isinstance(strength, list):
        raise StrengthError("must be a list of levels, one per rank gap", field="strength")
    if len(strength) != gaps:
        raise StrengthError(
            f"must have {gaps} level(s), one per gap between adjacent ranks", field="strength"
        )
    allowed = LEVELS[scale]
    for i, level in enumerate(strength):
        if isinstance(level, bool) or not isinstance(level, int) or level not in allowed:
            raise StrengthError(
                f"must be one of {', '.join(map(str, allowed))}", field=f"strength[{i}]"
            )
    return list(strength), justification


def pair_level(
    labels: Mapping[int, Any],
    strength: Sequence[int] | None,
    chosen: int,
    rejected: int,
    *,
    scale: str,
) -> int | None:
    """The strength of ``chosen`` over ``rejected``: the sum of the gaps between their tiers,
    capped at the scale's top; None for a tie, an F completion, or no strength."""
    if not strength or scale not in LEVELS:
        return None
    layers = tiers(labels)
    if len(strength) != len(layers) - 1:
        return None
    order = {c: k for k, tier in enumerate(layers) for c in tier}
    if chosen not in order or rejected not in order:
        return None
    upper, lower = order[chosen], order[rejected]
    if upper == lower:
        return None
    if upper > lower:
        upper, lower = lower, upper
    return min(sum(strength[upper:lower]), max(LEVELS[scale]))


def margin(level: int | None) -> float | None:
    """Llama 2's small margin m(r) of a level: level / 3 (None for no level)."""
    return None if level is None else level / 3


def signed_value(
    labels: Mapping[int, Any], strength: Sequence[int] | None, a: int, b: int, *, scale: str
) -> float | None:
    """One labeller's answer on the completion pair (a, b) on an interval scale: positive when
    a is better, 0 for a tie, None when they gave no comparable answer (an F completion, no
    strength). llama2: ±(level + 1); helpsteer: ±level."""
    if a not in labels or b not in labels or FAIL in (labels[a], labels[b]):
        return None
    if labels[a] == labels[b]:
        return 0.0
    if scale not in LEVELS:
        return None
    better, worse = (a, b) if labels[a] < labels[b] else (b, a)
    level = pair_level(labels, strength, better, worse, scale=scale)
    if level is None:
        return None
    value = level + 1 if scale == "llama2" else level
    return float(value if better == a else -value)
