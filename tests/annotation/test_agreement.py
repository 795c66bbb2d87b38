"""Agreement metrics on small hand-computed cases, limits (identical / random labellers), the
bootstrap, and the outlier labeller. No database.

The expected values are worked out by hand in the comments next to them.
"""

from __future__ import annotations

import math

import krippendorff
import numpy as np
import pytest

from annotation import agreement
from annotation.agreement import (
    Bootstrap,
    FlagRule,
    RankingRecord,
    agreement_report,
    alpha_fail_flags,
    alpha_from_value_counts,
    alpha_pairs,
    alpha_ranks,
    consensus_credit,
    fleiss_kappa,
    fleiss_kappa_pairs,
    kendall_w,
    kendall_w_by_task,
    krippendorff_alpha,
    labeller_quality,
    mean_kendall_w,
    observed_agreement,
    pair_votes,
    pairwise_agreement,
    rank_values,
    ranking_table,
    reliability_matrix,
)
from annotation.pairs import FAIL, Label

FAST = Bootstrap(resamples=200, seed=1)


def records_of(*rankings: tuple[int, int, dict[int, Label]]) -> list[RankingRecord]:
    """(task, labeller, items) triples -> records with ranking ids 1, 2, ..."""
    return [
        RankingRecord(ranking_id=i, task_id=task, labeller_id=labeller, items=items)
        for i, (task, labeller, items) in enumerate(rankings, start=1)
    ]


# D1: one task, two labellers who disagree on one pair of three.
D1 = records_of((1, 1, {1: 1, 2: 2, 3: 3}), (1, 2, {1: 1, 2: 3, 3: 2}))

# D2: one task, three labellers, one tie.
#   pair (1,2): L1 first better, L2 tie, L3 second better -> votes [1, 1, 1]
#   pair (1,3): all first better -> [3, 0, 0];  pair (2,3): all first better -> [3, 0, 0]
D2 = records_of(
    (1, 1, {1: 1, 2: 2, 3: 3}),
    (1, 2, {1: 1, 2: 1, 3: 2}),
    (1, 3, {1: 2, 2: 1, 3: 3}),
)

# D3: one task, two labellers, F marks.  rank_last votes: (1,2) [2,0,0], (1,3) [2,0,0],
#   (2,3): L1 F vs F = tie, L2 2 beats F -> [1,1,0].
D3 = records_of((1, 1, {1: 1, 2: FAIL, 3: FAIL}), (1, 2, {1: 1, 2: 2, 3: FAIL}))


# --------------------------------------------------------------------------------------------------
# Records -> table
# --------------------------------------------------------------------------------------------------


def test_table_puts_completions_in_slots_and_f_as_inf():
    table = ranking_table(records_of((7, 1, {30: 2, 10: 1}), (5, 2, {4: FAIL, 3: 1, 9: 2})))
    assert table.task_ids.tolist() == [5, 7]
    assert table.completion_ids.tolist() == [[3, 4, 9], [10, 30, -1]]
    np.testing.assert_array_equal(table.labels, [[1, math.inf, 2], [1, 2, np.nan]])


def test_table_keeps_the_latest_ranking_of_a_labeller_on_a_task():
    records = [
        RankingRecord(ranking_id=8, task_id=1, labeller_id=1, items={1: 2, 2: 1}),
        RankingRecord(ranking_id=3, task_id=1, labeller_id=1, items={1: 1, 2: 2}),
    ]
    table = ranking_table(records)
    assert table.ranking_ids.tolist() == [8]
    assert table.labels.tolist() == [[2.0, 1.0]]
    # the same when the labeller who ranked twice is not the task's first
    again = ranking_table(
        records_of((1, 1, {1: 1, 2: 2}), (1, 2, {1: 1, 2: 2}), (1, 2, {1: 2, 2: 1}))
    )
    assert again.ranking_ids.tolist() == [1, 3]


@pytest.mark.parametrize("labels", [(1, 0), (1, 1.5), (1, "G"), (1, None), (True, False)])
def test_table_rejects_bad_labels(labels):
    with pytest.raises(ValueError):
        ranking_table(records_of((1, 1, dict(enumerate(labels)))))


def test_mid_ranks_put_f_in_a_bottom_tier():
    table = ranking_table(records_of((1, 1, {1: 1, 2: 1, 3: 3, 4: FAIL, 5: FAIL})))
    np.testing.assert_array_equal(rank_values(table), [[1.5, 1.5, 3, 4.5, 4.5]])
    np.testing.assert_array_equal(
        rank_values(table, fail_policy="drop"), [[1.5, 1.5, 3, np.nan, np.nan]]
    )


