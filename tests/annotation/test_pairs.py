"""Pair expansion: hand-written cases and hypothesis properties. No database."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from annotation.pairs import FAIL, Label, Pair, expand_ranking, preference


def test_strict_ranking_gives_every_pair_best_first():
    assert expand_ranking({10: 1, 20: 2, 30: 3}) == [
        Pair(chosen=10, rejected=20),
        Pair(chosen=10, rejected=30),
        Pair(chosen=20, rejected=30),
    ]


def test_only_the_order_of_rank_numbers_matters():
    assert expand_ranking({5: 3, 6: 1}) == [Pair(chosen=6, rejected=5)]
    assert expand_ranking({1: 1, 2: 1, 3: 3}) == expand_ranking({1: 1, 2: 1, 3: 2})


def test_tied_completions_give_no_pair_by_default():
    assert expand_ranking({1: 1, 2: 1, 3: 2}) == [Pair(1, 3), Pair(2, 3)]


def test_tied_completions_give_a_tie_pair_lower_id_first_when_asked():
    assert expand_ranking({9: 1, 2: 1, 3: 2}, ties=True) == [
        Pair(chosen=2, rejected=9, tie=True),
        Pair(chosen=2, rejected=3),
        Pair(chosen=9, rejected=3),
    ]


def test_failed_completions_are_dropped_by_default():
    assert expand_ranking({1: 1, 2: FAIL, 3: 2, 4: FAIL}) == [Pair(1, 3)]


def test_failed_completions_lose_to_every_ranked_one_with_rank_last():
    items: dict[int, Label] = {1: 1, 2: FAIL, 3: 2, 4: FAIL}
    expected = [Pair(1, 3), Pair(1, 2), Pair(1, 4), Pair(3, 2), Pair(3, 4)]
    assert expand_ranking(items, fail_policy="rank_last") == expected
    # F vs F gives nothing, not even a tie pair
    assert expand_ranking(items, fail_policy="rank_last", ties=True) == expected


def test_small_rankings_give_no_pairs():
    assert expand_ranking({}) == []
    assert expand_ranking({7: 1}) == []
    assert expand_ranking({7: FAIL, 8: FAIL}, fail_policy="rank_last") == []


@pytest.mark.parametrize("label", [0, -1, 1.5, "G", None, True])
def test_rejects_a_label_that_is_not_a_rank_or_f(label):
    with pytest.raises(ValueError):
        expand_ranking({1: 1, 2: label})


def test_a_bad_label_after_an_f_is_still_refused():
    # validation goes on past an F (a mutant that stopped there passed {1: F, 2: 0} through)
    with pytest.raises(ValueError, match="completion 2"):
        expand_ranking({1: FAIL, 2: 0})


def test_pairs_are_immutable_values():
    pair = Pair(chosen=1, rejected=2)
    assert {pair, Pair(1, 2)} == {Pair(1, 2)}  # hashable, equal by value
    with pytest.raises(dataclasses.FrozenInstanceError):
        pair.chosen = 3  # type: ignore[misc]


def test_preference_answers():
    assert preference(1, 2) == 1
    assert preference(3, 2) == -1
    assert preference(2, 2) == 0
    assert preference(1, FAIL) is None
    assert preference(1, FAIL, fail_policy="rank_last") == 1
    assert preference(FAIL, 4, fail_policy="rank_last") == -1
    assert preference(FAIL, FAIL, fail_policy="rank_last") is None


# --------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------

ids = st.lists(st.integers(min_value=0, max_value=10**6), min_size=0, max_size=9, unique=True)


@st.composite
def rankings(draw: st.DrawFn) -> dict[int, Label]:
    """Any ranking: ranks with ties (1..n) and F marks."""
    completion_ids = draw(ids)
    labels = st.one_of(
        st.integers(min_value=1, max_value=max(len(completion_ids), 1)), st.just(FAIL)
    )
    return {cid: draw(labels) for cid in completion_ids}


@st.composite
def strict_rankings(draw: st.DrawFn) -> dict[int, Label]:
    completion_ids = draw(ids)
    ranks = draw(st.permutations(range(1, len(completion_ids) + 1)))
    return dict(zip(completion_ids, ranks, strict=True))


@given(strict_rankings())
def test_strict_ranking_of_n_gives_n_choose_2_pairs(items):
    n = len(items)
    pairs = expand_ranking(items)
    assert len(pairs) == n * (n - 1) // 2
    assert all(not pair.tie and items[pair.chosen] < items[pair.rejected] for pair in pairs)


@given(rankings(), st.booleans(), st.sampled_from(["drop", "rank_last"]))
def test_never_both_directions_of_a_pair(items, ties, fail_policy):
    pairs = expand_ranking(items, ties=ties, fail_policy=fail_policy)
    unordered = [frozenset((pair.chosen, pair.rejected)) for pair in pairs]
    assert len(unordered) == len(set(unordered))
    assert all(pair.chosen != pair.rejected for pair in pairs)


@given(rankings())
def test_ties_give_no_pair_unless_asked_then_a_marked_tie(items):
    ranked = {cid: label for cid, label in items.items() if label != FAIL}
    tied = {frozenset((a, b)) for a in ranked for b in ranked if a < b and ranked[a] == ranked[b]}
    plain = expand_ranking(items)
    assert not any(frozenset((p.chosen, p.rejected)) in tied for p in plain)
    assert not any(p.tie for p in plain)

    with_ties = expand_ranking(items, ties=True)
    tie_pairs = [p for p in with_ties if p.tie]
    assert {frozenset((p.chosen, p.rejected)) for p in tie_pairs} == tied
    assert all(p.chosen < p.rejected for p in tie_pairs)
    assert [p for p in with_ties if not p.tie] == plain


@given(rankings())
def test_failed_items_dropped_or_ranked_last(items):
    failed = {cid for cid, label in items.items() if label == FAIL}
    ranked = {cid: label for cid, label in items.items() if label != FAIL}
    distinct = sum(1 for a in ranked for b in ranked if a < b and ranked[a] != ranked[b])

    dropped = expand_ranking(items, fail_policy="drop")
    assert not any(p.chosen in failed or p.rejected in failed for p in dropped)
    assert len(dropped) == distinct

    last = expand_ranking(items, fail_policy="rank_last")
    involving_f = [p for p in last if p.chosen in failed or p.rejected in failed]
    assert {(p.chosen, p.rejected) for p in involving_f} == {(r, f) for r in ranked for f in failed}
    assert len(last) == distinct + len(ranked) * len(failed)


@settings(max_examples=50)
@given(rankings(), st.randoms(use_true_random=False))
def test_output_does_not_depend_on_insertion_order(items, rnd: random.Random):
    shuffled_keys = list(items)
    rnd.shuffle(shuffled_keys)
    shuffled = {cid: items[cid] for cid in shuffled_keys}
    for kwargs in ({}, {"ties": True}, {"fail_policy": "rank_last", "ties": True}):
        assert expand_ranking(shuffled, **kwargs) == expand_ranking(items, **kwargs)
