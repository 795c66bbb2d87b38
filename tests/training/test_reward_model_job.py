"""Reward-model jobs end to end: campaign rankings → job → trained model → ModelVersion.

The chosen completion of every task contains a marker word, so a working pipeline reaches
held-out accuracy above 0.9 on the tiny model in seconds. One test runs the job in-process (any
database); the other goes through a real Celery worker on the ``gpu`` queue and Redis.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from django.db import connection

from tests.conftest import client_for
from tests.helpers.training import labelled_marker_campaign, start_gpu_worker
from training.jobs import lifecycle
from training.models import JobMetric, ModelVersion, TrainingJob

FAST_CONFIG = {
    "num_epochs": 2,
    "learning_rate": 1e-3,
    "lr_schedule": "cosine",
    "batch_size": 16,
    "max_length": 48,
    "eval_fraction": 0.2,
    "seed": 0,
}


def create_job(admin_user, campaign, tiny_model_dir):
    response = client_for(admin_user).post(
        "/api/training-jobs/",
        {
            "kind": "reward_model",
            "campaign_ids": [campaign.pk],
            "base_model_path": str(tiny_model_dir),
            "config": FAST_CONFIG,
            "name": "marker-rm",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    return TrainingJob.objects.get(pk=response.json()["id"])


def check_finished_job(job: TrainingJob) -> None:
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.progress_step == job.progress_total > 0
    assert job.summary["metrics"]["eval/accuracy"] > 0.9
    assert job.summary["counts"]["train_pairs"] + job.summary["counts"]["eval_pairs"] == 200
    steps = list(JobMetric.objects.filter(job=job).values_list("step", flat=True))
    assert steps == sorted(steps) and len(steps) >= job.progress_total
    assert any("reward/loss" in m.values for m in JobMetric.objects.filter(job=job))
    version = job.result_version
    assert version.kind == ModelVersion.Kind.REWARD and version.created_by_job_id == job.pk
    assert version.reward_scale > 0 and version.metrics["eval/accuracy"] > 0.9
    path = Path(version.path)
    assert (path / "config.json").is_file() and (path / "reward_normalization.json").is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    assert "succeeded" in job.log_tail and job.worker and job.device


@pytest.mark.django_db
def test_reward_model_job_runs_and_registers_a_version(
    admin_user, tiny_model_dir, tmp_path, settings, django_capture_on_commit_callbacks
):
    settings.MODEL_STORE_DIR = tmp_path / "models"
    campaign = labelled_marker_campaign()
    with django_capture_on_commit_callbacks(execute=False):  # no broker in this test
        job = create_job(admin_user, campaign, tiny_model_dir)
    lifecycle.job_run(job_id=job.pk, worker="in-process")
    check_finished_job(job)


@pytest.mark.celery_worker
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL (a real Redis)")
@pytest.mark.skipif(connection.vendor != "postgresql", reason="the worker needs a shared database")
def test_reward_model_job_through_a_real_gpu_queue_worker(
    admin_user, tiny_model_dir, tmp_path, settings
):
    settings.MODEL_STORE_DIR = tmp_path / "models"
    campaign = labelled_marker_campaign()
    worker = start_gpu_worker(tmp_path, "rm-test", threads=2)
    try:
        job = create_job(admin_user, campaign, tiny_model_dir)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            job.refresh_from_db()
            if job.finished:
                break
            assert worker.poll() is None, "the worker died"
            time.sleep(0.5)
        check_finished_job(job)
        assert job.worker.startswith("rm-test@")
        assert job.celery_task_id
    finally:
        worker.terminate()
        worker.wait(timeout=30)