def test_empty_input_gives_undefined_estimates():
    report = agreement_report([], bootstrap=FAST)
    assert report.rankings == 0
    assert report.pairwise[0].estimate.value is None
    assert report.alpha_ranks.value is None
    assert report.kendall_w.value is None
    assert report.labeller_quality == ()


# --------------------------------------------------------------------------------------------------
# Pairwise agreement rate
# --------------------------------------------------------------------------------------------------


def test_pairwise_agreement_two_labellers_one_swap():
    votes = pair_votes(ranking_table(D1))
    # they agree on (1,2) and (1,3), not on (2,3): 2 of 3 pairs
    for form in ("strict", "three_way", "tie_half"):
        result = pairwise_agreement(votes, form=form, bootstrap=FAST)
        assert result.form == form
        assert result.estimate.value == pytest.approx(2 / 3)
        assert result.estimate.n == 3
        assert result.estimate.ci_low is None  # one task: no interval


def test_pairwise_agreement_forms_with_a_tie():
    votes = pair_votes(ranking_table(D2))
    np.testing.assert_array_equal(votes.counts[0], [[1, 1, 1], [3, 0, 0], [3, 0, 0]])
    strict = pairwise_agreement(votes, form="strict", bootstrap=FAST)
    # strict: (1,2) has one strictly-answering labeller pair (L1, L3) that disagrees; the other
    # two pairs have 3 agreeing labeller pairs each -> 6 / 7
    assert strict.estimate.value == pytest.approx(6 / 7)
    assert strict.estimate.n == 7
    assert strict.chance == 0.5
    three_way = pairwise_agreement(votes, form="three_way", bootstrap=FAST)
    # three-way: 3 labeller pairs per completion pair; (1,2) none agree -> 6 / 9
    assert three_way.estimate.value == pytest.approx(2 / 3)
    assert three_way.estimate.n == 9
    assert three_way.chance == pytest.approx(1 / 3)
    half = pairwise_agreement(votes, form="tie_half", bootstrap=FAST)
    # tie_half: on (1,2) the tie-vs-strict pairs (L2,L1), (L2,L3) count 1/2 each -> (6 + 1) / 9
    assert half.estimate.value == pytest.approx(7 / 9)


def test_pairwise_agreement_f_as_bottom_tier_or_dropped():
    table = ranking_table(D3)
    rank_last = pair_votes(table, fail_policy="rank_last")
    np.testing.assert_array_equal(rank_last.counts[0], [[2, 0, 0], [2, 0, 0], [1, 1, 0]])
    # strict: (2,3) is left out (L1 tied it) -> 2 of 2
    strict = pairwise_agreement(rank_last, form="strict", bootstrap=FAST).estimate
    assert (strict.value, strict.n) == (1.0, 2)
    three_way = pairwise_agreement(rank_last, form="three_way", bootstrap=FAST).estimate
    assert (three_way.value, three_way.n) == (pytest.approx(2 / 3), 3)
    half = pairwise_agreement(rank_last, form="tie_half", bootstrap=FAST).estimate
    assert half.value == pytest.approx(2.5 / 3)
    # drop: L1 ranked only completion 1, so the two never answer the same pair
    dropped = pairwise_agreement(pair_votes(table, fail_policy="drop"), bootstrap=FAST).estimate
    assert (dropped.value, dropped.n) == (None, 0)


def test_observed_agreement_pools_rater_pairs():
    # unit 1: the one pair agrees; unit 2: the one pair disagrees; unit 3: a single rating
    assert observed_agreement([[2, 0], [1, 1], [0, 1]]) == 0.5
    assert observed_agreement([[1, 0], [0, 1]]) is None


# --------------------------------------------------------------------------------------------------
# Fleiss' kappa
# --------------------------------------------------------------------------------------------------


def test_fleiss_kappa_on_pair_preferences():
    # units [1,1,1], [3,0,0], [3,0,0]: P_i = 0, 1, 1 -> P = 2/3
    # shares: first (1+3+3)/9 = 7/9, tie 1/9, second 1/9 -> P_e = 51/81 = 17/27
    # kappa = (2/3 - 17/27) / (1 - 17/27) = (1/27) / (10/27) = 0.1
    result = fleiss_kappa_pairs(pair_votes(ranking_table(D2)), bootstrap=FAST)
    assert result.value == pytest.approx(0.1)
    assert result.n == 3


