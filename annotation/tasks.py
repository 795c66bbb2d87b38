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
