"""Reads for training. The API restricts all of them to admins."""

from __future__ import annotations

from django.db.models import QuerySet

from annotation.errors import NotFound
from training.models import JobMetric, ModelVersion, Round, TrainingJob


def training_job_list() -> QuerySet[TrainingJob]:
    return TrainingJob.objects.select_related("created_by").order_by("-created_at", "-id")


def training_job_get(*, job_id: int) -> TrainingJob:
    job = training_job_list().filter(pk=job_id).first()
    if job is None:
        raise NotFound("training job not found")
    return job


def job_metrics(*, job: TrainingJob, after_step: int | None = None) -> QuerySet[JobMetric]:
    rows = JobMetric.objects.filter(job=job)
    if after_step is not None:
        rows = rows.filter(step__gt=after_step)
    return rows.order_by("step", "id")


def model_version_list(*, kind: str | None = None) -> QuerySet[ModelVersion]:
    versions = ModelVersion.objects.order_by("-created_at", "-id")
    if kind:
        versions = versions.filter(kind=kind)
    return versions


def round_list() -> QuerySet[Round]:
    return Round.objects.select_related(
        "campaign", "next_campaign", "reference", "policy_before", "reward_model", "policy_after"
    ).order_by("-created_at", "-id")


def round_get(*, round_id: int) -> Round:
    rnd = round_list().filter(pk=round_id).first()
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
