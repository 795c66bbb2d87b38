"""The synthetic labeller: gold score, seeded noise, ties and fails."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.ml.synthetic import (
    GoldNetwork,
    SyntheticLabeller,
    expected_gold_score,
    gold_network,
    gold_score,
    gold_scorer,
    synthetic_ranking,
)

GOOD = "Thank you, the water and the kettle are good and the help is great here."
PLAIN = "A loaf of bread turns stale when starch lines up again over a day."
BAD = "zzz"


def test_gold_score_by_hand():
    # "the and good": 3 words, all gold -> rate 1; letters t,h,e,a,n,d,g,o,o,d: 1 'e' of 10
    # length penalty |3 - 12| / 12 = 0.75  ->  2*1 + 2*0.1 - 0.75 = 1.45
    assert gold_score("the and good") == pytest.approx(1.45)
    assert gold_score("") == -1.0
    assert gold_score(GOOD) > gold_score(PLAIN) > gold_score(BAD)


def test_noise_free_ranking_orders_by_gold_score():
    assert synthetic_ranking([BAD, GOOD, PLAIN], noise=0.0, rng=0) == [3, 1, 2]
    # inverted labeller: the opposite order
    assert synthetic_ranking([BAD, GOOD, PLAIN], noise=0.0, rng=0, invert=True) == [1, 3, 2]


def test_gold_network_is_seeded_larger_than_the_tiny_reward_model_and_dislikes_repetition():
    network = gold_network(0)
    # the tiny reward model: embeddings 2048 x 64 plus 2 layers of about 12 * 64^2, about 0.23M
    assert network.n_parameters > 4 * 230_000
    assert GoldNetwork(seed=0).score(PLAIN) == network.score(PLAIN)
    assert GoldNetwork(seed=1).score(PLAIN) != network.score(PLAIN)
    repeated = "the the the the the the the the the the the the"
    assert gold_score(repeated) > gold_score(PLAIN)  # the rule rewards repeating gold words
    assert network.score(repeated) < network.score(GOOD)  # the network does not
    assert network.score("") < network.score(PLAIN)


def test_labeller_with_the_network_gold_ranks_by_its_score():
    texts = [GOOD, PLAIN, BAD, "the the the the the the the the the the the the"]
    scores = [gold_network(0).score(t) for t in texts]
    expected = [1 + sorted(scores, reverse=True).index(s) for s in scores]
    assert SyntheticLabeller(noise=0.0, gold="network").rank(texts) == expected
    assert expected_gold_score(texts, gold="network") == pytest.approx(np.mean(scores))
    with pytest.raises(ValueError, match="unknown gold"):
        gold_scorer("oracle")


def test_same_seed_same_labels_and_noise_changes_them():
    texts = [f"the water {'e' * i} and" for i in range(8)]
    a = synthetic_ranking(texts, noise=1.0, rng=random.Random(7))
    b = synthetic_ranking(texts, noise=1.0, rng=random.Random(7))
    c = synthetic_ranking(texts, noise=1.0, rng=np.random.default_rng(7))
    d = synthetic_ranking(texts, noise=1.0, rng=np.random.default_rng(7))
    assert a == b and c == d
    assert sorted(a) == list(range(1, 9))
    noisy = [tuple(synthetic_ranking(texts, noise=1.0, rng=s)) for s in range(5)]
    assert len(set(noisy)) > 1


def test_ties_share_a_dense_rank_only_when_allowed():
    texts = [GOOD, GOOD, PLAIN]
    assert synthetic_ranking(texts, noise=0.0, rng=0, allow_ties=True) == [1, 1, 2]
    assert synthetic_ranking(texts, noise=0.0, rng=0, allow_ties=False) == [1, 2, 3]


def test_fail_below_marks_f_and_ranks_the_rest():
    labels = synthetic_ranking([BAD, GOOD, PLAIN], noise=0.0, rng=0, fail_below=0.0)
    assert labels == ["F", 1, 2]
    assert synthetic_ranking([BAD], noise=0.0, rng=0, fail_below=10.0) == ["F"]


def test_drifting_labeller_inverts_after_its_honest_rankings():
    labeller = SyntheticLabeller(noise=0.0, flip_after=1)
    assert labeller.rank([BAD, GOOD]) == [2, 1]
    assert labeller.rank([BAD, GOOD]) == [1, 2]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.text(alphabet="the andwrgo ", max_size=40), min_size=1, max_size=6),
    st.floats(0, 2),
    st.integers(0, 1000),
    st.booleans(),
)
def test_labels_are_dense_ranks_from_1(texts, noise, seed, allow_ties):
    labels = synthetic_ranking(texts, noise=noise, rng=seed, allow_ties=allow_ties)
    ranks = sorted(set(labels))
    assert ranks == list(range(1, len(ranks) + 1))
    if not allow_ties:
        assert sorted(labels) == list(range(1, len(texts) + 1))
