"""Celery tasks of the training app: thin callers of the job lifecycle.

``training.tasks.*`` is routed to the ``gpu`` queue (config/celery.py); the maintenance sweep
is named outside that pattern so it runs on ``default``.
"""

from __future__ import annotations

import socket

from celery import shared_task
from django.conf import settings

from training.jobs import lifecycle


@shared_task(
    name="training.tasks.run_training_job",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    time_limit=settings.TRAINING_JOB_TIME_LIMIT_SECONDS + 300,
    soft_time_limit=settings.TRAINING_JOB_TIME_LIMIT_SECONDS,
)
def run_training_job(self, job_id: int) -> str:
    job = lifecycle.job_run(job_id=job_id, worker=self.request.hostname)
    return job.status


@shared_task(name="training.maintenance.fail_stale_jobs", ignore_result=True)
def fail_stale_jobs() -> int:
    """The sweep: fail jobs whose worker died, enqueue jobs the broker did not take."""
    lifecycle.jobs_enqueue_waiting()
    return lifecycle.jobs_fail_stale()


@shared_task(name="training.tasks.worker_info")
def worker_info() -> dict:
    """What the GPU worker runs on: host, torch version and device. Used by health checks."""
    import torch  # torch: the web process imports this module to enqueue

    cuda = torch.cuda.is_available()
    return {
        "worker": socket.gethostname(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda": cuda,
    }
