"""Import prompts and completions into a campaign from JSONL or CSV, all or nothing."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation import services
from annotation.importing import ImportFailed
from annotation.models import Campaign
from config.terminal import Progress


class Command(BaseCommand):
    help = "Import a JSONL or CSV file into a campaign; errors are printed with line numbers."

    def add_arguments(self, parser) -> None:
        parser.add_argument("campaign", type=int, help="campaign id")
        parser.add_argument("path", type=Path)
        parser.add_argument("--format", choices=["jsonl", "csv"], default=None)

    def handle(self, *args, campaign: int, path: Path, format: str | None, **options) -> None:
        target = Campaign.objects.filter(pk=campaign).first()
        if target is None:
            raise CommandError(f"no campaign with id {campaign}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
        progress = Progress(self.stderr, total=1, label=f"importing {path.name}", unit="file")
        progress.update(0, f"{len(data):,} bytes: checking every line, then storing")
        try:
            result = services.campaign_import(
                campaign=target, data=data, filename=path.name, fmt=format
            )
        except ImportFailed as exc:
            progress.close()
            for error in exc.errors:
                self.stderr.write(f"{path}:{error.line}: {error.field}: {error.message}")
            raise CommandError(f"{exc.count} error(s); nothing was imported") from exc
        progress.update(1, f"{result.tasks} tasks stored")
        progress.close()
        warned = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in result.warnings.items() if n)
        if warned:
            self.stdout.write(f"accepted (the campaign allows them): {warned}")
        self.stdout.write(
            self.style.SUCCESS(
                f"imported {result.prompts} prompts, {result.completions} completions, "
                f"{result.tasks} tasks into campaign {target.pk}"
            )
        )
