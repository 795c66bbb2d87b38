"""Writes: every change to campaigns, tasks, assignments and rankings goes through here.

Locking rules (PostgreSQL; SQLite serialises writers with BEGIN IMMEDIATE instead):
- ``Membership`` row of (campaign, labeller): held while handing that labeller a task, so one
  labeller's concurrent requests cannot take two leases.
- ``Task`` row: held whenever ``active_count``/``submitted_count`` change. Candidate tasks are
  picked with ``FOR UPDATE SKIP LOCKED`` so concurrent labellers never wait on each other.
- ``Assignment`` row: held while submitting, skipping or expiring it, so each happens once.
Order: membership, then assignment, then task. Nothing locks a task before an assignment.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, OuterRef, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from annotation import importing
from annotation.errors import Busy, Conflict, InvalidInput, PermissionDenied
from annotation.models import (
    MAX_COMPLETIONS,
    MIN_COMPLETIONS,
    Assignment,
    Campaign,
    Completion,
    Guideline,
    GuidelineAcknowledgement,
    Membership,
    Prompt,
    Ranking,
    RankingItem,
    Task,
    TaskCompletion,
)
from annotation.pairs import FAIL, Label

User = AbstractBaseUser


# --- Campaigns ----------------------------------------------------------------------------------

CAMPAIGN_SETTINGS = ("completions_per_task", "overlap", "allow_ties", "allow_fail")


def _check_campaign_settings(*, completions_per_task: int, overlap: int) -> None:
    if not MIN_COMPLETIONS <= completions_per_task <= MAX_COMPLETIONS:
        raise InvalidInput(
            f"must be between {MIN_COMPLETIONS} and {MAX_COMPLETIONS}",
            field="completions_per_task",
        )
    if overlap < 1:
        raise InvalidInput("must be at least 1", field="overlap")


@transaction.atomic
def campaign_create(
    *,
    created_by: User | None,
    name: str,
    description: str = "",
    completions_per_task: int = 4,
    overlap: int = 3,
    allow_ties: bool = True,
    allow_fail: bool = True,
    round_number: int = 0,
) -> Campaign:
    _check_campaign_settings(completions_per_task=completions_per_task, overlap=overlap)
    return Campaign.objects.create(
        name=name,
        description=description,
        completions_per_task=completions_per_task,
        overlap=overlap,
        allow_ties=allow_ties,
        allow_fail=allow_fail,
        round_number=round_number,
        created_by=created_by,
    )


@transaction.atomic
def campaign_update(*, campaign: Campaign, **changes: Any) -> Campaign:
    """Change a campaign's settings.

    N cannot change once tasks exist (their completions are fixed). Changing the overlap moves
    every task's target, never below the slots already taken.
    """
    campaign = Campaign.objects.select_for_update(no_key=True).get(pk=campaign.pk)
    allowed = {"name", "description", *CAMPAIGN_SETTINGS}
    unknown = set(changes) - allowed
    if unknown:
        raise InvalidInput(f"cannot change {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    n = changes.get("completions_per_task", campaign.completions_per_task)
    overlap = changes.get("overlap", campaign.overlap)
    _check_campaign_settings(completions_per_task=n, overlap=overlap)
    if n != campaign.completions_per_task and campaign.tasks.exists():
        raise Conflict(
            "cannot change the number of completions once tasks are imported",
            field="completions_per_task",
        )
    if campaign.status == Campaign.Status.CLOSED:
        raise Conflict("a closed campaign cannot be changed", field="status")
    for name, value in changes.items():
        setattr(campaign, name, value)
    campaign.save(update_fields=[*changes, "updated_at"])
    if "overlap" in changes:
        campaign.tasks.update(target_overlap=Greatest(F("active_count"), Value(overlap)))
    return campaign


@transaction.atomic
def campaign_set_status(*, campaign: Campaign, status: str) -> Campaign:
    """Move a campaign along draft → active ⇄ paused → closed; refuse any other move."""
    campaign = Campaign.objects.select_for_update(no_key=True).get(pk=campaign.pk)
    if status not in Campaign.Status.values:
        raise InvalidInput(f"unknown status {status!r}", field="status")
    if status != campaign.status and status not in Campaign.TRANSITIONS[campaign.status]:
        raise Conflict(
            f"a {campaign.status} campaign cannot become {status}",
            field="status",
            code="illegal_transition",
        )
    if status == Campaign.Status.CLOSED:
        # Open leases end with the campaign; their slots no longer matter.
        campaign.assignments.filter(status=Assignment.Status.ASSIGNED).update(
            status=Assignment.Status.EXPIRED, finished_at=timezone.now()
        )
    campaign.status = status
    campaign.save(update_fields=["status", "updated_at"])
    return campaign


@transaction.atomic
def campaign_add_members(*, campaign: Campaign, users: Iterable[User]) -> int:
    """Add labellers; members already there are left as they are. Returns how many were added."""
    existing = set(campaign.memberships.values_list("user_id", flat=True))
    new = [Membership(campaign=campaign, user=u) for u in users if u.pk not in existing]
    Membership.objects.bulk_create(new, ignore_conflicts=True)
    return len(new)


@transaction.atomic
def campaign_remove_member(*, campaign: Campaign, user: User) -> None:
    """Remove a labeller; their open lease is released, their submitted rankings stay."""
    open_assignment = (
        Assignment.objects.select_for_update()
        .filter(campaign=campaign, labeller=user, status=Assignment.Status.ASSIGNED)
        .first()
    )
    if open_assignment is not None:
        _release(open_assignment, status=Assignment.Status.EXPIRED)
    campaign.memberships.filter(user=user).delete()


# --- Guidelines ---------------------------------------------------------------------------------


@transaction.atomic
def guideline_publish(*, campaign: Campaign, text: str, created_by: User | None) -> Guideline:
    """Publish a new guideline version; every labeller must acknowledge it before new tasks."""
    if not text or not text.strip():
        raise InvalidInput("the guidelines are empty", field="text")
    campaign = Campaign.objects.select_for_update(no_key=True).get(pk=campaign.pk)
    latest = campaign.guidelines.order_by("-version").values_list("version", flat=True).first()
    return Guideline.objects.create(
        campaign=campaign, version=(latest or 0) + 1, text=text, created_by=created_by
    )


def guideline_acknowledge(*, user: User, guideline: Guideline) -> GuidelineAcknowledgement:
    acknowledgement, _ = GuidelineAcknowledgement.objects.get_or_create(
        guideline=guideline, user=user
    )
    return acknowledgement


# --- Import -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportResult:
    prompts: int
    tasks: int
    completions: int


def campaign_import(
    *, campaign: Campaign, data: bytes, filename: str, fmt: str | None = None
) -> ImportResult:
    """Import prompts (with or without completions) from JSONL or CSV, all or nothing.

    Raises ``importing.ImportFailed`` with line-numbered errors; nothing is written then.
    """
    parsed = importing.parse_import(
        data,
        fmt=fmt or importing.detect_format(filename),
        completions_per_task=campaign.completions_per_task,
        max_text_chars=settings.IMPORT_MAX_TEXT_CHARS,
        max_bytes=settings.IMPORT_MAX_BYTES,
        default_source=f"import:{filename}"[:200],
    )
    return _store_import(campaign=campaign, records=parsed)


@transaction.atomic
def _store_import(*, campaign: Campaign, records: Sequence[importing.ParsedPrompt]) -> ImportResult:
    campaign = Campaign.objects.select_for_update(no_key=True).get(pk=campaign.pk)
    if campaign.status == Campaign.Status.CLOSED:
        raise Conflict("cannot import into a closed campaign", field="campaign")
    prompts = Prompt.objects.bulk_create(
        [
            Prompt(
                campaign=campaign,
                external_id=r.external_id,
                text=r.text,
                messages=r.messages,
                metadata=r.metadata,
            )
            for r in records
        ]
    )
    with_completions = [(p, r) for p, r in zip(prompts, records, strict=True) if r.completions]
    completions = Completion.objects.bulk_create(
        [
            Completion(prompt=p, text=c.text, source=c.source, metadata=c.metadata)
            for p, r in with_completions
            for c in r.completions
        ]
    )
    tasks = tasks_create(
        campaign=campaign,
        groups=[
            (
                p,
                completions[
                    i * campaign.completions_per_task : (i + 1) * campaign.completions_per_task
                ],
            )
            for i, (p, _) in enumerate(with_completions)
        ],
    )
    return ImportResult(prompts=len(prompts), tasks=len(tasks), completions=len(completions))


def tasks_create(
    *, campaign: Campaign, groups: Sequence[tuple[Prompt, Sequence[Completion]]]
) -> list[Task]:
    """Create one task per (prompt, completions) group; each group must hold exactly N."""
    n = campaign.completions_per_task
    for prompt, group in groups:
        if len(group) != n:
            raise InvalidInput(
                f"prompt {prompt.pk} has {len(group)} completions; the campaign needs {n}",
                field="completions",
            )
    tasks = Task.objects.bulk_create(
        [Task(campaign=campaign, prompt=p, target_overlap=campaign.overlap) for p, _ in groups]
    )
    TaskCompletion.objects.bulk_create(
        [
            TaskCompletion(task=task, completion=c, position=i)
            for task, (_, group) in zip(tasks, groups, strict=True)
            for i, c in enumerate(group)
        ]
    )
    return tasks


# --- Assignment ---------------------------------------------------------------------------------


def _require_member(*, campaign: Campaign, labeller: User) -> Membership:
    """Lock and return the labeller's membership row (serialises their assignment requests)."""
    membership = (
        Membership.objects.select_for_update().filter(campaign=campaign, user=labeller).first()
    )
    if membership is None:
        raise PermissionDenied("you are not a member of this campaign", code="not_a_member")
    return membership


