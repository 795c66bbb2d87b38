"""Writes for training: creating, running, cancelling and sweeping jobs; registering models.

A job runs inside ``training_job_run`` (called by the thin Celery task on the ``gpu`` queue):
it claims the row, hands plain data to ``training.ml`` with a reporter that stores progress,
metrics, log lines and heartbeats, and on success registers the ModelVersion only after the
ML code has renamed the finished directory into the model store. Failures are stored with
their traceback and re-raised; nothing is swallowed.

Locks: the TrainingJob row (``SELECT ... FOR UPDATE``) while its status changes.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import close_old_connections, connections, transaction
from django.utils import timezone

from annotation.errors import Conflict, InvalidInput
from training.models import JobMetric, ModelVersion, TrainingJob

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 200


# --- Model versions -----------------------------------------------------------------------------


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
    """Where a job's model goes: ``MODEL_STORE_DIR/<kind>-<job id>``."""
    return Path(settings.MODEL_STORE_DIR) / f"{job.kind}-{job.pk:06d}"


# --- Creating and cancelling --------------------------------------------------------------------


def training_job_create(
    *,
    kind: str,
    params: dict[str, Any],
    created_by: AbstractBaseUser | None,
    campaign_id: int | None = None,
    base_model: ModelVersion | None = None,
) -> TrainingJob:
    """Create a queued job and enqueue it on the ``gpu`` queue once the transaction commits."""
    from training.tasks import run_training_job

    if kind not in TrainingJob.Kind.values:
        raise InvalidInput(f"unknown kind {kind!r}", field="kind")
    with transaction.atomic():
        job = TrainingJob.objects.create(
            kind=kind,
            params=params,
            created_by=created_by,
            campaign_id=campaign_id,
            base_model=base_model,
        )
        transaction.on_commit(lambda: _enqueue(job.pk, run_training_job))
    return job


CONFIG_CLASSES: dict[str, str] = {
    TrainingJob.Kind.REWARD_MODEL: "training.ml.config.RewardModelConfig",
}


def _check_config(kind: str, config: dict[str, Any]) -> None:
    """Refuse unknown or invalid hyper-parameters before anything is queued."""
    from importlib import import_module

    dotted = CONFIG_CLASSES.get(kind)
    if dotted is None:
        return
    module, name = dotted.rsplit(".", 1)
    try:
        getattr(import_module(module), name).from_dict(config)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(str(exc), field="config") from None


def training_job_create_from_form(
    *,
    created_by: AbstractBaseUser | None,
    kind: str,
    campaign_ids: list[int],
    name: str = "",
    base_model_version: ModelVersion | None = None,
    base_model_path: str = "",
    reference_model_version: ModelVersion | None = None,
    ties: bool = False,
    fail_policy: str = "drop",
    config: dict[str, Any] | None = None,
) -> TrainingJob:
    """Validate what an admin asked for (API or dashboard form) and queue the job."""
    from annotation.models import Ranking
    from training import runners  # noqa: F401 - registers the runners

    if kind not in RUNNERS:
        raise InvalidInput(f"jobs of kind {kind!r} cannot run yet", field="kind")
    config = config or {}
    _check_config(kind, config)
    if base_model_version is not None and base_model_path:
        raise InvalidInput(
            "give base_model_version or base_model_path, not both", field="base_model_path"
        )
    if base_model_version is not None and base_model_version.kind == ModelVersion.Kind.REWARD:
        raise InvalidInput("start from a base or policy model", field="base_model_version")
    if not Ranking.objects.filter(campaign_id__in=campaign_ids).exists():
        raise InvalidInput("these campaigns have no rankings yet", field="campaign_ids")
    params = {
        "campaign_ids": campaign_ids,
        "ties": ties,
        "fail_policy": fail_policy,
        "config": config,
        "name": name,
    }
    if base_model_path:
        params["base_model_path"] = base_model_path
    if reference_model_version is not None:
        params["reference_model_version"] = reference_model_version.pk
    return training_job_create(
        kind=kind,
        params=params,
        created_by=created_by,
        campaign_id=campaign_ids[0] if len(campaign_ids) == 1 else None,
        base_model=base_model_version,
    )


def _enqueue(job_id: int, task) -> None:
    result = task.apply_async(args=[job_id], queue="gpu")
    TrainingJob.objects.filter(pk=job_id, celery_task_id="").update(celery_task_id=result.id)


