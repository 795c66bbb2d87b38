"""Llama 2's margin term in the reward-model loss: -log sigmoid(r_chosen - r_rejected - m(r)),
ties untouched, and no margin (or all zero) the plain Bradley-Terry loss."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from training.ml.reward_model import preference_loss  # noqa: E402


def test_the_margin_is_subtracted_from_a_strict_pairs_reward_difference():
    rc, rr = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 0.5])
    margins = torch.tensor([1.0, 0.0])
    loss = preference_loss(rc, rr, margins=margins, reduction="sum")
    expected = math.log1p(math.exp(-(1.0 - 1.0))) + math.log1p(math.exp(-0.0))
    assert loss.item() == pytest.approx(expected)
    plain = preference_loss(rc, rr, reduction="sum")
    assert plain.item() == pytest.approx(preference_loss(rc, rr, margins=torch.zeros(2)).item() * 2)
    assert loss.item() > plain.item()  # a margin asks the model for a wider gap


def test_a_tie_pair_ignores_its_margin():
    rc, rr = torch.tensor([0.3]), torch.tensor([0.1])
    ties = torch.tensor([True])
    with_margin = preference_loss(rc, rr, ties=ties, margins=torch.tensor([1.0]))
    without = preference_loss(rc, rr, ties=ties)
    assert with_margin.item() == pytest.approx(without.item())