def acknowledged_guideline(*, campaign: Campaign, labeller: User) -> Guideline | None:
    """The campaign's current guideline if the labeller acknowledged it.

    Raises ``PermissionDenied`` (code ``guidelines_not_acknowledged``) when the current version
    is not acknowledged; returns None when the campaign has no guidelines at all.
    """
    current = campaign.guidelines.order_by("-version").first()
    if current is None:
        return None
    if not current.acknowledgements.filter(user=labeller).exists():
        raise PermissionDenied(
            f"acknowledge version {current.version} of the guidelines first",
            code="guidelines_not_acknowledged",
            extra={"guideline_version": current.version},
        )
    return current


@transaction.atomic
def task_assign_next(
    *, labeller: User, campaign: Campaign, now: datetime | None = None
) -> Assignment | None:
    """Hand the labeller a task, or return their open lease, or None when nothing is left.

    A task counts open leases and submitted rankings against its overlap, so it is never handed
    to more labellers than its target, however many ask at once. Tasks others have started come
    first (breadth first), so tasks reach k rankings rather than many sitting at one.

    Locks: the labeller's membership row, then one candidate task (``SKIP LOCKED``: a task
    another request is assigning is passed over rather than waited for; only when every open
    task is locked does the request wait).
    """
    now = now or timezone.now()
    if campaign.status != Campaign.Status.ACTIVE:
        raise Conflict(f"the campaign is {campaign.status}", code=f"campaign_{campaign.status}")
    _require_member(campaign=campaign, labeller=labeller)
    acknowledged_guideline(campaign=campaign, labeller=labeller)

    held = (
        Assignment.objects.select_for_update()
        .filter(campaign=campaign, labeller=labeller, status=Assignment.Status.ASSIGNED)
        .first()
    )
    if held is not None:
        if held.lease_expires_at > now:
            return held
        _release(held, status=Assignment.Status.EXPIRED, now=now)

    finished_by_me = Assignment.objects.filter(
        task=OuterRef("pk"),
        labeller=labeller,
        status__in=[Assignment.Status.SUBMITTED, Assignment.Status.SKIPPED],
    )
    candidates = (
        Task.objects.filter(campaign=campaign, active_count__lt=F("target_overlap"))
        .filter(~Exists(finished_by_me))
        .order_by("-active_count", "id")
    )
    task = _lock_first_free(candidates)
    if task is None:
        return None

    completion_ids = list(
        TaskCompletion.objects.filter(task=task)
        .order_by("position")
        .values_list("completion_id", flat=True)
    )
    random.SystemRandom().shuffle(completion_ids)
    lease_until = now + timedelta(seconds=settings.ASSIGNMENT_LEASE_SECONDS)
    assignment, _ = Assignment.objects.update_or_create(
        task=task,
        labeller=labeller,
        defaults={
            "campaign": campaign,
            "status": Assignment.Status.ASSIGNED,
            "display_order": completion_ids,
            "assigned_at": now,
            "lease_expires_at": lease_until,
            "finished_at": None,
            "skip_reason": "",
        },
    )
    Task.objects.filter(pk=task.pk).update(active_count=F("active_count") + 1)
    return assignment


