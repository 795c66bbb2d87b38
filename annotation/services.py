"""Writes: every change to campaigns, tasks, assignments and rankings goes through here.

Locking rules (PostgreSQL; SQLite serialises writers with BEGIN IMMEDIATE instead):
- ``Membership`` row of (campaign, labeller): held while handing that labeller a task, so one
  labeller's concurrent requests cannot take two leases.
- ``Task`` row: held whenever ``active_count``/``submitted_count`` change. Candidate tasks are
  picked with ``FOR UPDATE SKIP LOCKED`` so concurrent labellers never wait on each other.
- ``Assignment`` row: held while submitting, skipping or expiring it, so each happens once.
Order: membership, then assignment, then task. Nothing locks a task before an assignment.

Gold tasks (``Task.is_gold``) carry a reference ranking; every labeller may rank them (their
``target_overlap`` is raised, under the task lock, to whatever is handed out), and they are mixed
into each labeller's queue at ``Campaign.gold_rate`` or, during onboarding, served alone.
Adaptive overlap (``Campaign.overlap_min``) raises a task's ``target_overlap`` by one in the
submit that fills it while its labellers disagree, up to ``Campaign.overlap``.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Greatest, Least
from django.utils import timezone

from annotation import importing, quality, selectors
from annotation.compiled import CompiledQuery, insert_rows, update_row
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

CAMPAIGN_SETTINGS = (
    "completions_per_task",
    "overlap",
    "allow_ties",
    "allow_fail",
    "overlap_min",
    "reopen_below",
    "gold_rate",
    "onboarding_gold_tasks",
    "onboarding_threshold",
    "task_order",
    "order_seed",
)


def _check_rate(value: Any, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidInput("must be a number between 0 and 1", field=field)


def _check_campaign_settings(
    *,
    completions_per_task: int,
    overlap: int,
    overlap_min: int | None = None,
    reopen_below: float = 0.5,
    gold_rate: float = 0.0,
    onboarding_gold_tasks: int = 0,
    onboarding_threshold: float = 0.7,
    task_order: str = Campaign.TaskOrder.SEQUENTIAL,
    order_seed: int = 0,
) -> None:
    if not MIN_COMPLETIONS <= completions_per_task <= MAX_COMPLETIONS:
        raise InvalidInput(
            f"must be between {MIN_COMPLETIONS} and {MAX_COMPLETIONS}",
            field="completions_per_task",
        )
    if overlap < 1:
        raise InvalidInput("must be at least 1", field="overlap")
    if overlap_min is not None and not 1 <= overlap_min <= overlap:
        raise InvalidInput(f"must be between 1 and the overlap ({overlap})", field="overlap_min")
    _check_rate(reopen_below, "reopen_below")
    _check_rate(gold_rate, "gold_rate")
    _check_rate(onboarding_threshold, "onboarding_threshold")
    if not 0 <= onboarding_gold_tasks <= 1000:
        raise InvalidInput("must be between 0 and 1000", field="onboarding_gold_tasks")
    if task_order not in Campaign.TaskOrder.values:
        raise InvalidInput(f"unknown task order {task_order!r}", field="task_order")
    if not 0 <= order_seed < 2**31:
        raise InvalidInput("must be between 0 and 2^31 - 1", field="order_seed")


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
    overlap_min: int | None = None,
    reopen_below: float = 0.5,
    gold_rate: float = 0.0,
    onboarding_gold_tasks: int = 0,
    onboarding_threshold: float = 0.7,
    task_order: str = Campaign.TaskOrder.SEQUENTIAL,
    order_seed: int = 0,
) -> Campaign:
    """Create a draft campaign. ``overlap_min`` (k_min) turns on adaptive overlap up to
    ``overlap`` (k_max); see :class:`annotation.models.Campaign` for the other settings."""
    quality_settings = {
        "overlap_min": overlap_min,
        "reopen_below": reopen_below,
        "gold_rate": gold_rate,
        "onboarding_gold_tasks": onboarding_gold_tasks,
        "onboarding_threshold": onboarding_threshold,
        "task_order": task_order,
        "order_seed": order_seed,
    }
    _check_campaign_settings(
        completions_per_task=completions_per_task, overlap=overlap, **quality_settings
    )
    return Campaign.objects.create(
        name=name,
        description=description,
        completions_per_task=completions_per_task,
        overlap=overlap,
        allow_ties=allow_ties,
        allow_fail=allow_fail,
        round_number=round_number,
        created_by=created_by,
        **quality_settings,
    )


@transaction.atomic
def campaign_update(*, campaign: Campaign, **changes: Any) -> Campaign:
    """Change a campaign's settings.

    N cannot change once tasks exist (their completions are fixed). Changing the overlap moves
    every task's target, never below the slots already taken: with a fixed overlap to the new
    one; with adaptive overlap into k_min..k_max (a task reopened on disagreement keeps its
    raised target; turning adaptive overlap on moves every task to k_min). Changing the task
    order (or its seed) recomputes every task's priority; ``uncertainty`` starts from the random
    order until an ``acquisition`` job scores the tasks.

    Locks the campaign row, then (with ``UPDATE``) the tasks whose target or priority moves.
    """
    campaign = Campaign.objects.select_for_update(no_key=True).get(pk=campaign.pk)
    allowed = {"name", "description", *CAMPAIGN_SETTINGS}
    unknown = set(changes) - allowed
    if unknown:
        raise InvalidInput(f"cannot change {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    n = changes.get("completions_per_task", campaign.completions_per_task)
    merged = {name: changes.get(name, getattr(campaign, name)) for name in CAMPAIGN_SETTINGS}
    _check_campaign_settings(
        **{k: v for k, v in merged.items() if k not in ("allow_ties", "allow_fail")}
    )
    was_adaptive = campaign.adaptive_overlap
    old_order = (campaign.task_order, campaign.order_seed)
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
    if {"overlap", "overlap_min"} & changes.keys():
        _retarget_tasks(campaign, was_adaptive=was_adaptive)
    if (campaign.task_order, campaign.order_seed) != old_order:
        _apply_task_order(campaign, campaign.tasks.filter(is_gold=False))
    return campaign


def _retarget_tasks(campaign: Campaign, *, was_adaptive: bool) -> None:
    """Move the tasks' targets after an overlap change (see :func:`campaign_update`)."""
    real = campaign.tasks.filter(is_gold=False)
    if campaign.adaptive_overlap:
        k_min, k_max = Value(campaign.overlap_min), Value(campaign.overlap)
        start = Greatest(F("target_overlap"), k_min) if was_adaptive else k_min
        real.update(target_overlap=Greatest(F("active_count"), Least(start, k_max)))
    else:
        real.update(target_overlap=Greatest(F("active_count"), Value(campaign.overlap)))
    # Gold tasks have no cap: their target only says when progress counts them as complete.
    campaign.tasks.filter(is_gold=True).update(
        target_overlap=Greatest(F("active_count"), Value(campaign.overlap))
    )