def test_fleiss_kappa_with_varying_raters():
    # units with >= 2 ratings: [2,0] P=1, [1,1] P=0 -> P = 1/2
    # shares over all three units: cat0 (1 + 1/2 + 1)/3 = 5/6, cat1 1/6 -> P_e = 26/36 = 13/18
    # kappa = (1/2 - 13/18) / (5/18) = -4/5
    result = fleiss_kappa([[2, 0], [1, 1], [1, 0]])
    assert result is not None
    assert result.kappa == pytest.approx(-0.8)
    assert result.p_observed == pytest.approx(0.5)
    assert result.p_expected == pytest.approx(13 / 18)
    assert result.units == 2


def test_fleiss_kappa_is_undefined_with_one_category():
    result = fleiss_kappa([[3, 0], [2, 0]])
    assert result is not None and result.kappa is None
    assert fleiss_kappa([[1, 0]]) is None


# --------------------------------------------------------------------------------------------------
# Krippendorff's alpha
# --------------------------------------------------------------------------------------------------


def test_alpha_nominal_on_pair_preferences():
    # coincidences: unit [1,1,1] adds 1/2 to each off-diagonal cell; each [3,0,0] adds 3 to o_00
    # n_v = (7, 1, 1), n = 9; observed = 3 off-diagonal; expected sum_{c!=k} n_c n_k = 81 - 51 = 30
    # alpha = 1 - (n - 1) * 3 / 30 = 1 - 24/30 = 0.2
    result = alpha_pairs(pair_votes(ranking_table(D2)), bootstrap=FAST)
    assert result.value == pytest.approx(0.2)
    assert result.n == 3


def test_alpha_ordinal_on_ranks():
    # mid-ranks: L1 (1, 2, 3), L2 (1.5, 1.5, 3), L3 (2, 1, 3)
    # values 1, 1.5, 2, 3 with n_v = 2, 2, 2, 3 (n = 9); observed: completions 1 and 2 each give
    # 1/2 to every off-diagonal cell among {1, 1.5, 2} -> o = 1 there; completion 3 gives o_33 = 3
    # ordinal d: (1,1.5) 4, (1,2) 16, (1.5,2) 4, (1,3) 42.25, (1.5,3) 20.25, (2,3) 6.25
    # sum o d = 2 * (4 + 16 + 4) = 48; sum n n d = 2 * 508.5 = 1017
    # alpha = 1 - 8 * 48 / 1017 = 633 / 1017
    result = alpha_ranks(ranking_table(D2), bootstrap=FAST)
    assert result.value == pytest.approx(633 / 1017)
    assert result.n == 3


def test_alpha_ordinal_with_f_as_bottom_tier():
    # mid-ranks: L1 (1, 2.5, 2.5), L2 (1, 2, 3); values 1, 2, 2.5, 3 with n_v = 2, 1, 2, 1
    # observed: o(2,2.5) = o(2.5,3) = 1 (both ways), d = 2.25 each -> sum o d = 9
    # expected: d(1,2) 2.25, (1,2.5) 9, (1,3) 20.25, (2,2.5) 2.25, (2,3) 9, (2.5,3) 2.25
    # sum n n d = 2 * (4.5 + 36 + 40.5 + 4.5 + 9 + 4.5) = 198; alpha = 1 - 5 * 9 / 198 = 17/22
    assert alpha_ranks(ranking_table(D3), bootstrap=FAST).value == pytest.approx(17 / 22)


def test_alpha_on_f_flags():
    # units: completion 1 (0, 0), completion 2 (1, 0), completion 3 (1, 1)
    # o_00 = 2, o_01 = o_10 = 1, o_11 = 2; n_v = (3, 3); alpha = 1 - 5 * 2 / 18 = 4/9
    result = alpha_fail_flags(ranking_table(D3), bootstrap=FAST)
    assert result.value == pytest.approx(4 / 9)
    assert result.n == 3
    # nobody marked F: no variation, alpha undefined
    assert alpha_fail_flags(ranking_table(D2), bootstrap=FAST).value is None


