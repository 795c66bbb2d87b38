"""Celery tasks of the annotation app: thin callers of services."""

from __future__ import annotations

import socket

from celery import shared_task

from annotation import services
from annotation.services import webhooks


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


@shared_task(
    name="annotation.tasks.deliver_webhook",
    bind=True,
    ignore_result=True,
    acks_late=True,
    max_retries=webhooks.MAX_ATTEMPTS - 1,
)
def deliver_webhook(self, delivery_id: int) -> None:
    """POST one webhook delivery; not answered 2xx: again after 10, 20, 40, ... seconds."""
    delivered = webhooks.webhook_deliver(delivery_id=delivery_id)
    if delivered is False and self.request.retries < self.max_retries:
        raise self.retry(countdown=webhooks.RETRY_SECONDS * 2**self.request.retries)
