"""Model versions: registering a complete model and where a job writes its own.

Jobs live in :mod:`training.jobs` (one module per kind, and their lifecycle), the online loop's
rounds in :mod:`training.rounds`.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from annotation.errors import InvalidInput
from annotation.models import Team
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
    team: Team | None = None,
) -> ModelVersion:
    """Record a complete model (a directory in the store, a local directory or a hub id). It
    belongs to ``team`` (a job's model: the job's team), or to every team with none."""
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
        team=team if team is not None else (job.team if job is not None else None),
        metrics=metrics or {},
        reward_offset=reward_offset,
        reward_scale=reward_scale,
    )


def model_path(path: str) -> str:
    """A model version's path as a local directory to load: itself, or (a URL of the object
    store) its copy in ``MODEL_STORE_DIR/cache``, downloaded the first time. Workers only."""
    from training.ml.model_store import local_path  # fsspec: not in the web process

    return local_path(path, Path(settings.MODEL_STORE_DIR) / "cache")


def model_publish(local_dir: str) -> str:
    """Where a job's finished model is registered: its local directory, or with
    ``MODEL_STORE_URL`` set, its copy uploaded there (the URL)."""
    if not settings.MODEL_STORE_URL:
        return local_dir
    from training.ml.model_store import upload  # fsspec: not in the web process

    return upload(local_dir, f"{settings.MODEL_STORE_URL}/{Path(local_dir).name}")


def checkpoint_dir(job: TrainingJob) -> Path:
    """Where a job saves its training state while it runs (``checkpoint_every`` in its
    config): ``MODEL_STORE_DIR/checkpoints/<kind>-<job id>``, the same for every attempt (a
    job delivered again after its worker died resumes there) and for the retries of a job
    (the id of the first job of the chain). The trainer removes it once its model is
    published."""
    root, seen = job, {job.pk}
    while (previous := (root.params or {}).get("retry_of")) and previous not in seen:
        seen.add(previous)
        found = TrainingJob.objects.filter(pk=previous).first()
        if found is None or found.kind != job.kind:
            break
        root = found
    return Path(settings.MODEL_STORE_DIR) / "checkpoints" / f"{job.kind}-{root.pk:06d}"


def model_store_dir(job: TrainingJob) -> Path:
    """Where a job's model goes: ``MODEL_STORE_DIR/<kind>-<job id>``, and ``...-<attempt>`` for a
    second attempt, so an attempt that lost the job never overwrites the directory of the one
    that holds it."""
    name = f"{job.kind}-{job.pk:06d}"
    if job.attempts > 1:
        name += f"-{job.attempts}"
    return Path(settings.MODEL_STORE_DIR) / name
