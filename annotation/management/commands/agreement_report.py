"""Print a campaign's agreement figures and labeller quality table (as the API's agreement/ and
labellers/), each figure with its sample size and 95% bootstrap interval."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from annotation import agreement_figures, exports
from annotation.agreement import Bootstrap
from annotation.agreement_figures import Figure
from annotation.models import Campaign
from config.terminal import Progress


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def figure_line(figure: Figure) -> str:
    """``label: value  95% CI [low, high]  n=... what n counts``."""
    if figure.value is None:
        value = "undefined (no overlap or no variation)"
    elif figure.ci_low is not None and figure.ci_high is not None:
        value = f"{figure.value:.3f}  95% CI [{figure.ci_low:.3f}, {figure.ci_high:.3f}]"
    else:
        value = f"{figure.value:.3f}  no CI (fewer than two tasks to resample)"
    return f"{figure.label}: {value}  n={figure.n:,} {figure.n_of}"


class Command(BaseCommand):
    help = (
        "Print a campaign's agreement figures (pairwise agreement with its form and chance, "
        "Krippendorff's alpha, Kendall's W, Fleiss' kappa) and the labeller quality table."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("campaign", type=int, help="campaign id")
        parser.add_argument(
            "--fail-policy",
            choices=exports.FAIL_POLICIES,
            default="rank_last",
            help="F items: a bottom tier (rank_last, default; F vs F a tie) or left out (drop)",
        )
        parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
        parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
        parser.add_argument(
            "--tasks", type=int, default=0, metavar="N", help="also print the first N tasks"
        )

    def handle(
        self,
        *args,
        campaign: int,
        fail_policy: str,
        resamples: int,
        seed: int,
        tasks: int,
        **options,
    ) -> None:
        target = Campaign.objects.filter(pk=campaign).first()
        if target is None:
            raise CommandError(f"no campaign with id {campaign}")
        if resamples < 0 or tasks < 0:
            raise CommandError("--resamples and --tasks must not be negative")
        bootstrap = Bootstrap(resamples=resamples, seed=seed)
        # On stderr, so the report on stdout stays as it is: a bar on a terminal, lines in a log.
        progress = Progress(self.stderr, total=3, label="agreement report", unit="stage")
        progress.update(0, "reading the rankings")
        inputs = agreement_figures.agreement_inputs(campaign=target, fail_policy=fail_policy)
        progress.update(1, f"campaign figures, {resamples} bootstrap resamples")
        figures = agreement_figures.campaign_figures(inputs, bootstrap=bootstrap)
        progress.update(2, "labeller figures")
        out = self.stdout.write
        out(f"Campaign {target.pk} ({target.name}): agreement")
        out(
            f"  {figures.rankings:,} rankings, {figures.tasks:,} tasks "
            f"({figures.tasks_with_overlap:,} ranked by two or more labellers), "
            f"{figures.labellers:,} labellers"
        )
        out(
            f"  F items: {fail_policy} "
            + ("(a bottom tier; F vs F is a tie)" if fail_policy == "rank_last" else "(left out)")
            + f"; intervals: 95% percentile bootstrap over tasks, {resamples} resamples, "
            f"seed {seed}"
        )
        out("")
        for figure in figures.figures:
            out(f"  {figure_line(figure)}")

        if tasks:
            count, rows = agreement_figures.task_figures(inputs, limit=tasks)
            out("")
            out(f"Per task (first {len(rows)} of {count:,}; one task: no interval)")
            for row in rows:
                parts = [
                    f"{figure.form} {_number(figure.value)} (n={figure.n}, "
                    f"chance {figure.chance:.0%})"
                    for figure in row.pairwise
                ]
                parts.append(
                    f"Kendall's W {_number(row.kendall_w.value)} (n={row.kendall_w.n} labellers)"
                )
                out(f"  task {row.task_id} ({row.rankings} rankings): " + "; ".join(parts))

        table = agreement_figures.labeller_figures(inputs, bootstrap=bootstrap)
        progress.update(3, "done")
        progress.close()
        out("")
        out(
            "Labellers: agreement with the others' leave-one-out consensus (strict pairs, chance "
            "50%), flagged first"
        )
        out(
            f"  {'labeller':<20} {'agreement':>9} {'95% CI':>15} {'n':>7} {'tasks':>6} "
            f"{'shared':>6} {'F rate':>6} {'ties':>6} {'median s':>8} {'z':>6}  flag"
        )
        for row in table:
            figure = row.agreement
            ci = (
                f"[{figure.ci_low:.2f}, {figure.ci_high:.2f}]"
                if figure.ci_low is not None and figure.ci_high is not None
                else "no CI"
            )
            name = f"{row.username or '?'} ({row.labeller_id})"
            out(
                f"  {name:<20} {_number(figure.value):>9} {ci:>15} {figure.n:>7} {row.tasks:>6} "
                f"{row.tasks_with_overlap:>6} {_number(row.fail_rate, 2):>6} "
                f"{_number(row.tie_rate, 2):>6} {_number(row.median_seconds, 1):>8} "
                f"{_number(row.robust_z, 1):>6}  {'FLAGGED' if row.flagged else ''}"
            )
        for row in table:
            if row.flagged:
                out(f"  {row.username or row.labeller_id} flagged: {row.flag_reason}")
