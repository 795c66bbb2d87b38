"""Review and adjudication: a reviewer settles a task whose labellers reached its overlap.

The reviewer accepts the labellers' consensus (ranked pairs, as the task page shows it), picks
one labeller's ranking, or writes a ranking of their own (validated as a submit is, with a note
saying why). The decision is an :class:`~annotation.models.Adjudication`, never a ranking: it
becomes the task's consensus in aggregated exports and its provenance ``adjudicated``, and stays
out of inter-labeller agreement. Once a task is adjudicated its labellers can no longer edit
their rankings of it (:func:`annotation.services.rankings.ranking_edit`).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser as User
from django.db import transaction

from annotation import consensus
from annotation.errors import Conflict, InvalidInput, PermissionDenied
from annotation.models import Adjudication, Ranking, RankingItem, Task, TaskCompletion
from annotation.pairs import FAIL, Label
from annotation.services.rankings import normalise_items

MAX_NOTE = 5000


def ranking_labels(rankings: list[Ranking]) -> dict[int, dict[int, Label]]:
    """Ranking id -> {completion: label}, in one query."""
    labels: dict[int, dict[int, Label]] = {r.pk: {} for r in rankings}
    for ranking_id, completion, rank, failed in RankingItem.objects.filter(
        ranking_id__in=list(labels)
    ).values_list("ranking_id", "completion_id", "rank", "failed"):
        labels[ranking_id][completion] = FAIL if failed else rank
    return labels


@transaction.atomic
def task_adjudicate(
    *,
    reviewer: User,
    task: Task,
    decision: str,
    ranking: int | None = None,
    items: Any = None,
    note: str = "",
) -> Adjudication:
    """Record the reviewer's decision on ``task`` (replacing an earlier one).

    ``decision``: ``consensus`` (the ranked-pairs consensus of the labellers' latest rankings),
    ``labeller`` (``ranking``: the id of one of the task's rankings) or ``written`` (``items``,
    shaped and validated like a submitted ranking, and a ``note``). Refused: a task the
    reviewer ranked themselves (403 ``own_task``), a gold task (it has a reference), a task
    that has not reached its overlap.

    Locks: the task row, so no labeller's edit of the task (which locks it too) can slip in
    between the rankings read here and the decision stored.
    """
    if decision not in Adjudication.Decision.values:
        raise InvalidInput(
            f"must be one of {', '.join(Adjudication.Decision.values)}", field="decision"
        )
    note = (note or "").strip()
    if len(note) > MAX_NOTE:
        raise InvalidInput(f"must be at most {MAX_NOTE} characters", field="note")
    if ranking is not None and decision != Adjudication.Decision.LABELLER:
        raise InvalidInput("give a ranking only when picking a labeller's", field="ranking")
    if items is not None and decision != Adjudication.Decision.WRITTEN:
        raise InvalidInput("give items only with a written ranking", field="items")
    task = Task.objects.select_for_update().select_related("campaign").get(pk=task.pk)
    campaign = task.campaign
    if task.is_gold:
        raise Conflict(
            "a gold task is checked against its reference ranking, not adjudicated",
            code="gold_task",
        )
    rankings = list(Ranking.objects.filter(task=task).order_by("id"))
    if any(r.labeller_id == reviewer.pk for r in rankings):
        raise PermissionDenied(
            "you ranked this task yourself; another reviewer adjudicates it", code="own_task"
        )
    if not rankings or task.submitted_count < task.target_overlap:
        raise Conflict(
            "this task has not reached its overlap yet "
            f"({task.submitted_count} of {task.target_overlap} rankings)",
            code="task_not_complete",
        )
    labels = ranking_labels(rankings)
    source = None
    if decision == Adjudication.Decision.CONSENSUS:
        chosen = consensus.ranked_pairs(list(labels.values()))
    elif decision == Adjudication.Decision.LABELLER:
        if ranking is None:
            raise InvalidInput("name the ranking you pick", field="ranking")
        source = next((r for r in rankings if r.pk == ranking), None)
        if source is None:
            raise InvalidInput(f"ranking {ranking} is not one of this task's", field="ranking")
        chosen = labels[source.pk]
    else:
        if items is None:
            raise InvalidInput("write the adjudicated ranking", field="items")
        if not note:
            raise InvalidInput("say why the labellers' rankings do not stand", field="note")
        completion_ids = list(
            TaskCompletion.objects.filter(task=task)
            .order_by("position")
            .values_list("completion_id", flat=True)
        )
        chosen = normalise_items(items, completion_ids=completion_ids, campaign=campaign)
    adjudication, _ = Adjudication.objects.update_or_create(
        task=task,
        defaults={
            "campaign": campaign,
            "reviewer": reviewer,
            "decision": decision,
            "source_ranking": source,
            "items": {str(c): label for c, label in sorted(chosen.items())},
            "note": note,
            "reviewed_rankings": [[r.pk, r.version] for r in rankings],
        },
    )
    return adjudication
