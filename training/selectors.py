"""Reads for training. The API restricts all of them to admins."""

from __future__ import annotations

from django.db.models import QuerySet

from annotation.errors import NotFound
from training.models import JobMetric, ModelVersion, TrainingJob


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