def test_alpha_undefined_without_variation_or_overlap():
    assert krippendorff_alpha([[1, 2], [1, np.nan]], level="nominal") is None
    assert alpha_from_value_counts([[2, 0], [0, 0]], level="nominal") is None
    assert krippendorff_alpha([[1, 2], [np.nan, np.nan]], level="nominal") is None


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_vectorised_alpha_matches_the_krippendorff_package(level):
    rng = np.random.default_rng(3)
    data = rng.integers(1, 6, size=(4, 40)).astype(float)
    data[rng.random(data.shape) < 0.3] = np.nan
    values = np.unique(data[~np.isnan(data)])
    counts = (data.T[..., None] == values).sum(axis=1)
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement=level)
    assert alpha_from_value_counts(counts, level=level, values=values) == pytest.approx(expected)
    assert krippendorff_alpha(data, level=level) == pytest.approx(expected)


def test_reliability_matrix_puts_each_value_at_its_labeller_and_task_slot():
    # rankings: task 1 by labellers 1 and 2, task 2 by labeller 1; 3 slots per task, so the
    # columns are task 1's slots 0-2, then task 2's slots 0-2
    table = ranking_table(
        records_of(
            (1, 1, {1: 1, 2: 2, 3: 3}), (1, 2, {1: 1, 2: 2, 3: 3}), (2, 1, {4: 1, 5: 2, 6: 3})
        )
    )
    values = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    nan = np.nan
    np.testing.assert_array_equal(
        reliability_matrix(table, values),
        [[1.0, 2.0, 3.0, 7.0, 8.0, 9.0], [4.0, 5.0, 6.0, nan, nan, nan]],
    )


def test_an_unknown_level_of_measurement_is_refused():
    with pytest.raises(ValueError, match="unknown level"):
        alpha_from_value_counts([[1, 1], [2, 0]], level="bogus")  # type: ignore[arg-type]


def test_reliability_matrix_gives_the_same_alpha():
    rng = np.random.default_rng(4)
    records = [
        RankingRecord(
            ranking_id=task * 10 + labeller,
            task_id=task,
            labeller_id=int(labeller + 3 * (task % 2)),
            items=dict(zip(range(4), (rng.permutation(4) + 1).tolist(), strict=True)),
        )
        for task in range(20)
        for labeller in range(3)
    ]
    table = ranking_table(records)
    matrix = reliability_matrix(table, rank_values(table))
    assert matrix.shape == (6, 20 * 4)
    expected = krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal")
    assert alpha_ranks(table, bootstrap=FAST).value == pytest.approx(expected)


def test_large_inputs_take_the_vectorised_path_to_the_same_alpha(monkeypatch):
    table = ranking_table(random_campaign(30, 3, seed=9, copies=False))
    by_package = alpha_ranks(table, bootstrap=FAST)
    monkeypatch.setattr(agreement, "PACKAGE_MAX_CELLS", 0)
    vectorised = alpha_ranks(table, bootstrap=FAST)
    assert vectorised.value == pytest.approx(by_package.value, abs=1e-12)
    assert (vectorised.ci_low, vectorised.ci_high) == (by_package.ci_low, by_package.ci_high)


# --------------------------------------------------------------------------------------------------
# Kendall's W
# --------------------------------------------------------------------------------------------------


def test_kendall_w_hand_cases():
    assert kendall_w([[1, 2, 3], [1, 2, 3]]) == pytest.approx(1.0)
    # reversed: rank sums all 4 -> S = 0
    assert kendall_w([[1, 2, 3], [3, 2, 1]]) == pytest.approx(0.0)
    # raw scores are ranked first; everybody ties everything -> undefined
    assert kendall_w([[10, 20, 30], [1, 5, 9]]) == pytest.approx(1.0)
    assert kendall_w([[1, 1], [2, 2]]) is None
    assert kendall_w([[1, 2, 3]]) is None


def test_kendall_w_per_task_with_ties():
    # D2 mid-ranks: (1, 2, 3), (1.5, 1.5, 3), (2, 1, 3); rank sums 4.5, 4.5, 9, mean 6 -> S = 13.5
    # ties: one group of 2 -> 2^3 - 2 = 6; W = 12 * 13.5 / (9 * 24 - 3 * 6) = 162 / 198 = 9/11
    assert kendall_w_by_task(ranking_table(D2)) == {1: pytest.approx(9 / 11)}
    # D3 with F as bottom tier: (1, 2.5, 2.5), (1, 2, 3): sums 2, 4.5, 5.5, mean 4 -> S = 6.5;
    # ties 6; W = 12 * 6.5 / (4 * 24 - 2 * 6) = 78 / 84 = 13/14
    assert kendall_w_by_task(ranking_table(D3)) == {1: pytest.approx(13 / 14)}
    # with F dropped only completion 1 is common to both: W undefined
    assert kendall_w_by_task(ranking_table(D3), fail_policy="drop") == {}


