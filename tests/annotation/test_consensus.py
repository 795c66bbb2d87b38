"""Consensus rankings (ranked pairs, Bradley-Terry) and majority-vote pairs. No database."""

from __future__ import annotations

import math

import numpy as np
import pytest

from annotation.consensus import (
    BradleyTerry,
    MajorityPair,
    bradley_terry,
    majority_pairs,
    ranked_pairs,
    win_matrix,
)
from annotation.pairs import FAIL

# Wikipedia's "Tennessee capital" example (Ranked pairs): 100 voters, ids M=1 N=2 C=3 K=4.
M, N, C, K = 1, 2, 3, 4
TENNESSEE = (
    [{M: 1, N: 2, C: 3, K: 4}] * 42
    + [{N: 1, C: 2, K: 3, M: 4}] * 26
    + [{C: 1, K: 2, N: 3, M: 4}] * 15
    + [{K: 1, C: 2, N: 3, M: 4}] * 17
)


def test_ranked_pairs_tennessee():
    # margins: C>K 66, N>C 36, N>K 36, N>M 16, C>M 16, K>M 16: no cycle -> N, C, K, M
    assert ranked_pairs(TENNESSEE) == {M: 4, N: 1, C: 2, K: 3}


def test_ranked_pairs_breaks_a_cycle_at_its_weakest_majority():
    # 2x A>B>C, 2x B>C>A, 1x C>A>B: B>C by 4-1 (margin 3), A>B 3-2 and C>A 3-2 (margin 1)
    # lock B>C, then A>B (ids break the margin tie), C>A would close A>B>C>A -> skipped
    rankings = [{1: 1, 2: 2, 3: 3}] * 2 + [{2: 1, 3: 2, 1: 3}] * 2 + [{3: 1, 1: 2, 2: 3}]
    assert ranked_pairs(rankings) == {1: 1, 2: 2, 3: 3}


def test_win_matrix_counts_a_tie_half_each():
    ids, wins = win_matrix([{1: 1, 2: 1, 3: 2}, {1: 1, 2: 2, 3: 3}])
    assert ids == [1, 2, 3]
    np.testing.assert_array_equal(wins, [[0, 1.5, 2], [0.5, 0, 2], [0, 0, 0]])


def test_ranked_pairs_with_tied_votes():
    assert ranked_pairs([{1: 1, 2: 1, 3: 2}, {1: 1, 2: 2, 3: 3}]) == {1: 1, 2: 2, 3: 3}
    # exactly balanced: a consensus tie (equal ranks)
    assert ranked_pairs([{1: 1, 2: 2}, {1: 2, 2: 1}]) == {1: 1, 2: 1}
    assert ranked_pairs([{1: 1, 2: 2, 3: 3}, {1: 3, 2: 2, 3: 1}]) == {1: 1, 2: 1, 3: 1}


def test_ranked_pairs_ranks_are_dense():
    # 1 and 2 balanced, both beat 3 -> 1, 1, 2
    rankings = [{1: 1, 2: 2, 3: 3}, {1: 2, 2: 1, 3: 3}]
    assert ranked_pairs(rankings) == {1: 1, 2: 1, 3: 2}


def test_f_is_a_bottom_tier_and_a_majority_f_stays_f():
    rankings = [{1: 1, 2: FAIL, 3: 2}, {1: 2, 2: FAIL, 3: 1}, {1: 1, 2: 3, 3: 2}]
    # 1 beats 3 two votes to one; 2 is F for 2 of 3 labellers
    assert ranked_pairs(rankings) == {1: 1, 2: FAIL, 3: 2}
    assert ranked_pairs(rankings, fail_majority=False) == {1: 1, 2: 3, 3: 2}
    assert bradley_terry(rankings).ranking == {1: 1, 2: FAIL, 3: 2}


def test_bradley_terry_two_items_closed_form():
    # 3 wins to 1: p1/p2 = 3 -> scores +-ln(3)/2
    fit = bradley_terry([{1: 1, 2: 2}] * 3 + [{1: 2, 2: 1}], prior=0)
    assert fit.converged
    assert fit.scores[1] == pytest.approx(math.log(3) / 2)
    assert fit.scores[2] == pytest.approx(-math.log(3) / 2)
    assert fit.ranking == {1: 1, 2: 2}


def test_bradley_terry_counts_its_iterations():
    # two completions: the first MM step lands on the maximum (3 wins to 1), the second moves
    # nothing and so converges
    fit = bradley_terry([{1: 1, 2: 2}] * 3 + [{1: 2, 2: 1}], prior=0)
    assert (fit.iterations, fit.converged) == (2, True)


def test_bradley_terry_of_one_completion_and_of_none():
    assert bradley_terry([{7: 1}]) == BradleyTerry(
        scores={7: 0.0}, ranking={7: 1}, iterations=1, converged=True
    )
    assert bradley_terry([]) == BradleyTerry(scores={}, ranking={}, iterations=0, converged=True)


