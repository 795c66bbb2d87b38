"""Gold and proxy reward against √KL, round after round: the over-optimisation curve of a loop
labelled by a synthetic labeller (Gao et al. 2022, "Scaling Laws for Reward Model
Overoptimization", plot reward against d = √KL(π‖π_ref)).

Pure: plain dicts in (each round's stored ``evaluation``, ``training.jobs.update.evaluate_update``),
plain dataclasses out; no Django. The dashboard (the rounds page) and ``bench/bench_rlhf_loop.py``
draw the same points.

* x: √KL to the reference of each policy, on the round's held-out prompts (KL in nats per
  completion; a Monte-Carlo estimate, so a small negative one counts as 0).
* gold: the synthetic labeller's hidden score of each policy's samples, minus the first policy's.
* proxy: what the reward models say the updates gained, summed over the rounds: each round's
  ``reward`` after minus before. Each round trains its own reward model, normalised on the
  round's starting policy, so rewards are comparable within a round, not across; the sum of the
  within-round gains is the proxy's own account of the progress.

Where optimising the proxy stops helping, the proxy keeps rising while the gold flattens or falls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CurvePoint:
    """One policy of the loop: the starting one, or the one after a round's update."""

    label: str
    """``start`` or ``round N``"""
    kl: float
    """KL(π‖π_ref) in nats per completion on the held-out prompts"""
    gold: float
    """mean gold score of the policy's held-out samples"""
    gold_gain: float
    """``gold`` minus the first policy's"""
    proxy_gain: float | None
    """sum of the reward models' within-round gains so far; None where a round had no reward"""

    @property
    def sqrt_kl(self) -> float:
        return math.sqrt(max(self.kl, 0.0))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def overoptimisation_curve(rounds: Sequence[tuple[int, Mapping[str, Any]]]) -> list[CurvePoint]:
    """The curve of a chain of rounds, ``(round number, evaluation)`` in order, first round first.

    The first point is the first round's policy before its update; then one point per round
    whose evaluation has the policy after with a gold score and a KL. It stops at the first
    round without one (not evaluated yet, or its labeller had no gold): a later point would
    skip a policy. Empty when not even the start has a gold score.
    """
    if not rounds:
        return []
    first = rounds[0][1].get("policy_before") or {}
    gold0, kl0 = _number(first.get("gold_score")), _number(first.get("kl_ref"))
    if gold0 is None or kl0 is None:
        return []
    points = [CurvePoint("start", kl0, gold0, 0.0, 0.0)]
    proxy: float | None = 0.0
    for number, evaluation in rounds:
        before = evaluation.get("policy_before") or {}
        after = evaluation.get("policy_after") or {}
        gold, kl = _number(after.get("gold_score")), _number(after.get("kl_ref"))
        if gold is None or kl is None:
            break
        reward_after, reward_before = _number(after.get("reward")), _number(before.get("reward"))
        if proxy is not None and reward_after is not None and reward_before is not None:
            proxy += reward_after - reward_before
        else:
            proxy = None
        points.append(CurvePoint(f"round {number}", kl, gold, gold - gold0, proxy))
    return points


@dataclass(frozen=True)
class CurvePlot:
    """Pixel geometry of the curve for an inline SVG (y grows downwards)."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    gold: list[tuple[float, float]]
    proxy: list[tuple[float, float]]
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]
    zero_y: float

    @property
    def gold_polyline(self) -> str:
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in self.gold)

    @property
    def proxy_polyline(self) -> str:
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in self.proxy)


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    step = (high - low) / count
    return [low + i * step for i in range(count + 1)]


def curve_plot(
    points: Sequence[CurvePoint], *, width: int = 420, height: int = 220, margin: int = 40
) -> CurvePlot | None:
    """Where each point goes in a plot ``width`` by ``height`` pixels: x = √KL from 0, y = the gains
    (gold and proxy on one axis, 0 = the starting policy). None for fewer than two points."""
    if len(points) < 2:
        return None
    left, right, top, bottom = margin, width - 12, 12, height - 28
    xs = [p.sqrt_kl for p in points]
    ys = [p.gold_gain for p in points] + [p.proxy_gain for p in points if p.proxy_gain is not None]
    x_high = max(max(xs), 1e-9)
    y_low, y_high = min(min(ys), 0.0), max(max(ys), 0.0)
    if y_high - y_low < 1e-9:
        y_low, y_high = y_low - 1.0, y_high + 1.0

    def px(x: float) -> float:
        return left + (right - left) * x / x_high

    def py(y: float) -> float:
        return bottom - (bottom - top) * (y - y_low) / (y_high - y_low)

    return CurvePlot(
        width=width,
        height=height,
        left=left,
        right=right,
        top=top,
        bottom=bottom,
        gold=[(px(p.sqrt_kl), py(p.gold_gain)) for p in points],
        proxy=[(px(p.sqrt_kl), py(p.proxy_gain)) for p in points if p.proxy_gain is not None],
        x_ticks=[(px(v), f"{v:.2g}") for v in _ticks(0.0, x_high)],
        y_ticks=[(py(v), f"{v:+.2g}") for v in _ticks(y_low, y_high)],
        zero_y=py(0.0),
    )