def test_mean_kendall_w_averages_tasks():
    records = D2 + records_of((2, 1, {5: 1, 6: 2}), (2, 2, {5: 2, 6: 1}))  # task 2: W = 0
    result = mean_kendall_w(ranking_table(records), bootstrap=FAST)
    assert result.value == pytest.approx((9 / 11 + 0) / 2)
    assert result.n == 2


def test_kendall_w_uses_the_completions_every_labeller_ranked():
    # labeller 2 did not see completion 3: W over completions 1 and 2 only (both 1 > 2) = 1
    records = records_of((1, 1, {1: 1, 2: 2, 3: 3}), (1, 2, {1: 1, 2: 2}))
    assert kendall_w_by_task(ranking_table(records)) == {1: pytest.approx(1.0)}


# --------------------------------------------------------------------------------------------------
# Limits: identical and random labellers
# --------------------------------------------------------------------------------------------------


def random_campaign(tasks: int, labellers: int, seed: int, *, copies: bool) -> list[RankingRecord]:
    """Every labeller ranks 4 completions of each task; copies=True: all give the same ranking."""
    rng = np.random.default_rng(seed)
    records = []
    for task in range(tasks):
        shared = rng.permutation(4) + 1
        for labeller in range(labellers):
            ranks = shared if copies else rng.permutation(4) + 1
            records.append(
                RankingRecord(
                    ranking_id=len(records) + 1,
                    task_id=task,
                    labeller_id=labeller,
                    items=dict(zip(range(task * 4, task * 4 + 4), ranks.tolist(), strict=True)),
                )
            )
    return records


def test_identical_labellers_agree_perfectly():
    report = agreement_report(random_campaign(50, 3, seed=5, copies=True), bootstrap=FAST)
    for result in report.pairwise:
        assert result.estimate.value == pytest.approx(1.0)
    assert report.alpha_ranks.value == pytest.approx(1.0)
    assert report.alpha_pairs.value == pytest.approx(1.0)
    assert report.fleiss_kappa.value == pytest.approx(1.0)
    assert report.kendall_w.value == pytest.approx(1.0)
    assert report.alpha_ranks.ci_low == pytest.approx(1.0)
    assert all(q.agreement.value == pytest.approx(1.0) for q in report.labeller_quality)
    assert not any(q.flagged for q in report.labeller_quality)


def test_random_labellers_agree_at_chance():
    report = agreement_report(random_campaign(1500, 3, seed=6, copies=False), bootstrap=FAST)
    strict = report.pairwise[0]
    assert strict.form == "strict"
    assert strict.estimate.value == pytest.approx(0.5, abs=0.02)
    assert strict.estimate.ci_low < strict.estimate.value < strict.estimate.ci_high
    assert report.alpha_ranks.value == pytest.approx(0.0, abs=0.03)
    assert report.alpha_pairs.value == pytest.approx(0.0, abs=0.03)
    assert report.fleiss_kappa.value == pytest.approx(0.0, abs=0.03)
    # under independent random rankings E[W] = 1/m
    assert report.kendall_w.value == pytest.approx(1 / 3, abs=0.02)


# --------------------------------------------------------------------------------------------------
# Bootstrap intervals
# --------------------------------------------------------------------------------------------------


def test_interval_brackets_the_value_and_is_reproducible():
    records = random_campaign(60, 3, seed=7, copies=False)
    votes = pair_votes(ranking_table(records))
    first = pairwise_agreement(votes, bootstrap=FAST).estimate
    again = pairwise_agreement(votes, bootstrap=FAST).estimate
    assert first == again
    assert first.ci_low < first.value < first.ci_high
    assert first.ci_high - first.ci_low < 0.3
    assert pairwise_agreement(votes, bootstrap=Bootstrap(resamples=0)).estimate.ci_low is None