def _lock_first_free(candidates, *, patience_seconds: float = 10.0) -> Task | None:
    """Lock the first candidate task nobody else holds, or return None if none is left.

    ``SKIP LOCKED`` passes over tasks other requests are assigning right now. When it finds
    nothing, those locked tasks may still have room once their holders commit: check again
    with a plain read, and retry after a short jittered pause, so the labeller is never told
    "nothing left" while work remains (Label Studio #4190). Waiting on a row lock instead
    would deadlock: PostgreSQL keeps the locks of rows that failed the re-check.
    """
    deadline = time.monotonic() + patience_seconds
    pause = 0.002
    while True:
        task = candidates.select_for_update(skip_locked=True).first()
        if task is not None or not candidates.exists():
            return task
        if time.monotonic() > deadline:
            raise Busy("every open task is being assigned right now; try again")
        time.sleep(pause * (1 + random.random()))
        pause = min(pause * 2, 0.05)


def _release(assignment: Assignment, *, status: str, now: datetime | None = None) -> None:
    """End an open lease (caller holds the assignment lock) and give its slot back."""
    assignment.status = status
    assignment.finished_at = now or timezone.now()
    assignment.save(update_fields=["status", "finished_at"])
    Task.objects.filter(pk=assignment.task_id).update(active_count=F("active_count") - 1)


