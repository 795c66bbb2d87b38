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
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Subquery, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from annotation import importing
from annotation.errors import Busy, Conflict, InvalidInput, NotFound, PermissionDenied
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


INVITE_PASSWORD_BYTES = 12  # token_urlsafe(12): 16 characters, 96 bits


@transaction.atomic
def labeller_invite(*, campaign: Campaign, username: str, email: str = "") -> tuple[User, str]:
    """Create a labeller account with a random one-time password and add it to the campaign.

    Returns ``(user, password)``; the password is stored only as its hash, so the caller shows
    it once and it cannot be read back. The labeller logs in with it and changes it
    (``/accounts/password_change/``). Refuses an invalid or taken username and an invalid email.
    """
    user_model = get_user_model()
    username = (username or "").strip()
    email = (email or "").strip()
    if not username:
        raise InvalidInput("a username is required", field="username")
    try:
        user_model.username_validator(username)
    except ValidationError as exc:
        raise InvalidInput(" ".join(exc.messages), field="username") from None
    if len(username) > user_model._meta.get_field("username").max_length:
        raise InvalidInput("is too long", field="username")
    if email:
        try:
            validate_email(email)
        except ValidationError:
            raise InvalidInput("is not a valid email address", field="email") from None
    if campaign.status == Campaign.Status.CLOSED:
        raise Conflict("cannot add labellers to a closed campaign", field="campaign")
    if user_model.objects.filter(username__iexact=username).exists():
        raise Conflict(f"the username {username!r} is taken", field="username")
    password = secrets.token_urlsafe(INVITE_PASSWORD_BYTES)
    user = user_model.objects.create_user(username=username, email=email, password=password)
    Membership.objects.create(campaign=campaign, user=user)
    return user, password


# --- Guidelines ---------------------------------------------------------------------------------


@transaction.atomic
def guideline_publish(*, campaign: Campaign, text: str, created_by: User | None) -> Guideline:
    """Publish a new guideline version; every labeller must acknowledge it before new tasks."""
    if not text or not text.strip():
        raise InvalidInput("the guidelines are empty", field="text")
    campaign = Campaign.objects.select_for_update(no_key=True).get(pk=campaign.pk)
    latest = campaign.guidelines.order_by("-version").values_list("version", flat=True).first()
    guideline = Guideline.objects.create(
        campaign=campaign, version=(latest or 0) + 1, text=text, created_by=created_by
    )
    campaign.current_guideline = guideline
    campaign.save(update_fields=["current_guideline", "updated_at"])
    return guideline


@transaction.atomic
def guideline_acknowledge(*, user: User, guideline: Guideline) -> GuidelineAcknowledgement:
    """Record that the user read this version; their membership points at the newest one."""
    acknowledgement, _ = GuidelineAcknowledgement.objects.get_or_create(
        guideline=guideline, user=user
    )
    Membership.objects.filter(campaign_id=guideline.campaign_id, user=user).exclude(
        acknowledged_guideline__version__gte=guideline.version
    ).update(acknowledged_guideline=guideline)
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


def campaign_import_file(
    *, campaign: Campaign, file: Any, filename: str, fmt: str | None = None
) -> ImportResult:
    """Import an uploaded file: its size is checked before it is read into memory."""
    size = getattr(file, "size", None)
    if size is not None:
        importing.check_size(size, max_bytes=settings.IMPORT_MAX_BYTES)
    return campaign_import(campaign=campaign, data=file.read(), filename=filename, fmt=fmt)


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
        Membership.objects.select_for_update(of=("self",))
        .select_related("campaign")
        .filter(campaign=campaign, user=labeller)
        .first()
    )
    if membership is None:
        raise PermissionDenied("you are not a member of this campaign", code="not_a_member")
    return membership


