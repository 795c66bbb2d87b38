"""Cohen's kappa per labeller pair (by hand, properties, and the matrix from the database) and
the time-based flag: a labeller whose median time per task is far below the others'."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from annotation import agreement
from annotation.agreement import Bootstrap, RankingRecord
from tests.conftest import client_for
from tests.helpers.campaigns import ranked_campaign


def test_cohen_kappa_by_hand():
    # 10 units: agree on 7 (5 first, 2 second); marginals a = (6, 0, 4), b = (7, 1, 2).
    a = [0] * 5 + [2] * 2 + [0, 2, 2]
    b = [0] * 5 + [2] * 2 + [1, 0, 0]
    # observed 0.7; expected 0.6*0.7 + 0*0.1 + 0.4*0.2 = 0.5; kappa = 0.2 / 0.5
    assert agreement.cohen_kappa(a, b) == pytest.approx(0.4)
    assert agreement.cohen_kappa([0, 2, 1], [0, 2, 1]) == pytest.approx(1.0)
    assert agreement.cohen_kappa([0, 0], [0, 0]) is None  # no variation: undefined


codes = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=40)


@given(units=codes)
def test_cohen_kappa_is_symmetric_and_at_most_one(units):
    a, b = [x for x, _ in units], [y for _, y in units]
    value = agreement.cohen_kappa(a, b)
    assert value == agreement.cohen_kappa(b, a)
    if value is not None:
        assert value <= 1 + 1e-12


def records(plans):
    out, rid = [], 0
    for task, plan in enumerate(plans):
        for labeller, labels in plan.items():
            rid += 1
            out.append(RankingRecord(rid, task + 1, labeller, dict(enumerate(labels, start=1))))
    return out


def test_pairwise_kappa_counts_the_units_both_answered_and_matches_cohen():
    plans = [{1: [1, 2, 3], 2: [1, 3, 2], 3: [1, 2, 3]}, {1: [2, 1, 3], 2: [2, 1, 3]}]
    table = agreement.ranking_table(records(plans))
    votes = agreement.pair_votes(table)
    pairs = {
        (p.labeller_a, p.labeller_b): p
        for p in agreement.pairwise_kappa(table, votes, bootstrap=Bootstrap(resamples=0))
    }
    assert set(pairs) == {(1, 2), (1, 3), (2, 3)}
    assert pairs[(1, 2)].kappa.n == 6 and pairs[(1, 2)].tasks == 2
    # 1 and 3 both said "first better" on all three pairs: no variation, kappa undefined
    assert pairs[(1, 3)].kappa.n == 3 and pairs[(1, 3)].kappa.value is None
    # 1 vs 2 by hand: codes per slot pair (1,2), (1,3), (2,3) of each task
    one = [0, 0, 0, 2, 0, 0]
    two = [0, 0, 2, 2, 0, 0]
    assert pairs[(1, 2)].kappa.value == pytest.approx(agreement.cohen_kappa(one, two))


def test_a_labeller_far_faster_than_the_others_is_flagged_with_the_reason():
    plans = [{1: [1, 2, 3], 2: [1, 2, 3], 3: [1, 2, 3]} for _ in range(12)]
    recs = records(plans)
    recs = [
        RankingRecord(
            r.ranking_id, r.task_id, r.labeller_id, r.items, 1.0 if r.labeller_id == 3 else 20.0
        )
        for r in recs
    ]
    table = agreement.ranking_table(recs)
    quality = {
        q.labeller_id: q
        for q in agreement.labeller_quality(
            table, agreement.pair_votes(table), bootstrap=Bootstrap(resamples=0)
        )
    }
    assert quality[3].flagged and "median time per task 1.0 s" in quality[3].flag_reason
    assert "20.0 s" in quality[3].flag_reason
    assert not quality[1].flagged and not quality[2].flagged


@pytest.mark.django_db
def test_kappa_api_and_labellers_api_with_competence(admin_user):
    orders = ([1, 2, 3], [3, 2, 1], [2, 1, 3], [1, 3, 2])
    plans = [{"alice": o, "bob": list(reversed(o)), "carol": o} for o in orders]
    campaign, _, _users = ranked_campaign(
        plans, completions=3, admin=admin_user, seconds={"carol": 1000}
    )
    client = client_for(admin_user)
    body = client.get(f"/api/campaigns/{campaign.pk}/kappa/?resamples=50").json()
    assert [x["username"] for x in body["labellers"]] == ["alice", "bob", "carol"]
    assert body["fail_policy"] == "drop"
    cell = next(
        p for p in body["pairs"] if {p["username_a"], p["username_b"]} == {"alice", "carol"}
    )
    assert cell["kappa"]["value"] == pytest.approx(1.0) and cell["kappa"]["n"] == 12
    assert body["matrix"][0][2] == pytest.approx(1.0) and body["matrix"][1][1] is None
    bad = client.get(f"/api/campaigns/{campaign.pk}/kappa/?fail_policy=maybe")
    assert bad.status_code == 400 and "fail_policy" in bad.json()["errors"]
    rows = client.get(f"/api/campaigns/{campaign.pk}/labellers/?resamples=0").json()["labellers"]
    competence = {r["username"]: r["competence"] for r in rows}
    assert competence["bob"] < competence["alice"] and competence["bob"] < competence["carol"]
    assert rows[0]["competence_answers"] > 0