def assignments_expire(*, now: datetime | None = None, batch_size: int = 500) -> int:
    """Expire every lease past its time and return the slots to the pool. Returns the count.

    Runs from Celery beat. Each batch locks its assignments with ``SKIP LOCKED`` (one being
    submitted right now is left alone: the submit decides) and then their tasks.
    """
    now = now or timezone.now()
    total = 0
    while True:
        with transaction.atomic():
            batch = list(
                Assignment.objects.select_for_update(skip_locked=True)
                .filter(status=Assignment.Status.ASSIGNED, lease_expires_at__lte=now)
                .order_by("task_id")
                .values_list("pk", "task_id")[:batch_size]
            )
            if not batch:
                return total
            Assignment.objects.filter(pk__in=[pk for pk, _ in batch]).update(
                status=Assignment.Status.EXPIRED, finished_at=now
            )
            per_task: dict[int, int] = {}
            for _, task_id in batch:
                per_task[task_id] = per_task.get(task_id, 0) + 1
            for task_id, count in sorted(per_task.items()):
                Task.objects.filter(pk=task_id).update(active_count=F("active_count") - count)
            total += len(batch)
        if len(batch) < batch_size:
            return total


# --- Ranking ------------------------------------------------------------------------------------


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


def _stored_labels(ranking: Ranking) -> dict[int, Label]:
    return {
        completion: FAIL if failed else rank
        for completion, rank, failed in ranking.items.values_list("completion_id", "rank", "failed")
    }


