"""Review and adjudication: the queue (lowest agreement first, its filters), the three
decisions and their refusals, provenance in the exports and adjudicated consensus, and each
labeller's feedback (their own ranking beside the decision, nobody else's)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from annotation import consensus, services
from annotation.models import Adjudication, Membership, Ranking
from annotation.pairs import FAIL
from tests.conftest import client_for
from tests.factories import UserFactory
from tests.helpers.campaigns import ranked_campaign

# --- provenance (pure) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rankings", "expected"),
    [
        # The same weak order, whatever the numbers: 1, 1, 3 is 1, 1, 2.
        ([{1: 1, 2: 1, 3: 3}, {1: 1, 2: 1, 3: 2}], "unanimous"),
        ([{1: 1, 2: 2, 3: "F"}, {1: 1, 2: 2, 3: "F"}, {1: 1, 2: 2, 3: "F"}], "unanimous"),
        # Two of three on (2, 3); all on the rest.
        ([{1: 1, 2: 2, 3: 3}, {1: 1, 2: 2, 3: 3}, {1: 1, 2: 3, 3: 2}], "majority"),
        # (1, 2): better, tie, worse: no answer has more than half.
        ([{1: 1, 2: 2}, {1: 1, 2: 1}, {1: 2, 2: 1}], "unresolved"),
        # Two labellers who disagree: one each is not more than half.
        ([{1: 1, 2: 2}, {1: 2, 2: 1}], "unresolved"),
        # One ranking: nobody confirmed it.
        ([{1: 1, 2: 2}], "unresolved"),
        # F vs F is a tie, F below every rank.
        ([{1: "F", 2: "F", 3: 1}, {1: "F", 2: "F", 3: 2}], "unanimous"),
    ],
)
def test_provenance_by_hand(rankings, expected):
    assert consensus.provenance(rankings) == expected
    assert consensus.provenance(rankings, adjudicated=True) == "adjudicated"


label = st.one_of(st.integers(min_value=1, max_value=4), st.just(FAIL))
ranking = st.fixed_dictionaries({1: label, 2: label, 3: label, 4: label})


@given(rankings=st.lists(ranking, min_size=1, max_size=6), seed=st.randoms())
def test_provenance_ignores_the_order_of_the_labellers(rankings, seed):
    shuffled = list(rankings)
    seed.shuffle(shuffled)
    assert consensus.provenance(shuffled) == consensus.provenance(rankings)


@given(one=ranking, copies=st.integers(min_value=2, max_value=6))
def test_identical_rankings_are_unanimous_and_a_lone_dissent_among_many_is_majority(one, copies):
    assert consensus.provenance([one] * copies) == "unanimous"
    other = {1: 1, 2: 2, 3: 3, 4: 4}
    if consensus.provenance([one, other]) == "unanimous":  # the same weak order
        other = {1: 4, 2: 3, 3: 2, 4: 1}
    if copies >= 3:
        assert consensus.provenance([one] * copies + [other]) == "majority"


# --- a campaign to review ---------------------------------------------------------------------

# Three tasks of three completions, three labellers.
#   task 0: all agree (unanimous, agreement 1.0)
#   task 1: carol swaps b and c (majority; strict agreement 7/9)
#   task 2: bob inverts alice, carol ties a and b: no majority on (a, b) (unresolved; 2/7)
PLANS = [
    {"alice": [1, 2, 3], "bob": [1, 2, 3], "carol": [1, 2, 3]},
    {"alice": [1, 2, 3], "bob": [1, 2, 3], "carol": [1, 3, 2]},
    {"alice": [1, 2, 3], "bob": [3, 2, 1], "carol": [1, 1, 3]},
]


@pytest.fixture
def world(admin_user):
    campaign, ids, users = ranked_campaign(PLANS, completions=3, admin=admin_user)
    reviewer = UserFactory(username="rita")
    services.campaign_add_members(
        campaign=campaign, users=[reviewer], role=Membership.Role.REVIEWER
    )
    tasks = [
        Ranking.objects.filter(items__completion_id=task_ids[0]).first().task for task_ids in ids
    ]
    return {
        "campaign": campaign,
        "ids": ids,
        "tasks": tasks,
        "users": users,
        "reviewer": reviewer,
        "admin": admin_user,
    }


def url(world, path=""):
    return f"/api/campaigns/{world['campaign'].pk}/review/{path}"


def test_queue_serves_complete_tasks_lowest_agreement_first(world):
    body = client_for(world["reviewer"]).get(url(world)).json()
    tasks = [t.pk for t in world["tasks"]]
    assert [entry["task"] for entry in body["results"]] == [tasks[2], tasks[1], tasks[0]]
    assert body["complete"] == 3 and body["reviewed"] == 0 and body["own"] == 0
    lowest = body["results"][0]
    assert lowest["provenance"] == "unresolved"
    assert sorted(lowest["labellers"]) == ["alice", "bob", "carol"]
    assert body["results"][-1]["agreement"] == 1.0
    assert body["results"][-1]["provenance"] == "unanimous"
    assert body["results"][1]["provenance"] == "majority"


def test_queue_filters_below_a_threshold_and_by_labeller(world):
    client = client_for(world["reviewer"])
    below = client.get(url(world), {"below": 0.9}).json()["results"]
    assert [e["task"] for e in below] == [world["tasks"][2].pk, world["tasks"][1].pk]
    assert all(e["agreement"] < 0.9 for e in below)
    carol = world["users"]["carol"].pk
    assert client.get(url(world), {"labeller": carol}).json()["count"] == 3
    outsider = UserFactory(username="nobody")
    assert client.get(url(world), {"labeller": outsider.pk}).json()["count"] == 0
    bad = client.get(url(world), {"below": "lots"})
    assert bad.status_code == 400 and "below" in bad.json()["errors"]


def test_flagged_and_gold_failure_filters_keep_tasks_of_flagged_labellers(world, monkeypatch):
    from annotation import agreement_figures

    real = agreement_figures.labeller_quality_table

    def flag_bob(**kwargs):
        from dataclasses import replace

        return [
            replace(row, flagged=True, gold_flagged=True) if row.username == "bob" else row
            for row in real(**kwargs)
        ]

    monkeypatch.setattr(agreement_figures, "labeller_quality_table", flag_bob)
    client = client_for(world["reviewer"])
    flagged = client.get(url(world), {"flagged": 1}).json()["results"]
    assert len(flagged) == 3 and all(e["flagged"] == ["bob"] for e in flagged)
    gold = client.get(url(world), {"gold_failures": "true"}).json()["results"]
    assert all(e["gold_flagged"] == ["bob"] for e in gold)


def test_accepting_the_consensus_adjudicates_and_leaves_the_pending_queue(world):
    client = client_for(world["reviewer"])
    task = world["tasks"][1]
    response = client.post(url(world, f"{task.pk}/"), {"decision": "consensus"}, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["provenance"] == "adjudicated"
    assert body["adjudication"]["decision"] == "consensus"
    assert body["adjudication"]["items"] == body["consensus"]
    a, b, c = world["ids"][1]
    assert {i["completion"]: i["rank"] for i in body["consensus"]} == {a: 1, b: 2, c: 3}
    pending = client.get(url(world)).json()
    assert task.pk not in [e["task"] for e in pending["results"]]
    assert pending["reviewed"] == 1
    reviewed = client.get(url(world), {"status": "reviewed"}).json()["results"]
    assert [e["task"] for e in reviewed] == [task.pk]
    assert reviewed[0]["decision"] == "consensus" and reviewed[0]["reviewer"] == "rita"


def test_picking_a_labellers_ranking_and_writing_one(world):
    client = client_for(world["reviewer"])
    task = world["tasks"][2]
    bob = Ranking.objects.get(task=task, labeller=world["users"]["bob"])
    picked = client.post(
        url(world, f"{task.pk}/"), {"decision": "labeller", "ranking": bob.pk}, format="json"
    )
    assert picked.status_code == 200
    adjudication = Adjudication.objects.get(task=task)
    a, b, c = world["ids"][2]
    assert adjudication.source_ranking == bob
    assert adjudication.items == {str(a): 3, str(b): 2, str(c): 1}
    written = client.post(
        url(world, f"{task.pk}/"),
        {
            "decision": "written",
            "items": [
                {"completion": a, "rank": 2},
                {"completion": b, "rank": 1},
                {"completion": c, "rank": "F"},
            ],
            "note": "c answers another question",
        },
        format="json",
    )
    assert written.status_code == 200, written.json()
    adjudication.refresh_from_db()
    assert adjudication.decision == "written" and adjudication.source_ranking is None
    assert adjudication.items == {str(a): 2, str(b): 1, str(c): "F"}
    assert Adjudication.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"decision": "vote"}, "decision"),
        ({"decision": "labeller"}, "ranking"),
        ({"decision": "labeller", "ranking": 999999}, "ranking"),
        ({"decision": "written", "note": "x"}, "items"),
        ({"decision": "consensus", "ranking": 1}, "ranking"),
        ({"decision": "consensus", "colour": "red"}, "colour"),
    ],
)
def test_bad_decisions_answer_400_naming_the_field(world, body, field):
    task = world["tasks"][2]
    response = client_for(world["reviewer"]).post(url(world, f"{task.pk}/"), body, format="json")
    assert response.status_code == 400, response.json()
    assert field in response.json()["errors"]
    assert not Adjudication.objects.exists()


def test_a_written_ranking_is_validated_like_a_submit_and_needs_a_note(world):
    task = world["tasks"][2]
    a, b, c = world["ids"][2]
    client = client_for(world["reviewer"])
    items = [{"completion": a, "rank": 1}, {"completion": b, "rank": 2}]
    missing = client.post(
        url(world, f"{task.pk}/"), {"decision": "written", "items": items, "note": "n"}
    )
    assert missing.status_code == 400 and "items" in missing.json()["errors"]
    items.append({"completion": c, "rank": 7})
    out_of_range = client.post(
        url(world, f"{task.pk}/"),
        {"decision": "written", "items": items, "note": "n"},
        format="json",
    )
    assert out_of_range.status_code == 400
    assert "items[2].rank" in out_of_range.json()["errors"]
    items[2]["rank"] = 3
    no_note = client.post(
        url(world, f"{task.pk}/"), {"decision": "written", "items": items}, format="json"
    )
    assert no_note.status_code == 400 and "note" in no_note.json()["errors"]


def test_a_reviewer_never_adjudicates_a_task_they_ranked(world, admin_user):
    alice = world["users"]["alice"]
    Membership.objects.filter(campaign=world["campaign"], user=alice).update(role="reviewer")
    client = client_for(alice)
    task = world["tasks"][2]
    response = client.post(url(world, f"{task.pk}/"), {"decision": "consensus"}, format="json")
    assert response.status_code == 403 and response.json()["code"] == "own_task"
    assert not Adjudication.objects.exists()
    queue = client.get(url(world)).json()
    assert queue["count"] == 0 and queue["own"] == 3
    assert client.get(url(world, f"{task.pk}/")).json()["ranked_by_you"] is True


def test_an_incomplete_task_cannot_be_adjudicated(admin_user):
    campaign, _ids, _users = ranked_campaign(
        [{"alice": [1, 2], "bob": None}], completions=2, admin=admin_user
    )
    task = Ranking.objects.get().task
    response = client_for(admin_user).post(
        f"/api/campaigns/{campaign.pk}/review/{task.pk}/", {"decision": "consensus"}
    )
    assert response.status_code == 409 and response.json()["code"] == "task_not_complete"
    assert client_for(admin_user).get(f"/api/campaigns/{campaign.pk}/review/").json()["count"] == 0


def test_the_review_shows_every_ranking_with_time_and_comment(world):
    task = world["tasks"][2]
    Ranking.objects.filter(task=task, labeller=world["users"]["bob"]).update(comment="b is wrong")
    body = client_for(world["reviewer"]).get(url(world, f"{task.pk}/")).json()
    assert [r["username"] for r in body["rankings"]] == ["alice", "bob", "carol"]
    bob = body["rankings"][1]
    assert bob["comment"] == "b is wrong" and bob["seconds"] == 30.0 and bob["version"] == 1
    assert [c["letter"] for c in body["completions"]] == ["A", "B", "C"]
    assert body["complete"] is True and body["adjudication"] is None


# --- exports ------------------------------------------------------------------------------------


def _lines(response) -> list[dict]:
    return [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]


def test_exports_carry_provenance_and_filter_by_it(world):
    admin = client_for(world["admin"])
    task = world["tasks"][2]
    services.task_adjudicate(reviewer=world["reviewer"], task=task, decision="consensus")
    campaign = world["campaign"].pk
    pairs = _lines(admin.get(f"/api/campaigns/{campaign}/pairs/"))
    by_task = {line["task"]: line["provenance"] for line in pairs}
    tasks = world["tasks"]
    assert by_task == {
        tasks[0].pk: "unanimous",
        tasks[1].pk: "majority",
        tasks[2].pk: "adjudicated",
    }
    only = _lines(admin.get(f"/api/campaigns/{campaign}/pairs/?provenance=adjudicated"))
    assert only and {line["task"] for line in only} == {task.pk}
    both = _lines(
        admin.get(
            f"/api/campaigns/{campaign}/pairs/?provenance=unanimous,majority&aggregate=majority"
        )
    )
    assert {line["task"] for line in both} == {tasks[0].pk, tasks[1].pk}
    rankings = _lines(
        admin.get(f"/api/campaigns/{campaign}/rankings/export/?provenance=adjudicated")
    )
    assert len(rankings) == 3 and all(r["provenance"] == "adjudicated" for r in rankings)
    assert rankings[0]["adjudication"]["decision"] == "consensus"
    assert rankings[0]["adjudication"]["reviewer"] == "rita"
    bad = admin.get(f"/api/campaigns/{campaign}/pairs/?provenance=agreed")
    assert bad.status_code == 400 and "provenance" in bad.json()["errors"]
    csv = b"".join(
        admin.get(f"/api/campaigns/{campaign}/rankings/export/?format=csv").streaming_content
    ).decode()
    header = csv.splitlines()[0].split(",")
    assert header[14:19] == ["version", "latest", "edited_at", "provenance", "adjudication"]


def test_an_adjudicated_ranking_is_the_consensus_of_aggregated_exports(world):
    task = world["tasks"][2]
    a, b, c = world["ids"][2]
    services.task_adjudicate(
        reviewer=world["reviewer"],
        task=task,
        decision="written",
        items=[
            {"completion": a, "rank": 3},
            {"completion": b, "rank": 1},
            {"completion": c, "rank": 2},
        ],
        note="b is the only correct one",
    )
    admin = client_for(world["admin"])
    for aggregate in ("ranked_pairs", "bradley_terry", "majority"):
        lines = _lines(
            admin.get(f"/api/campaigns/{world['campaign'].pk}/pairs/?aggregate={aggregate}")
        )
        mine = {
            (line["chosen_id"], line["rejected_id"]) for line in lines if line["task"] == task.pk
        }
        assert mine == {(b, c), (b, a), (c, a)}, aggregate
        assert all(line["provenance"] == "adjudicated" for line in lines if line["task"] == task.pk)
    # The labellers' own pairs are theirs, still: the decision is not a labeller.
    own = _lines(admin.get(f"/api/campaigns/{world['campaign'].pk}/pairs/"))
    assert {line["labeller"] for line in own} == {u.pk for u in world["users"].values()}


def test_adjudications_stay_out_of_agreement_figures(world):
    admin = client_for(world["admin"])
    before = admin.get(f"/api/campaigns/{world['campaign'].pk}/agreement/").json()
    for task in world["tasks"]:
        services.task_adjudicate(reviewer=world["reviewer"], task=task, decision="consensus")
    after = admin.get(f"/api/campaigns/{world['campaign'].pk}/agreement/").json()
    assert after == before
    assert after["rankings"] == 9 and after["labellers"] == 3


# --- feedback -----------------------------------------------------------------------------------


def test_a_labeller_sees_where_the_adjudication_differed_from_them_and_nothing_else(world):
    task = world["tasks"][2]
    _a, _b, _c = world["ids"][2]
    carol = Ranking.objects.get(task=task, labeller=world["users"]["carol"])
    services.task_adjudicate(
        reviewer=world["reviewer"],
        task=task,
        decision="labeller",
        ranking=carol.pk,
        note="carol read the question",
    )
    alice = client_for(world["users"]["alice"])
    body = alice.get(f"/api/campaigns/{world['campaign'].pk}/feedback/").json()
    assert len(body) == 1
    mine = body[0]
    assert mine["ranking"] == Ranking.objects.get(task=task, labeller=world["users"]["alice"]).pk
    assert mine["differs"] is True and mine["pairs_differing"] == [["A", "B"]]
    assert mine["decision"] == "picked another labeller's ranking"
    assert mine["note"] == "carol read the question"
    assert [c["yours"] for c in mine["completions"]] == [1, 2, 3]
    assert [c["adjudicated"] for c in mine["completions"]] == [1, 1, 3]
    text = json.dumps(body)
    assert "bob" not in text and 'carol"' not in text and "username" not in text
    carols = (
        client_for(world["users"]["carol"])
        .get(f"/api/campaigns/{world['campaign'].pk}/feedback/")
        .json()
    )
    assert carols[0]["differs"] is False and carols[0]["decision"] == "picked your ranking"
    # Unreviewed tasks give no feedback; a non-member of the campaign gets 404.
    assert (
        client_for(UserFactory(username="zed"))
        .get(f"/api/campaigns/{world['campaign'].pk}/feedback/")
        .status_code
        == 404
    )
