"""Webhooks: URLs told about a campaign's events, by a signed JSON POST from a worker.

Events: ``ranking.submitted``, ``task.complete``, ``campaign.complete`` (from ranking submits;
imported rankings send none), ``job.finished``, ``job.failed`` and ``round.needs_review`` (from
the training app, which calls :func:`webhooks_emit`). An event becomes one
:class:`~annotation.models.WebhookDelivery` per webhook that listens, sent once the
transaction that caused it commits (``annotation.tasks.deliver_webhook`` on the ``default``
queue); a delivery that fails (no answer within 10 s, or not a 2xx) is tried again after 10 s,
then 20, 40, 80, 160 (six attempts), then marked failed.

Each POST carries ``X-RLHF-Event``, ``X-RLHF-Delivery`` (the delivery's id: the same on every
retry, so receivers can drop duplicates), ``X-RLHF-Timestamp`` and ``X-RLHF-Signature:
sha256=<hex>``, the HMAC-SHA256 with the webhook's secret of ``<timestamp>.<body>``. The body:
``{"event", "delivery", "campaign", "sent_at", "data"}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from django.contrib.auth.models import AbstractBaseUser as User
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction
from django.utils import timezone

from annotation.errors import InvalidInput
from annotation.models import Campaign, Task, Webhook, WebhookDelivery

DELIVER_TASK = "annotation.tasks.deliver_webhook"
MAX_ATTEMPTS = 6
RETRY_SECONDS = 10
"""the first retry's delay; each later one doubles it"""
TIMEOUT_SECONDS = 10
SIGNATURE_HEADER = "X-RLHF-Signature"


def _refresh_flag(campaign_id: int) -> None:
    active = Webhook.objects.filter(campaign_id=campaign_id, active=True).exists()
    Campaign.objects.filter(pk=campaign_id).update(webhooks_active=active)


@transaction.atomic
def webhook_create(
    *, campaign: Campaign, url: str, events: Sequence[str], created_by: User | None
) -> Webhook:
    """Register ``url`` for ``events`` of ``campaign`` with a new random secret (the caller
    shows it once)."""
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise InvalidInput("must be an http(s) URL", field="url") from None
    unknown = sorted(set(events) - set(Webhook.Event.values))
    if not events or unknown:
        raise InvalidInput(
            f"unknown event(s): {', '.join(unknown)}" if unknown else "name at least one event",
            field="events",
        )
    hook = Webhook.objects.create(
        campaign=campaign,
        url=url,
        events=sorted(set(events)),
        secret=secrets.token_hex(32),
        created_by=created_by,
    )
    _refresh_flag(campaign.pk)
    return hook


@transaction.atomic
def webhook_delete(*, webhook: Webhook) -> None:
    campaign_id = webhook.campaign_id
    webhook.delete()
    _refresh_flag(campaign_id)


def webhooks_emit(*, campaign_id: int, event: str, data: dict[str, Any]) -> list[int]:
    """Record ``event`` for every active webhook of the campaign that listens and send each
    once the current transaction commits; returns the deliveries' ids."""
    hooks = [
        hook
        for hook in Webhook.objects.filter(campaign_id=campaign_id, active=True)
        if event in hook.events
    ]
    if not hooks:
        return []
    deliveries = WebhookDelivery.objects.bulk_create(
        [WebhookDelivery(webhook=hook, event=event, payload=data) for hook in hooks]
    )
    ids = [d.pk for d in deliveries]
    transaction.on_commit(lambda: _enqueue(ids))
    return ids


def _enqueue(ids: list[int]) -> None:
    from config.celery import app

    for delivery_id in ids:
        if app.conf.task_always_eager:  # no broker (tests): run it here, retries included
            app.tasks[DELIVER_TASK].apply(args=[delivery_id])
        else:
            app.send_task(DELIVER_TASK, args=[delivery_id], queue="default")


def ranking_events(*, task: Task, ranking_id: int, labeller_id: int) -> None:
    """The events of a submit on ``task`` (its counts as just written): the ranking, and the
    task's and the campaign's completion when this submit completed them. Called only when the
    campaign has webhooks (``Campaign.webhooks_active``)."""
    campaign_id = task.campaign_id
    webhooks_emit(
        campaign_id=campaign_id,
        event=Webhook.Event.RANKING_SUBMITTED,
        data={"ranking": ranking_id, "task": task.pk, "labeller": labeller_id},
    )
    if task.is_gold or task.submitted_count < task.target_overlap:
        return
    webhooks_emit(
        campaign_id=campaign_id,
        event=Webhook.Event.TASK_COMPLETE,
        data={"task": task.pk, "rankings": task.submitted_count},
    )
    from django.db.models import F

    open_tasks = Task.objects.filter(
        campaign_id=campaign_id, is_gold=False, submitted_count__lt=F("target_overlap")
    )
    if not open_tasks.exists():
        webhooks_emit(
            campaign_id=campaign_id,
            event=Webhook.Event.CAMPAIGN_COMPLETE,
            data={"tasks": Task.objects.filter(campaign_id=campaign_id, is_gold=False).count()},
        )


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 with ``secret`` of ``<timestamp>.<body>``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def webhook_deliver(*, delivery_id: int) -> bool | None:
    """Try one delivery once: True when the receiver answered 2xx, False otherwise (the row
    says why; the caller retries), None when there is nothing to send (delivered already,
    failed for good, or deleted)."""
    delivery = WebhookDelivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDelivery.Status.PENDING:
        return None
    hook = delivery.webhook
    timestamp = str(int(timezone.now().timestamp()))
    body = json.dumps(
        {
            "event": delivery.event,
            "delivery": delivery.pk,
            "campaign": hook.campaign_id,
            "sent_at": timezone.now().isoformat(),
            "data": delivery.payload,
        },
        sort_keys=True,
    ).encode()
    request = urllib.request.Request(
        hook.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "rlhf-annotate-webhooks",
            "X-RLHF-Event": delivery.event,
            "X-RLHF-Delivery": str(delivery.pk),
            "X-RLHF-Timestamp": timestamp,
            SIGNATURE_HEADER: signature(hook.secret, timestamp, body),
        },
    )
    status, error = None, ""
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status, error = exc.code, f"answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        error = f"no answer: {getattr(exc, 'reason', exc)}"
    ok = status is not None and 200 <= status < 300
    delivery.attempts += 1
    delivery.response_status = status
    delivery.error = "" if ok else error
    if ok:
        delivery.status = WebhookDelivery.Status.DELIVERED
        delivery.delivered_at = timezone.now()
    elif delivery.attempts >= MAX_ATTEMPTS:
        delivery.status = WebhookDelivery.Status.FAILED
    delivery.save(update_fields=["attempts", "response_status", "error", "status", "delivered_at"])
    return ok
