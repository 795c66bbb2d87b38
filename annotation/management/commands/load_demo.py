"""Load the demo: an admin, two labellers and a realistic ranking campaign; print the logins.

``make demo`` loads first, starts the server and the worker, then runs this again with
``--wait`` so the logins are the last thing on the screen, once the server answers.
``--labels`` also ranks every demo task as both labellers, from the author's judgement of each
completion (``metadata.quality`` in ``annotation/demo/campaign.jsonl``), so the quality pages and
a training round can be tried without labelling 54 tasks by hand first.

The demo campaign becomes round 0 of the RLHF loop with ``manage.py demo_round`` (the training
app's command: this app never imports that one), which ``make demo`` runs after this.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from annotation import services
from annotation.models import Assignment, Campaign, Completion
from config.celery import app

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo"
CAMPAIGN_NAME = "Demo: helpful answers, round 0"
SMALL_CAMPAIGN_NAME = "Demo: three answers each"
DEMO_CAMPAIGNS = (CAMPAIGN_NAME, SMALL_CAMPAIGN_NAME)
ACCOUNTS = [
    ("admin", "demo-admin", True),
    ("alice", "demo-alice", False),
    ("bob", "demo-bob", False),
]


class Command(BaseCommand):
    help = "Create the demo accounts and campaigns (idempotent); --wait prints the logins."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000/", help="URL to print")
        parser.add_argument(
            "--labels",
            action="store_true",
            help="rank every demo task as alice and bob, from the author's judgements",
        )
        parser.add_argument(
            "--wait",
            type=float,
            default=0,
            metavar="SECONDS",
            help="wait up to this long for URL/healthz to answer, then print the logins",
        )

    def handle(self, *args, url: str, wait: float, labels: bool = False, **options) -> None:
        if wait:  # after the server was started: nothing to load, only the logins to print
            deadline = time.monotonic() + wait
            self._wait_for(url, deadline)
            self._wait_for_worker(deadline)
            self.stdout.write("")
            self.stdout.write(self.style.SUCCESS(f"Demo ready at {url}"))
            for username, password, staff in ACCOUNTS:
                role = "admin   " if staff else "labeller"
                self.stdout.write(f"  {role}  {username} / {password}")
            self.stdout.write("Ctrl+C stops the server and the worker.")
        else:
            self._load_all()
            self.stdout.write("demo campaigns and accounts loaded")
            if labels:
                count = self._label_all()
                self.stdout.write(f"{count} demo rankings added (alice and bob)")

    def _wait_for(self, url: str, deadline: float) -> None:
        health = url.rstrip("/") + "/healthz"
        while True:
            try:
                with urllib.request.urlopen(health, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise CommandError(f"{health} did not answer in time")
            time.sleep(0.25)

    def _wait_for_worker(self, deadline: float) -> None:
        """Until a Celery worker answers a ping, so its start-up lines come before the logins."""
        while not app.control.ping(timeout=1.0):
            if time.monotonic() > deadline:
                raise CommandError("no Celery worker answered in time")

    @transaction.atomic
    def _load_all(self) -> None:
        users = {}
        User = get_user_model()
        for username, password, staff in ACCOUNTS:
            user, created = User.objects.get_or_create(
                username=username, defaults={"is_staff": staff, "is_superuser": staff}
            )
            if created:
                user.set_password(password)
                user.save(update_fields=["password"])
            users[username] = user
        campaign = Campaign.objects.filter(name=CAMPAIGN_NAME).first()
        if campaign is None:
            campaign = services.campaign_create(
                created_by=users["admin"],
                name=CAMPAIGN_NAME,
                description="Rank four answers per prompt by correctness and helpfulness.",
                completions_per_task=4,
                overlap=2,
                allow_ties=True,
                allow_fail=True,
            )
            # The demo file mixes 3- and 4-completion prompts; this campaign takes the 4s,
            # a second one the 3s, so both N are on show.
            lines = (DEMO_DIR / "campaign.jsonl").read_bytes().splitlines()
            self._load(campaign, lines, 4, users)
            small = services.campaign_create(
                created_by=users["admin"],
                name=SMALL_CAMPAIGN_NAME,
                description="The same guidelines, three completions per prompt.",
                completions_per_task=3,
                overlap=2,
            )
            self._load(small, lines, 3, users)

    def _load(self, campaign: Campaign, lines: list[bytes], n: int, users: dict) -> None:
        chosen = [
            line for line in lines if line.strip() and len(json.loads(line)["completions"]) == n
        ]
        services.campaign_import(
            campaign=campaign, data=b"\n".join(chosen), filename="demo/campaign.jsonl"
        )
        services.campaign_add_members(campaign=campaign, users=[users["alice"], users["bob"]])
        services.guideline_publish(
            campaign=campaign,
            text=(DEMO_DIR / "guidelines.md").read_text(encoding="utf-8"),
            created_by=users["admin"],
        )
        services.campaign_set_status(campaign=campaign, status=Campaign.Status.ACTIVE)

    @transaction.atomic
    def _label_all(self) -> int:
        """Rank every open demo task as alice and bob (what is already ranked stays)."""
        User = get_user_model()
        count = 0
        for campaign in Campaign.objects.filter(name__in=DEMO_CAMPAIGNS).order_by("pk"):
            guideline = campaign.guidelines.order_by("-version").first()
            for username in ("alice", "bob"):
                user = User.objects.get(username=username)
                if guideline is not None:
                    services.guideline_acknowledge(user=user, guideline=guideline)
                while task := services.task_assign_next(labeller=user, campaign=campaign):
                    services.ranking_submit(
                        labeller=user,
                        assignment=task,
                        items=demo_ranking(task, second=username == "bob"),
                        time_spent_ms=20_000 + 997 * (count % 30),
                    )
                    count += 1
        return count


QUALITY_ORDER = {"good": 0, "ok": 1, "poor": 2}
"""The author's judgements, best first; ``fail`` completions are marked F."""


def demo_ranking(assignment: Assignment, *, second: bool) -> list[dict]:
    """A labeller's ranking of a demo task from the author's judgement of each completion:
    good before ok before poor, fail marked F (where the campaign allows F, else last). Equal
    judgements are ordered as the file lists them, by the ``second`` labeller the other way
    round, and the first ties the two the author marked ``near_tie`` (where ties are allowed):
    the labellers agree on the judgements and differ, as people do, on the near-equal ones.
    The same labels on every machine (no shuffle decides them)."""
    campaign = assignment.campaign
    order = sorted(assignment.display_order)  # the file's order: ids follow the import
    metadata = dict(Completion.objects.filter(pk__in=order).values_list("pk", "metadata"))
    quality = {pk: metadata[pk].get("quality", "ok") for pk in order}
    failed = [pk for pk in order if quality[pk] == "fail" and campaign.allow_fail]
    ranked = sorted(
        (pk for pk in order if pk not in failed),
        key=lambda pk: (QUALITY_ORDER.get(quality[pk], len(QUALITY_ORDER)), -pk if second else pk),
    )
    items, rank, previous = [], 0, None
    for position, pk in enumerate(ranked, 1):
        tied = (
            not second
            and campaign.allow_ties
            and previous is not None
            and metadata[pk].get("near_tie")
            and metadata[previous].get("near_tie")
            and quality[pk] == quality[previous]
        )
        rank = rank if tied else position
        items.append({"completion": pk, "rank": rank})
        previous = pk
    return items + [{"completion": pk, "rank": "F"} for pk in failed]
