"""The over-optimisation curve from rounds' stored evaluations (training.overoptimisation)."""

from __future__ import annotations

import math

import pytest

from training.overoptimisation import CurvePoint, curve_plot, overoptimisation_curve


def evaluation(before: dict, after: dict | None) -> dict:
    return {"policy_before": before, **({"policy_after": after} if after else {})}


def test_curve_sums_each_rounds_proxy_gain_and_measures_gold_from_the_start():
    rounds = [
        (0, evaluation({"gold_score": 0.5, "kl_ref": 0.0, "reward": 0.1},
                       {"gold_score": 0.9, "kl_ref": 4.0, "reward": 1.1})),
        (1, evaluation({"gold_score": 0.9, "kl_ref": 4.0, "reward": -0.2},
                       {"gold_score": 0.7, "kl_ref": 16.0, "reward": 0.3})),
    ]  # fmt: skip
    points = overoptimisation_curve(rounds)
    assert [p.label for p in points] == ["start", "round 0", "round 1"]
    assert [p.sqrt_kl for p in points] == [0.0, 2.0, 4.0]
    assert [p.gold_gain for p in points] == pytest.approx([0.0, 0.4, 0.2])
    assert [p.proxy_gain for p in points] == pytest.approx([0.0, 1.0, 1.5])


def test_curve_stops_at_the_first_round_without_a_gold_score():
    rounds = [
        (0, evaluation({"gold_score": 0.0, "kl_ref": 0.0}, {"gold_score": 1.0, "kl_ref": 1.0})),
        (1, evaluation({"gold_score": 1.0, "kl_ref": 1.0}, None)),  # not evaluated yet
        (2, evaluation({"gold_score": 1.0, "kl_ref": 1.0}, {"gold_score": 2.0, "kl_ref": 4.0})),
    ]
    points = overoptimisation_curve(rounds)
    assert [p.label for p in points] == ["start", "round 0"]
    assert points[1].proxy_gain is None  # no reward model score: no proxy from here on
    assert overoptimisation_curve([(0, evaluation({"kl_ref": 0.0}, {"kl_ref": 1.0}))]) == []
    assert overoptimisation_curve([]) == []


def test_a_negative_kl_estimate_counts_as_zero_and_nan_is_no_figure():
    point = CurvePoint("round 0", -0.01, 1.0, 0.0, 0.0)
    assert point.sqrt_kl == 0.0
    rounds = [(0, evaluation({"gold_score": math.nan, "kl_ref": 0.0}, {}))]
    assert overoptimisation_curve(rounds) == []


def test_plot_puts_the_start_at_the_origin_and_the_extremes_on_the_edges():
    points = [
        CurvePoint("start", 0.0, 0.5, 0.0, 0.0),
        CurvePoint("round 0", 4.0, 1.0, 0.5, 2.0),
        CurvePoint("round 1", 16.0, 0.0, -0.5, 3.0),
    ]
    plot = curve_plot(points, width=200, height=100, margin=20)
    assert plot.gold[0] == (plot.left, plot.zero_y)
    assert plot.gold[2][0] == plot.right  # the largest √KL
    assert plot.proxy[2][1] == plot.top  # the largest gain
    assert plot.gold[2][1] == plot.bottom  # the lowest
    assert plot.gold_polyline.count(",") == 3
    assert curve_plot(points[:1]) is None
