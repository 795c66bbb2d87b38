"""A job's life: create → enqueue → claim → run → finish, and cancel, retry, sweep.

``job_create`` checks the request through its kind (:data:`training.jobs.KINDS`), stores the
Spec and, once the transaction commits, enqueues the job on the ``gpu`` queue. The row is the
outbox: a job the broker did not take (it was down) keeps an empty ``celery_task_id`` and the
reason in ``enqueue_error``, shows as "waiting for the queue", and the sweep enqueues it again.

``job_run`` (called by the thin Celery task) claims the row, runs the kind with a reporter that
stores progress, metrics, log lines and heartbeats, and on success registers the ModelVersion
only after the ML code has renamed the finished directory into the model store.

Every run is fenced. A claim draws a new ``attempt_token``; the reporter's writes and the
final record are made only while the row still holds that token, so an attempt that lost the
job (its message was redelivered to another worker after the broker's visibility timeout, say)
is refused and stops at its next check instead of writing metrics or registering a model. A
redelivery of a job whose heartbeat is still advancing is dropped; one whose heartbeat has
stopped takes over (the worker that ran it died). Each attempt writes its own directory.

Locks: the TrainingJob row (``SELECT ... FOR UPDATE``) while its status or token changes.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connections, transaction
from django.utils import timezone

from annotation import permissions
from annotation.errors import Conflict, InvalidInput
from annotation.models import Campaign, Team, Webhook
from annotation.services import webhooks
from config.celery import app as celery_app
from training import rounds, selectors, services
from training.jobs import KINDS
from training.jobs.base import JobKind, JobOutcome, JobRequest, RunContext
from training.ml.common import TrainingCancelled
from training.models import JobMetric, ModelVersion, Round, TrainingJob

logger = logging.getLogger(__name__)

RUN_TASK = "training.tasks.run_training_job"
"""The Celery task that runs a job, sent by name (``training.tasks`` imports this module)."""

LOG_TAIL_LINES = 200


class StaleAttempt(TrainingCancelled):
    """This attempt no longer holds the job: another claimed it. Nothing more is written."""


def kind_of(kind: str) -> JobKind:
    try:
        return KINDS[kind]
    except KeyError:
        raise InvalidInput(f"unknown kind {kind!r}", field="kind") from None


# --- Creating -----------------------------------------------------------------------------------


def job_create(kind: str, request: JobRequest, *, from_form: bool = False) -> TrainingJob:
    """Check ``request`` through its kind, store the job and enqueue it once the transaction
    commits. ``from_form``: the API's and the dashboard's job form, which do not create the kinds
    that have their own endpoint (acquisition).

    A job with a ``parent`` (a step of a ``round`` job) is not enqueued: the parent runs it in
    its own process, one step after the other.
    """
    job_kind = kind_of(kind)
    if from_form and not job_kind.created_here:
        raise InvalidInput(f"jobs of kind {kind!r} are not created here", field="kind")
    rnd = request.round
    if rnd is not None and rnd.status == Round.Status.COMPLETED:
        raise Conflict(
            f"round {rnd.number} is completed: its next round has started",
            field="round",
            code="round_completed",
        )
    if rnd is not None and request.parent is None and kind != TrainingJob.Kind.ROUND:
        busy = rounds.round_busy(rnd)
        if busy is not None:
            raise Conflict(
                f"round {rnd.number} is running as job #{busy.pk}: its steps train it; wait for "
                "the job to finish or cancel it",
                field="round",
                code="round_busy",
            )
    with transaction.atomic():
        built = job_kind.build(request)
        spec = dataclasses.replace(built.spec, trackers=tuple(request.trackers))
        team = request.parent.team if request.parent is not None else _team_of(request)
        job = TrainingJob.objects.create(
            kind=kind,
            team=team,
            params=spec.to_params(),
            created_by=request.created_by,
            campaign_id=built.campaign_id,
            base_model=built.base_model,
            round_id=built.round_id,
            parent=request.parent,
        )
        if request.parent is None:
            transaction.on_commit(lambda: enqueue(job.pk))
    return job


def job_plan(kind: str, request: JobRequest) -> dict[str, Any]:
    """The memory plan a job of ``kind`` would be created with (``training.jobs.preflight``),
    without creating it: ``{"kind", "fits", "preflight"}``, fitting or not. The request is
    checked as by :func:`job_create` (its errors raise); nothing is written."""
    from training.jobs.preflight import DoesNotFit

    job_kind = kind_of(kind)
    _team_of(request)
    try:
        with transaction.atomic():
            built = job_kind.build(request)
            transaction.set_rollback(True)  # a check only
    except DoesNotFit as exc:
        return {"kind": kind, "fits": False, "reason": exc.message, "preflight": exc.plan.to_dict()}
    plan = built.spec.preflight
    return {"kind": kind, "fits": bool(plan.get("fits", True)), "preflight": plan}


def _team_of(request: JobRequest) -> Team | None:
    """The team a job belongs to: that of every campaign it reads or writes (a job never mixes
    teams). Whoever asks for it must be allowed to train there (``training.run_training``
    through a trainer role, or everywhere); the models it names must be that team's or shared.
    A job the system starts itself (no ``created_by``) is not checked."""
    campaign_ids = set(request.campaign_ids)
    versions = []
    for item in dataclasses.fields(request):
        value = getattr(request, item.name)
        if isinstance(value, Campaign):
            campaign_ids.add(value.pk)
        elif isinstance(value, Round):
            campaign_ids.add(value.campaign_id)
        elif isinstance(value, ModelVersion):
            versions.append((item.name, value))
    team_ids = set(Campaign.objects.filter(pk__in=campaign_ids).values_list("team_id", flat=True))
    if len(team_ids) > 1:
        raise InvalidInput("the campaigns belong to different teams", field="campaign_ids")
    team = Team.objects.filter(pk__in=team_ids).first()
    user = request.created_by
    if user is None:
        return team
    seen = permissions.campaigns_where(user, permissions.VIEW).filter(pk__in=campaign_ids)
    if seen.count() != len(campaign_ids):
        raise InvalidInput("no such campaign", field="campaign_ids")
    selectors.require_trainer(user=user, team=team)
    for name, version in versions:
        if version.team_id is not None and version.team_id != getattr(team, "pk", None):
            raise InvalidInput("no such model version", field=name)
    return team


def enqueue(job_id: int) -> bool:
    """Hand the job to the broker; on failure keep the reason on the row (the sweep tries
    again). Returns whether the broker took it."""
    if celery_app.conf.task_always_eager:  # CELERY_TASK_ALWAYS_EAGER: run it here
        job_run(job_id=job_id)
        return True
    try:
        result = celery_app.send_task(RUN_TASK, args=[job_id], queue="gpu", retry=False)
    except Exception as exc:  # the broker is unreachable: the row is the outbox
        logger.warning("could not enqueue training job %s: %r", job_id, exc)
        TrainingJob.objects.filter(pk=job_id, celery_task_id="").update(
            enqueue_error=f"{timezone.now():%Y-%m-%d %H:%M:%S} UTC: {exc!r}"[:1000]
        )
        return False
    TrainingJob.objects.filter(pk=job_id, celery_task_id="").update(
        celery_task_id=result.id, enqueue_error=""
    )
    return True


def jobs_enqueue_waiting(*, older_than_seconds: float = 5.0) -> int:
    """Enqueue the queued jobs the broker never took (the outbox sweep). Returns how many."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    waiting = TrainingJob.objects.filter(
        status=TrainingJob.Status.QUEUED,
        celery_task_id="",
        parent__isnull=True,
        cancel_requested=False,
        created_at__lt=cutoff,
    ).values_list("pk", flat=True)
    return sum(enqueue(pk) for pk in list(waiting))


