"""Webhooks: a campaign's events reach a local HTTP server, signed, through the Celery task
(run eagerly here), retried after a failure; registering answers the secret once."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from annotation import services
from annotation.models import Webhook, WebhookDelivery
from annotation.services import webhooks
from config.celery import app
from tests.factories import CampaignFactory, TrainingJobFactory, make_tasks
from training.jobs import lifecycle
from training.models import TrainingJob

pytestmark = pytest.mark.django_db(transaction=True)


class Receiver:
    """A local HTTP server that records every POST; the first ``fail_first`` answer 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[dict] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.received.append({"headers": headers, "body": body})
                failing = len(receiver.received) <= receiver.fail_first
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[str]:
        return [r["headers"]["x-rlhf-event"] for r in self.received]


@pytest.fixture
def eager():
    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


def _rank(campaign, user):
    assignment = services.task_assign_next(labeller=user, campaign=campaign)
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(assignment.display_order)]
    return services.ranking_submit(
        labeller=user, assignment=assignment, items=items, time_spent_ms=5
    ).ranking


def test_submits_reach_the_receiver_signed_with_task_and_campaign_complete(
    eager, admin_user, labeller, other_labeller
):
    campaign = CampaignFactory(completions_per_task=2, overlap=2, created_by=admin_user)
    make_tasks(campaign, 1)
    services.campaign_add_members(campaign=campaign, users=[labeller, other_labeller])
    with Receiver() as receiver:
        hook = webhooks.webhook_create(
            campaign=campaign,
            url=receiver.url,
            events=["ranking.submitted", "task.complete", "campaign.complete"],
            created_by=admin_user,
        )
        first = _rank(campaign, labeller)
        _rank(campaign, other_labeller)
    assert receiver.events() == [
        "ranking.submitted",
        "ranking.submitted",
        "task.complete",
        "campaign.complete",
    ]
    sent = receiver.received[0]
    headers, body = sent["headers"], sent["body"]
    expected = webhooks.signature(hook.secret, headers["x-rlhf-timestamp"], body)
    assert headers["x-rlhf-signature"] == expected
    payload = json.loads(body)
    assert payload["event"] == "ranking.submitted" and payload["campaign"] == campaign.pk
    assert payload["data"]["ranking"] == first.pk
    assert payload["delivery"] == int(headers["x-rlhf-delivery"])
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {"delivered"}


def test_a_failed_delivery_is_retried_with_the_same_delivery_id(eager, admin_user):
    campaign = CampaignFactory(created_by=admin_user)
    job = TrainingJobFactory(campaign=campaign)
    with Receiver(fail_first=2) as receiver:
        webhooks.webhook_create(
            campaign=campaign, url=receiver.url, events=["job.failed"], created_by=admin_user
        )
        job.status = TrainingJob.Status.FAILED
        job.error = "Traceback ...\nRuntimeError: out of memory"
        lifecycle._job_events(job)
    assert len(receiver.received) == 3
    assert len({r["headers"]["x-rlhf-delivery"] for r in receiver.received}) == 1
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("delivered", 3, 204)
    assert json.loads(receiver.received[-1]["body"])["data"]["error"] == (
        "RuntimeError: out of memory"
    )


def test_deliveries_give_up_after_the_last_attempt(eager, admin_user):
    campaign = CampaignFactory(created_by=admin_user)
    with Receiver(fail_first=100) as receiver:
        webhooks.webhook_create(
            campaign=campaign, url=receiver.url, events=["job.finished"], created_by=admin_user
        )
        webhooks.webhooks_emit(campaign_id=campaign.pk, event="job.finished", data={})
    assert len(receiver.received) == webhooks.MAX_ATTEMPTS
    assert WebhookDelivery.objects.get().status == "failed"


def test_api_registers_lists_and_deletes_and_the_hot_path_skips_campaigns_without(
    admin_client, campaign
):
    url = f"/api/campaigns/{campaign.pk}/webhooks/"
    created = admin_client.post(
        url, {"url": "https://example.org/h", "events": ["task.complete"]}, format="json"
    )
    assert created.status_code == 201 and len(created.json()["secret"]) == 64
    assert created["Cache-Control"] == "no-store"
    listed = admin_client.get(url).json()
    assert [h["url"] for h in listed] == ["https://example.org/h"] and "secret" not in listed[0]
    campaign.refresh_from_db()
    assert campaign.webhooks_active
    bad = admin_client.post(url, {"url": "https://x.org", "events": ["nope"]}, format="json")
    assert bad.status_code == 400 and "events[0]" in bad.json()["errors"]
    assert admin_client.delete(f"{url}{created.json()['id']}/").status_code == 204
    campaign.refresh_from_db()
    assert not campaign.webhooks_active and not Webhook.objects.exists()
