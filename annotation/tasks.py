"""Celery tasks of the annotation app: thin callers of services."""

from __future__ import annotations

import socket

from celery import shared_task

from annotation import services


@shared_task(name="annotation.tasks.expire_leases", ignore_result=True)
def expire_leases() -> int:
    """Return expired leases to the pool (Celery beat, every LEASE_SWEEP_SECONDS)."""
    return services.assignments_expire()


@shared_task(name="annotation.tasks.ping")
def ping(value: str = "pong") -> dict:
    """A trivial round trip through the broker, used by health checks and tests."""
    return {"value": value, "worker": socket.gethostname()}


@shared_task(name="annotation.tasks.run_import", ignore_result=True, acks_late=True)
def run_import(job_id: int) -> None:
    """Run a large import (services.import_job_run: all or nothing, once)."""
    services.import_job_run(job_id=job_id)
