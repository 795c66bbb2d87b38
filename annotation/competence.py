"""Labeller competence from a latent model of annotator reliability: Dawid and Skene (1979) on
pair preferences. Pure: numpy in, plain types out, no Django.

Every (task, completion pair) is an item with a hidden true answer among three classes — the
first completion better, a tie, the second better — and each labeller answers it through their
own 3 x 3 confusion matrix ``pi[labeller][true, given]``. EM alternates the posterior of every
item's class given the answers (E) with the class priors and confusion matrices given the
posteriors (M), from the majority vote; a Dirichlet pseudo-count on every confusion row (more
on its diagonal) keeps labellers with few answers near "mostly right" instead of at 0 or 1.

A labeller's **competence** is the probability that their answer is the true class, under the
fitted model: ``sum_k prior_k * pi[k, k]``. Unlike agreement with the others' consensus it
weighs each colleague by their own fitted reliability, so one careful labeller among careless
ones is not pulled down to the crowd (Dawid-Skene, MACE and their kin, as Potato reports).

Input: ``(item, labeller, answer)`` triples with answers 0 / 1 / 2; an item answered by one
labeller only tells nothing about them and is left out.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

CLASSES = 3
"""first better, tie, second better (annotation.agreement's FIRST_BETTER, TIE, SECOND_BETTER)"""


@dataclass(frozen=True, slots=True)
class Competence:
    """One labeller's fitted reliability."""

    labeller_id: Hashable
    competence: float
    """probability that their answer is the item's true class"""
    answers: int
    """answers on items someone else answered too: what the estimate rests on"""
    confusion: tuple[tuple[float, ...], ...]
    """``confusion[true][given]``"""


@dataclass(frozen=True, slots=True)
class DawidSkene:
    labellers: tuple[Competence, ...]
    """in increasing labeller id order"""
    priors: tuple[float, ...]
    iterations: int
    converged: bool


def dawid_skene(
    triples: Sequence[tuple[Hashable, Hashable, int]],
    *,
    classes: int = CLASSES,
    prior_correct: float = 2.0,
    prior_wrong: float = 0.5,
    tolerance: float = 1e-6,
    max_iterations: int = 200,
) -> DawidSkene:
    """Fit the Dawid-Skene model to ``(item, labeller, answer)`` triples (module docstring).

    ``prior_correct`` / ``prior_wrong``: Dirichlet pseudo-counts added to each confusion row's
    diagonal / other cells. Deterministic: no random start.
    """
    answered: dict[Hashable, set[Hashable]] = {}
    for item, labeller, _ in triples:
        answered.setdefault(item, set()).add(labeller)
    kept = [(i, w, a) for i, w, a in triples if len(answered[i]) >= 2]
    labeller_ids = sorted({w for _, w, _ in triples}, key=_order)
    if not kept:
        return DawidSkene(
            labellers=tuple(Competence(w, float("nan"), 0, ()) for w in labeller_ids),
            priors=tuple([1.0 / classes] * classes),
            iterations=0,
            converged=True,
        )
    item_ids = sorted({i for i, _, _ in kept}, key=_order)
    item_index = {item: k for k, item in enumerate(item_ids)}
    labeller_index = {w: k for k, w in enumerate(labeller_ids)}
    items = np.array([item_index[i] for i, _, _ in kept])
    workers = np.array([labeller_index[w] for _, w, _ in kept])
    given = np.array([a for _, _, a in kept])
    if given.min() < 0 or given.max() >= classes:
        raise ValueError(f"answers must be 0..{classes - 1}")
    n_items, n_workers = len(item_ids), len(labeller_ids)

    # Start from the majority vote (soft: the share of each answer).
    posterior = np.zeros((n_items, classes))
    np.add.at(posterior, (items, given), 1.0)
    posterior /= posterior.sum(axis=1, keepdims=True)

    pseudo = np.full((classes, classes), prior_wrong) + np.eye(classes) * (
        prior_correct - prior_wrong
    )
    converged, iterations = False, 0
    priors = posterior.mean(axis=0)
    confusion = np.zeros((n_workers, classes, classes))
    while iterations < max_iterations:
        iterations += 1
        # M step: class priors and every labeller's confusion matrix.
        priors = (posterior.sum(axis=0) + 1.0) / (n_items + classes)
        confusion = np.broadcast_to(pseudo, (n_workers, classes, classes)).copy()
        np.add.at(confusion, (workers, slice(None), given), posterior[items])
        confusion /= confusion.sum(axis=2, keepdims=True)
        # E step: each item's class given every answer on it.
        log_post = np.tile(np.log(priors), (n_items, 1))
        np.add.at(log_post, items, np.log(confusion[workers, :, given]))
        log_post -= log_post.max(axis=1, keepdims=True)
        updated = np.exp(log_post)
        updated /= updated.sum(axis=1, keepdims=True)
        change = float(np.abs(updated - posterior).max())
        posterior = updated
        if change < tolerance:
            converged = True
            break

    counts = np.bincount(workers, minlength=n_workers)
    labellers = tuple(
        Competence(
            labeller_id=w,
            competence=float((priors * np.diag(confusion[k])).sum()) if counts[k] else float("nan"),
            answers=int(counts[k]),
            confusion=tuple(tuple(float(x) for x in row) for row in confusion[k]),
        )
        for k, w in enumerate(labeller_ids)
    )
    return DawidSkene(
        labellers=labellers,
        priors=tuple(float(p) for p in priors),
        iterations=iterations,
        converged=converged,
    )


def _order(value: Hashable) -> tuple:
    """Sort ids of any comparable kind deterministically (ints, strings, tuples)."""
    return (type(value).__name__, value)