# --- Cancelling, retrying, sweeping -------------------------------------------------------------


@transaction.atomic
def job_cancel(*, job: TrainingJob) -> TrainingJob:
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
    try:
        celery_app.control.revoke(task_id)
    except Exception:
        logger.warning("could not revoke Celery task %s", task_id, exc_info=True)


def job_retry(*, job: TrainingJob, created_by: AbstractBaseUser | None) -> TrainingJob:
    """A new job with the same kind and Spec as a failed or cancelled one."""
    if job.status not in (TrainingJob.Status.FAILED, TrainingJob.Status.CANCELLED):
        raise Conflict("only failed or cancelled jobs can be retried", code="job_not_retryable")
    spec = kind_of(job.kind).spec(job)
    with transaction.atomic():
        new = TrainingJob.objects.create(
            kind=job.kind,
            team=job.team,
            params={**spec.to_params(), "retry_of": job.pk},
            created_by=created_by,
            campaign_id=job.campaign_id,
            base_model=job.base_model,
            round_id=job.round_id,
        )
        transaction.on_commit(lambda: enqueue(new.pk))
    return new


def jobs_fail_stale(*, now: datetime | None = None) -> int:
    """Mark running jobs whose worker stopped sending heartbeats as failed, with the reason.

    A worker killed outright (SIGKILL, the machine lost) cannot report; this sweep (Celery beat,
    on the default queue) makes sure its job does not stay "running" for ever. Failing it takes
    the token away, so the attempt, should it come back, writes nothing.
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
            job.attempt_token = ""
            job.save(update_fields=["status", "error", "finished_at", "attempt_token"])
            count += 1
    return count


# --- The reporter -------------------------------------------------------------------------------


class JobReporter:
    """What the ML code is given: progress, metrics, log lines, cancellation, heartbeats.

    ``on_progress(step, total, metrics)`` stores a JobMetric row and the progress;
    ``should_stop()`` reads the cancel flag (the job's, or its parent's for a step of a chained
    job) at most once a second; a background thread refreshes the heartbeat while a long step
    (loading a model, say) runs. Every write is fenced by the attempt's token: once another
    attempt holds the job, ``on_progress`` raises :class:`StaleAttempt`, ``should_stop()``
    answers true and nothing more is stored.
    """

    def __init__(
        self,
        job: TrainingJob,
        *,
        token: str,
        heartbeat_seconds: float | None = None,
        follow: Callable[[int, int], None] | None = None,
    ) -> None:
        self.job_id = job.pk
        self.token = token
        self.follow = follow
        """told ``(step, total)`` after each step: a chained job's parent follows its step"""
        self._watched = [job.pk] if job.parent_id is None else [job.pk, job.parent_id]
        self.lines: collections.deque[str] = collections.deque(
            job.log_tail.splitlines()[-LOG_TAIL_LINES:], maxlen=LOG_TAIL_LINES
        )
        self.stale = False
        self._cancel = False
        self._checked_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat_seconds = heartbeat_seconds or settings.TRAINING_HEARTBEAT_SECONDS
        self._thread = threading.Thread(target=self._beat, name=f"job-{job.pk}-heartbeat")
        self._last_flush = 0.0
        self.tracked: Any = None
        """the experiment trackers' run (``training.ml.tracking``), when the job asked for any"""

    def __enter__(self) -> JobReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()

    def _mine(self):
        return TrainingJob.objects.filter(pk=self.job_id, attempt_token=self.token)

    def _update(self, **fields) -> bool:
        """Write to the row while this attempt holds it; false (and stale) once it does not."""
        if self.stale:
            return False
        if not self._mine().update(**fields):
            self.stale = True
            logger.warning("job %s: another attempt holds the job; this one stops", self.job_id)
        return not self.stale

    def _beat(self) -> None:
        try:
            while not self._stop.wait(self._heartbeat_seconds):
                if not self._update(heartbeat_at=timezone.now()):
                    return
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
        self._update(log_tail=text, heartbeat_at=timezone.now())

    def on_progress(self, step: int, total: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if _finite_number(v)}
        with transaction.atomic():
            if not self._update(
                progress_step=step, progress_total=total, heartbeat_at=timezone.now()
            ):
                raise StaleAttempt(f"job {self.job_id}: another attempt holds the job")
            JobMetric.objects.create(job_id=self.job_id, step=step, values=clean)
        if self.tracked is not None:
            self.tracked.log(step, clean)
        if self.follow is not None:
            self.follow(step, total)

    def progress(self, step: int, total: int) -> None:
        """Store the progress only (no metrics): a chained job following its current step."""
        if not self._update(progress_step=step, progress_total=total, heartbeat_at=timezone.now()):
            raise StaleAttempt(f"job {self.job_id}: another attempt holds the job")

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._cancel and not self.stale and now - self._checked_at >= 1.0:
            self._checked_at = now
            self._cancel = TrainingJob.objects.filter(
                pk__in=self._watched, cancel_requested=True
            ).exists()
            if not self._mine().exists():
                self.stale = True
        return self._cancel or self.stale


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


