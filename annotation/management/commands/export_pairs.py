"""Export a campaign's preference pairs as JSONL, to a file or stdout (as the API's pairs/)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation import exports
from annotation.models import Campaign


class Command(BaseCommand):
    help = (
        "Write preference pairs (prompt, chosen, rejected, margin, provenance) as JSONL: every "
        "labeller's pairs as they are, or aggregated per task."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("campaigns", type=int, nargs="+", help="campaign id(s)")
        parser.add_argument(
            "-o", "--output", type=Path, default=None, help="file to write (default: stdout)"
        )
        parser.add_argument(
            "--ties", action="store_true", help="export tied completions as pairs marked tie"
        )
        parser.add_argument(
            "--fail-policy",
            choices=exports.FAIL_POLICIES,
            default="drop",
            help="F items give no pairs (drop, default) or lose to every ranked one (rank_last)",
        )
        parser.add_argument(
            "--aggregate",
            choices=exports.AGGREGATES,
            default="none",
            help="none (default): every labeller's pairs; ranked_pairs, bradley_terry: pairs of "
            "the per-task consensus ranking; majority: per pair the majority direction",
        )

    def handle(
        self,
        *args,
        campaigns: list[int],
        output: Path | None,
        ties: bool,
        fail_policy: str,
        aggregate: str,
        **options,
    ) -> None:
        found = set(Campaign.objects.filter(pk__in=campaigns).values_list("pk", flat=True))
        missing = sorted(set(campaigns) - found)
        if missing:
            raise CommandError(f"no campaign with id {', '.join(map(str, missing))}")
        rows = exports.ranking_rows(campaign_ids=campaigns)
        chunks = exports.pairs_jsonl(
            rows,
            exports.texts_for(rows),
            aggregate=aggregate,
            ties=ties,
            fail_policy=fail_policy,
        )
        count = 0
        if output is None:
            for chunk in chunks:
                count += chunk.count(b"\n")
                self.stdout.write(chunk.decode(), ending="")
        else:
            try:
                with output.open("wb") as file:
                    for chunk in chunks:
                        count += chunk.count(b"\n")
                        file.write(chunk)
            except OSError as exc:
                raise CommandError(f"cannot write {output}: {exc.strerror}") from exc
        where = "stdout" if output is None else str(output)
        self.stderr.write(
            f"wrote {count} pairs ({aggregate}, ties={'yes' if ties else 'no'}, "
            f"fail_policy={fail_policy}) from {len(rows)} rankings to {where}"
        )
