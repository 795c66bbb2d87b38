"""Which task a labeller gets next, their lease on it, and the sweep that ends lapsed leases.

:func:`task_assign_next` is the entry point: the labeller's membership row is locked (one
labeller's concurrent requests cannot take two leases), an open lease is handed back, and
otherwise the first free candidate task is locked with ``SKIP LOCKED`` (concurrent labellers
never wait on each other). Candidates are breadth first: most started, then priority, then id.

Gold tasks (``Task.is_gold``) carry a reference ranking; every labeller may rank them (their
``target_overlap`` is raised, under the task lock, to whatever is handed out), and they are
mixed into each labeller's queue at ``Campaign.gold_rate`` or, during onboarding, served alone.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser as User
from django.db import transaction
from django.db.models import Exists, F, OuterRef, QuerySet, Subquery
from django.utils import timezone

from annotation import agreement_figures, permissions, selectors, sql
from annotation.errors import Busy, Conflict, NotFound, PermissionDenied
from annotation.models import (
    Assignment,
    Campaign,
    Guideline,
    Membership,
    Task,
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


_FIRST_FREE = {_real_open_tasks: sql.FIRST_FREE_REAL, _gold_open_tasks: sql.FIRST_FREE_GOLD}
"""Each open-task queryset's statement locking its first free task (``SKIP LOCKED``), written
in SQL (annotation.sql); tests/annotation/test_sql.py holds the two to the same answers."""


def _require_member(*, campaign_id: int, labeller: User) -> Membership:
    """Lock and return the labeller's membership row, with its campaign (this serialises the
    labeller's own assignment requests).

    404 for a campaign the labeller may not see (drafts only for those who run it);
    ``not_a_member`` for one they see without being a member (a team manager, say).
    """
    membership = sql.MEMBERSHIP_LOCK.first(campaign_id=campaign_id, user_id=labeller.pk)
    if membership is None:
        selectors.campaign_get_for(user=labeller, campaign_id=campaign_id)  # 404 if unseen
        raise PermissionDenied("you are not a member of this campaign", code="not_a_member")
    if membership.campaign.status == Campaign.Status.DRAFT and not permissions.can(
        labeller, permissions.VIEW, membership.campaign
    ):
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
    held = sql.HELD_LEASE_LOCK.first(campaign_id=campaign.pk, labeller_id=labeller.pk)
    if held is not None:
        if held.lease_expires_at > now:
            held.campaign = campaign
            return held
        assignment_release(held, status=Assignment.Status.EXPIRED, now=now)

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

    texts = {pk: (text, source) for pk, text, source in sql.task_completions(task.pk)}
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
    assignment.shown_completions = [(pk, *texts[pk]) for pk in completion_ids]
    counts = {"active_count": task.active_count + 1}  # locked and read above: current
    if task.is_gold:  # no cap: the target follows what is handed out
        counts["target_overlap"] = max(task.target_overlap, counts["active_count"])
    sql.update_row(Task, task.pk, **counts)
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
    result = agreement_figures.onboarding_result(
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
    ``candidates`` is one of the open-task querysets; ``_FIRST_FREE`` has its locking
    statement, in SQL.

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


def assignment_release(assignment: Assignment, *, status: str, now: datetime | None = None) -> None:
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