def test_bradley_terry_without_a_prior_converges_when_one_completion_never_won():
    # 3 lost both its comparisons: its strength goes to 0 (its score to the floor) while 1 and 2
    # settle; the fit still converges (a log of 0 must not make every step infinite)
    rankings = [{1: 1, 2: 2}, {1: 1, 2: 2}, {1: 2, 2: 1}, {2: 1, 3: 2}, {1: 1, 3: 2}]
    fit = bradley_terry(rankings, prior=0, max_iterations=1000)
    assert fit.converged and fit.iterations < 1000
    assert fit.ranking == {1: 1, 2: 2, 3: 3}
    assert fit.scores[3] < -600 < fit.scores[2] < fit.scores[1]


def test_bradley_terry_counts_a_tie_half_a_win():
    # one win and one tie: 1.5 wins to 0.5 -> ratio 3
    fit = bradley_terry([{1: 1, 2: 2}, {1: 1, 2: 1}], prior=0)
    assert fit.scores[1] - fit.scores[2] == pytest.approx(math.log(3))


def test_bradley_terry_prior_keeps_a_clean_sweep_finite():
    # one labeller, 1 > 2: with one virtual tie the wins are 1.5 to 0.5 -> ratio 3
    fit = bradley_terry([{1: 1, 2: 2}], prior=1.0)
    assert fit.converged
    assert fit.scores[1] - fit.scores[2] == pytest.approx(math.log(3))
    four = bradley_terry([{10: 2, 11: 4, 12: 1, 13: 3}])
    assert four.ranking == {10: 2, 11: 4, 12: 1, 13: 3}


def test_bradley_terry_symmetric_cycle_ties_everything():
    fit = bradley_terry([{1: 1, 2: 2, 3: 3}, {2: 1, 3: 2, 1: 3}, {3: 1, 1: 2, 2: 3}], prior=0)
    assert all(score == pytest.approx(0.0, abs=1e-9) for score in fit.scores.values())
    assert fit.ranking == {1: 1, 2: 1, 3: 1}


def test_bradley_terry_solves_the_likelihood_equations():
    # at the maximum, for each i: sum_j n_ij p_i / (p_i + p_j) = wins_i
    ids, wins = win_matrix(TENNESSEE)
    fit = bradley_terry(TENNESSEE, prior=0)
    p = np.exp([fit.scores[i] for i in ids])
    games = wins + wins.T
    expected_wins = (games * p[:, None] / (p[:, None] + p[None, :])).sum(axis=1)
    np.testing.assert_allclose(expected_wins, wins.sum(axis=1), rtol=1e-8)


def test_majority_pairs_margin():
    rankings = [{1: 1, 2: 2}, {1: 1, 2: 2}, {1: 2, 2: 1}]
    assert majority_pairs(rankings) == [MajorityPair(1, 2, False, 1 / 3, 2, 1, 0, 3)]
    # a tie voter counts as a voter for neither side: (2 - 1) / 4
    assert majority_pairs([*rankings, {1: 1, 2: 1}]) == [
        MajorityPair(1, 2, False, 0.25, 2, 1, 1, 4)
    ]


def test_majority_pairs_orients_to_the_winner_and_marks_balanced_pairs():
    assert majority_pairs([{1: 2, 2: 1}, {1: 2, 2: 1}]) == [
        MajorityPair(2, 1, False, 1.0, 2, 0, 0, 2)
    ]
    assert majority_pairs([{1: 1, 2: 2}, {1: 2, 2: 1}]) == [
        MajorityPair(1, 2, True, 0.0, 1, 1, 0, 2)
    ]


def test_majority_pairs_leave_out_a_pair_nobody_answered():
    # under "drop" a ranked vs F pair gets no vote; F vs F never does
    assert majority_pairs([{1: 1, 2: FAIL}]) == []
    assert majority_pairs([{1: FAIL, 2: FAIL}], fail_policy="rank_last") == []


def test_majority_pairs_f_policies():
    rankings = [{1: 1, 2: FAIL, 3: 2}, {1: 1, 2: 2, 3: 3}]
    # drop: the first ranking says nothing about completion 2
    assert majority_pairs(rankings) == [
        MajorityPair(1, 2, False, 1.0, 1, 0, 0, 1),
        MajorityPair(1, 3, False, 1.0, 2, 0, 0, 2),
        MajorityPair(2, 3, False, 1.0, 1, 0, 0, 1),
    ]
    # rank_last: 3 beats the F-marked 2 in the first ranking, 2 beats 3 in the second
    assert majority_pairs(rankings, fail_policy="rank_last")[2] == MajorityPair(
        2, 3, True, 0.0, 1, 1, 0, 2
    )


def test_majority_pairs_tennessee_margins():
    pairs = {(p.chosen, p.rejected): p.margin for p in majority_pairs(TENNESSEE)}
    assert pairs == {
        (N, M): pytest.approx(0.16),
        (C, M): pytest.approx(0.16),
        (K, M): pytest.approx(0.16),
        (N, C): pytest.approx(0.36),
        (N, K): pytest.approx(0.36),
        (C, K): pytest.approx(0.66),
    }