def _require_acknowledged(*, campaign: Campaign, membership: Membership) -> None:
    """Raise ``PermissionDenied`` (code ``guidelines_not_acknowledged``) unless the member
    acknowledged the campaign's current guidelines (a campaign without guidelines needs none)."""
    current_id = campaign.current_guideline_id
    if current_id is None or membership.acknowledged_guideline_id == current_id:
        return
    version = Guideline.objects.filter(pk=current_id).values_list("version", flat=True).first()
    raise PermissionDenied(
        f"acknowledge version {version} of the guidelines first",
        code="guidelines_not_acknowledged",
        extra={"guideline_version": version},
    )


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
    membership = _require_member(campaign=campaign, labeller=labeller)
    campaign = membership.campaign  # read in the same query: current status and guidelines
    if campaign.status != Campaign.Status.ACTIVE:
        raise Conflict(f"the campaign is {campaign.status}", code=f"campaign_{campaign.status}")
    _require_acknowledged(campaign=campaign, membership=membership)

    held = (
        Assignment.objects.select_for_update()
        .filter(campaign=campaign, labeller=labeller, status=Assignment.Status.ASSIGNED)
        .first()
    )
    if held is not None:
        if held.lease_expires_at > now:
            return held
        _release(held, status=Assignment.Status.EXPIRED, now=now)

    mine = Assignment.objects.filter(task=OuterRef("pk"), labeller=labeller)
    finished = [Assignment.Status.SUBMITTED, Assignment.Status.SKIPPED]
    candidates = (
        Task.objects.filter(campaign=campaign, active_count__lt=F("target_overlap"))
        .filter(~Exists(mine.filter(status__in=finished)))
        .annotate(expired_assignment_id=Subquery(mine.values("pk")[:1]))
        .select_related("prompt")
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
    fields = {
        "campaign": campaign,
        "status": Assignment.Status.ASSIGNED,
        "display_order": completion_ids,
        "guideline_id": membership.acknowledged_guideline_id,
        "assigned_at": now,
        "lease_expires_at": now + timedelta(seconds=settings.ASSIGNMENT_LEASE_SECONDS),
        "finished_at": None,
        "skip_reason": "",
    }
    if task.expired_assignment_id is None:
        assignment = Assignment.objects.create(task=task, labeller=labeller, **fields)
    else:  # this labeller let an earlier lease on the task expire: reuse that row
        assignment = Assignment(
            pk=task.expired_assignment_id, task=task, labeller=labeller, **fields
        )
        assignment.save(update_fields=[name.removesuffix("_id") for name in fields])
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
        task = candidates.select_for_update(skip_locked=True, of=("self",)).first()
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
    labels: dict[int, Label]
    guideline_version: int | None


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
    now: datetime | None = None,
) -> SubmitResult:
    """Store the labeller's ranking for their assignment, exactly once.

    Idempotent: submitting the same items again returns the stored ranking (``created`` False);
    different items raise ``Conflict``. A lease that ran out is still accepted while its slot is
    free (or was never taken by someone else); otherwise the late ranking is refused, so the
    overlap rule holds.

    ``assignment`` may be the row or its id; anyone else's assignment raises ``NotFound``.

    Locks: the assignment row, then its task row.
    """
    now = now or timezone.now()
    assignment_id = assignment if isinstance(assignment, int) else assignment.pk
    assignment = (
        Assignment.objects.select_for_update(of=("self",))
        .select_related("campaign", "guideline")
        .filter(pk=assignment_id, labeller=labeller)
        .first()
    )
    if assignment is None:
        raise NotFound("assignment not found")
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
        existing = Ranking.objects.select_related("guideline").get(assignment=assignment)
        stored = _stored_labels(existing)
        if stored == labels:
            version = existing.guideline.version if existing.guideline_id else None
            return SubmitResult(
                ranking=existing, created=False, labels=stored, guideline_version=version
            )
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
    )
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
    return SubmitResult(
        ranking=ranking,
        created=True,
        labels=labels,
        guideline_version=assignment.guideline.version if assignment.guideline_id else None,
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
