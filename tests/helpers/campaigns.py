"""Campaigns whose labellers ranked their tasks as planned, and the plans several test modules
rank: a small hand-computed one, one with ties and F options, and one with an outlier; a
labeller ranking every task they can get; the bytes of a JSONL import file."""

from __future__ import annotations

import json

from annotation import services
from annotation.models import Campaign
from annotation.pairs import FAIL, Label
from tests.factories import CampaignFactory, UserFactory, make_tasks, task_completion_ids

Plan = dict[str, list[Label]]
"""One task's plan: a username to the labels of the task's completions in import order."""


def ranked_campaign(
    plans: list[Plan],
    *,
    completions: int,
    admin,
    round_number: int = 0,
    seconds: dict[str, int] | None = None,
) -> tuple[Campaign, list[list[int]], dict]:
    """A campaign whose labellers ranked its tasks as planned, through the real services.

    ``plans[t]`` maps a username to the labels of task t's completions in import order; a
    labeller missing from a task's plan skips it. Returns the campaign, each task's completion
    ids (import order) and the users by name.
    """
    names = sorted({name for plan in plans for name in plan})
    users = {name: UserFactory(username=name) for name in names}
    campaign = CampaignFactory(
        completions_per_task=completions,
        overlap=len(names),
        round_number=round_number,
        created_by=admin,
    )
    services.campaign_add_members(campaign=campaign, users=list(users.values()))
    guideline = services.guideline_publish(campaign=campaign, text="# Rank", created_by=admin)
    tasks = make_tasks(campaign, len(plans))
    ids = [task_completion_ids(task) for task in tasks]
    index = {task.pk: i for i, task in enumerate(tasks)}
    for name, user in users.items():
        services.guideline_acknowledge(user=user, guideline=guideline)
        while (
            assignment := services.task_assign_next(labeller=user, campaign=campaign)
        ) is not None:
            t = index[assignment.task_id]
            labels = plans[t].get(name)
            if labels is None:
                services.assignment_skip(labeller=user, assignment=assignment, reason="not mine")
                continue
            services.ranking_submit(
                labeller=user,
                assignment=assignment,
                items=[
                    {"completion": cid, "rank": label}
                    for cid, label in zip(ids[t], labels, strict=True)
                ],
                time_spent_ms=(seconds or {}).get(name, 30_000),
            )
    return campaign, ids, users


# Two tasks of three completions, two labellers (alice, bob).
#   task 1: alice a > b > c, bob a > c > b: they agree on (a,b), (a,c), not on (b,c)
#   task 2: alice d = e > f (a tie), bob d > e > f: (d,e) tie vs strict, (d,f), (e,f) agree
SMALL: list[Plan] = [
    {"alice": [1, 2, 3], "bob": [1, 3, 2]},
    {"alice": [1, 1, 2], "bob": [1, 2, 3]},
]

# Two tasks of four completions, three labellers. Task 0: strict rankings by all three. Task 1:
# alice ties a and b and marks d F; bob marks c and d F; carol ranks strictly (b first).
TIES_AND_FAILS: list[Plan] = [
    {"alice": [1, 2, 3, 4], "bob": [2, 1, 3, 4], "carol": [1, 2, 4, 3]},
    {"alice": [1, 1, 3, FAIL], "bob": [1, 2, FAIL, FAIL], "carol": [2, 1, 3, 4]},
]


def outlier_plans(tasks: int = 12) -> list[Plan]:
    """carol, dave and erin rank every task the same way (dave swaps two on every fourth task);
    frank, who misunderstood the guidelines, inverts every ranking."""
    plans = []
    for t in range(tasks):
        truth = [(t + i) % 4 + 1 for i in range(4)]
        dave = list(truth)
        if t % 4 == 0:
            i, j = truth.index(2), truth.index(3)
            dave[i], dave[j] = 3, 2
        plans.append(
            {"carol": truth, "dave": dave, "erin": truth, "frank": [5 - label for label in truth]}
        )
    return plans


def rank_every_task(campaign, labeller, labels) -> None:
    """The labeller ranks every task they can get; ``labels(ids in import order)`` gives the
    {completion: label} of a task."""
    while assignment := services.task_assign_next(labeller=labeller, campaign=campaign):
        ids = task_completion_ids(assignment.task)
        items = [{"completion": c, "rank": label} for c, label in labels(ids).items()]
        services.ranking_submit(
            labeller=labeller, assignment=assignment, items=items, time_spent_ms=3000
        )


def jsonl(records) -> bytes:
    """The records as the lines of a JSONL import file."""
    return "\n".join(json.dumps(r) for r in records).encode()