def test_two_tasks_are_enough_for_an_interval_and_one_is_not():
    two = records_of(*(
        (task, labeller, items)
        for task in (1, 2)
        for labeller, items in ((1, {1: 1, 2: 2, 3: 3}), (2, {1: 1, 2: 3, 3: 2}))
    ))  # fmt: skip
    estimate = pairwise_agreement(pair_votes(ranking_table(two)), bootstrap=FAST).estimate
    assert estimate.value == pytest.approx(2 / 3)
    assert estimate.ci_low is not None and estimate.ci_high is not None
    one = pairwise_agreement(pair_votes(ranking_table(D1)), bootstrap=FAST).estimate
    assert (one.ci_low, one.ci_high) == (None, None)


def test_intervals_take_the_central_confidence_share_of_the_resamples(monkeypatch):
    # confidence 0.9: every interval (campaign figures and labellers) is the 5th to the 95th
    # percentile of its bootstrap replicates
    asked = []
    percentile = np.percentile

    def spy(values, q, *args, **kwargs):
        asked.append([float(x) for x in q])
        return percentile(values, q, *args, **kwargs)

    records = random_campaign(30, 3, seed=5, copies=False)
    bootstrap = Bootstrap(resamples=100, seed=1, confidence=0.9)
    table = ranking_table(records)
    monkeypatch.setattr(agreement.np, "percentile", spy)
    pairwise_agreement(pair_votes(table), bootstrap=bootstrap)
    labeller_quality(table, pair_votes(table), bootstrap=bootstrap)
    assert len(asked) == 1 + 3 and all(q == pytest.approx([5.0, 95.0]) for q in asked)


def test_interval_widens_with_fewer_tasks():
    small = pair_votes(ranking_table(random_campaign(20, 3, seed=8, copies=False)))
    large = pair_votes(ranking_table(random_campaign(400, 3, seed=8, copies=False)))
    width_small = pairwise_agreement(small, bootstrap=FAST).estimate
    width_large = pairwise_agreement(large, bootstrap=FAST).estimate
    assert (width_small.ci_high - width_small.ci_low) > (width_large.ci_high - width_large.ci_low)


# --------------------------------------------------------------------------------------------------
# Per-labeller quality
# --------------------------------------------------------------------------------------------------


def test_consensus_credit_leave_one_out():
    # D1: each labeller's consensus is the other one: 2 of 3 pairs agree
    table = ranking_table(D1)
    credit, scored = consensus_credit(table, pair_votes(table))
    np.testing.assert_array_equal(credit, [2, 2])
    np.testing.assert_array_equal(scored, [3, 3])
    # L1 = L2 = 1>2>3, L3 inverted: for L1 the others' mean ranks are all 2 (a consensus tie)
    # -> 1/2 on each of 3 pairs; for L3 the others say 1>2>3 -> 0 of 3
    table = ranking_table(
        records_of(
            (1, 1, {1: 1, 2: 2, 3: 3}), (1, 2, {1: 1, 2: 2, 3: 3}), (1, 3, {1: 3, 2: 2, 3: 1})
        )
    )
    credit, scored = consensus_credit(table, pair_votes(table))
    np.testing.assert_array_equal(credit, [1.5, 1.5, 0])
    np.testing.assert_array_equal(scored, [3, 3, 3])


def test_a_task_nobody_else_ranked_neither_scores_nor_counts_for_an_interval():
    # labeller 1 ranked task 1 with labeller 2 (D1: 2 of 3 pairs agree) and task 2 alone
    records = [*D1, *records_of((2, 1, {4: 1, 5: 2, 6: 3}))]
    table = ranking_table(records)
    credit, scored = consensus_credit(table, pair_votes(table))
    np.testing.assert_array_equal(credit, [2, 2, 0])
    np.testing.assert_array_equal(scored, [3, 3, 0])
    quality = {q.labeller_id: q for q in labeller_quality(table, pair_votes(table), bootstrap=FAST)}
    first = quality[1]
    assert (first.tasks, first.tasks_with_overlap) == (2, 1)
    assert (first.agreement.value, first.agreement.n) == (pytest.approx(2 / 3), 3)
    assert first.agreement.ci_low is None  # one task with scored pairs: nothing to resample
    report = agreement_report([*records, *records_of((3, 2, {7: 1, 8: 2}))], bootstrap=FAST)
    assert (report.tasks, report.tasks_with_overlap) == (3, 1)


