"""Dawid-Skene competence on pair preferences: by hand on a tiny case, and on synthetic
labellers of known reliability, whose estimated competence must rank them as they were made."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from annotation.competence import dawid_skene


def synthetic(accuracies: dict[str, float], *, items: int, seed: int, tie_share: float = 0.2):
    """Each item's truth (first better / tie / second better); each labeller answers it right
    with their accuracy, else one of the two wrong answers at random."""
    rng = random.Random(seed)
    triples = []
    for item in range(items):
        truth = 1 if rng.random() < tie_share else rng.choice((0, 2))
        for name, accuracy in accuracies.items():
            wrong = [c for c in (0, 1, 2) if c != truth]
            answer = truth if rng.random() < accuracy else rng.choice(wrong)
            triples.append((item, name, answer))
    return triples


def test_unanimous_labellers_are_all_competent_and_a_lone_item_says_nothing():
    triples = [(i, w, i % 3) for i in range(30) for w in ("a", "b", "c")]
    triples.append((99, "d", 0))  # only d answered it: d has nothing to be judged on
    fit = dawid_skene(triples)
    by = {c.labeller_id: c for c in fit.labellers}
    assert all(by[w].competence > 0.85 for w in "abc")
    assert by["d"].answers == 0
    assert fit.converged


@pytest.mark.parametrize("seed", range(5))
def test_estimated_competence_ranks_labellers_of_known_reliability(seed):
    accuracies = {"expert": 0.95, "good": 0.85, "fair": 0.7, "sloppy": 0.5, "random": 1 / 3}
    fit = dawid_skene(synthetic(accuracies, items=400, seed=seed))
    estimated = {c.labeller_id: c.competence for c in fit.labellers}
    assert sorted(estimated, key=estimated.get, reverse=True) == list(accuracies)
    for name, accuracy in accuracies.items():
        assert abs(estimated[name] - accuracy) < 0.08, (name, estimated[name])


def test_one_careful_labeller_among_careless_ones_is_not_pulled_down():
    accuracies = {"careful": 0.95, "c1": 0.6, "c2": 0.6, "c3": 0.6}
    fit = dawid_skene(synthetic(accuracies, items=600, seed=1))
    estimated = {c.labeller_id: c.competence for c in fit.labellers}
    assert estimated["careful"] > 0.88 and max(estimated[c] for c in ("c1", "c2", "c3")) < 0.7


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    accuracies=st.lists(st.floats(0.34, 1.0), min_size=2, max_size=5),
)
def test_competence_is_a_probability_and_does_not_depend_on_the_labellers_names(seed, accuracies):
    named = {f"w{i}": a for i, a in enumerate(accuracies)}
    triples = synthetic(named, items=60, seed=seed)
    fit = dawid_skene(triples)
    assert all(0.0 <= c.competence <= 1.0 for c in fit.labellers)
    assert abs(sum(fit.priors) - 1.0) < 1e-9
    renamed = dawid_skene([(i, "x" + w, a) for i, w, a in triples])
    assert [round(c.competence, 9) for c in renamed.labellers] == [
        round(c.competence, 9) for c in fit.labellers
    ]
