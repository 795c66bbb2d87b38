"""Import existing rankings (from another tool or a public data set), all or nothing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from annotation import importing, services
from annotation.models import Campaign
from annotation.services.imports import NEW_LABELLERS, TASK_OVERLAP
from config.terminal import Progress


class Command(BaseCommand):
    help = (
        "Import rankings from JSONL or CSV into a campaign (or a new one); errors are printed "
        "as FILE:LINE: FIELD: reason and nothing is stored."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "args", nargs="+", metavar="[CAMPAIGN] PATH", help="campaign id (unless --new-campaign)"
        )
        parser.add_argument(
            "--new-campaign",
            metavar="NAME",
            help="create this campaign for the rankings: N from the file, overlap k the most "
            "rankings a task has, ties and F allowed (in the default team, as a draft)",
        )
        parser.add_argument("--format", choices=["jsonl", "csv"], default=None)
        parser.add_argument(
            "--new-labellers",
            choices=NEW_LABELLERS,
            default="inactive",
            help="unknown labellers: create them inactive (default) or refuse the file",
        )
        parser.add_argument(
            "--task-overlap",
            choices=TASK_OVERLAP,
            default="campaign",
            help="campaign: at most the campaign's overlap per task; rankings: each task is "
            "for exactly the labellers who ranked it",
        )
        parser.add_argument(
            "--allow-empty", action="store_true", help="new campaign: accept empty completions"
        )
        parser.add_argument(
            "--allow-identical",
            action="store_true",
            help="new campaign: accept identical completions of one prompt",
        )

    def handle(self, *args: str, **options) -> None:
        name = options["new_campaign"]
        if len(args) != (1 if name else 2):
            raise CommandError("give CAMPAIGN PATH, or --new-campaign NAME PATH")
        path = Path(args[-1])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
        progress = Progress(self.stdout, total=1, label="importing", unit="ranking")

        def on_progress(stage: str, done: int, total: int) -> None:
            progress.total, progress.label = max(1, total), f"importing {stage}"
            progress.update(done)

        try:
            with transaction.atomic():
                campaign = (
                    self._new_campaign(name, data, path, options)
                    if name
                    else self._campaign(args[0])
                )
                result = services.campaign_import_rankings(
                    campaign=campaign,
                    data=data,
                    filename=path.name,
                    fmt=options["format"],
                    new_labellers=options["new_labellers"],
                    task_overlap=options["task_overlap"],
                    on_progress=on_progress,
                )
        except importing.ImportFailed as exc:
            progress.close()
            for error in exc.errors:
                self.stderr.write(f"{path}:{error.line}: {error.field}: {error.message}")
            raise CommandError(f"{exc.count} error(s); nothing was imported") from exc
        progress.close()
        warned = ", ".join(
            f"{n} {what.replace('_', ' ')}" for what, n in result.warnings.items() if n
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"imported {result.rankings} rankings into campaign {campaign.pk}: "
                f"{result.tasks_created} tasks created, {result.tasks_matched} existing, "
                f"{len(result.labellers_created)} labellers created (inactive)"
                + (f"; accepted {warned}" if warned else "")
            )
        )

    def _campaign(self, value: str) -> Campaign:
        campaign = Campaign.objects.filter(pk=int(value) if value.isdigit() else 0).first()
        if campaign is None:
            raise CommandError(f"no campaign with id {value}")
        return campaign

    def _new_campaign(self, name: str, data: bytes, path: Path, options) -> Campaign:
        """A campaign shaped by the file: N from its first ranking, k its busiest task."""
        records = importing.parse_rankings(
            data,
            fmt=options["format"] or importing.detect_format(path.name),
            completions_per_task=_first_count(data, options["format"] or path.suffix),
            max_text_chars=10**9,
            max_bytes=10**12,
            allow_empty=options["allow_empty"],
            allow_identical=options["allow_identical"],
        )
        busiest = max(Counter(r.task_key for r in records).values())
        return services.campaign_create(
            created_by=None,
            name=name,
            description=f"Rankings imported from {path.name}",
            completions_per_task=len(records[0].prompt.completions),
            overlap=busiest,
            allow_empty_completions=options["allow_empty"],
            allow_identical_completions=options["allow_identical"],
        )


def _first_count(data: bytes, fmt: str) -> int:
    """How many completions the file's first ranking has (its N), read before the campaign
    exists; a file whose first line cannot tell is checked against 2 (and refused by line)."""
    import csv
    import io
    import json

    text = data.decode("utf-8", "replace").lstrip("\ufeff")
    try:
        if fmt.endswith("csv"):
            header = next(csv.reader(io.StringIO(text)))
            return sum(1 for c in header if c.strip().startswith("completion_")) or 2
        first = next(line for line in text.split("\n") if line.strip())
        return len(json.loads(first).get("completions") or []) or 2
    except (StopIteration, ValueError, AttributeError, TypeError):
        return 2