# --- Claiming and running -----------------------------------------------------------------------


def _alive(job_id: int, heartbeat_at: datetime | None) -> bool:
    """Whether the attempt that holds a running job still beats: its heartbeat advances within
    two heartbeat periods (a redelivery right after a worker died finds a recent but frozen
    heartbeat, so a recent one alone proves nothing)."""
    if heartbeat_at is None:
        return False
    timeout = timedelta(seconds=settings.TRAINING_HEARTBEAT_TIMEOUT_SECONDS)
    if timezone.now() - heartbeat_at > timeout:
        return False
    deadline = time.monotonic() + min(
        2 * settings.TRAINING_HEARTBEAT_SECONDS + 1, settings.TRAINING_HEARTBEAT_TIMEOUT_SECONDS
    )
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = TrainingJob.objects.filter(pk=job_id).values_list("heartbeat_at", flat=True).first()
        if now is not None and now > heartbeat_at:
            return True
    return False


def _claim(job_id: int, *, worker: str, device: str) -> tuple[TrainingJob, str] | None:
    """Mark the job running under a new attempt token; None when it must not run (finished,
    cancelled, given up, or running elsewhere)."""
    seen = TrainingJob.objects.filter(pk=job_id).values("status", "heartbeat_at").first()
    if seen is None:
        return None
    if seen["status"] == TrainingJob.Status.RUNNING and _alive(job_id, seen["heartbeat_at"]):
        logger.warning("job %s was delivered again while it runs: this delivery is dropped", job_id)
        return None
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
        if job.status == TrainingJob.Status.RUNNING and job.heartbeat_at != seen["heartbeat_at"]:
            return None  # it beat while we looked: alive after all
        notes = []
        if job.status == TrainingJob.Status.RUNNING:
            # The message came back and the attempt's heartbeat stopped: its worker died.
            notes.append(f"attempt {job.attempts} died with its worker ({job.worker or '?'})")
            if job.attempts >= settings.TRAINING_MAX_ATTEMPTS:
                job.status = TrainingJob.Status.FAILED
                job.error = (
                    f"gave up after {job.attempts} attempts: each died with its worker "
                    f"(last: {job.worker or '?'})"
                )
                job.finished_at = now
                job.attempt_token = ""
                job.save(update_fields=["status", "error", "finished_at", "attempt_token"])
                return None
        token = uuid.uuid4().hex
        job.status = TrainingJob.Status.RUNNING
        job.attempts += 1
        job.attempt_token = token
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
                "attempt_token",
                "worker",
                "device",
                "started_at",
                "heartbeat_at",
                "log_tail",
            ]
        )
        return job, token


