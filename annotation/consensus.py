"""Consensus of several labellers' rankings of the same task's completions.

Pure module: plain types in, plain types out, no Django. Three methods:

* :func:`ranked_pairs` — Tideman's ranked pairs (as Open-Assistant's
  ``backend/oasst_backend/utils/ranking.py``), a consensus *ranking*;
* :func:`bradley_terry` — a Bradley-Terry fit (MM algorithm), *scores* and a ranking;
* :func:`majority_pairs` — per completion pair, the majority direction and its vote margin.

Inputs are the rankings of one task, each a mapping completion id -> label (rank, 1 = best, or
``"F"``; see :mod:`annotation.pairs`). A labeller's tie counts half a win for each side. For
ranked pairs and Bradley-Terry F items are a bottom tier (every ranked completion beats an F one,
F vs F is a tie); :func:`majority_pairs` follows :func:`annotation.pairs.expand_ranking` instead
(``fail_policy``), since its output is training pairs.

Consensus rankings use the same labels as the input: rank 1 = best, **equal ranks = a consensus
tie**, ranks dense (1, 1, 2, ...). With ``fail_majority=True`` (default) a completion that more
than half of the labellers who saw it marked F is labelled ``"F"`` in the consensus, and the
others are ranked among themselves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from annotation.pairs import FAIL, FailPolicy, Label, preference, validate_ranking

Ranking = Mapping[int, Label]


@dataclass(frozen=True, slots=True)
class MajorityPair:
    """The majority answer on one completion pair of a task.

    ``chosen`` won more votes than ``rejected``; for a tie (equal votes) the two ids are given
    lower first and ``tie`` is true. ``margin = (votes_for - votes_against) / voters``, in [0, 1]:
    1 = unanimous, 0 = a tie; labellers who tied the two count as voters for neither side.
    """

    chosen: int
    rejected: int
    tie: bool
    margin: float
    votes_for: int
    votes_against: int
    ties: int
    voters: int


@dataclass(frozen=True, slots=True)
class BradleyTerry:
    """A Bradley-Terry fit of one task's rankings."""

    scores: dict[int, float]
    """completion id -> log strength, centred on 0: P(a beats b) = 1 / (1 + exp(s_b - s_a))"""
    ranking: dict[int, Label]
    """consensus ranking by score (dense ranks, equal scores = tie; see the module docstring)"""
    iterations: int
    converged: bool


def win_matrix(
    rankings: Sequence[Ranking],
) -> tuple[list[int], npt.NDArray[np.float64]]:
    """Completion ids (increasing) and wins[i, j] = votes for i over j, a tie counting 1/2 each.

    F items are a bottom tier; a ranking only votes on pairs it contains both of.
    """
    for ranking in rankings:
        validate_ranking(ranking)
    ids = sorted({completion_id for ranking in rankings for completion_id in ranking})
    index = {completion_id: i for i, completion_id in enumerate(ids)}
    wins = np.zeros((len(ids), len(ids)))
    for ranking in rankings:
        items = sorted(ranking.items())
        for k, (id_a, label_a) in enumerate(items):
            for id_b, label_b in items[k + 1 :]:
                a, b = index[id_a], index[id_b]
                answer = _bottom_tier_preference(label_a, label_b)
                if answer == 1:
                    wins[a, b] += 1
                elif answer == -1:
                    wins[b, a] += 1
                else:
                    wins[a, b] += 0.5
                    wins[b, a] += 0.5
    return ids, wins


def _bottom_tier_preference(a: Label, b: Label) -> int:
    """Like :func:`annotation.pairs.preference` with F a bottom tier, F vs F a tie."""
    if a == FAIL and b == FAIL:
        return 0
    answer = preference(a, b, fail_policy="rank_last")
    assert answer is not None
    return answer


def _fails_by_majority(rankings: Sequence[Ranking], ids: list[int]) -> set[int]:
    """Ids that more than half of the rankings containing them marked F."""
    failed = set()
    for completion_id in ids:
        labels = [ranking[completion_id] for ranking in rankings if completion_id in ranking]
        if sum(label == FAIL for label in labels) * 2 > len(labels):
            failed.add(completion_id)
    return failed