@transaction.atomic
def ranking_submit(
    *,
    labeller: User,
    assignment: Assignment,
    items: Any,
    time_spent_ms: int,
    comment: str = "",
    now: datetime | None = None,
) -> SubmitResult:
    """Store the labeller's ranking for their assignment, exactly once.

    Idempotent: submitting the same items again returns the stored ranking (``created`` False);
    different items raise ``Conflict``. A lease that ran out is still accepted while its slot is
    free (or was never taken by someone else); otherwise the late ranking is refused, so the
    overlap rule holds.

    Locks: the assignment row, then its task row.
    """
    now = now or timezone.now()
    assignment = (
        Assignment.objects.select_for_update(of=("self",))
        .select_related("campaign")
        .get(pk=assignment.pk, labeller=labeller)
    )
    campaign = assignment.campaign
    completion_ids = list(assignment.display_order)
    labels = normalise_items(items, completion_ids=completion_ids, campaign=campaign)
    if (
        time_spent_ms is None
        or isinstance(time_spent_ms, bool)
        or not isinstance(time_spent_ms, int)
    ):
        raise InvalidInput("must be an integer number of milliseconds", field="time_spent_ms")
    if not 0 <= time_spent_ms <= 7 * 24 * 3600 * 1000:
        raise InvalidInput("must be between 0 and one week", field="time_spent_ms")

    status = assignment.status
    if status == Assignment.Status.SUBMITTED:
        existing = Ranking.objects.get(assignment=assignment)
        if _stored_labels(existing) == labels:
            return SubmitResult(ranking=existing, created=False)
        raise Conflict(
            "this task is already ranked with a different ranking",
            code="already_submitted",
            extra={"ranking": existing.pk},
        )
    if status == Assignment.Status.SKIPPED:
        raise Conflict("this task was skipped", code="assignment_skipped")
    if campaign.status in (Campaign.Status.CLOSED, Campaign.Status.DRAFT):
        raise Conflict(f"the campaign is {campaign.status}", code=f"campaign_{campaign.status}")

    task = Task.objects.select_for_update().get(pk=assignment.task_id)
    if status == Assignment.Status.EXPIRED:
        if task.active_count >= task.target_overlap:
            raise Conflict(
                "your lease on this task expired and it has been given to another labeller; "
                "the ranking was not stored",
                code="lease_expired",
            )
        task.active_count += 1  # take the free slot back
    guideline = _guideline_for_ranking(campaign=campaign, labeller=labeller)
    try:
        with transaction.atomic():
            ranking = Ranking.objects.create(
                assignment=assignment,
                task=task,
                campaign=campaign,
                labeller=labeller,
                guideline=guideline,
                time_spent_ms=time_spent_ms,
                comment=comment or "",
            )
    except IntegrityError as exc:  # pragma: no cover - guarded by the assignment lock
        raise Conflict("this task is already ranked", code="already_submitted") from exc
    RankingItem.objects.bulk_create(
        [
            RankingItem(
                ranking=ranking,
                completion_id=completion,
                rank=None if label == FAIL else label,
                failed=label == FAIL,
            )
            for completion, label in labels.items()
        ]
    )
    task.submitted_count += 1
    task.save(update_fields=["active_count", "submitted_count"])
    assignment.status = Assignment.Status.SUBMITTED
    assignment.finished_at = now
    assignment.save(update_fields=["status", "finished_at"])
    return SubmitResult(ranking=ranking, created=True)


def _guideline_for_ranking(*, campaign: Campaign, labeller: User) -> Guideline | None:
    """The latest guideline version of the campaign that this labeller acknowledged."""
    return (
        Guideline.objects.filter(campaign=campaign, acknowledgements__user=labeller)
        .order_by("-version")
        .first()
    )


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
        _release(assignment, status=Assignment.Status.SKIPPED)
    else:  # expired: its slot is already free
        assignment.status = Assignment.Status.SKIPPED
        assignment.finished_at = timezone.now()
        assignment.save(update_fields=["status", "finished_at"])
    assignment.skip_reason = reason.strip()
    assignment.save(update_fields=["skip_reason"])
    return assignment