def job_run(
    *, job_id: int, worker: str | None = None, follow: Callable[[int, int], None] | None = None
) -> TrainingJob:
    """Run a job to its end: succeeded, failed (traceback stored, exception re-raised) or
    cancelled. Safe to call again for a finished job (it returns at once)."""
    from training.ml.device import device_name, pick_device  # torch: the web process creates jobs

    device = device_name(pick_device(None))
    claimed = _claim(job_id, worker=worker or socket.gethostname(), device=device)
    if claimed is None:
        return TrainingJob.objects.get(pk=job_id)
    job, token = claimed
    job_kind = KINDS.get(job.kind)
    ml_logger = logging.getLogger("training")
    with JobReporter(job, token=token, follow=follow) as reporter:
        handler = _LogToReporter(reporter)
        ml_logger.addHandler(handler)
        finish = _Finisher(job_id, token, reporter)
        try:
            if job_kind is None:
                raise NotImplementedError(f"no job kind {job.kind!r}")
            reporter.log(f"started {job.kind} on {job.worker} ({device}), attempt {job.attempts}")
            ctx = RunContext(job=job, reporter=reporter, queue=job_create, run_step=_run_step)
            spec = job_kind.spec(job)
            _open_trackers(job, spec, reporter)
            outcome = job_kind.run(spec, ctx)
            if outcome.version is not None and settings.MODEL_STORE_URL:
                reporter.log(f"uploading the model to {settings.MODEL_STORE_URL}")
                path = services.model_publish(outcome.version["path"])
                outcome.version = {**outcome.version, "path": path}
        except StaleAttempt:
            reporter.log("another attempt holds the job: stopped")
        except TrainingCancelled:
            if reporter.stale:
                logger.warning("job %s: stale attempt stopped", job_id)
            else:
                reporter.log("cancelled")
                finish(status=TrainingJob.Status.CANCELLED)
        except BaseException as exc:
            reporter.log(f"failed: {exc!r}")
            _drop_broken_connections()
            finish(status=TrainingJob.Status.FAILED, error=traceback.format_exc())
            raise
        else:
            reporter.log("succeeded")
            try:
                finish(status=TrainingJob.Status.SUCCEEDED, outcome=outcome)
            except BaseException as exc:  # recording the result failed: nothing was recorded
                reporter.log(f"failed while recording the result: {exc!r}")
                _drop_broken_connections()
                finish(status=TrainingJob.Status.FAILED, error=traceback.format_exc())
                raise
        finally:
            ml_logger.removeHandler(handler)
            if reporter.tracked is not None:
                final = TrainingJob.objects.filter(pk=job_id).values_list("status", flat=True)
                reporter.tracked.close(final.first() or "failed")
    return TrainingJob.objects.get(pk=job_id)


