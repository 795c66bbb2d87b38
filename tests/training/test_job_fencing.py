"""A job never runs twice, and a job the broker did not take is not lost.

* Fencing: each claim draws an attempt token; once another attempt holds the job, the old
  one's metrics, log lines and result are refused and it stops.
* A redelivery of a job whose heartbeat still advances is dropped; one whose heartbeat has
  stopped takes over (its worker died).
* End to end: the broker's visibility timeout shorter than the job, two real workers: the
  second gets the message again while the first trains, drops it, and the job runs once (one
  attempt, each step's metrics once, one ModelVersion).
* Broker down: the job is stored as waiting for the queue, the API answers 503 with
  Retry-After, and the sweep enqueues it once the broker answers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
from celery import Celery
from django.db import connection, connections
from django.utils import timezone

from tests.conftest import celery_worker_command, client_for
from tests.helpers.training import labelled_marker_campaign
from training.jobs import lifecycle
from training.jobs.base import JobOutcome
from training.models import JobMetric, ModelVersion, TrainingJob

REPO = Path(__file__).resolve().parents[2]


def needs_workers(test):
    """Real Celery workers: a real Redis and a database they share."""
    for mark in (
        pytest.mark.celery_worker,
        pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL"),
        pytest.mark.skipif(connection.vendor != "postgresql", reason="needs a shared database"),
    ):
        test = mark(test)
    return test


def running_job(**fields) -> tuple[TrainingJob, str]:
    job = TrainingJob.objects.create(
        kind="reward_model", params={"campaign_ids": [1]}, celery_task_id="t", **fields
    )
    claimed = lifecycle._claim(job.pk, worker="worker-a", device="cpu")
    assert claimed is not None
    return claimed


@pytest.mark.django_db
def test_a_stale_attempt_writes_nothing_and_stops():
    job, token = running_job()
    reporter = lifecycle.JobReporter(job, token=token)
    reporter.on_progress(1, 3, {"reward/loss": 0.7})
    assert JobMetric.objects.filter(job=job).count() == 1

    TrainingJob.objects.filter(pk=job.pk).update(attempt_token="another-attempt")
    with pytest.raises(lifecycle.StaleAttempt):
        reporter.on_progress(2, 3, {"reward/loss": 0.6})
    assert reporter.should_stop()
    reporter.log("a line from the stale attempt")
    reporter.flush()
    finish = lifecycle._Finisher(job.pk, token, reporter)
    finish(
        status="succeeded",
        outcome=JobOutcome(version={"kind": "reward", "name": "rm", "path": "/nowhere"}),
    )

    job.refresh_from_db()
    assert JobMetric.objects.filter(job=job).count() == 1
    assert job.status == "running" and job.progress_step == 1
    assert "stale attempt" not in job.log_tail
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_a_redelivery_after_the_worker_died_takes_over(settings):
    settings.TRAINING_HEARTBEAT_SECONDS = 1
    job, token = running_job()
    started = time.monotonic()
    claimed = lifecycle._claim(job.pk, worker="worker-b", device="cpu")
    assert claimed is not None  # the heartbeat did not move: worker-a is dead
    job, new_token = claimed
    assert time.monotonic() - started >= 2  # it watched the heartbeat first
    assert new_token != token and job.attempts == 2 and job.worker == "worker-b"
    assert "attempt 1 died with its worker (worker-a)" in job.log_tail


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="a second connection beats")
def test_a_redelivery_while_the_heartbeat_advances_is_dropped(settings):
    settings.TRAINING_HEARTBEAT_SECONDS = 1
    job, token = running_job()
    stop = threading.Event()

    def beat() -> None:  # worker-a, alive
        try:
            while not stop.wait(0.3):
                TrainingJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now())
        finally:
            connections.close_all()

    thread = threading.Thread(target=beat)
    thread.start()
    try:
        assert lifecycle._claim(job.pk, worker="worker-b", device="cpu") is None
    finally:
        stop.set()
        thread.join()
    job.refresh_from_db()
    assert job.attempts == 1 and job.attempt_token == token and job.worker == "worker-a"


# Long enough to outlast an 8 s visibility timeout plus the second worker's start (~13 s from the
# job's start): 40 epochs took 10 s on a quiet machine, and the job ended before the second
# worker restored the message; 100 take ~25 s there, and a slower machine only adds margin.
LONG_CONFIG = {
    "num_epochs": 100,
    "learning_rate": 1e-3,
    "batch_size": 8,
    "max_length": 32,
    "eval_fraction": 0.2,
}


def start_worker(tmp_path: Path, name: str, log: Path) -> subprocess.Popen:
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "MODEL_STORE_DIR": str(tmp_path / "models"),
        "OMP_NUM_THREADS": "1",
        "CELERY_VISIBILITY_TIMEOUT": "8",
        "TRAINING_HEARTBEAT_SECONDS": "1",
    }
    command = celery_worker_command(queues="gpu", name=name)
    with log.open("w") as out:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


@needs_workers
@pytest.mark.django_db(transaction=True)
def test_a_job_longer_than_the_visibility_timeout_runs_once(
    admin_user, tiny_model_dir, tmp_path, settings
):
    settings.MODEL_STORE_DIR = tmp_path / "models"
    campaign = labelled_marker_campaign(tasks=200)
    logs = {name: tmp_path / f"{name}.log" for name in ("first", "second")}
    workers = {"first": start_worker(tmp_path, "first", logs["first"])}
    second = None
    try:
        response = client_for(admin_user).post(
            "/api/training-jobs/",
            {
                "kind": "reward_model",
                "campaign_ids": [campaign.pk],
                "base_model_path": str(tiny_model_dir),
                "config": LONG_CONFIG,
            },
            format="json",
        )
        assert response.status_code == 201, response.content
        job = TrainingJob.objects.get(pk=response.json()["id"])
        deadline = time.monotonic() + 120
        while job.status != "running" and time.monotonic() < deadline:
            time.sleep(0.2)
            job.refresh_from_db()
        assert job.status == "running", job.status
        # A worker restores unacked messages older than the visibility timeout when it starts
        # (then every 100 s): the second one, started once the message is 8 s old, gets it.
        time.sleep(max(0.0, 9 - (timezone.now() - job.started_at).total_seconds()))
        second = workers["second"] = start_worker(tmp_path, "second", logs["second"])
        deadline = time.monotonic() + 600
        while not job.finished and time.monotonic() < deadline:
            time.sleep(0.5)
            job.refresh_from_db()
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                os.killpg(worker.pid, 15)
                worker.wait(timeout=30)

    assert job.status == "succeeded", job.error
    second_log = logs["second"].read_text()
    assert second is not None and "delivered again while it runs" in second_log, second_log
    assert job.attempts == 1 and job.worker.startswith("first@")
    # One run writes each step's metrics once (training and evaluation figures may share a step,
    # under different keys); a second run would write the same step with the same keys again.
    rows = [(m.step, tuple(sorted(m.values))) for m in JobMetric.objects.filter(job=job)]
    assert rows and len(rows) == len(set(rows))
    versions = ModelVersion.objects.filter(created_by_job=job)
    assert versions.count() == 1
    written = [p.name for p in (tmp_path / "models").iterdir() if not p.name.startswith(".")]
    assert written == [Path(versions.get().path).name]  # one directory: one run wrote it


# --- Broker down --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(port: int, tmp_path: Path) -> subprocess.Popen:
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return server
        time.sleep(0.1)
    server.kill()
    pytest.fail("redis-server did not start")


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")
@pytest.mark.django_db(transaction=True)  # the job commits, then the broker is asked
def test_a_job_created_while_the_broker_is_down_waits_then_is_enqueued(
    admin_user, tmp_path, monkeypatch
):
    port = free_port()
    broker = Celery("broker-down-test", broker=f"redis://127.0.0.1:{port}/0")  # nobody listens
    broker.conf.broker_transport_options = {"socket_connect_timeout": 3, "socket_timeout": 10}
    monkeypatch.setattr(lifecycle, "celery_app", broker)
    campaign = labelled_marker_campaign(tasks=4)
    body = {"kind": "reward_model", "campaign_ids": [campaign.pk]}

    response = client_for(admin_user).post("/api/training-jobs/", body, format="json")
    assert response.status_code == 503, response.content
    assert response["Retry-After"] == "30"
    data = response.json()
    assert data["status"] == "queued" and data["waiting_for_queue"] is True
    assert "broker" in data["detail"] and data["enqueue_error"]
    job = TrainingJob.objects.get(pk=data["id"])
    assert job.celery_task_id == ""
    listed = client_for(admin_user).get(f"/api/training-jobs/{job.pk}/").json()
    assert listed["waiting_for_queue"] is True

    assert lifecycle.jobs_enqueue_waiting(older_than_seconds=0) == 0  # still down
    server = start_redis(port, tmp_path)
    try:
        assert lifecycle.jobs_enqueue_waiting(older_than_seconds=0) == 1
        job.refresh_from_db()
        assert job.celery_task_id and not job.enqueue_error and not job.waiting_for_queue
        queued = redis.Redis(port=port).lrange("gpu", 0, -1)
        assert len(queued) == 1 and str(job.pk).encode() in queued[0]
        assert lifecycle.jobs_enqueue_waiting(older_than_seconds=0) == 0  # only once
    finally:
        server.kill()
        server.wait(timeout=10)