def initial_overlap(campaign: Campaign) -> int:
    """The target a new task starts with: k_min with adaptive overlap, else the overlap."""
    return campaign.overlap_min if campaign.adaptive_overlap else campaign.overlap


def random_priority(*, campaign_id: int, seed: int, task_id: int) -> float:
    """A task's place in the campaign's random order: uniform in [0, 1), fixed by the campaign,
    its ``order_seed`` and the task id (the same on every machine and every call)."""
    digest = hashlib.blake2b(f"{campaign_id}:{seed}:{task_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _apply_task_order(campaign: Campaign, tasks) -> None:
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
    gold_tasks: int = 0


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
        allow_ties=campaign.allow_ties,
        allow_fail=campaign.allow_fail,
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
    n = campaign.completions_per_task
    groups = [(p, completions[i * n : (i + 1) * n]) for i, (p, _) in enumerate(with_completions)]
    gold = [
        None
        if r.gold is None
        else {str(c.pk): label for c, label in zip(group, r.gold, strict=True)}
        for (_, group), (_, r) in zip(groups, with_completions, strict=True)
    ]
    tasks = tasks_create(campaign=campaign, groups=groups, gold=gold)
    return ImportResult(
        prompts=len(prompts),
        tasks=len(tasks),
        completions=len(completions),
        gold_tasks=sum(g is not None for g in gold),
    )


def tasks_create(
    *,
    campaign: Campaign,
    groups: Sequence[tuple[Prompt, Sequence[Completion]]],
    gold: Sequence[dict[str, Label] | None] | None = None,
) -> list[Task]:
    """Create one task per (prompt, completions) group; each group must hold exactly N.

    ``gold[i]``, when given and not None, makes task i a gold task with that reference ranking
    (``{"<completion id>": label}``, already validated). New tasks start at k_min labellers with
    adaptive overlap, and take their place in the campaign's task order.
    """
    n = campaign.completions_per_task
    for prompt, group in groups:
        if len(group) != n:
            raise InvalidInput(
                f"prompt {prompt.pk} has {len(group)} completions; the campaign needs {n}",
                field="completions",
            )
    references = list(gold) if gold is not None else [None] * len(groups)
    if len(references) != len(groups):
        raise InvalidInput("one gold entry (or None) per group", field="gold")
    start = initial_overlap(campaign)
    tasks = Task.objects.bulk_create(
        [
            Task(
                campaign=campaign,
                prompt=p,
                target_overlap=start if reference is None else campaign.overlap,
                is_gold=reference is not None,
                gold_ranking=reference,
            )
            for (p, _), reference in zip(groups, references, strict=True)
        ]
    )
    if campaign.task_order != Campaign.TaskOrder.SEQUENTIAL:
        _apply_task_order(campaign, [t for t in tasks if not t.is_gold])
    TaskCompletion.objects.bulk_create(
        [
            TaskCompletion(task=task, completion=c, position=i)
            for task, (_, group) in zip(tasks, groups, strict=True)
            for i, c in enumerate(group)
        ]
    )
    if len(tasks) >= PLANNER_REFRESH_TASKS:
        transaction.on_commit(task_statistics_refresh)
    return tasks


PLANNER_REFRESH_TASKS = 50
"""Imports of at least this many tasks refresh the planner's statistics on commit."""


def task_statistics_refresh() -> None:
    """Refresh PostgreSQL's planner statistics for tasks (``ANALYZE``).

    A campaign imported a moment ago is unknown to the statistics until autovacuum gets round
    to it; meanwhile the planner takes it for one row and may hand out tasks by sorting the
    whole campaign, with the anti-join, on every request (40 ms of database time per ranking
    measured at 2,000 tasks, against 5 ms with fresh statistics: bench/README.md).
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {Task._meta.db_table}")


# --- Assignment ---------------------------------------------------------------------------------


# The row locks of next task and submit, compiled once per connection (annotation.compiled):
# building and compiling them cost more CPU than PostgreSQL spends running them.
_MEMBERSHIP_LOCK = CompiledQuery(
    lambda campaign_id, user_id: (
        Membership.objects.select_for_update(of=("self",))
        .select_related("campaign")
        .filter(campaign_id=campaign_id, user_id=user_id)
    ),
    campaign_id=int,
    user_id=int,
)
_HELD_LEASE_LOCK = CompiledQuery(
    lambda campaign_id, labeller_id: (
        Assignment.objects.select_for_update(of=("self",))
        .select_related("task__prompt")
        .filter(campaign_id=campaign_id, labeller_id=labeller_id, status=Assignment.Status.ASSIGNED)
    ),
    campaign_id=int,
    labeller_id=int,
)
_SUBMIT_LOCK = CompiledQuery(
    lambda assignment_id, labeller_id: (
        Assignment.objects.select_for_update(of=("self", "task"))
        .select_related("campaign", "guideline", "task")
        .filter(pk=assignment_id, labeller_id=labeller_id)
    ),
    assignment_id=int,
    labeller_id=int,
)


def _open_tasks(*, campaign_id: int, labeller_id: int) -> QuerySet[Task]:
    """The campaign's tasks this labeller has neither ranked nor skipped, with the id of an
    earlier assignment of theirs (an expired lease) as ``expired_assignment_id``."""
    mine = Assignment.objects.filter(task=OuterRef("pk"), labeller_id=labeller_id)
    finished = [Assignment.Status.SUBMITTED, Assignment.Status.SKIPPED]
    return (
        Task.objects.filter(campaign_id=campaign_id)
        .filter(~Exists(mine.filter(status__in=finished)))
        .annotate(expired_assignment_id=Subquery(mine.values("pk")[:1]))
        .select_related("prompt")
    )


def _real_open_tasks(*, campaign_id: int, labeller_id: int) -> QuerySet[Task]:
    """Real tasks with room, breadth first: most started, then priority, then id."""
    return (
        _open_tasks(campaign_id=campaign_id, labeller_id=labeller_id)
        .filter(is_gold=False, active_count__lt=F("target_overlap"))
        .order_by("-active_count", "-priority", "id")
    )


def _gold_open_tasks(*, campaign_id: int, labeller_id: int) -> QuerySet[Task]:
    """Gold tasks, lowest id first (a gold task always has room: its target follows)."""
    return (
        _open_tasks(campaign_id=campaign_id, labeller_id=labeller_id)
        .filter(is_gold=True)
        .order_by("id")
    )


def _first_free(candidates: Callable[..., QuerySet[Task]]) -> CompiledQuery:
    """The first of ``candidates`` nobody else holds, locked (``SKIP LOCKED``)."""
    return CompiledQuery(
        lambda campaign_id, labeller_id: candidates(
            campaign_id=campaign_id, labeller_id=labeller_id
        ).select_for_update(skip_locked=True, of=("self",)),
        campaign_id=int,
        labeller_id=int,
    )


_TASK_COMPLETIONS = CompiledQuery(
    lambda task_id: (
        Completion.objects.filter(task_completions__task_id=task_id)
        .order_by("task_completions__position")
        .only("id", "text")
    ),
    task_id=int,
)
_FIRST_FREE = {
    candidates: _first_free(candidates) for candidates in (_real_open_tasks, _gold_open_tasks)
}


def _require_member(*, campaign_id: int, labeller: User) -> Membership:
    """Lock and return the labeller's membership row, with its campaign (this serialises the
    labeller's own assignment requests).

    404 for a campaign the labeller may not see (drafts are admin-only); ``not_a_member`` for
    one they see without being a member (an admin, say).
    """
    membership = _MEMBERSHIP_LOCK.first(campaign_id=campaign_id, user_id=labeller.pk)
    if membership is None:
        selectors.campaign_get_for(user=labeller, campaign_id=campaign_id)  # 404 if unseen
        raise PermissionDenied("you are not a member of this campaign", code="not_a_member")
    if membership.campaign.status == Campaign.Status.DRAFT and not selectors.is_admin(labeller):
        raise NotFound("campaign not found")
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
    *, labeller: User, campaign: Campaign | int, now: datetime | None = None
) -> Assignment | None:
    """Hand the labeller a task, or return their open lease, or None when nothing is left.

    ``campaign`` may be the row or its id; a campaign the labeller may not see raises
    ``NotFound``, one they are not a member of ``PermissionDenied`` (``not_a_member``). A new
    assignment comes with its ``task`` (and prompt) loaded and ``shown_completions``, the
    ``(id, text)`` pairs in display order, so it can be shown without another query.

    A task counts open leases and submitted rankings against its overlap, so it is never handed
    to more labellers than its target, however many ask at once. Tasks others have started come
    first (breadth first), so tasks reach k rankings rather than many sitting at one; among
    those started by as many labellers, the highest ``priority`` (the campaign's task order),
    then the lowest id.

    Gold tasks: with probability ``gold_rate`` the labeller gets a gold task they have not
    ranked (lowest id first) instead, if one is free right now and real work is left for them;
    a gold task's target is raised to fit, so every labeller can rank it. When only gold tasks
    are left: None (gold tasks are never served alone, outside onboarding). During onboarding
    (``onboarding_gold_tasks`` M > 0, not passed yet) only gold tasks are served; after M the
    labeller passes (recorded on the membership) or is refused with ``onboarding_failed``.

    Locks: the labeller's membership row, then one candidate task (``SKIP LOCKED``: a task
    another request is assigning is passed over rather than waited for; only when every open
    task is locked does the request wait).
    """
    now = now or timezone.now()
    campaign_id = campaign if isinstance(campaign, int) else campaign.pk
    membership = _require_member(campaign_id=campaign_id, labeller=labeller)
    campaign = membership.campaign  # read in the same query: current status and guidelines
    if campaign.status != Campaign.Status.ACTIVE:
        raise Conflict(f"the campaign is {campaign.status}", code=f"campaign_{campaign.status}")
    _require_acknowledged(campaign=campaign, membership=membership)

    # A statement of its own, after the membership lock: read in the locking statement, it
    # would miss a lease that a request holding the lock before us has just committed.
    held = _HELD_LEASE_LOCK.first(campaign_id=campaign.pk, labeller_id=labeller.pk)
    if held is not None:
        if held.lease_expires_at > now:
            held.campaign = campaign
            return held
        _release(held, status=Assignment.Status.EXPIRED, now=now)

    mine = {"campaign_id": campaign.pk, "labeller_id": labeller.pk}
    if _onboarding_pending(campaign=campaign, membership=membership, now=now):
        task = _lock_first_free(_gold_open_tasks, **mine)
    else:
        task = None
        if (
            campaign.gold_rate > 0
            and _gold_draw() < campaign.gold_rate
            and _real_open_tasks(**mine).exists()
        ):
            task = _lock_first_free(_gold_open_tasks, wait=False, **mine)
        if task is None:
            task = _lock_first_free(_real_open_tasks, **mine)
    if task is None:
        return None

    texts = {c.pk: c.text for c in _TASK_COMPLETIONS.all(task_id=task.pk)}
    completion_ids = list(texts)
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
    assignment.shown_completions = [(pk, texts[pk]) for pk in completion_ids]
    counts = {"active_count": task.active_count + 1}  # locked and read above: current
    if task.is_gold:  # no cap: the target follows what is handed out
        counts["target_overlap"] = max(task.target_overlap, counts["active_count"])
    update_row(Task, task.pk, **counts)
    return assignment


_gold_draw: Callable[[], float] = random.SystemRandom().random
"""Uniform draw in [0, 1) deciding whether the next task is a gold one (tests replace it)."""


def _onboarding_pending(*, campaign: Campaign, membership: Membership, now: datetime) -> bool:
    """True while the labeller must get gold tasks only (onboarding on, not passed yet).

    After M gold rankings (or fewer, when no gold task is left for them) the first M are
    compared with their references: at ``onboarding_threshold`` or above the pass is recorded
    on the membership (the caller holds its lock); below, ``PermissionDenied``
    (``onboarding_failed``, with the agreement) is raised, every time they ask. A failure is not
    stored: it is read from the rankings, so lowering the threshold lets them in.
    """
    needed = campaign.onboarding_gold_tasks
    if needed == 0 or membership.onboarding_passed_at is not None:
        return False
    result = quality.onboarding_result(
        campaign=campaign, labeller_id=membership.user_id, gold_tasks=needed
    )
    gold = _gold_open_tasks(campaign_id=campaign.pk, labeller_id=membership.user_id)
    if result.gold_tasks < needed and gold.exists():
        return True
    if result.gold_tasks == 0:
        raise Conflict(
            "this campaign has no qualification tasks for you yet", code="onboarding_unavailable"
        )
    value = result.agreement.value
    if value is not None and value >= campaign.onboarding_threshold:
        membership.onboarding_passed_at = now
        membership.onboarding_agreement = value
        membership.save(update_fields=["onboarding_passed_at", "onboarding_agreement"])
        return False
    shown = "undefined" if value is None else f"{value:.2f}"
    raise PermissionDenied(
        f"your first {result.gold_tasks} qualification tasks agree {shown} with the reference "
        f"rankings; {campaign.onboarding_threshold:.2f} is needed. Ask a campaign admin",
        code="onboarding_failed",
        extra={
            "onboarding": {
                "agreement": value,
                "pairs": result.agreement.n,
                "tasks": result.gold_tasks,
                "threshold": campaign.onboarding_threshold,
            }
        },
    )


def _lock_first_free(
    candidates: Callable[..., QuerySet[Task]],
    *,
    campaign_id: int,
    labeller_id: int,
    patience_seconds: float = 10.0,
    wait: bool = True,
) -> Task | None:
    """Lock the first candidate task nobody else holds, or return None if none is left.
    ``candidates`` is one of the open-task querysets whose lock is compiled in ``_FIRST_FREE``.

    ``SKIP LOCKED`` passes over tasks other requests are assigning right now. When it finds
    nothing, those locked tasks may still have room once their holders commit: check again
    with a plain read, and retry after a short jittered pause, so the labeller is never told
    "nothing left" while work remains (Label Studio #4190). Waiting on a row lock instead
    would deadlock: PostgreSQL keeps the locks of rows that failed the re-check. With
    ``wait=False`` a request that finds every candidate locked returns None at once.
    """
    deadline = time.monotonic() + patience_seconds
    pause = 0.002
    while True:
        task = _FIRST_FREE[candidates].first(campaign_id=campaign_id, labeller_id=labeller_id)
        if task is not None or not wait:
            return task
        if not candidates(campaign_id=campaign_id, labeller_id=labeller_id).exists():
            return None
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

    Adaptive overlap: the submit that fills a real task's current target (below k_max) reads
    the task's rankings and, when their pairwise agreement on strict pairs is below
    ``reopen_below``, raises the target by one, so one more labeller ranks it. Undefined
    agreement (no completion pair two labellers both ordered strictly) does not reopen.

    Locks: the assignment row and its task row, in that order, in one statement (the target
    moves only under the task lock).
    """
    now = now or timezone.now()
    assignment_id = assignment if isinstance(assignment, int) else assignment.pk
    assignment = _SUBMIT_LOCK.first(assignment_id=assignment_id, labeller_id=labeller.pk)
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

    task = assignment.task  # locked with the assignment
    if status == Assignment.Status.EXPIRED:
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
    )
    insert_rows(
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
        and _task_disagrees(task_id=task.pk, threshold=campaign.reopen_below)
    ):
        task.target_overlap += 1  # reopened for one more labeller
    # Both rows are locked and were read in this transaction (one statement each: no query
    # to build on every submit).
    update_row(
        Task,
        task.pk,
        active_count=task.active_count,
        submitted_count=task.submitted_count,
        target_overlap=task.target_overlap,
    )
    assignment.status = Assignment.Status.SUBMITTED
    assignment.finished_at = now
    update_row(Assignment, assignment.pk, status=assignment.status, finished_at=now)
    return SubmitResult(
        ranking=ranking,
        created=True,
        labels=labels,
        guideline_version=assignment.guideline.version if assignment.guideline_id else None,
    )


def _task_disagrees(*, task_id: int, threshold: float) -> bool:
    """Whether the task's labellers agree on fewer than ``threshold`` of the strict pairs they
    both ordered (:func:`annotation.quality.task_strict_agreement`); False when undefined."""
    rankings: dict[int, dict[int, Label]] = {}
    for ranking_id, completion_id, rank, failed in RankingItem.objects.filter(
        ranking__task_id=task_id
    ).values_list("ranking_id", "completion_id", "rank", "failed"):
        rankings.setdefault(ranking_id, {})[completion_id] = FAIL if failed else rank
    value, _ = quality.task_strict_agreement(list(rankings.values()))
    return value is not None and value < threshold


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


# --- Gold tasks ---------------------------------------------------------------------------------


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
    _apply_task_order(task.campaign, [task])
    task.refresh_from_db(fields=["priority"])
    return task