def _open_trackers(job: TrainingJob, spec: Any, reporter: JobReporter) -> None:
    """Start the experiment trackers the job asked for (``trackers``): its metrics go to them
    as they are stored, and where each run is goes on the job (``tracking``)."""
    if not getattr(spec, "trackers", ()):
        return
    from training.ml.tracking import open_trackers

    tracked = open_trackers(
        spec.trackers,
        run_name=f"job-{job.pk}-{job.kind}-attempt-{job.attempts}",
        directory=settings.TRACKING_DIR,
        config={"kind": job.kind, **job.params},
        mlflow_uri=settings.MLFLOW_TRACKING_URI,
        wandb_project=settings.WANDB_PROJECT,
        wandb_mode=settings.WANDB_MODE,
    )
    for note in tracked.notes:
        reporter.log(note)
    reporter.tracked = tracked
    reporter._update(tracking=tracked.links)


def _run_step(step: TrainingJob, follow: Callable[[int, int], None] | None = None) -> TrainingJob:
    """A step of a chained job, run in the parent's process; ``follow(step, total)`` hears its
    progress."""
    parent = TrainingJob.objects.only("worker").get(pk=step.parent_id)
    return job_run(job_id=step.pk, worker=parent.worker, follow=follow)


def _drop_broken_connections() -> None:
    """Before recording a failure, reconnect if the failure broke the database connection.
    (Django's close_old_connections would also close a healthy connection inside an atomic
    block, e.g. a test's, and the failure could then not be recorded.)"""
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and not conn.in_atomic_block and not conn.is_usable():
            conn.close()


def _job_events(job: TrainingJob) -> None:
    """``job.finished`` / ``job.failed`` to the webhooks of the job's campaign (sent once the
    finish commits)."""
    event = {
        TrainingJob.Status.SUCCEEDED: Webhook.Event.JOB_FINISHED,
        TrainingJob.Status.FAILED: Webhook.Event.JOB_FAILED,
    }.get(job.status)
    if event is None or job.campaign_id is None:
        return
    webhooks.webhooks_emit(
        campaign_id=job.campaign_id,
        event=event,
        data={
            "job": job.pk,
            "kind": job.kind,
            "status": job.status,
            "model_version": job.result_version_id,
            "error": job.error.strip().splitlines()[-1] if job.error.strip() else "",
        },
    )


class _Finisher:
    """Record how an attempt ended, only while it still holds the job."""

    def __init__(self, job_id: int, token: str, reporter: JobReporter) -> None:
        self.job_id, self.token, self.reporter = job_id, token, reporter

    def __call__(self, *, status: str, error: str = "", outcome: JobOutcome | None = None) -> None:
        with transaction.atomic():
            job = TrainingJob.objects.select_for_update().get(pk=self.job_id)
            if job.attempt_token != self.token or job.finished:
                self.reporter.stale = True
                logger.warning(
                    "job %s: a stale attempt ended (%s); its result is not recorded",
                    self.job_id,
                    status,
                )
                return
            version: ModelVersion | None = None
            if outcome is not None and outcome.version is not None:
                version = services.model_version_register(job=job, **outcome.version)
            if outcome is not None and outcome.on_success is not None:
                outcome.on_success(job, version)
            job.status = status
            job.error = error[-20_000:]
            job.finished_at = timezone.now()
            job.result_version = version
            fields = ["status", "error", "finished_at", "result_version"]
            if outcome is not None:
                job.summary = outcome.summary
                fields.append("summary")
            job.save(update_fields=fields)
            _job_events(job)