@transaction.atomic
def training_job_cancel(*, job: TrainingJob) -> TrainingJob:
    """Cancel a job: a queued one at once, a running one at its next step (cooperative)."""
    job = TrainingJob.objects.select_for_update().get(pk=job.pk)
    if job.finished:
        raise Conflict(f"the job already {job.status}", code="job_finished")
    if job.status == TrainingJob.Status.QUEUED:
        job.status = TrainingJob.Status.CANCELLED
        job.finished_at = timezone.now()
        job.cancel_requested = True
        job.save(update_fields=["status", "finished_at", "cancel_requested"])
        if job.celery_task_id:
            task_id = job.celery_task_id
            transaction.on_commit(lambda: _revoke(task_id))
        return job
    job.cancel_requested = True
    job.save(update_fields=["cancel_requested"])
    return job


def _revoke(task_id: str) -> None:
    from config.celery import app

    try:
        app.control.revoke(task_id)
    except Exception:
        logger.warning("could not revoke Celery task %s", task_id, exc_info=True)


def training_job_retry(*, job: TrainingJob, created_by: AbstractBaseUser | None) -> TrainingJob:
    """A new job with the same kind and parameters as a failed or cancelled one."""
    if job.status not in (TrainingJob.Status.FAILED, TrainingJob.Status.CANCELLED):
        raise Conflict("only failed or cancelled jobs can be retried", code="job_not_retryable")
    return training_job_create(
        kind=job.kind,
        params={**job.params, "retry_of": job.pk},
        created_by=created_by,
        campaign_id=job.campaign_id,
        base_model=job.base_model,
    )


