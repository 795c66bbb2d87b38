"""Export a campaign's preference pairs as JSONL, to a file or stdout (as the API's pairs/)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation import exports, pair_formats
from annotation.models import Campaign
from config.terminal import Progress


class Command(BaseCommand):
    help = (
        "Write preference pairs: the project's JSONL (prompt, chosen, rejected, margin, "
        "provenance), or TRL's exact format as JSONL or Parquet (--format trl|parquet, ties in "
        "their own file with --part ties); every labeller's pairs, or aggregated per task."
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
        parser.add_argument(
            "--format",
            choices=pair_formats.FORMATS,
            default="jsonl",
            help="jsonl (default): the project's pairs; trl: TRL's format, JSONL; parquet: TRL's "
            "format, Parquet with a fixed schema (needs -o)",
        )
        parser.add_argument(
            "--style",
            choices=pair_formats.STYLES,
            default=None,
            help="trl/parquet: standard (strings) or conversational (message lists); default: "
            "conversational when a prompt is a chat conversation",
        )
        parser.add_argument(
            "--part",
            choices=pair_formats.PARTS,
            default="pairs",
            help="trl/parquet: the strict pairs (default) or the tie pairs, a file of their own",
        )
        parser.add_argument(
            "--no-rlhf-columns",
            action="store_true",
            help="trl/parquet: leave out the rlhf_* columns",
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
        fmt = options["format"]
        if fmt != "jsonl" and ties:
            raise CommandError("--ties is for --format jsonl: TRL's formats take --part ties")
        if fmt == "parquet" and output is None:
            raise CommandError("--format parquet writes a file: give -o")
        found = set(Campaign.objects.filter(pk__in=campaigns).values_list("pk", flat=True))
        missing = sorted(set(campaigns) - found)
        if missing:
            raise CommandError(f"no campaign with id {', '.join(map(str, missing))}")
        rows = exports.ranking_rows(campaign_ids=campaigns)
        texts = exports.texts_for(rows)
        # As the API reads them: each task's provenance, adjudicated tasks' reviewer rankings.
        adjudicated = exports.adjudicated_rankings(campaign_ids=campaigns)
        selection = {
            "provenance": exports.task_provenance(rows, adjudicated),
            "adjudicated": adjudicated,
        }
        export = {
            "fmt": fmt,
            "style": options["style"] or pair_formats.style_for(rows, texts),
            "part": options["part"],
            "aggregate": aggregate,
            "ties": ties,
            "fail_policy": fail_policy,
            "rlhf_columns": not options["no_rlhf_columns"],
        }
        # On stderr (stdout may be the export): a bar with rate and time left on a terminal.
        progress = Progress(self.stderr, total=len(rows), label="exporting", unit="ranking")
        try:
            chunks = _by_rankings(rows, texts, {**export, **selection}, progress)
            count = 0
            if output is None:
                for chunk in chunks:
                    count += chunk.count(b"\n")
                    self.stdout.write(chunk.decode(), ending="")
            else:
                try:
                    with output.open("wb") as file:
                        for chunk in chunks:
                            count += chunk.count(b"\n") if fmt != "parquet" else 0
                            file.write(chunk)
                except OSError as exc:
                    raise CommandError(f"cannot write {output}: {exc.strerror}") from exc
        except pair_formats.ChatPromptsNeedConversational as exc:
            raise CommandError(str(exc)) from exc
        progress.close()
        where = "stdout" if output is None else str(output)
        counted = f"{count} pairs" if fmt != "parquet" else "the pairs"
        self.stderr.write(
            f"wrote {counted} ({aggregate}, ties={'yes' if ties else 'no'}, "
            f"fail_policy={fail_policy}) from {len(rows)} rankings to {where}"
            + ("" if fmt == "jsonl" else f" in TRL's format ({fmt})")
        )


SLICE = 2_000
"""rankings per slice of a labeller-pairs export (the progress moves once per slice)"""


def _by_rankings(rows, texts, export: dict, progress: Progress):
    """The export's chunks; every labeller's pairs (JSONL formats) are written ``SLICE``
    rankings at a time, so the progress follows the rankings. Aggregates (per task) and Parquet
    (one file) are written at once."""
    if export["aggregate"] != "none" or export["fmt"] == "parquet":
        yield from pair_formats.pair_export(rows, texts, **export)
        progress.update(len(rows))
        return
    for start in range(0, len(rows), SLICE):
        yield from pair_formats.pair_export(rows[start : start + SLICE], texts, **export)
        progress.update(min(len(rows), start + SLICE))