def _dense_ranking(
    layers: Sequence[Sequence[int]], failed: set[int], *, fail_majority: bool
) -> dict[int, Label]:
    """Label each layer (best first) with a dense rank, F-majority ids with F if asked."""
    ranking: dict[int, Label] = {}
    rank = 0
    for layer in layers:
        kept = [
            completion_id
            for completion_id in layer
            if not (fail_majority and completion_id in failed)
        ]
        if kept:
            rank += 1
            ranking.update(dict.fromkeys(kept, rank))
    if fail_majority:
        ranking.update(dict.fromkeys(failed, FAIL))
    return dict(sorted(ranking.items()))


def _reaches(locked: list[set[int]], start: int, goal: int) -> bool:
    """Whether the locked graph has a path start -> goal."""
    stack, seen = [start], {start}
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        for successor in locked[node] - seen:
            seen.add(successor)
            stack.append(successor)
    return False


def ranked_pairs(rankings: Sequence[Ranking], *, fail_majority: bool = True) -> dict[int, Label]:
    """Consensus ranking of one task by Tideman's ranked pairs.

    1. wins[i, j] from :func:`win_matrix` (ties 1/2 each, F a bottom tier);
    2. every pair with a positive margin wins[i, j] - wins[j, i] is a majority i > j;
    3. majorities are locked in order of decreasing margin (then more winning votes, then by
       ids, so the result is deterministic), skipping any that would close a cycle;
    4. the ranking peels the locked graph: rank 1 = completions nobody locked above them, and so
       on. Completions that land in the same layer share a rank (a consensus tie), e.g. when their
       votes are exactly balanced.
    """
    ids, wins = win_matrix(rankings)
    margins = wins - wins.T
    majorities = [
        (i, j) for i in range(len(ids)) for j in range(len(ids)) if i != j and margins[i, j] > 0
    ]
    majorities.sort(key=lambda ij: (-margins[ij], -wins[ij], ids[ij[0]], ids[ij[1]]))
    locked: list[set[int]] = [set() for _ in ids]
    for i, j in majorities:
        if not _reaches(locked, j, i):
            locked[i].add(j)

    remaining = set(range(len(ids)))
    layers = []
    while remaining:
        beaten = {j for i in remaining for j in locked[i]}
        layer = sorted(remaining - beaten)
        layers.append([ids[i] for i in layer])
        remaining -= set(layer)
    return _dense_ranking(layers, _fails_by_majority(rankings, ids), fail_majority=fail_majority)


def bradley_terry(
    rankings: Sequence[Ranking],
    *,
    prior: float = 1.0,
    tolerance: float = 1e-10,
    max_iterations: int = 10_000,
    tie_tolerance: float = 1e-7,
    fail_majority: bool = True,
) -> BradleyTerry:
    """Bradley-Terry strengths of one task's completions by Hunter's (2004) MM algorithm.

    Wins come from :func:`win_matrix` (a tie is 1/2 a win each). ``prior`` adds that many
    virtual tied comparisons to every pair (1/2 win each way): it keeps the fit finite when a
    completion won or lost everything (the plain maximum-likelihood estimate is then infinite)
    and shrinks scores towards 0 on small samples; the order is kept. With ``prior=0`` the fit
    only converges when every completion has won and lost something. Completions whose scores
    differ by less than ``tie_tolerance`` share a rank.
    """
    ids, wins = win_matrix(rankings)
    size = len(ids)
    if size == 0:
        return BradleyTerry(scores={}, ranking={}, iterations=0, converged=True)
    wins = wins + (prior / 2) * (1 - np.eye(size))
    games = wins + wins.T
    won = wins.sum(axis=1)
    strength = np.ones(size)
    converged, iterations = False, 0
    while not converged and iterations < max_iterations:
        iterations += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            denominator = (games / (strength[:, None] + strength[None, :])).sum(axis=1)
            updated = np.where(denominator > 0, won / denominator, strength)
        updated = updated / math.exp(np.log(np.maximum(updated, 1e-300)).mean())
        step = np.abs(np.log(np.maximum(updated, 1e-300)) - np.log(np.maximum(strength, 1e-300)))
        strength = updated
        converged = bool(step.max() < tolerance)
    scores = np.log(np.maximum(strength, 1e-300))
    scores = scores - scores.mean()
    order = sorted(range(size), key=lambda i: (-scores[i], ids[i]))
    layers: list[list[int]] = []
    for i in order:
        if layers and scores[layers[-1][0]] - scores[i] < tie_tolerance:
            layers[-1].append(i)
        else:
            layers.append([i])
    ranking = _dense_ranking(
        [[ids[i] for i in layer] for layer in layers],
        _fails_by_majority(rankings, ids),
        fail_majority=fail_majority,
    )
    return BradleyTerry(
        scores={ids[i]: float(scores[i]) for i in range(size)},
        ranking=ranking,
        iterations=iterations,
        converged=converged,
    )


