"""Reads, access-checked. Every view goes through these to reach shared data.

A labeller sees the campaigns they are a member of, and only their own assignments and
rankings; anything else is reported as not found (404), never as forbidden, so ids of other
people's work reveal nothing. Managers and reviewers see the campaigns their roles reach
(``annotation.permissions``) and every ranking in them; an action their role does not give on
a campaign they can see is forbidden (403).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Exists, F, OuterRef, Prefetch, Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotation import permissions
from annotation.errors import NotFound, PermissionDenied
from annotation.models import (
    Adjudication,
    Assignment,
    Campaign,
    Completion,
    Guideline,
    GuidelineAcknowledgement,
    Membership,
    Ranking,
    RankingItem,
    Task,
    TaskCompletion,
)

User = AbstractBaseUser


def campaign_list_for(*, user: User) -> QuerySet[Campaign]:
    """The campaigns ``user`` sees: those they run or review, and those they label (not
    drafts)."""
    return permissions.visible_campaigns(user).order_by("-created_at", "-id")


def campaign_get_for(*, user: User, campaign_id: int, perm: str | None = None) -> Campaign:
    """A campaign the user may see, 404 for anyone else's (drafts only for those who run it);
    with ``perm``, 403 unless their roles give it there."""
    campaign = campaign_list_for(user=user).filter(pk=campaign_id).first()
    if campaign is None:
        raise NotFound("campaign not found")
    if perm is not None:
        require(user=user, perm=perm, campaign=campaign)
    return campaign


def require(*, user: User, perm: str, campaign: Campaign) -> None:
    """``PermissionDenied`` (403) unless ``user`` holds ``perm`` on ``campaign``."""
    if not permissions.can(user, perm, campaign):
        raise PermissionDenied(f"your role in this campaign does not allow this ({perm})")


def current_guideline(*, campaign: Campaign) -> Guideline | None:
    return campaign.guidelines.order_by("-version").first()


def guideline_acknowledged(*, user: User, guideline: Guideline | None) -> bool:
    if guideline is None:
        return True
    return GuidelineAcknowledgement.objects.filter(guideline=guideline, user=user).exists()


def assignment_list_for(*, labeller: User) -> QuerySet[Assignment]:
    """The labeller's own assignments, and nobody else's (admins included: this is 'mine')."""
    return Assignment.objects.filter(labeller=labeller).select_related("task", "campaign")


def assignment_get_for_labeller(*, labeller: User, assignment_id: int) -> Assignment:
    """The labeller's own assignment; 404 for anyone else's, whoever asks."""
    assignment = (
        Assignment.objects.filter(pk=assignment_id, labeller=labeller)
        .select_related("campaign", "task__prompt")
        .first()
    )
    if assignment is None:
        raise NotFound("assignment not found")
    return assignment


def assignment_completions(*, assignment: Assignment) -> list[tuple[int, str, str]]:
    """The task's completions as ``(id, text, source)`` in the assignment's shuffled display
    order (those :func:`annotation.services.task_assign_next` attached, when it did)."""
    shown = getattr(assignment, "shown_completions", None)
    if shown is not None:
        return shown
    texts = {
        pk: (text, source)
        for pk, text, source in Completion.objects.filter(
            pk__in=assignment.display_order
        ).values_list("pk", "text", "source")
    }
    return [(pk, *texts[pk]) for pk in assignment.display_order]


def ranking_list_for(*, user: User, campaign_id: int | None = None) -> QuerySet[Ranking]:
    """Everyone their own rankings, and every ranking of the campaigns they run or review."""
    if not user.is_authenticated:
        return Ranking.objects.none()
    rankings = Ranking.objects.filter(
        Q(labeller=user) | Q(campaign__in=permissions.campaigns_where(user, permissions.VIEW))
    )
    if campaign_id is not None:
        rankings = rankings.filter(campaign_id=campaign_id)
    return rankings.select_related("guideline").prefetch_related(
        Prefetch("items", queryset=RankingItem.objects.order_by("id"))
    )


def ranking_get_for(*, user: User, ranking_id: int) -> Ranking:
    ranking = ranking_list_for(user=user).filter(pk=ranking_id).first()
    if ranking is None:
        raise NotFound("ranking not found")
    return ranking


@dataclass(frozen=True, slots=True)
class LabellerProgress:
    user_id: int
    username: str
    submitted: int
    skipped: int
    open: int
    remaining: int
    submitted_today: int


@dataclass(frozen=True, slots=True)
class CampaignProgress:
    """Progress on the real (non-gold) tasks; gold tasks and their rankings are counted
    apart, since a gold task's target grows with every labeller who is handed it."""

    tasks: int
    tasks_complete: int
    tasks_in_progress: int
    rankings: int
    target_rankings: int
    open_leases: int
    gold_tasks: int
    gold_rankings: int


def campaign_progress(*, campaign: Campaign) -> CampaignProgress:
    real = Q(is_gold=False)
    tasks = campaign.tasks.aggregate(
        total=Count("id", filter=real),
        complete=Count("id", filter=real & Q(submitted_count__gte=F("target_overlap"))),
        started=Count("id", filter=real & Q(active_count__gt=0)),
        target=Coalesce(Sum("target_overlap", filter=real), 0),
        gold=Count("id", filter=Q(is_gold=True)),
    )
    rankings = campaign.rankings.aggregate(
        real=Count("id", filter=Q(task__is_gold=False)),
        gold=Count("id", filter=Q(task__is_gold=True)),
    )
    open_leases = campaign.assignments.filter(
        status=Assignment.Status.ASSIGNED, lease_expires_at__gt=timezone.now()
    ).count()
    return CampaignProgress(
        tasks=tasks["total"],
        tasks_complete=tasks["complete"],
        tasks_in_progress=tasks["started"] - tasks["complete"],
        rankings=rankings["real"],
        target_rankings=tasks["target"],
        open_leases=open_leases,
        gold_tasks=tasks["gold"],
        gold_rankings=rankings["gold"],
    )


