"""The order in which real tasks are handed out: ``Task.priority``, highest first.

Sequential campaigns give every task 0 (then id order decides); random ones a seeded, stable
priority per task; an acquisition job replaces those with reward-model priorities
(:func:`task_priorities_set`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from django.db import transaction

from annotation.models import (
    Campaign,
    Task,
)


def random_priority(*, campaign_id: int, seed: int, task_id: int) -> float:
    """A task's place in the campaign's random order: uniform in [0, 1), fixed by the campaign,
    its ``order_seed`` and the task id (the same on every machine and every call)."""
    digest = hashlib.blake2b(f"{campaign_id}:{seed}:{task_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def apply_task_order(campaign: Campaign, tasks) -> None:
    """Set the priority of ``tasks`` (a queryset or list) from the campaign's task order:
    0 for sequential (id order), the seeded random order otherwise (uncertainty starts there
    until an acquisition job scores the tasks)."""
    if campaign.task_order == Campaign.TaskOrder.SEQUENTIAL:
        if isinstance(tasks, list):
            tasks = Task.objects.filter(pk__in=[t.pk for t in tasks])
        tasks.update(priority=0.0)
        return
    rows = [
        Task(
            pk=task.pk,
            priority=random_priority(
                campaign_id=campaign.pk, seed=campaign.order_seed, task_id=task.pk
            ),
        )
        for task in (tasks.only("pk") if hasattr(tasks, "only") else tasks)
    ]
    Task.objects.bulk_update(rows, ["priority"], batch_size=1000)


PRIORITY_BATCH = 500
"""Tasks per transaction when an acquisition job writes priorities: each batch locks its rows
only briefly, so labellers asking for tasks meanwhile are not held up."""


def task_priorities_set(*, campaign: Campaign, priorities: Mapping[int, float]) -> int:
    """Store reward-model priorities (higher first) of the campaign's real tasks; ids of gold
    tasks and of other campaigns' tasks are ignored. Returns how many tasks were updated.

    Not one transaction: batches of :data:`PRIORITY_BATCH` commit one by one (a priority is an
    ordering hint, not an invariant; a task assigned meanwhile keeps its slot either way).
    """
    own = set(
        campaign.tasks.filter(is_gold=False, pk__in=list(priorities)).values_list("pk", flat=True)
    )
    rows = [Task(pk=pk, priority=float(priorities[pk])) for pk in sorted(own)]
    for start in range(0, len(rows), PRIORITY_BATCH):
        with transaction.atomic():
            Task.objects.bulk_update(rows[start : start + PRIORITY_BATCH], ["priority"])
    return len(rows)
