"""A GPU worker killed in the middle of a training job (SIGKILL) loses nothing.

* The worker's pool child dies: Celery rejects the message back to the queue (acks_late +
  reject_on_worker_lost), a new child runs the job again from scratch, and it succeeds.
* The whole worker dies: nobody can report, so the heartbeat sweep marks the job failed with
  the reason; a retry through the API then succeeds on a new worker.
In both cases no ModelVersion points at a partial directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from tests.conftest import client_for
from tests.helpers.training import labelled_marker_campaign, start_gpu_worker
from training.jobs import lifecycle
from training.models import ModelVersion, TrainingJob

REPO = Path(__file__).resolve().parents[2]
SLOW_CONFIG = {  # long enough to be killed half-way, short enough for CI
    "num_epochs": 8,
    "learning_rate": 1e-3,
    "batch_size": 8,
    "max_length": 32,
    "eval_fraction": 0.2,
}

pytestmark = [
    pytest.mark.celery_worker,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL (a real Redis)"),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="workers need a shared database"),
]


def start_worker(tmp_path: Path, name: str, pool: str) -> subprocess.Popen:
    return start_gpu_worker(tmp_path, name, pool=pool, TRAINING_HEARTBEAT_SECONDS="1")


def wait_for(job: TrainingJob, predicate, seconds: float = 180) -> TrainingJob:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if predicate(job):
            return job
        time.sleep(0.2)
    pytest.fail(f"job {job.pk} stuck: status={job.status} step={job.progress_step}")


def create_job(admin_user, campaign, tiny_model_dir) -> TrainingJob:
    response = client_for(admin_user).post(
        "/api/training-jobs/",
        {
            "kind": "reward_model",
            "campaign_ids": [campaign.pk],
            "base_model_path": str(tiny_model_dir),
            "config": SLOW_CONFIG,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    return TrainingJob.objects.get(pk=response.json()["id"])


def assert_no_partial_versions(tmp_path: Path) -> None:
    for version in ModelVersion.objects.filter(kind="reward"):
        assert (Path(version.path) / "config.json").is_file()
        assert Path(version.path).parent == tmp_path / "models"


def stop(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)


def test_killed_pool_child_requeues_the_job_which_then_succeeds(
    admin_user, tiny_model_dir, tmp_path, settings
):
    settings.MODEL_STORE_DIR = tmp_path / "models"
    campaign = labelled_marker_campaign(tasks=60)
    worker = start_worker(tmp_path, "prefork", pool="prefork")
    try:
        job = create_job(admin_user, campaign, tiny_model_dir)
        job = wait_for(job, lambda j: j.status == "running" and j.progress_step >= 2)
        child = int(subprocess.check_output(["pgrep", "-P", str(worker.pid)]).split()[0])
        os.kill(child, signal.SIGKILL)
        job = wait_for(job, lambda j: j.finished)
        assert job.status == "succeeded", job.error
        assert job.attempts == 2
        assert "died with its worker" in job.log_tail
        assert ModelVersion.objects.filter(created_by_job=job).count() == 1
        assert_no_partial_versions(tmp_path)
    finally:
        stop(worker)


def test_killed_worker_is_marked_failed_and_a_retry_succeeds(
    admin_user, tiny_model_dir, tmp_path, settings
):
    settings.MODEL_STORE_DIR = tmp_path / "models"
    settings.TRAINING_HEARTBEAT_TIMEOUT_SECONDS = 3
    campaign = labelled_marker_campaign(tasks=60)
    worker = start_worker(tmp_path, "doomed", pool="solo")
    try:
        job = create_job(admin_user, campaign, tiny_model_dir)
        job = wait_for(job, lambda j: j.status == "running" and j.progress_step >= 2)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        time.sleep(4)
        assert lifecycle.jobs_fail_stale(now=timezone.now()) == 1
        job.refresh_from_db()
        assert job.status == "failed" and "stopped responding" in job.error
        assert job.result_version is None
        assert not ModelVersion.objects.filter(created_by_job=job).exists()
    finally:
        stop(worker)

    worker = start_worker(tmp_path, "healthy", pool="solo")
    try:
        response = client_for(admin_user).post(f"/api/training-jobs/{job.pk}/retry/")
        assert response.status_code == 201, response.content
        retry = wait_for(TrainingJob.objects.get(pk=response.json()["id"]), lambda j: j.finished)
        assert retry.status == "succeeded", retry.error
        assert retry.params["retry_of"] == job.pk
        assert_no_partial_versions(tmp_path)
    finally:
        stop(worker)