def test_labeller_habits():
    table = ranking_table(
        [
            RankingRecord(1, 1, 1, {1: 1, 2: FAIL, 3: FAIL}, seconds=30.0),
            RankingRecord(2, 1, 2, {1: 1, 2: 1, 3: FAIL}, seconds=10.0),
            RankingRecord(3, 2, 2, {4: 1, 5: 2}, seconds=50.0),
        ]
    )
    quality = {q.labeller_id: q for q in labeller_quality(table, pair_votes(table), bootstrap=FAST)}
    assert quality[1].fail_rate == pytest.approx(2 / 3)
    assert quality[1].tie_rate is None  # one ranked completion: no pair to tie
    assert quality[1].median_seconds == 30.0
    assert (quality[1].tasks, quality[1].tasks_with_overlap) == (1, 1)
    assert quality[2].fail_rate == pytest.approx(1 / 5)
    assert quality[2].tie_rate == pytest.approx(1 / 2)  # pairs (1,2) tied, (4,5) not
    assert quality[2].median_seconds == 30.0
    assert (quality[2].tasks, quality[2].tasks_with_overlap) == (2, 1)


def misunderstood_campaign(third: str, tasks: int = 30) -> list[RankingRecord]:
    """Labellers 1 and 2 agree (2 swaps two adjacent completions on every fifth task); labeller 3
    inverts every ranking, or ranks at random."""
    rng = np.random.default_rng(11)
    records = []
    for task in range(tasks):
        truth = rng.permutation(5) + 1
        second = truth.copy()
        if task % 5 == 0:
            i, j = np.flatnonzero(truth == 2)[0], np.flatnonzero(truth == 3)[0]
            second[i], second[j] = 3, 2
        third_ranks = 6 - truth if third == "inverts" else rng.permutation(5) + 1
        for labeller, ranks in ((1, truth), (2, second), (3, third_ranks)):
            records.append(
                RankingRecord(
                    ranking_id=len(records) + 1,
                    task_id=task,
                    labeller_id=labeller,
                    items=dict(zip(range(task * 5, task * 5 + 5), ranks.tolist(), strict=True)),
                    seconds=40.0,
                )
            )
    return records


@pytest.mark.parametrize("third", ["inverts", "randomises"])
def test_flags_only_the_labeller_who_misunderstood(third):
    report = agreement_report(misunderstood_campaign(third), bootstrap=FAST, rule=FlagRule())
    quality = {q.labeller_id: q for q in report.labeller_quality}
    assert [q.labeller_id for q in report.labeller_quality if q.flagged] == [3]
    assert quality[3].flag_reason is not None and "below the median" in quality[3].flag_reason
    assert " of 3 labellers " in quality[3].flag_reason  # those eligible, all three
    assert quality[3].robust_z < -2.5
    assert quality[1].robust_z > -2.5 and quality[2].robust_z > -2.5
    assert quality[3].agreement.value < quality[1].agreement.value
    assert quality[3].agreement.n == 30 * 10
    assert quality[3].agreement.ci_low is not None
    assert quality[3].agreement.ci_high < quality[1].agreement.ci_low
    if third == "inverts":
        # opposite to the others everywhere, except on the 6 tasks where 1 and 2 differ on one
        # pair: there their consensus is a tie, worth 1/2 -> 3 / 300
        assert quality[3].agreement.value == pytest.approx(3 / 300)


def test_does_not_flag_before_the_minimum_number_of_tasks():
    report = agreement_report(
        misunderstood_campaign("inverts", tasks=5), bootstrap=FAST, rule=FlagRule(min_tasks=10)
    )
    assert not any(q.flagged for q in report.labeller_quality)
    assert all(q.robust_z is None for q in report.labeller_quality)


def test_does_not_flag_labellers_who_differ_by_little():
    # 3 labellers, agreements differ by a few points only: the spread floor keeps z small
    rng = np.random.default_rng(12)
    records = []
    for task in range(40):
        truth = rng.permutation(4) + 1
        for labeller in (1, 2, 3):
            ranks = truth.copy()
            if rng.random() < 0.1 * labeller:  # labeller 3 swaps a little more often
                i, j = rng.choice(4, size=2, replace=False)
                ranks[i], ranks[j] = ranks[j], ranks[i]
            records.append(
                RankingRecord(
                    ranking_id=len(records) + 1,
                    task_id=task,
                    labeller_id=labeller,
                    items=dict(zip(range(task * 4, task * 4 + 4), ranks.tolist(), strict=True)),
                )
            )
    report = agreement_report(records, bootstrap=FAST)
    assert not any(q.flagged for q in report.labeller_quality)
