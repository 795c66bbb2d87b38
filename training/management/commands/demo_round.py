"""``manage.py demo_round``: make the demo campaign (``load_demo``) round 0 of the RLHF loop,
from the default base model, with review thresholds the demo can meet. ``make demo`` runs it
after ``build_tiny_model`` and ``load_demo``; running it again changes nothing."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from annotation.management.commands.load_demo import CAMPAIGN_NAME
from annotation.models import Campaign
from training import rounds
from training.models import Round

DEMO_EVAL_SETTINGS = {"min_held_out_pairs": 18}
"""The demo round's evaluation settings (the rest keep their defaults). Its reward model holds
out 10% of the 27 prompts, 3, whose rankings by two labellers give 18 to 36 pairs (6 per
ranking of 4, 3 when one completion is F, fewer with ties); a round asks for 50 by default,
which the demo can never reach, so its round would always be held for review. A real campaign
should keep 50 or more: an accuracy measured on 18 pairs has a 95% interval about ±0.2 wide."""


class Command(BaseCommand):
    help = "Start round 0 of the RLHF loop on the demo campaign (after load_demo)."

    @transaction.atomic
    def handle(self, *args, **options) -> None:
        campaign = Campaign.objects.filter(name=CAMPAIGN_NAME).first()
        if campaign is None:
            raise CommandError("no demo campaign: run manage.py load_demo first")
        existing = Round.objects.filter(campaign=campaign).first()
        if existing is not None:
            self.stdout.write(f"the demo campaign is round {existing.number} of the RLHF loop")
            return
        policy = rounds.campaign_policy(campaign)
        if policy is None:
            self.stdout.write(
                "no default base model is registered (manage.py build_tiny_model): the demo "
                "campaign gets its round when one is started on the dashboard"
            )
            return
        rnd = rounds.round_start(
            campaign=campaign,
            policy=policy,
            eval_settings=DEMO_EVAL_SETTINGS,
            created_by=campaign.created_by,
        )
        minimum = DEMO_EVAL_SETTINGS["min_held_out_pairs"]
        self.stdout.write(
            f"the demo campaign is round {rnd.number} of the RLHF loop, from {policy.name}; it "
            f"is held for review below {minimum} held-out pairs (the default is 50, more than "
            "the demo's 27 prompts can give)"
        )