def labeller_progress(
    *, campaign: Campaign, users: list[User] | None = None, as_labeller: bool = False
) -> list[LabellerProgress]:
    """Per labeller: done, skipped, open and how many tasks they could still be given.

    For those who run the campaign, ``remaining`` counts real tasks only (gold tasks are not
    work left). What a labeller is shown of their own progress (``as_labeller``) counts the gold
    tasks they may still be served as well, while real work is left: otherwise ``remaining``
    would drop after a real task and stay put after a gold one, telling gold tasks apart.
    """
    member_ids = list(campaign.memberships.values_list("user_id", flat=True))
    if users is not None:
        member_ids = [u.pk for u in users if u.pk in set(member_ids)]
    start_of_day = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    counts = {
        row["labeller_id"]: row
        for row in campaign.assignments.filter(labeller_id__in=member_ids)
        .values("labeller_id")
        .annotate(
            submitted=Count("id", filter=Q(status=Assignment.Status.SUBMITTED)),
            skipped=Count("id", filter=Q(status=Assignment.Status.SKIPPED)),
            open=Count("id", filter=Q(status=Assignment.Status.ASSIGNED)),
            today=Count(
                "id",
                filter=Q(status=Assignment.Status.SUBMITTED, finished_at__gte=start_of_day),
            ),
        )
    }
    unfinished_tasks = campaign.tasks.filter(is_gold=False, submitted_count__lt=F("target_overlap"))
    serves_gold = campaign.gold_rate > 0 or campaign.onboarding_gold_tasks > 0
    result = []
    usernames = dict(
        Membership.objects.filter(campaign=campaign, user_id__in=member_ids).values_list(
            "user_id", "user__username"
        )
    )
    for user_id in member_ids:
        row = counts.get(user_id, {})
        done = Exists(
            Assignment.objects.filter(
                task=OuterRef("pk"),
                labeller_id=user_id,
                status__in=[Assignment.Status.SUBMITTED, Assignment.Status.SKIPPED],
            )
        )
        remaining = unfinished_tasks.exclude(done).count()
        if as_labeller and serves_gold and remaining:
            remaining += campaign.tasks.filter(is_gold=True).exclude(done).count()
        result.append(
            LabellerProgress(
                user_id=user_id,
                username=usernames.get(user_id, ""),
                submitted=row.get("submitted", 0),
                skipped=row.get("skipped", 0),
                open=row.get("open", 0),
                remaining=remaining,
                submitted_today=row.get("today", 0),
            )
        )
    return result


def task_list_for_admin(*, campaign: Campaign) -> QuerySet[Task]:
    return campaign.tasks.select_related("prompt").order_by("id")


def review_task_get(*, campaign: Campaign, task_id: int) -> Task:
    """A task of ``campaign`` (one the caller may review), with its prompt; 404 otherwise."""
    task = campaign.tasks.select_related("prompt").filter(pk=task_id).first()
    if task is None:
        raise NotFound("task not found")
    return task


def ranking_history_for(
    *, labeller: User, query: str = "", campaign_id: int | None = None
) -> QuerySet[Ranking]:
    """The labeller's own rankings, newest first, and nobody else's (whoever asks): those
    whose prompt, completions or comment contain ``query`` (case-insensitive), of one campaign
    or all, each with ``reviewed`` (a reviewer adjudicated its task)."""
    rankings = Ranking.objects.filter(labeller=labeller)
    if campaign_id is not None:
        rankings = rankings.filter(campaign_id=campaign_id)
    query = query.strip()
    if query:
        in_completions = Exists(
            TaskCompletion.objects.filter(task=OuterRef("task"), completion__text__icontains=query)
        )
        rankings = rankings.filter(
            Q(task__prompt__text__icontains=query) | Q(comment__icontains=query) | in_completions
        )
    return (
        rankings.annotate(reviewed=Exists(Adjudication.objects.filter(task=OuterRef("task"))))
        .select_related("campaign", "task__prompt", "assignment")
        .order_by("-created_at", "-id")
    )


TASK_STATUSES = ("all", "open", "complete", "reviewed")


def task_list_filtered(
    *,
    campaign: Campaign,
    status: str = "all",
    labeller_id: int | None = None,
    gold: bool | None = None,
) -> QuerySet[Task]:
    """The campaign's tasks (for those who view it), by status: ``open`` (below its overlap),
    ``complete`` (reached it), ``reviewed`` (adjudicated); ranked by one labeller; gold or
    not. Each task has ``reviewed``."""
    tasks = task_list_for_admin(campaign=campaign).annotate(
        reviewed=Exists(Adjudication.objects.filter(task=OuterRef("pk")))
    )
    if status == "open":
        tasks = tasks.filter(submitted_count__lt=F("target_overlap"))
    elif status == "complete":
        tasks = tasks.filter(submitted_count__gte=F("target_overlap"))
    elif status == "reviewed":
        tasks = tasks.filter(reviewed=True)
    if labeller_id is not None:
        tasks = tasks.filter(
            Exists(Ranking.objects.filter(task=OuterRef("pk"), labeller_id=labeller_id))
        )
    if gold is not None:
        tasks = tasks.filter(is_gold=gold)
    return tasks
