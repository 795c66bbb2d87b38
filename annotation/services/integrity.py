"""Keeping the stored counts true to the rows, and people who leave.

A task's ``active_count`` and ``submitted_count`` are kept by every service that changes an
assignment, under the task's row lock. Should they ever disagree with the rows (a restore from
a partial backup, a hand edit in the database), :func:`task_counts_repair` recomputes them
(``manage.py check_counts``). Accounts are deactivated, never deleted: their rankings stay,
attributed to them (:func:`user_deactivate`).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser as User
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Q
from django.utils import timezone

from accounts.models import ApiToken
from accounts.services import user_tokens_revoke
from annotation.models import Assignment, Ranking, Task
from annotation.services.assignment import assignment_release


@dataclass(frozen=True, slots=True)
class CountFix:
    """One disagreement found (and, with ``repair``, mended)."""

    campaign_id: int
    task_id: int
    what: str
    stored: int | str
    actual: int | str

    def __str__(self) -> str:
        return (
            f"campaign {self.campaign_id} task {self.task_id}: {self.what} "
            f"{self.stored} -> {self.actual}"
        )


@transaction.atomic
def task_counts_repair(*, campaign_id: int | None = None, repair: bool = False) -> list[CountFix]:
    """Compare every task's counts with its assignments (and every submitted assignment with
    its ranking); with ``repair``, set them to what the rows say. Returns what disagreed.

    A submitted assignment without its ranking (a ranking deleted outside the services) is
    expired, so its slot returns to the pool and the labeller can be given the task again.

    Locks the tasks it reads (``FOR UPDATE``), so no submit changes them meanwhile.
    """
    fixes: list[CountFix] = []
    assignments = Assignment.objects.filter(status=Assignment.Status.SUBMITTED).exclude(
        Exists(Ranking.objects.filter(assignment=OuterRef("pk")))
    )
    if campaign_id is not None:
        assignments = assignments.filter(campaign_id=campaign_id)
    orphans = list(assignments.select_for_update().values_list("pk", "campaign_id", "task_id"))
    for pk, campaign, task in orphans:
        fixes.append(
            CountFix(campaign, task, f"assignment {pk} without ranking", "submitted", "expired")
        )
    if repair and orphans:
        Assignment.objects.filter(pk__in=[pk for pk, _, _ in orphans]).update(
            status=Assignment.Status.EXPIRED, finished_at=timezone.now()
        )

    tasks = (
        Task.objects.all() if campaign_id is None else Task.objects.filter(campaign_id=campaign_id)
    )
    locked = tasks.select_for_update().order_by("id").values_list("pk", flat=True)
    counted = (
        Task.objects.filter(pk__in=list(locked))
        .annotate(
            holding=Count(
                "assignments",
                filter=Q(
                    assignments__status__in=[
                        Assignment.Status.ASSIGNED,
                        Assignment.Status.SUBMITTED,
                    ]
                ),
            ),
            submitted=Count(
                "assignments", filter=Q(assignments__status=Assignment.Status.SUBMITTED)
            ),
        )
        .order_by("id")
        .values_list("pk", "campaign_id", "active_count", "submitted_count", "holding", "submitted")
    )
    # With ``repair`` the orphans are expired by now, so these counts leave them out.
    for pk, campaign, active, submitted, holding, actual_submitted in counted:
        changes = {}
        if active != holding:
            fixes.append(CountFix(campaign, pk, "active_count", active, holding))
            changes["active_count"] = holding
        if submitted != actual_submitted:
            fixes.append(CountFix(campaign, pk, "submitted_count", submitted, actual_submitted))
            changes["submitted_count"] = actual_submitted
        if repair and changes:
            Task.objects.filter(pk=pk).update(**changes)
    return fixes


@transaction.atomic
def user_deactivate(*, user: User) -> int:
    """Deactivate an account: it can no longer log in, its API tokens are revoked, its open
    leases end (their slots go back to the pool), and its rankings stay, attributed to it.
    Returns the number of leases ended."""
    open_leases = list(
        Assignment.objects.select_for_update().filter(
            labeller=user, status=Assignment.Status.ASSIGNED
        )
    )
    for assignment in open_leases:
        assignment_release(assignment, status=Assignment.Status.EXPIRED)
    user.is_active = False
    user.save(update_fields=["is_active"])
    user_tokens_revoke(user=user, reason=ApiToken.RevokedReason.DEACTIVATED)
    return len(open_leases)
