"""Reads for training, access-checked: a team's managers and trainers see its jobs, rounds and
models (``annotation.permissions``); models with no team are shared by all; anything else
answers 404."""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib.auth.models import AbstractBaseUser as User
from django.db.models import Q, QuerySet

from annotation import permissions
from annotation.errors import InvalidInput, NotFound, PermissionDenied
from annotation.models import Team
from training.models import JobMetric, ModelVersion, Round, TrainingJob
from training.overoptimisation import CurvePoint, overoptimisation_curve


def _teams(user: User) -> QuerySet[Team]:
    return permissions.teams_where(user, permissions.VIEW_JOBS)


def training_job_list(*, user: User) -> QuerySet[TrainingJob]:
    jobs = TrainingJob.objects.select_related("created_by").order_by("-created_at", "-id")
    if permissions.can(user, permissions.VIEW_JOBS):
        return jobs
    return jobs.filter(team__in=_teams(user))


def training_job_get(*, user: User, job_id: int) -> TrainingJob:
    job = training_job_list(user=user).filter(pk=job_id).first()
    if job is None:
        raise NotFound("training job not found")
    return job


def require_trainer(*, user: User, team: Team | None) -> None:
    """``PermissionDenied`` unless ``user`` may start, cancel or retry training in ``team``."""
    if not permissions.can(user, permissions.TRAIN, team):
        raise PermissionDenied(
            "starting training needs the trainer role in the campaigns' team", code="not_trainer"
        )


def job_metrics(*, job: TrainingJob, after_step: int | None = None) -> QuerySet[JobMetric]:
    rows = JobMetric.objects.filter(job=job)
    if after_step is not None:
        rows = rows.filter(step__gt=after_step)
    return rows.order_by("step", "id")


def team_for_model(*, user: User, team_id: int | None) -> Team | None:
    """The team a model registered by ``user`` belongs to: ``team_id`` if they train there;
    else the one team they train in; none (shared by every team) for someone allowed to train
    everywhere. 403 for someone who trains nowhere, 400 naming ``team`` otherwise."""
    teams = permissions.teams_where(user, permissions.TRAIN)
    if team_id is not None:
        team = teams.filter(pk=team_id).first()
        if team is None:
            raise InvalidInput("no team with this id where you train", field="team")
        return team
    if permissions.can(user, permissions.TRAIN):
        return None
    mine = list(teams[:2])
    if not mine:
        raise PermissionDenied("registering models needs the trainer role in a team")
    if len(mine) > 1:
        raise InvalidInput("you train in several teams: say which one", field="team")
    return mine[0]


def model_version_list(*, user: User, kind: str | None = None) -> QuerySet[ModelVersion]:
    """The shared models and those of the user's teams."""
    versions = ModelVersion.objects.order_by("-created_at", "-id")
    if not permissions.can(user, permissions.VIEW_JOBS):
        versions = versions.filter(Q(team__isnull=True) | Q(team__in=_teams(user)))
    if kind:
        versions = versions.filter(kind=kind)
    return versions


def round_list(*, user: User) -> QuerySet[Round]:
    rounds = Round.objects.select_related(
        "campaign", "next_campaign", "reference", "policy_before", "reward_model", "policy_after"
    ).order_by("-created_at", "-id")
    if permissions.can(user, permissions.VIEW_JOBS):
        return rounds
    return rounds.filter(campaign__team__in=_teams(user))


def round_gold_curves(*, rounds: Sequence[Round]) -> dict[int, list[CurvePoint]]:
    """The over-optimisation curve (``training.overoptimisation``) of each chain of rounds among
    ``rounds`` (a user's :func:`round_list`, so only what they may see), keyed by the id of the
    chain's latest round. Only chains whose evaluations carry a gold score, i.e. labelled by a
    synthetic labeller with a hidden gold, and with at least one evaluated update. No queries:
    chains are followed through ``previous_id`` among the rounds given."""
    by_id = {r.pk: r for r in rounds}
    has_next = {r.previous_id for r in rounds if r.previous_id is not None}
    curves: dict[int, list[CurvePoint]] = {}
    for last in rounds:
        if last.pk in has_next:
            continue
        chain = [last]
        while chain[-1].previous_id in by_id and len(chain) <= len(by_id):
            chain.append(by_id[chain[-1].previous_id])
        chain.reverse()
        points = overoptimisation_curve([(r.number, r.evaluation or {}) for r in chain])
        if len(points) > 1:
            curves[last.pk] = points
    return curves


def round_get(*, user: User, round_id: int) -> Round:
    rnd = round_list(user=user).filter(pk=round_id).first()
    if rnd is None:
        raise NotFound("round not found")
    return rnd


def round_jobs(*, round: Round) -> QuerySet[TrainingJob]:
    """The round's jobs, oldest first (a chained job's steps included)."""
    return (
        TrainingJob.objects.filter(round=round)
        .select_related("created_by")
        .order_by("created_at", "id")
    )


def round_lineage(*, round: Round) -> list[Round]:
    """The round and the rounds before it, oldest first."""
    rounds = [round]
    seen = {round.pk}
    while rounds[0].previous_id is not None and rounds[0].previous_id not in seen:
        previous = Round.objects.get(pk=rounds[0].previous_id)
        seen.add(previous.pk)
        rounds.insert(0, previous)
    return rounds


def round_reward_campaign_ids(*, round: Round) -> list[int]:
    """Campaigns whose pairs train the round's reward model: every round's so far, or the
    round's own (its ``reward_scope``)."""
    if round.reward_scope == Round.RewardScope.ROUND:
        return [round.campaign_id]
    return sorted(r.campaign_id for r in round_lineage(round=round))
