"""Publish a campaign's pairs or a model version to the Hugging Face Hub."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from annotation.exports import AGGREGATES, FAIL_POLICIES
from annotation.models import Campaign
from training import hub
from training.models import ModelVersion


class Command(BaseCommand):
    help = (
        "Upload a campaign's pairs (TRL's format, Parquet, ties apart) or a model version to the "
        "Hugging Face Hub: token from HF_HUB_TOKEN (or HF_HUB_TOKEN_FILE), address from "
        "HF_HUB_ENDPOINT (default the public Hub). Needs the train extra (huggingface_hub)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("what", choices=["pairs", "model"])
        parser.add_argument("id", type=int, help="campaign id (pairs) or model version id")
        parser.add_argument("--repo-id", required=True, help="owner/name on the Hub")
        parser.add_argument("--public", action="store_true", help="a public repo (default private)")
        parser.add_argument("--aggregate", choices=AGGREGATES, default="none")
        parser.add_argument("--fail-policy", choices=FAIL_POLICIES, default="drop")

    def handle(self, *args, what: str, id: int, repo_id: str, **options) -> None:
        try:
            if what == "pairs":
                campaign = Campaign.objects.filter(pk=id).first()
                if campaign is None:
                    raise CommandError(f"no campaign with id {id}")
                url = hub.campaign_pairs_publish(
                    campaign=campaign,
                    repo_id=repo_id,
                    aggregate=options["aggregate"],
                    fail_policy=options["fail_policy"],
                    private=not options["public"],
                )
            else:
                version = ModelVersion.objects.filter(pk=id).first()
                if version is None:
                    raise CommandError(f"no model version with id {id}")
                url = hub.model_version_publish(
                    version=version, repo_id=repo_id, private=not options["public"]
                )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"published to {repo_id}: {url}"))
