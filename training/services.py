"""Model versions: registering a complete model and where a job writes its own.

Jobs live in :mod:`training.jobs` (one module per kind, and their lifecycle), the online loop's
rounds in :mod:`training.rounds`.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from annotation.errors import InvalidInput
from training.models import ModelVersion, TrainingJob


def model_version_register(
    *,
    kind: str,
    name: str,
    path: str,
    base: str = "",
    parent: ModelVersion | None = None,
    job: TrainingJob | None = None,
    metrics: dict | None = None,
    reward_offset: float | None = None,
    reward_scale: float | None = None,
) -> ModelVersion:
    """Record a complete model (a directory in the store, a local directory or a hub id)."""
    if kind not in ModelVersion.Kind.values:
        raise InvalidInput(f"unknown kind {kind!r}", field="kind")
    if not path.strip():
        raise InvalidInput("is empty", field="path")
    return ModelVersion.objects.create(
        kind=kind,
        name=name,
        path=path,
        base=base,
        parent=parent,
        created_by_job=job,
        metrics=metrics or {},
        reward_offset=reward_offset,
        reward_scale=reward_scale,
    )


def model_store_dir(job: TrainingJob) -> Path:
    """Where a job's model goes: ``MODEL_STORE_DIR/<kind>-<job id>``, and ``...-<attempt>`` for a
    second attempt, so an attempt that lost the job never overwrites the directory of the one
    that holds it."""
    name = f"{job.kind}-{job.pk:06d}"
    if job.attempts > 1:
        name += f"-{job.attempts}"
    return Path(settings.MODEL_STORE_DIR) / name
