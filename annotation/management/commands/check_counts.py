"""``manage.py check_counts [--campaign ID] [--repair]``: compare every task's stored counts
with its assignments and rankings, say what disagrees, and with ``--repair`` mend it."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from annotation.services.integrity import task_counts_repair


class Command(BaseCommand):
    help = (
        "Check that each task's active and submitted counts agree with its assignments, and "
        "that every submitted assignment has its ranking; --repair sets them from the rows."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--campaign", type=int, help="only this campaign's tasks")
        parser.add_argument(
            "--repair", action="store_true", help="fix what disagrees (default: only report)"
        )

    def handle(self, *args, campaign: int | None, repair: bool, **options) -> None:
        fixes = task_counts_repair(campaign_id=campaign, repair=repair)
        for fix in fixes:
            self.stdout.write(("repaired " if repair else "differs: ") + str(fix))
        if not fixes:
            self.stdout.write(self.style.SUCCESS("every count agrees with the rows"))
        elif repair:
            self.stdout.write(self.style.SUCCESS(f"{len(fixes)} repaired"))
        else:
            self.stdout.write(self.style.WARNING(f"{len(fixes)} differ; run with --repair"))
            raise SystemExit(1)  # for monitoring: something disagrees and nothing was mended
