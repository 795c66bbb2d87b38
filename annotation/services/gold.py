"""Gold tasks: a task marked with a reference ranking becomes a check of each labeller
(served to everyone, left out of inter-labeller agreement, compared with the reference by
:mod:`annotation.agreement_figures`)."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from annotation.errors import Conflict, NotFound
from annotation.models import (
    Campaign,
    Task,
    TaskCompletion,
)
from annotation.services.overlap import initial_overlap
from annotation.services.rankings import normalise_items
from annotation.services.task_order import apply_task_order


def _task_for_update(task: Task | int) -> Task:
    task_id = task if isinstance(task, int) else task.pk
    found = Task.objects.select_for_update(of=("self",)).select_related("campaign")
    task = found.filter(pk=task_id).first()
    if task is None:
        raise NotFound("task not found")
    return task


@transaction.atomic
def task_mark_gold(*, task: Task | int, items: Any) -> Task:
    """Make a task a gold task with this reference ranking (or replace its reference).

    ``items`` is shaped like a submitted ranking (every completion of the task once, ranks 1..N,
    ties and F only where the campaign allows them); errors name the field. From now on the
    task's rankings, earlier ones included, are compared with the reference and leave the
    exports and the inter-labeller agreement. Locks the task row.
    """
    task = _task_for_update(task)
    if task.campaign.status == Campaign.Status.CLOSED:
        raise Conflict("a closed campaign cannot be changed", field="campaign")
    completion_ids = list(
        TaskCompletion.objects.filter(task=task)
        .order_by("position")
        .values_list("completion_id", flat=True)
    )
    labels = normalise_items(items, completion_ids=completion_ids, campaign=task.campaign)
    task.is_gold = True
    task.gold_ranking = {str(completion): label for completion, label in labels.items()}
    task.save(update_fields=["is_gold", "gold_ranking"])
    return task


@transaction.atomic
def task_unmark_gold(*, task: Task | int) -> Task:
    """Make a gold task an ordinary one again: its rankings return to the exports and the
    agreement, and its target goes back to the campaign's (never below the slots taken; more
    labellers than the overlap may have ranked it as gold). Locks the task row."""
    task = _task_for_update(task)
    if not task.is_gold:
        return task
    task.is_gold = False
    task.gold_ranking = None
    task.target_overlap = max(task.active_count, initial_overlap(task.campaign))
    task.save(update_fields=["is_gold", "gold_ranking", "target_overlap"])
    apply_task_order(task.campaign, [task])
    task.refresh_from_db(fields=["priority"])
    return task
