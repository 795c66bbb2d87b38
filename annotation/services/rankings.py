"""A labeller's answer to an assignment: submitting a ranking (validated against its task and
campaign, stored once however often it is retried), editing it later (a new version, the old
one kept), or skipping the task with a reason.

The submit that fills a task's target may reopen it for one more labeller (adaptive overlap,
:func:`annotation.services.overlap.task_disagrees`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser as User
from django.db import transaction
from django.utils import timezone

from annotation import sql
from annotation import strength as strength_rules
from annotation.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from annotation.models import (
    Adjudication,
    Assignment,
    Campaign,
    Membership,
    Ranking,
    RankingItem,
    RankingVersion,
    Task,
)
from annotation.pairs import FAIL, Label
from annotation.services import webhooks
from annotation.services.assignment import assignment_release
from annotation.services.overlap import task_disagrees


def normalise_items(
    raw: Any, *, completion_ids: Sequence[int], campaign: Campaign
) -> dict[int, Label]:
    """Validate a submitted ranking against its task and campaign; return {completion: label}.

    Every completion of the task exactly once; ranks in 1..N; equal ranks (ties) only where the
    campaign allows them; "F" only where it allows fail. Errors name the offending field.
    """
    n = len(completion_ids)
    if not isinstance(raw, list):
        raise InvalidInput("must be a list of {completion, rank} objects", field="items")
    known = set(completion_ids)
    labels: dict[int, Label] = {}
    for i, item in enumerate(raw):
        where = f"items[{i}]"
        if not isinstance(item, dict):
            raise InvalidInput("must be an object with completion and rank", field=where)
        completion, rank = item.get("completion"), item.get("rank")
        if isinstance(completion, bool) or not isinstance(completion, int):
            raise InvalidInput("must be a completion id (integer)", field=f"{where}.completion")
        if completion not in known:
            raise InvalidInput(
                f"completion {completion} is not part of this task", field=f"{where}.completion"
            )
        if completion in labels:
            raise InvalidInput(
                f"completion {completion} is ranked more than once", field=f"{where}.completion"
            )
        if rank == FAIL:
            if not campaign.allow_fail:
                raise InvalidInput("this campaign does not allow F (fail)", field=f"{where}.rank")
        elif isinstance(rank, bool) or not isinstance(rank, int):
            raise InvalidInput(f'must be an integer 1..{n} or "F"', field=f"{where}.rank")
        elif not 1 <= rank <= n:
            raise InvalidInput(f"must be between 1 and {n}", field=f"{where}.rank")
        labels[completion] = rank
    missing = [c for c in completion_ids if c not in labels]
    if missing:
        raise InvalidInput(
            f"completion(s) {', '.join(map(str, missing))} are not ranked", field="items"
        )
    ranks = [label for label in labels.values() if label != FAIL]
    if not campaign.allow_ties and len(set(ranks)) != len(ranks):
        raise InvalidInput("this campaign does not allow ties (equal ranks)", field="items")
    return labels


@dataclass(frozen=True, slots=True)
class SubmitResult:
    ranking: Ranking
    created: bool
    labels: dict[int, Label]
    guideline_version: int | None


def _strength(
    strength: Any, justification: Any, *, labels: dict[int, Label], campaign: Campaign
) -> tuple[list[int] | None, str]:
    """The ranking's strength levels (one per adjacent rank gap) on the campaign's scale
    (:mod:`annotation.strength`); errors name the field."""
    try:
        return strength_rules.validate(
            strength, labels=labels, scale=campaign.strength_scale, justification=justification
        )
    except strength_rules.StrengthError as exc:
        raise InvalidInput(exc.message, field=exc.field) from None


def _check_time(time_spent_ms: Any) -> None:
    if (
        time_spent_ms is None
        or isinstance(time_spent_ms, bool)
        or not isinstance(time_spent_ms, int)
    ):
        raise InvalidInput("must be an integer number of milliseconds", field="time_spent_ms")
    if not 0 <= time_spent_ms <= 7 * 24 * 3600 * 1000:
        raise InvalidInput("must be between 0 and one week", field="time_spent_ms")


def _stored_labels(ranking: Ranking) -> dict[int, Label]:
    return {
        completion: FAIL if failed else rank
        for completion, rank, failed in ranking.items.values_list("completion_id", "rank", "failed")
    }


@transaction.atomic
def ranking_submit(
    *,
    labeller: User,
    assignment: Assignment | int,
    items: Any,
    time_spent_ms: int,
    comment: str = "",
    strength: Any = None,
    justification: Any = "",
    now: datetime | None = None,
) -> SubmitResult:
    """Store the labeller's ranking for their assignment, exactly once.

    Idempotent: submitting the same items again returns the stored ranking (``created`` False);
    different items raise ``Conflict``. A lease that ran out is still accepted while its slot is
    free (or was never taken by someone else); otherwise the late ranking is refused, so the
    overlap rule holds.

    ``assignment`` may be the row or its id; anyone else's assignment raises ``NotFound``.

    Adaptive overlap: the submit that fills a real task's current target (below k_max) reads
    the task's rankings and, when their pairwise agreement on strict pairs is below
    ``reopen_below``, raises the target by one, so one more labeller ranks it. Undefined
    agreement (no completion pair two labellers both ordered strictly) does not reopen.

    Locks: the assignment row and its task row, in that order, in one statement (the target
    moves only under the task lock).
    """
    now = now or timezone.now()
    assignment_id = assignment if isinstance(assignment, int) else assignment.pk
    assignment = sql.SUBMIT_LOCK.first(assignment_id=assignment_id, labeller_id=labeller.pk)
    if assignment is None:
        raise NotFound("assignment not found")
    campaign = assignment.campaign
    completion_ids = list(assignment.display_order)
    labels = normalise_items(items, completion_ids=completion_ids, campaign=campaign)
    levels, justification = _strength(strength, justification, labels=labels, campaign=campaign)
    _check_time(time_spent_ms)

    status = assignment.status
    if status == Assignment.Status.SUBMITTED:
        existing = Ranking.objects.select_related("guideline").get(assignment=assignment)
        stored = _stored_labels(existing)
        if stored == labels and (existing.strength or None) == (levels or None):
            version = existing.guideline.version if existing.guideline_id else None
            return SubmitResult(
                ranking=existing, created=False, labels=stored, guideline_version=version
            )
        raise Conflict(
            "this task is already ranked with a different ranking; to change it, edit it "
            f"(PUT with version {existing.version})",
            code="already_submitted",
            extra={"ranking": existing.pk, "version": existing.version},
        )
    if status == Assignment.Status.SKIPPED:
        raise Conflict("this task was skipped", code="assignment_skipped")
    if campaign.status in (Campaign.Status.CLOSED, Campaign.Status.DRAFT):
        raise Conflict(f"the campaign is {campaign.status}", code=f"campaign_{campaign.status}")

    task = assignment.task  # locked with the assignment
    if status == Assignment.Status.EXPIRED:
        # Removing a member ends their open lease, so a late submit is the only way back in
        # for someone no longer a member: refused here (no extra statement on the live path).
        if not Membership.objects.filter(campaign=campaign, user=labeller).exists():
            raise PermissionDenied(
                "you are no longer a member of this campaign; the ranking was not stored",
                code="not_a_member",
            )
        if task.is_gold:  # no cap: there is always room on a gold task
            task.target_overlap = max(task.target_overlap, task.active_count + 1)
        elif task.active_count >= task.target_overlap:
            raise Conflict(
                "your lease on this task expired and it has been given to another labeller; "
                "the ranking was not stored",
                code="lease_expired",
            )
        task.active_count += 1  # take the free slot back
    # The assignment lock makes a second ranking for it impossible here; the unique
    # constraint (task, labeller) would refuse one anyway.
    ranking = Ranking.objects.create(
        assignment=assignment,
        task=task,
        campaign=campaign,
        labeller=labeller,
        guideline=assignment.guideline,
        time_spent_ms=time_spent_ms,
        comment=comment or "",
        strength=levels,
        justification=justification,
    )
    sql.insert_rows(
        RankingItem,
        ("ranking", "completion", "rank", "failed"),
        [
            (ranking.pk, completion, None if label == FAIL else label, label == FAIL)
            for completion, label in labels.items()
        ],
    )
    task.submitted_count += 1
    if (
        campaign.adaptive_overlap
        and not task.is_gold
        and task.submitted_count >= task.target_overlap
        and task.target_overlap < campaign.overlap
        and task_disagrees(task_id=task.pk, threshold=campaign.reopen_below)
    ):
        task.target_overlap += 1  # reopened for one more labeller
    # Both rows are locked and were read in this transaction (one statement each: no query
    # to build on every submit).
    sql.update_row(
        Task,
        task.pk,
        active_count=task.active_count,
        submitted_count=task.submitted_count,
        target_overlap=task.target_overlap,
    )
    assignment.status = Assignment.Status.SUBMITTED
    assignment.finished_at = now
    sql.update_row(Assignment, assignment.pk, status=assignment.status, finished_at=now)
    if campaign.webhooks_active:  # read with the campaign: no query when there are none
        webhooks.ranking_events(task=task, ranking_id=ranking.pk, labeller_id=labeller.pk)
    return SubmitResult(
        ranking=ranking,
        created=True,
        labels=labels,
        guideline_version=assignment.guideline.version if assignment.guideline_id else None,
    )


@dataclass(frozen=True, slots=True)
class EditResult:
    ranking: Ranking
    edited: bool
    """False when the edit changed nothing (the same ranking again, or a retried edit)"""
    labels: dict[int, Label]


@transaction.atomic
def ranking_edit(
    *,
    labeller: User,
    assignment: Assignment | int,
    items: Any,
    time_spent_ms: int,
    version: int,
    comment: str = "",
    strength: Any = None,
    justification: Any = "",
    now: datetime | None = None,
) -> EditResult:
    """Replace the labeller's submitted ranking of their assignment with a new version.

    Allowed while the campaign is not closed and no reviewer has adjudicated the task. The
    version replaced is copied into :class:`RankingVersion` (exported with ``versions=all``);
    the ranking row and its items become the new version, so agreement, consensus and pairs
    read the latest as they always did. ``version`` is the version the labeller edited: an edit
    of an older one is refused (409 ``version_conflict``), so two tabs cannot silently undo each
    other. Idempotent: the same ranking and comment as the latest, sent again (with its version
    or, as a retry of the edit that made it, with the one before), change nothing.
    ``time_spent_ms`` is the time spent on this edit; the ranking's time becomes the total.

    Locks: the assignment row and its task row (as a submit does), so a reviewer's decision,
    which locks the task, is either seen here or made after this edit.
    """
    now = now or timezone.now()
    assignment_id = assignment if isinstance(assignment, int) else assignment.pk
    assignment = sql.SUBMIT_LOCK.first(assignment_id=assignment_id, labeller_id=labeller.pk)
    if assignment is None:
        raise NotFound("assignment not found")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidInput("must be the version you edited (an integer from 1)", field="version")
    campaign = assignment.campaign
    labels = normalise_items(
        items, completion_ids=list(assignment.display_order), campaign=campaign
    )
    levels, justification = _strength(strength, justification, labels=labels, campaign=campaign)
    _check_time(time_spent_ms)
    comment = comment or ""
    if assignment.status != Assignment.Status.SUBMITTED:
        raise Conflict("this task has no submitted ranking to edit", code="not_submitted")
    ranking = Ranking.objects.get(assignment=assignment)
    stored = _stored_labels(ranking)
    unchanged = (
        stored == labels
        and ranking.comment == comment
        and (ranking.strength or None) == (levels or None)
        and ranking.justification == justification
    )
    if unchanged and version in (ranking.version, ranking.version - 1):
        return EditResult(ranking=ranking, edited=False, labels=stored)
    if version != ranking.version:
        raise Conflict(
            f"this ranking was changed since you opened it (it is at version "
            f"{ranking.version}, you edited version {version}); reload it and edit again",
            code="version_conflict",
            extra={"ranking": ranking.pk, "version": ranking.version},
        )
    if campaign.status == Campaign.Status.CLOSED:
        raise Conflict(
            "the campaign is closed: rankings can no longer change", code="campaign_closed"
        )
    if Adjudication.objects.filter(task_id=assignment.task_id).exists():
        raise Conflict(
            "a reviewer has adjudicated this task: its rankings can no longer change",
            code="already_reviewed",
        )
    RankingVersion.objects.create(
        ranking=ranking,
        version=ranking.version,
        items={str(c): label for c, label in sorted(stored.items())},
        guideline_id=ranking.guideline_id,
        time_spent_ms=ranking.time_spent_ms,
        comment=ranking.comment,
        strength=ranking.strength,
        justification=ranking.justification,
        submitted_at=ranking.edited_at or ranking.created_at,
    )
    RankingItem.objects.filter(ranking=ranking).delete()
    sql.insert_rows(
        RankingItem,
        ("ranking", "completion", "rank", "failed"),
        [
            (ranking.pk, completion, None if label == FAIL else label, label == FAIL)
            for completion, label in labels.items()
        ],
    )
    ranking.version += 1
    ranking.edited_at = now
    ranking.comment = comment
    ranking.strength = levels
    ranking.justification = justification
    ranking.time_spent_ms = min(ranking.time_spent_ms + time_spent_ms, 2**31 - 1)
    ranking.save(
        update_fields=[
            "version",
            "edited_at",
            "comment",
            "strength",
            "justification",
            "time_spent_ms",
        ]
    )
    return EditResult(ranking=ranking, edited=True, labels=labels)


@transaction.atomic
def assignment_skip(*, labeller: User, assignment: Assignment, reason: str) -> Assignment:
    """Give the task back with a reason; the labeller is not offered it again."""
    if not reason or not reason.strip():
        raise InvalidInput("say why you skip this task", field="reason")
    if len(reason) > 2000:
        raise InvalidInput("must be at most 2000 characters", field="reason")
    assignment = Assignment.objects.select_for_update().get(pk=assignment.pk, labeller=labeller)
    if assignment.status == Assignment.Status.SKIPPED:
        return assignment
    if assignment.status == Assignment.Status.SUBMITTED:
        raise Conflict("this task is already ranked", code="already_submitted")
    if assignment.status == Assignment.Status.ASSIGNED:
        assignment_release(assignment, status=Assignment.Status.SKIPPED)
    else:  # expired: its slot is already free
        assignment.status = Assignment.Status.SKIPPED
        assignment.finished_at = timezone.now()
        assignment.save(update_fields=["status", "finished_at"])
    assignment.skip_reason = reason.strip()
    assignment.save(update_fields=["skip_reason"])
    return assignment