def training_jobs_fail_stale(*, now: datetime | None = None) -> int:
    """Mark running jobs whose worker stopped sending heartbeats as failed, with the reason.

    A worker killed outright (SIGKILL, the machine lost) cannot report; this sweep (Celery beat,
    on the default queue) makes sure its job does not stay "running" for ever.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.TRAINING_HEARTBEAT_TIMEOUT_SECONDS)
    count = 0
    stale = TrainingJob.objects.filter(
        status=TrainingJob.Status.RUNNING, heartbeat_at__lt=cutoff
    ).values_list("pk", flat=True)
    for job_id in stale:
        with transaction.atomic():
            job = TrainingJob.objects.select_for_update().get(pk=job_id)
            if job.status != TrainingJob.Status.RUNNING or (
                job.heartbeat_at and job.heartbeat_at >= cutoff
            ):
                continue
            job.status = TrainingJob.Status.FAILED
            job.error = (
                f"the worker {job.worker or '?'} stopped responding: no heartbeat since "
                f"{job.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC (it was probably killed). "
                "Retry the job to run it again."
            )
            job.finished_at = now
            job.save(update_fields=["status", "error", "finished_at"])
            count += 1
    return count


# --- Running ------------------------------------------------------------------------------------


class JobReporter:
    """What the ML code is given: progress, metrics, log lines, cancellation, heartbeats.

    ``on_progress(step, total, metrics)`` stores a JobMetric row and the progress;
    ``should_stop()`` reads the cancel flag at most once a second; a background thread
    refreshes the heartbeat while a long step (loading a model, say) runs.
    """

    def __init__(self, job: TrainingJob, *, heartbeat_seconds: float | None = None) -> None:
        self.job_id = job.pk
        self.lines: collections.deque[str] = collections.deque(
            job.log_tail.splitlines()[-LOG_TAIL_LINES:], maxlen=LOG_TAIL_LINES
        )
        self._cancel = False
        self._checked_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat_seconds = heartbeat_seconds or settings.TRAINING_HEARTBEAT_SECONDS
        self._thread = threading.Thread(target=self._beat, name=f"job-{job.pk}-heartbeat")
        self._last_flush = 0.0

    def __enter__(self) -> JobReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()

    def _beat(self) -> None:
        try:
            while not self._stop.wait(self._heartbeat_seconds):
                TrainingJob.objects.filter(pk=self.job_id).update(heartbeat_at=timezone.now())
        finally:
            connections.close_all()

    def log(self, message: str) -> None:
        stamp = timezone.now().strftime("%H:%M:%S")
        with self._lock:
            for line in str(message).splitlines() or [""]:
                self.lines.append(f"{stamp} {line}")
        if time.monotonic() - self._last_flush > 2.0:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            text = "\n".join(self.lines)
        self._last_flush = time.monotonic()
        TrainingJob.objects.filter(pk=self.job_id).update(
            log_tail=text, heartbeat_at=timezone.now()
        )

    def on_progress(self, step: int, total: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if _finite_number(v)}
        JobMetric.objects.create(job_id=self.job_id, step=step, values=clean)
        TrainingJob.objects.filter(pk=self.job_id).update(
            progress_step=step, progress_total=total, heartbeat_at=timezone.now()
        )

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._cancel and now - self._checked_at >= 1.0:
            self._checked_at = now
            self._cancel = TrainingJob.objects.filter(
                pk=self.job_id, cancel_requested=True
            ).exists()
        return self._cancel


def _finite_number(value: Any) -> bool:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return number == number and abs(number) != float("inf")


class _LogToReporter(logging.Handler):
    def __init__(self, reporter: JobReporter) -> None:
        super().__init__(level=logging.INFO)
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.reporter.log(f"{record.levelname} {record.name}: {record.getMessage()}")


@dataclass
class JobOutcome:
    """What a runner returns: the model it wrote (if any) and a summary.

    ``version`` holds the keyword arguments of :func:`model_version_register`; the row is
    created in the same transaction that marks the job succeeded, after the directory is in
    place, so no ModelVersion ever points at a partial directory.
    """

    version: dict[str, Any] | None = None
    summary: dict[str, Any] = field(default_factory=dict)


Runner = Callable[[TrainingJob, JobReporter], JobOutcome]
RUNNERS: dict[str, Runner] = {}


def runner(kind: str) -> Callable[[Runner], Runner]:
    def register(function: Runner) -> Runner:
        RUNNERS[kind] = function
        return function

    return register


def _claim(job_id: int, *, worker: str, device: str) -> TrainingJob | None:
    """Mark the job running; None when it must not run (finished, cancelled, or given up)."""
    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().get(pk=job_id)
        if job.finished:
            return None
        now = timezone.now()
        if job.cancel_requested:
            job.status = TrainingJob.Status.CANCELLED
            job.finished_at = now
            job.save(update_fields=["status", "finished_at"])
            return None
        notes = []
        if job.status == TrainingJob.Status.RUNNING:
            # The message came back: the worker that ran it died (acks_late + reject on loss).
            notes.append(f"attempt {job.attempts} died with its worker ({job.worker or '?'})")
            if job.attempts >= settings.TRAINING_MAX_ATTEMPTS:
                job.status = TrainingJob.Status.FAILED
                job.error = (
                    f"gave up after {job.attempts} attempts: each died with its worker "
                    f"(last: {job.worker or '?'})"
                )
                job.finished_at = now
                job.save(update_fields=["status", "error", "finished_at"])
                return None
        job.status = TrainingJob.Status.RUNNING
        job.attempts += 1
        job.worker = worker
        job.device = device
        job.started_at = job.started_at or now
        job.heartbeat_at = now
        if notes:
            job.log_tail = "\n".join([job.log_tail, *notes]).strip()
        job.save(
            update_fields=[
                "status",
                "attempts",
                "worker",
                "device",
                "started_at",
                "heartbeat_at",
                "log_tail",
            ]
        )
        return job


def training_job_run(*, job_id: int, worker: str | None = None) -> TrainingJob:
    """Run a job to its end: succeeded, failed (traceback stored, exception re-raised) or
    cancelled. Safe to call again for a finished job (it returns at once)."""
    from training.ml.device import device_name, pick_device
    from training.ml.reward_model import TrainingCancelled

    device = device_name(pick_device(None))
    job = _claim(job_id, worker=worker or socket.gethostname(), device=device)
    if job is None:
        return TrainingJob.objects.get(pk=job_id)
    run = RUNNERS.get(job.kind)
    handler: logging.Handler | None = None
    ml_logger = logging.getLogger("training")
    with JobReporter(job) as reporter:
        handler = _LogToReporter(reporter)
        ml_logger.addHandler(handler)
        try:
            if run is None:
                raise NotImplementedError(f"no runner for job kind {job.kind!r}")
            reporter.log(f"started {job.kind} on {job.worker} ({device}), attempt {job.attempts}")
            outcome = run(job, reporter)
        except TrainingCancelled:
            reporter.log("cancelled")
            _finish(job_id, status=TrainingJob.Status.CANCELLED)
        except BaseException as exc:
            reporter.log(f"failed: {exc!r}")
            close_old_connections()
            _finish(job_id, status=TrainingJob.Status.FAILED, error=traceback.format_exc())
            raise
        else:
            reporter.log("succeeded")
            _finish(
                job_id,
                status=TrainingJob.Status.SUCCEEDED,
                version=outcome.version,
                summary=outcome.summary,
            )
        finally:
            ml_logger.removeHandler(handler)
    return TrainingJob.objects.get(pk=job_id)


def _finish(
    job_id: int,
    *,
    status: str,
    error: str = "",
    version: dict[str, Any] | None = None,
    summary: dict | None = None,
) -> None:
    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().get(pk=job_id)
        if version is not None:
            version = model_version_register(job=job, **version)
        job.status = status
        job.error = error[-20_000:]
        job.finished_at = timezone.now()
        job.result_version = version
        if summary is not None:
            job.summary = summary
        job.save(update_fields=["status", "error", "finished_at", "result_version", "summary"])
