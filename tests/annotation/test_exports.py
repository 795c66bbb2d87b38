"""Pair and ranking exports through the database and the API: pair counts, ties and F options,
provenance, aggregated modes with their margins, consistent JSONL keys, CSV escaping."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotation import exports
from annotation.models import Completion, Prompt, Ranking
from annotation.pairs import FAIL, expand_ranking
from tests.conftest import client_for
from tests.helpers.campaigns import TIES_AND_FAILS, ranked_campaign

pytestmark = pytest.mark.django_db

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Prompt 1"}]


@pytest.fixture
def world(admin_user):
    campaign, ids, users = ranked_campaign(
        TIES_AND_FAILS, completions=4, admin=admin_user, round_number=2
    )
    chat_prompt = Completion.objects.get(pk=ids[1][0]).prompt_id
    Prompt.objects.filter(pk=chat_prompt).update(messages=MESSAGES)
    return {"campaign": campaign, "ids": ids, "users": users, "admin": admin_user}


def get(world, path, **params):
    response = client_for(world["admin"]).get(
        f"/api/campaigns/{world['campaign'].pk}/{path}", params
    )
    assert response.status_code == 200, response.content
    return response


def pairs(world, **params) -> list[dict]:
    response = get(world, "pairs/", **params)
    assert response.streaming
    assert response["Content-Type"].startswith("application/jsonl")
    assert "attachment" in response["Content-Disposition"]
    text = b"".join(response.streaming_content).decode()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def assert_consistent(records: list[dict]) -> None:
    """Every record has the same keys, and each key one JSON type (or null)."""
    assert records
    keys = set(records[0])
    for record in records:
        assert set(record) == keys
    for key in keys:
        kinds = {type(record[key]).__name__ for record in records if record[key] is not None}
        assert len(kinds) <= 1, (key, kinds)


def test_a_strict_ranking_gives_n_choose_2_pairs(world):
    records = pairs(world)
    task0 = world["ids"][0]
    per_ranking = Counter(r["ranking"] for r in records if r["chosen_id"] in task0)
    assert sorted(per_ranking.values()) == [6, 6, 6]  # 4 * 3 / 2 each
    # task 1 (drop, no ties): alice a>c, b>c; bob a>b; carol all 6
    assert len(records) == 18 + 2 + 1 + 6
    assert not any(r["tie"] for r in records)
    assert {r["margin"] for r in records} == {1.0}


def test_ties_and_fail_options(world):
    a, b, c, d = world["ids"][1]
    with_ties = pairs(world, ties=1)
    assert len(with_ties) == 28
    (tie,) = [r for r in with_ties if r["tie"]]
    assert (tie["chosen_id"], tie["rejected_id"], tie["margin"]) == (a, b, 0.0)
    assert tie["labeller"] == world["users"]["alice"].pk
    rank_last = pairs(world, fail_policy="rank_last")
    # alice adds a>d, b>d, c>d; bob adds a>c, a>d, b>c, b>d; bob's F vs F gives nothing
    assert len(rank_last) == 27 + 3 + 4
    bob = world["users"]["bob"].pk
    bob_task1 = [r for r in rank_last if r["labeller"] == bob and r["chosen_id"] in (a, b, c, d)]
    assert {(r["chosen_id"], r["rejected_id"]) for r in bob_task1} == {
        (a, b),
        (a, c),
        (a, d),
        (b, c),
        (b, d),
    }
    assert len(pairs(world, fail_policy="rank_last", ties="true")) == 35
    dropped = {r["rejected_id"] for r in pairs(world)} | {r["chosen_id"] for r in pairs(world)}
    assert d in dropped  # carol ranked d: dropping F drops alice's and bob's F marks only


def test_pairs_carry_their_provenance(world):
    records = pairs(world, ties=1)
    rankings = {
        r.pk: r for r in Ranking.objects.filter(campaign=world["campaign"]).select_related("task")
    }
    texts = dict(Completion.objects.values_list("id", "text"))
    for record in records:
        ranking = rankings[record["ranking"]]
        assert record["campaign"] == world["campaign"].pk
        assert record["task"] == ranking.task_id
        assert record["labeller"] == ranking.labeller_id
        assert record["prompt_id"] == ranking.task.prompt_id
        assert record["guideline_version"] == 1
        assert record["round"] == 2
        assert record["chosen"] == texts[record["chosen_id"]]
        assert record["rejected"] == texts[record["rejected_id"]]
    chat = [r for r in records if r["chosen_id"] in world["ids"][1]]
    assert all(r["messages"] == MESSAGES for r in chat)
    assert all(r["messages"] is None for r in records if r not in chat)


@pytest.mark.parametrize("aggregate", ["none", "ranked_pairs", "bradley_terry", "majority"])
@pytest.mark.parametrize("params", [{}, {"ties": 1, "fail_policy": "rank_last"}])
def test_jsonl_rows_have_the_same_keys_and_types(world, aggregate, params):
    records = pairs(world, aggregate=aggregate, **params)
    assert_consistent(records)
    assert {"prompt", "chosen", "rejected", "margin", "messages"} <= set(records[0])
    assert all(isinstance(r["prompt"], str) and isinstance(r["chosen"], str) for r in records)


def test_ranking_rows_of_some_tasks_are_those_tasks_rows(world):
    campaign_ids = [world["campaign"].pk]
    every = exports.ranking_rows(campaign_ids=campaign_ids)
    some = sorted({row.task_id for row in every})[:2]
    assert exports.ranking_rows(campaign_ids=campaign_ids, task_ids=some) == [
        row for row in every if row.task_id in some
    ]
    assert exports.ranking_rows(campaign_ids=campaign_ids, task_ids=[]) == []


def test_fast_jsonl_is_exactly_json_dumps_of_the_records(world):
    rows = exports.ranking_rows(campaign_ids=[world["campaign"].pk])
    texts = exports.texts_for(rows)
    for options in ({}, {"ties": True, "fail_policy": "rank_last"}):
        expected = "".join(
            json.dumps(record, ensure_ascii=False) + "\n"
            for record in exports.labeller_pairs(rows, texts, **options)
        ).encode()
        chunks = list(exports.labeller_pairs_jsonl(rows, texts, chunk_pairs=5, **options))
        assert len(chunks) > 1 and all(chunk.endswith(b"\n") for chunk in chunks)
        assert b"".join(chunks) == expected


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ranking=st.dictionaries(
        st.integers(min_value=1, max_value=10**9),
        st.one_of(st.integers(min_value=1, max_value=9), st.just(FAIL)),
        max_size=9,
    ),
    ties=st.booleans(),
    fail_policy=st.sampled_from(["drop", "rank_last"]),
)
def test_memoised_expansion_is_expand_ranking(ranking, ties, fail_policy):
    expand = exports.PairExpander(ties=ties, fail_policy=fail_policy)
    expected = [
        (p.chosen, p.rejected, p.tie)
        for p in expand_ranking(ranking, ties=ties, fail_policy=fail_policy)
    ]
    assert expand(ranking) == expected
    assert expand(ranking) == expected  # from the memo


def test_texts_are_read_by_campaign_above_the_id_threshold(world, monkeypatch):
    rows = exports.ranking_rows(campaign_ids=[world["campaign"].pk])
    by_id = exports.texts_for(rows)
    monkeypatch.setattr(exports, "SMALL_ID_SET", 0)
    assert exports.texts_for(rows) == by_id


def test_ranked_pairs_consensus_carries_vote_margins(world):
    (a0, a1, a2, a3), (a, b, c, d) = world["ids"]
    records = pairs(world, aggregate="ranked_pairs")
    by_pair = {(r["chosen_id"], r["rejected_id"]): r for r in records}
    # task 0: consensus a0 > a1 > a2 > a3; bob swapped (a0, a1), carol (a2, a3): 2 to 1
    assert [k for k in by_pair if k[0] in (a0, a1, a2, a3)] == [
        (a0, a1),
        (a0, a2),
        (a0, a3),
        (a1, a2),
        (a1, a3),
        (a2, a3),
    ]
    first = by_pair[(a0, a1)]
    assert first["margin"] == pytest.approx(1 / 3)
    assert (first["votes_for"], first["votes_against"], first["voters"]) == (2, 1, 3)
    assert by_pair[(a0, a2)]["margin"] == 1.0
    assert first["aggregate"] == "ranked_pairs" and first["score_margin"] is None
    users = world["users"]
    assert first["labellers"] == sorted(u.pk for u in users.values())
    assert len(first["rankings"]) == 3 and first["guideline_versions"] == [1]
    # task 1: a and b tie in the consensus (1 vote each, alice tied), c next, d F by majority
    assert {k for k in by_pair if k[0] in (a, b, c, d)} == {(a, c), (b, c)}
    assert by_pair[(a, c)]["margin"] == 1.0
    with_options = {
        (r["chosen_id"], r["rejected_id"]): r
        for r in pairs(world, aggregate="ranked_pairs", ties=1, fail_policy="rank_last")
    }
    tie = with_options[(a, b)]
    assert tie["tie"] and tie["margin"] == 0.0
    assert (tie["votes_for"], tie["votes_against"], tie["vote_ties"]) == (1, 1, 1)
    # c over d: alice c > F, bob F = F (a tie), carol c > d
    c_over_d = with_options[(c, d)]
    assert (c_over_d["votes_for"], c_over_d["vote_ties"], c_over_d["margin"]) == (
        2,
        1,
        pytest.approx(2 / 3),
    )


def test_bradley_terry_pairs_carry_score_margins(world):
    (a0, a1, a2, a3), _ = world["ids"]
    records = pairs(world, aggregate="bradley_terry")
    by_pair = {(r["chosen_id"], r["rejected_id"]): r for r in records}
    assert (a0, a1) in by_pair and (a2, a3) in by_pair
    assert all(r["score_margin"] > 0 for r in records)
    assert by_pair[(a0, a1)]["margin"] == pytest.approx(1 / 3)
    assert by_pair[(a0, a3)]["score_margin"] > by_pair[(a0, a1)]["score_margin"]


def test_majority_pairs_follow_the_fail_policy(world):
    (a0, a1, _, _), (a, b, c, d) = world["ids"]
    records = pairs(world, aggregate="majority")
    by_pair = {(r["chosen_id"], r["rejected_id"]): r for r in records}
    assert by_pair[(a0, a1)]["margin"] == pytest.approx(1 / 3)
    # task 1 under drop: (a, b) is a tie in votes (left out without ties); F marks give no vote
    assert {k for k in by_pair if k[0] in (a, b, c, d)} == {(a, c), (a, d), (b, c), (b, d), (c, d)}
    assert (by_pair[(a, c)]["voters"], by_pair[(a, c)]["margin"]) == (2, 1.0)
    assert by_pair[(c, d)]["voters"] == 1
    tied = [r for r in pairs(world, aggregate="majority", ties=1) if r["tie"]]
    assert [(r["chosen_id"], r["rejected_id"], r["margin"]) for r in tied] == [(a, b, 0.0)]


def test_rankings_export_jsonl_has_a_label_per_completion(world):
    response = get(world, "rankings/export/", format="jsonl")
    assert response["Content-Type"].startswith("application/jsonl")
    records = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert len(records) == 6
    assert_consistent(records)
    alice = world["users"]["alice"]
    (mine,) = [
        r
        for r in records
        if r["labeller"] == alice.pk and r["completions"][0]["id"] == world["ids"][1][0]
    ]
    assert mine["username"] == "alice" and mine["round"] == 2 and mine["guideline_version"] == 1
    assert mine["messages"] == MESSAGES
    assert [c["id"] for c in mine["completions"]] == world["ids"][1]
    assert [(c["rank"], c["failed"]) for c in mine["completions"]] == [
        (1, False),
        (1, False),
        (3, False),
        (None, True),
    ]
    assert [c["position"] for c in mine["completions"]] == [0, 1, 2, 3]


def test_rankings_csv_escapes_formula_cells(world):
    a0 = world["ids"][0][0]
    Completion.objects.filter(pk=a0).update(text='=HYPERLINK("http://evil.example","x")')
    ranking = Ranking.objects.filter(campaign=world["campaign"]).order_by("id").first()
    Ranking.objects.filter(pk=ranking.pk).update(comment="=1+1")
    response = get(world, "rankings/export/", format="csv")
    assert response["Content-Type"].startswith("text/csv")
    text = b"".join(response.streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 6
    by_id = {int(row["ranking"]): row for row in rows}
    assert by_id[ranking.pk]["comment"] == "'=1+1"
    task0 = [row for row in rows if row["completion_1_id"] == str(a0)]
    assert len(task0) == 3
    assert {row["completion_1"] for row in task0} == {'\'=HYPERLINK("http://evil.example","x")'}
    assert all(row["completion_2"].startswith("Answer") for row in task0)
    task1 = [row for row in rows if row["completion_1_id"] == str(world["ids"][1][0])]
    assert {row["completion_4_label"] for row in task1} == {"F", "4"}
    assert task1[0]["messages"] and json.loads(task1[0]["messages"]) == MESSAGES


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=SUM(A1:A2)", "'=SUM(A1:A2)"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@cmd", "'@cmd"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("plain = fine", "plain = fine"),
        ("", ""),
        (None, ""),
        (-3, -3),
        (2.5, 2.5),
    ],
)
def test_csv_cell_escaping(value, expected):
    assert exports.csv_cell(value) == expected


def test_training_pairs_read_the_same_export(world):
    from training.exports import preference_pairs

    training = preference_pairs(campaign_ids=[world["campaign"].pk])
    exported = pairs(world)
    assert [(p.chosen, p.rejected) for p in training] == [
        (r["chosen"], r["rejected"]) for r in exported
    ]
    chat = [p for p in training if p.prompt == MESSAGES]
    assert len(chat) == sum(r["messages"] is not None for r in exported) > 0


def test_export_of_a_campaign_without_rankings_is_empty(admin_user):
    from tests.factories import CampaignFactory

    campaign = CampaignFactory(created_by=admin_user)
    client = client_for(admin_user)
    response = client.get(f"/api/campaigns/{campaign.pk}/pairs/")
    assert response.status_code == 200 and b"".join(response.streaming_content) == b""
    csv_text = b"".join(
        client.get(f"/api/campaigns/{campaign.pk}/rankings/export/?format=csv").streaming_content
    ).decode()
    assert csv_text.splitlines()[0].startswith("ranking,campaign,task")