def majority_pairs(
    rankings: Sequence[Ranking], *, fail_policy: FailPolicy = "drop"
) -> list[MajorityPair]:
    """For every completion pair of one task that somebody answered, the majority direction.

    Each ranking votes as :func:`annotation.pairs.expand_ranking` would pair it: F items give no
    vote under ``"drop"`` and lose to ranked ones under ``"rank_last"``; F vs F gives no vote; a
    tie counts as a voter for neither side. Sorted by (lower id, higher id).
    """
    for ranking in rankings:
        validate_ranking(ranking)
    ids = sorted({completion_id for ranking in rankings for completion_id in ranking})
    result = []
    for k, id_a in enumerate(ids):
        for id_b in ids[k + 1 :]:
            answers = [
                preference(ranking[id_a], ranking[id_b], fail_policy=fail_policy)
                for ranking in rankings
                if id_a in ranking and id_b in ranking
            ]
            for_a, for_b, ties = answers.count(1), answers.count(-1), answers.count(0)
            voters = for_a + for_b + ties
            if voters == 0:
                continue
            if for_a >= for_b:
                chosen, rejected, votes_for, votes_against = id_a, id_b, for_a, for_b
            else:
                chosen, rejected, votes_for, votes_against = id_b, id_a, for_b, for_a
            result.append(
                MajorityPair(
                    chosen=chosen,
                    rejected=rejected,
                    tie=for_a == for_b,
                    margin=(votes_for - votes_against) / voters,
                    votes_for=votes_for,
                    votes_against=votes_against,
                    ties=ties,
                    voters=voters,
                )
            )
    return result


# --------------------------------------------------------------------------------------------------
# Provenance: how a task's label was settled
# --------------------------------------------------------------------------------------------------

Provenance = Literal["unanimous", "majority", "adjudicated", "unresolved"]
PROVENANCES: tuple[str, ...] = ("unanimous", "majority", "adjudicated", "unresolved")


def provenance(rankings: Sequence[Ranking], *, adjudicated: bool = False) -> Provenance:
    """How a task's consensus was reached, judged on completion pairs.

    Each ranking answers every completion pair it holds (better / tie / worse, F a bottom tier
    and F vs F a tie, as the consensus methods count them):

    * ``"adjudicated"``: a reviewer decided (whatever the labellers said);
    * ``"unanimous"``: two or more rankings, every pair answered the same way by all of them
      (the same weak order; ``1, 1, 3`` and ``1, 1, 2`` are the same answer);
    * ``"majority"``: not unanimous, but on every pair one answer was given by more than half
      of the rankings holding it;
    * ``"unresolved"``: some pair has no strict majority, or fewer than two rankings (nobody
      confirmed the one label).
    """
    if adjudicated:
        return "adjudicated"
    if len(rankings) < 2:
        return "unresolved"
    for ranking in rankings:
        validate_ranking(ranking)
    ids = sorted({completion_id for ranking in rankings for completion_id in ranking})
    unanimous = True
    for k, id_a in enumerate(ids):
        for id_b in ids[k + 1 :]:
            answers = [
                _bottom_tier_preference(ranking[id_a], ranking[id_b])
                for ranking in rankings
                if id_a in ranking and id_b in ranking
            ]
            if not answers:
                continue
            top = max(answers.count(answer) for answer in (-1, 0, 1))
            if top != len(answers):
                unanimous = False
            if 2 * top <= len(answers):
                return "unresolved"
    return "unanimous" if unanimous else "majority"
