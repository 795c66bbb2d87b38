"""Agreement and labeller quality of a campaign: the thin layer between the database and the pure
:mod:`annotation.agreement` module, shared by the API and the ``agreement_report`` command.

Reads the campaign's rankings once (:func:`agreement_inputs`), then each figure set is one
function returning plain dataclasses:

* :func:`campaign_figures` — pairwise agreement in every form (each with its chance level),
  Krippendorff's alpha (ordinal on ranks, nominal on pair preferences and on F flags), mean
  Kendall's W and Fleiss' kappa, each a :class:`Figure` with its sample size and a bootstrap
  95% interval over tasks;
* :func:`task_figures` — per task: pairwise agreement (strict and three-way) and Kendall's W;
* :func:`labeller_figures` — per labeller: agreement with the leave-one-out consensus, tasks,
  F rate, tie rate, median time per task, and the flag with its reason; with a
  :class:`GoldTable`, also agreement with the gold references (``gold_agreement``).

Gold tasks are left out of everything above (:func:`annotation.exports.ranking_rows` reads real
tasks only): a gold task is ranked by every labeller, so it would weigh far more than a real
task in inter-labeller agreement, and it measures something else — agreement with a known
answer. :func:`gold_table` compares each labeller's gold rankings with the references instead:
pairwise agreement on strict pairs (the ``strict`` form of the agreement figures, chance 50%),
with n and a bootstrap interval over gold tasks, overall and per block of gold tasks or per
week (drift), a flag when the latest block falls below the campaign's threshold, and the
onboarding outcome.

:func:`campaign_agreement` and :func:`labeller_quality_table` do the reading and one figure set
in one call. No access checks here: callers pass a campaign they were allowed to see.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final, Literal, TypeVar

import numpy as np
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db.models import Count, Max, Sum
from django.utils import timezone

from annotation import agreement, competence, exports
from annotation import strength as strength_rules
from annotation.agreement import (
    CHANCE,
    AgreementForm,
    Bootstrap,
    Estimate,
    FlagRule,
    PairVotes,
    RankingTable,
)
from annotation.models import Campaign, Membership, Ranking, RankingItem, Task
from annotation.pairs import FAIL, FailPolicy, Label

T = TypeVar("T")

FORMS: Final[tuple[AgreementForm, ...]] = ("strict", "three_way", "tie_half")
TASK_FORMS: Final[tuple[AgreementForm, ...]] = ("strict", "three_way")

FORM_LABELS: Final = {
    "strict": "strict form: pairs both labellers ordered strictly",
    "three_way": "three-way form: better / tie / worse must match",
    "tie_half": "tie-half form: a tie against a preference counts 1/2",
}


@dataclass(frozen=True, slots=True)
class Figure:
    """One statistic as displayed: value, sample size, bootstrap interval, and what it means."""

    key: str
    """stable machine name, e.g. ``pairwise_agreement.strict``, ``alpha.ranks``"""
    label: str
    """human-readable name that says the form / level of measurement"""
    value: float | None
    """``None`` when undefined (no overlap, no variation, ...)"""
    n: int
    n_of: str
    """what ``n`` counts"""
    ci_low: float | None
    """95% percentile bootstrap interval over tasks; ``None`` with under two tasks"""
    ci_high: float | None
    form: str | None = None
    """pairwise agreement only: ``strict``, ``three_way`` or ``tie_half``"""
    chance: float | None = None
    """pairwise agreement only: agreement of labellers answering at random in this form"""
    level: str | None = None
    """Krippendorff's alpha only: ``ordinal`` or ``nominal``"""

    @classmethod
    def of(cls, estimate: Estimate, *, key: str, label: str, n_of: str, **extra) -> Figure:
        return cls(
            key=key,
            label=label,
            value=estimate.value,
            n=estimate.n,
            n_of=n_of,
            ci_low=estimate.ci_low,
            ci_high=estimate.ci_high,
            **extra,
        )


@dataclass(frozen=True, slots=True)
class CampaignAgreement:
    """The campaign-wide figures."""

    campaign_id: int
    fail_policy: FailPolicy
    bootstrap: Bootstrap
    rankings: int
    tasks: int
    labellers: int
    tasks_with_overlap: int
    """tasks ranked by at least two labellers: the only ones agreement rests on"""
    pairwise: tuple[Figure, ...]
    """one per form: strict, three_way, tie_half"""
    alpha: tuple[Figure, ...]
    """ordinal on ranks, nominal on pair preferences, nominal on F flags"""
    kendall_w: Figure
    fleiss_kappa: Figure
    strength_alpha: Figure | None = None
    """Krippendorff's alpha (interval) on preference strength, where the campaign asks it"""

    @property
    def figures(self) -> tuple[Figure, ...]:
        return (*self.pairwise, *self.alpha, self.kendall_w, self.fleiss_kappa)


@dataclass(frozen=True, slots=True)
class TaskAgreement:
    """One task's figures. No interval: the bootstrap resamples tasks, and this is one task."""

    task_id: int
    prompt_id: int | None
    rankings: int
    pairwise: tuple[Figure, ...]
    """strict and three_way; n = labeller pairs x completion pairs compared"""
    kendall_w: Figure
    """n = labellers (judges) of the task"""


@dataclass(frozen=True, slots=True)
class LabellerRow:
    """One line of the labeller quality table."""

    labeller_id: int
    username: str
    agreement: Figure
    """agreement with the leave-one-out consensus of the others; n = completion pairs scored"""
    tasks: int
    tasks_with_overlap: int
    fail_rate: float | None
    tie_rate: float | None
    median_seconds: float | None
    robust_z: float | None
    flagged: bool
    """far below the others' consensus, or (with gold) recent gold agreement below threshold"""
    flag_reason: str | None
    gold_agreement: Figure | None = None
    """agreement with the gold references over all their gold tasks (None: no gold table given);
    n = completion pairs compared, both strict"""
    gold_tasks: int = 0
    gold_flagged: bool = False
    competence: float | None = None
    """Dawid-Skene competence on pair preferences (:mod:`annotation.competence`): the fitted
    probability that their answer on a completion pair is the true one"""
    competence_answers: int = 0
    """pair answers on units someone else answered too: what ``competence`` rests on"""


@dataclass(frozen=True, slots=True, eq=False)
class AgreementInputs:
    """A campaign's rankings as the pure module's arrays, read once for every figure set."""

    campaign_id: int
    fail_policy: FailPolicy
    table: RankingTable
    votes: PairVotes
    prompt_of_task: dict[int, int]


def agreement_inputs(
    *, campaign: Campaign, fail_policy: FailPolicy = "rank_last"
) -> AgreementInputs:
    """Read the campaign's rankings (two queries) and build the arrays every figure needs."""
    rows = exports.ranking_rows(campaign_ids=[campaign.pk])
    return inputs_from_rows(rows, campaign_id=campaign.pk, fail_policy=fail_policy)


def inputs_from_rows(
    rows: Sequence[exports.RankingRow], *, campaign_id: int, fail_policy: FailPolicy = "rank_last"
) -> AgreementInputs:
    """The arrays of already-read rows (e.g. a subset of a campaign's rankings)."""
    table = agreement.ranking_table(exports.ranking_records(rows))
    return AgreementInputs(
        campaign_id=campaign_id,
        fail_policy=fail_policy,
        table=table,
        votes=agreement.pair_votes(table, fail_policy=fail_policy),
        prompt_of_task={row.task_id: row.prompt_id for row in rows},
    )


PAIRS_COMPARED: Final = "labeller pairs x completion pairs compared"
DEFAULT_BOOTSTRAP: Final = Bootstrap()
DEFAULT_RULE: Final = FlagRule()


def campaign_figures(
    inputs: AgreementInputs, *, bootstrap: Bootstrap = DEFAULT_BOOTSTRAP
) -> CampaignAgreement:
    """Every campaign-wide figure (see the module docstring); intervals resample the same tasks."""
    table, votes, policy = inputs.table, inputs.votes, inputs.fail_policy
    pairwise = []
    for form in FORMS:
        result = agreement.pairwise_agreement(votes, form=form, bootstrap=bootstrap)
        pairwise.append(
            Figure.of(
                result.estimate,
                key=f"pairwise_agreement.{form}",
                label=f"pairwise agreement ({FORM_LABELS[form]}; chance {result.chance:.0%})",
                n_of=PAIRS_COMPARED + (" (both strict)" if form == "strict" else ""),
                form=form,
                chance=result.chance,
            )
        )
    alpha = (
        Figure.of(
            agreement.alpha_ranks(table, fail_policy=policy, bootstrap=bootstrap),
            key="alpha.ranks",
            label="Krippendorff's alpha, ordinal, on ranks (mid-ranks)",
            n_of="(task, completion) units with two or more labels",
            level="ordinal",
        ),
        Figure.of(
            agreement.alpha_pairs(votes, bootstrap=bootstrap),
            key="alpha.pair_preferences",
            label="Krippendorff's alpha, nominal, on pair preferences (better / tie / worse)",
            n_of="(task, completion pair) units with two or more answers",
            level="nominal",
        ),
        Figure.of(
            agreement.alpha_fail_flags(table, bootstrap=bootstrap),
            key="alpha.fail_flags",
            label="Krippendorff's alpha, nominal, on F flags (ranked / F)",
            n_of="(task, completion) units with two or more labellers",
            level="nominal",
        ),
    )
    judges = np.bincount(table.ranking_task, minlength=table.n_tasks)
    return CampaignAgreement(
        campaign_id=inputs.campaign_id,
        fail_policy=policy,
        bootstrap=bootstrap,
        rankings=len(table.ranking_ids),
        tasks=table.n_tasks,
        labellers=len(table.labeller_ids),
        tasks_with_overlap=int((judges >= 2).sum()),
        pairwise=tuple(pairwise),
        alpha=alpha,
        kendall_w=Figure.of(
            agreement.mean_kendall_w(table, fail_policy=policy, bootstrap=bootstrap),
            key="kendall_w",
            label="Kendall's W with tie correction, mean over tasks (random rankings: 1/m)",
            n_of="tasks where W is defined",
        ),
        fleiss_kappa=Figure.of(
            agreement.fleiss_kappa_pairs(votes, bootstrap=bootstrap),
            key="fleiss_kappa",
            label="Fleiss' kappa on pair preferences (better / tie / worse)",
            n_of="(task, completion pair) units with two or more answers",
        ),
    )


def task_figures(
    inputs: AgreementInputs, *, offset: int = 0, limit: int | None = None
) -> tuple[int, list[TaskAgreement]]:
    """(number of tasks, figures of the tasks ``offset`` to ``offset + limit`` by task id)."""
    table, votes = inputs.table, inputs.votes
    total = table.n_tasks
    end = total if limit is None else min(total, offset + limit)
    page = slice(offset, end)
    judges = np.bincount(table.ranking_task, minlength=total)[page]
    w = agreement.kendall_w_per_task(table, fail_policy=inputs.fail_policy)[page]
    by_form = {
        form: agreement.agreement_by_task(_page_votes(votes, page), form=form)
        for form in TASK_FORMS
    }
    results = []
    for index, task_id in enumerate(table.task_ids[page].tolist()):
        pairwise = []
        for form in TASK_FORMS:
            agree, compared = by_form[form][index]
            pairwise.append(
                Figure(
                    key=f"pairwise_agreement.{form}",
                    label=f"pairwise agreement ({FORM_LABELS[form]}; chance {CHANCE[form]:.0%})",
                    value=float(agree / compared) if compared > 0 else None,
                    n=int(compared),
                    n_of=PAIRS_COMPARED,
                    ci_low=None,
                    ci_high=None,
                    form=form,
                    chance=CHANCE[form],
                )
            )
        results.append(
            TaskAgreement(
                task_id=task_id,
                prompt_id=inputs.prompt_of_task.get(task_id),
                rankings=int(judges[index]),
                pairwise=tuple(pairwise),
                kendall_w=Figure(
                    key="kendall_w",
                    label="Kendall's W with tie correction",
                    value=float(w[index]) if math.isfinite(w[index]) else None,
                    n=int(judges[index]),
                    n_of="labellers",
                    ci_low=None,
                    ci_high=None,
                ),
            )
        )
    return total, results


def _page_votes(votes: PairVotes, page: slice) -> PairVotes:
    return PairVotes(
        slot_pairs=votes.slot_pairs,
        answers=votes.answers,
        counts=votes.counts[page],
        fail_policy=votes.fail_policy,
    )


def labeller_figures(
    inputs: AgreementInputs,
    *,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    rule: FlagRule = DEFAULT_RULE,
    gold: GoldTable | None = None,
) -> list[LabellerRow]:
    """The labeller quality table, flagged labellers first, then by agreement (lowest first).

    With ``gold`` every row gains its gold agreement, and a labeller flagged by the gold rule
    is flagged here too (the reasons joined); labellers who ranked only gold tasks get a row
    with no consensus agreement.
    """
    rows = _consensus_rows(inputs, bootstrap=bootstrap, rule=rule)
    return rows if gold is None else merge_gold(rows, gold)


def _consensus_rows(
    inputs: AgreementInputs, *, bootstrap: Bootstrap, rule: FlagRule
) -> list[LabellerRow]:
    """Each labeller's agreement with the others' consensus, ordered as the table is."""
    quality = agreement.labeller_quality(inputs.table, inputs.votes, rule=rule, bootstrap=bootstrap)
    usernames = _usernames([q.labeller_id for q in quality])
    fitted = {c.labeller_id: c for c in labeller_competence(inputs).labellers}
    rows = [
        LabellerRow(
            labeller_id=q.labeller_id,
            username=usernames.get(q.labeller_id, ""),
            agreement=Figure.of(
                q.agreement,
                key="agreement_with_consensus",
                label="agreement with the others' leave-one-out consensus (strict pairs; "
                "chance 50%)",
                n_of="completion pairs scored",
                form="strict",
                chance=CHANCE["strict"],
            ),
            tasks=q.tasks,
            tasks_with_overlap=q.tasks_with_overlap,
            fail_rate=q.fail_rate,
            tie_rate=q.tie_rate,
            median_seconds=q.median_seconds,
            robust_z=q.robust_z,
            flagged=q.flagged,
            flag_reason=q.flag_reason,
            competence=_finite(fitted[q.labeller_id].competence)
            if q.labeller_id in fitted
            else None,
            competence_answers=fitted[q.labeller_id].answers if q.labeller_id in fitted else 0,
        )
        for q in quality
    ]
    return _table_order(rows)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def labeller_competence(inputs: AgreementInputs) -> competence.DawidSkene:
    """Dawid-Skene on every labeller's answer on every completion pair of their tasks (units:
    (task, completion pair); answers as the agreement figures count them, F by the fail
    policy)."""
    answers = inputs.votes.answers
    rankings, pairs = np.nonzero(answers != agreement.NO_ANSWER)
    items = inputs.table.ranking_task[rankings] * max(answers.shape[1], 1) + pairs
    labellers = inputs.table.labeller_ids[inputs.table.ranking_labeller[rankings]]
    return competence.dawid_skene(
        list(
            zip(items.tolist(), labellers.tolist(), answers[rankings, pairs].tolist(), strict=True)
        )
    )


@dataclass(frozen=True, slots=True)
class KappaCell:
    labeller_a: int
    username_a: str
    labeller_b: int
    username_b: str
    kappa: Figure
    tasks: int


@dataclass(frozen=True, slots=True)
class KappaMatrix:
    """Cohen's kappa on pair preferences for every two labellers with a task in common."""

    campaign_id: int
    fail_policy: FailPolicy
    bootstrap: Bootstrap
    labellers: tuple[tuple[int, str], ...]
    """(id, username) of the labellers in the matrix, in id order"""
    pairs: tuple[KappaCell, ...]


def kappa_matrix(
    *,
    campaign: Campaign,
    fail_policy: FailPolicy = "drop",
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
) -> KappaMatrix:
    """Cohen's kappa per labeller pair on pair preferences, each with n and a bootstrap
    interval over tasks (cached): :func:`annotation.agreement.pairwise_kappa`."""

    def compute() -> KappaMatrix:
        inputs = agreement_inputs(campaign=campaign, fail_policy=fail_policy)
        pairs = agreement.pairwise_kappa(inputs.table, inputs.votes, bootstrap=bootstrap)
        ids = inputs.table.labeller_ids.tolist()
        names = _usernames(ids)
        return KappaMatrix(
            campaign_id=campaign.pk,
            fail_policy=fail_policy,
            bootstrap=bootstrap,
            labellers=tuple((pk, names.get(pk, "")) for pk in ids),
            pairs=tuple(
                KappaCell(
                    labeller_a=p.labeller_a,
                    username_a=names.get(p.labeller_a, ""),
                    labeller_b=p.labeller_b,
                    username_b=names.get(p.labeller_b, ""),
                    kappa=Figure.of(
                        p.kappa,
                        key="cohen_kappa",
                        label="Cohen's kappa on pair preferences (better / tie / worse)",
                        n_of="(task, completion pair) units both answered",
                    ),
                    tasks=p.tasks,
                )
                for p in pairs
            ),
        )

    return cached(campaign, "kappa", (fail_policy, bootstrap), compute)


def merge_gold(rows: Sequence[LabellerRow], gold: GoldTable) -> list[LabellerRow]:
    """The consensus rows with each labeller's gold agreement (and gold flag) added, plus a row
    for each labeller who ranked gold tasks only."""
    gold_rows = {row.labeller_id: row for row in gold.rows}
    known = {row.labeller_id for row in rows}
    only_gold = sorted(gold_rows.keys() - known)
    usernames = _usernames(only_gold)
    merged = [*rows, *(_gold_only_row(pk, usernames.get(pk, "")) for pk in only_gold)]
    return _table_order([_with_gold(row, gold_rows.get(row.labeller_id)) for row in merged])


def usernames(ids: Iterable[int]) -> dict[int, str]:
    """User id -> username, in one query."""
    return _usernames(list(ids))


def task_agreement_by_id(
    *, campaign: Campaign, fail_policy: FailPolicy = "rank_last"
) -> dict[int, tuple[float | None, int, float | None]]:
    """Task id -> (strict agreement, labeller pairs x completion pairs it rests on, three-way
    agreement) of every real task, for the review queue and the task list (cached)."""

    def compute() -> dict[int, tuple[float | None, int, float | None]]:
        _, figures = task_figures(agreement_inputs(campaign=campaign, fail_policy=fail_policy))
        result = {}
        for figure in figures:
            forms = {f.form: f for f in figure.pairwise}
            result[figure.task_id] = (
                forms["strict"].value,
                forms["strict"].n,
                forms["three_way"].value,
            )
        return result

    return cached(campaign, "tasks", (fail_policy,), compute)


def _usernames(ids: Sequence[int]) -> dict[int, str]:
    if not ids:
        return {}
    users = get_user_model().objects.filter(pk__in=list(ids))
    return dict(users.values_list("pk", "username"))


def _table_order(rows: list[LabellerRow]) -> list[LabellerRow]:
    """Flagged labellers first, then the lowest agreement first (undefined last), then id."""
    return sorted(
        rows,
        key=lambda row: (
            not row.flagged,
            math.inf if row.agreement.value is None else row.agreement.value,
            row.labeller_id,
        ),
    )


def campaign_agreement(
    *,
    campaign: Campaign,
    fail_policy: FailPolicy = "rank_last",
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
) -> CampaignAgreement:
    """The campaign-wide figures of ``campaign`` (cached: :func:`cached`)."""

    def compute() -> CampaignAgreement:
        rows = exports.ranking_rows(campaign_ids=[campaign.pk])
        figures = campaign_figures(
            inputs_from_rows(rows, campaign_id=campaign.pk, fail_policy=fail_policy),
            bootstrap=bootstrap,
        )
        if campaign.strength_scale == "none":
            return figures
        levels = exports.ranking_strengths(campaign_ids=[campaign.pk])
        return replace(
            figures,
            strength_alpha=strength_alpha(
                rows, levels, scale=campaign.strength_scale, bootstrap=bootstrap
            ),
        )

    return cached(campaign, "campaign", (fail_policy, bootstrap), compute)


def strength_alpha(
    rows: Sequence[exports.RankingRow],
    levels: Mapping[int, tuple[str, Sequence[int]]],
    *,
    scale: str,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
) -> Figure:
    """Krippendorff's alpha, interval, on preference strength: each (task, completion pair) a
    unit, each labeller's answer on it a signed value (:func:`annotation.strength.signed_value`:
    0 a tie, the sign the direction, the size how much better), with a bootstrap interval over
    tasks. Only labellers who gave a strength (and pairs without F) count."""
    by_task: dict[int, list[exports.RankingRow]] = defaultdict(list)
    for row in rows:
        by_task[row.task_id].append(row)
    top = max(strength_rules.LEVELS.get(scale, (0,))) + (1 if scale == "llama2" else 0)
    domain = np.arange(-top, top + 1, dtype=np.float64)
    units: list[list[dict[float, int]]] = []
    for task_rows in by_task.values():
        ids = sorted({c for row in task_rows for c in row.items})
        task_units = []
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                answers: dict[float, int] = defaultdict(int)
                for row in task_rows:
                    judged = levels.get(row.ranking_id)
                    value = strength_rules.signed_value(
                        row.items, judged[1] if judged else None, a, b, scale=scale
                    )
                    if value is not None:
                        answers[value] += 1
                task_units.append(answers)
        units.append(task_units)
    width = max((len(u) for u in units), default=0)
    counts = np.zeros((len(units), max(width, 1), len(domain)))
    for t, task_units in enumerate(units):
        for u, answers in enumerate(task_units):
            for value, count in answers.items():
                counts[t, u, int(value + top)] = count
    estimate = agreement.alpha_estimate(counts, domain, level="interval", bootstrap=bootstrap)
    return Figure.of(
        estimate,
        key="alpha.strength",
        label="Krippendorff's alpha, interval, on preference strength (signed: tie 0, "
        "the size how much better)",
        n_of="(task, completion pair) units with two or more strengths",
        level="interval",
    )


def strict_agreement_at_a_glance(*, campaign: Campaign) -> Figure | None:
    """Strict pairwise agreement without an interval, for lists of campaigns (cached, so a page
    listing many large campaigns does not recompute each one on every load)."""

    def compute() -> Figure | None:
        figures = campaign_figures(agreement_inputs(campaign=campaign), bootstrap=NO_BOOTSTRAP)
        return next((f for f in figures.pairwise if f.form == "strict"), None)

    return cached(campaign, "strict", (), compute)


NO_BOOTSTRAP: Final = Bootstrap(resamples=0)

CACHE_SECONDS = 24 * 3600
"""How long cached figures live (their key changes with the data anyway)."""


def cached(campaign: Campaign, name: str, params: tuple, compute: Callable[[], T]) -> T:
    """``compute()``, kept in the cache until the campaign's agreement inputs change.

    Figures over a campaign's rankings cost seconds at 100k rankings (bootstrap intervals
    over tasks; bench/README.md, "Agreement from the database"), so each figure set is
    computed once per version of its inputs (:func:`_rankings_version`: a new or removed
    ranking, a change of gold tasks) and parameters (``params``, frozen dataclasses and
    strings: their ``repr`` is the key). The version costs one indexed aggregate query. The
    cache failing (Redis down) only costs the recomputation.
    """
    key = ":".join(
        ["agreement", name, str(campaign.pk), _rankings_version(campaign), *map(repr, params)]
    )
    digest = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()  # keys stay short
    try:
        hit = cache.get(f"agreement:{digest}")
    except Exception:
        hit = None
    if hit is not None:
        return hit[0]
    value = compute()
    with contextlib.suppress(Exception):
        cache.set(f"agreement:{digest}", (value,), CACHE_SECONDS)
    return value


def _rankings_version(campaign: Campaign) -> str:
    """Changes whenever the campaign's agreement inputs change: its rankings (count, newest id
    and the sum of their versions, which an edit raises) and which of its tasks are gold."""
    rankings = Ranking.objects.filter(campaign=campaign).aggregate(
        n=Count("id"), last=Max("id"), versions=Sum("version")
    )
    gold = Task.objects.filter(campaign=campaign, is_gold=True).order_by("id")
    digest = hashlib.blake2b(
        ",".join(map(str, gold.values_list("id", flat=True))).encode(), digest_size=8
    ).hexdigest()
    return f"{rankings['n']}.{rankings['last']}.{rankings['versions']}.{digest}"


def labeller_quality_table(
    *,
    campaign: Campaign,
    fail_policy: FailPolicy = "rank_last",
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    rule: FlagRule = DEFAULT_RULE,
    gold: GoldTable | None = None,
) -> list[LabellerRow]:
    """The labeller quality table of ``campaign``, with the gold agreement column (from
    ``gold``, else read here). The consensus part is cached (:func:`cached`); the gold part,
    which also depends on the references and each labeller's onboarding, is read each time
    (gold tasks are few)."""
    rows = cached(
        campaign,
        "labellers",
        (fail_policy, bootstrap, rule),
        lambda: _consensus_rows(
            agreement_inputs(campaign=campaign, fail_policy=fail_policy),
            bootstrap=bootstrap,
            rule=rule,
        ),
    )
    if gold is None:
        gold = gold_table(campaign=campaign, fail_policy=fail_policy, bootstrap=bootstrap)
    return merge_gold(rows, gold)


# --------------------------------------------------------------------------------------------------
# The trend: the figures over the rankings up to the end of each day
# --------------------------------------------------------------------------------------------------

TREND_POINTS = 20
"""At most this many days on the trend (evenly spread, the last always included)."""
TREND_RESAMPLES = 200
"""Bootstrap resamples per trend point (fewer than the headline figures: 20 points)."""
TREND_KEYS: Final = (
    "pairwise_agreement.strict",
    "pairwise_agreement.three_way",
    "alpha.ranks",
    "kendall_w",
)


@dataclass(frozen=True, slots=True)
class TrendPoint:
    """The campaign figures over its rankings up to the end of ``date``."""

    date: str
    rankings: int
    tasks_with_overlap: int
    figures: dict[str, Figure]


def agreement_trend(
    *, campaign: Campaign, fail_policy: FailPolicy = "rank_last"
) -> list[TrendPoint]:
    """The trend of the headline figures, one point per day with rankings (cached)."""
    return cached(
        campaign, "trend", (fail_policy,), lambda: _trend(campaign, fail_policy=fail_policy)
    )


def _trend(campaign: Campaign, *, fail_policy: FailPolicy) -> list[TrendPoint]:
    rows = exports.ranking_rows(campaign_ids=[campaign.pk])
    created = dict(Ranking.objects.filter(campaign=campaign).values_list("id", "created_at"))
    bootstrap = Bootstrap(resamples=TREND_RESAMPLES)
    points = []
    for cutoff in _trend_cutoffs(list(created.values())):
        subset = [row for row in rows if created[row.ranking_id] < cutoff]
        if not subset:
            continue
        figures = campaign_figures(
            inputs_from_rows(subset, campaign_id=campaign.pk, fail_policy=fail_policy),
            bootstrap=bootstrap,
        )
        by_key = {f.key: f for f in figures.figures}
        points.append(
            TrendPoint(
                date=(cutoff - timedelta(days=1)).date().isoformat(),
                rankings=len(subset),
                tasks_with_overlap=figures.tasks_with_overlap,
                figures={key: by_key[key] for key in TREND_KEYS if key in by_key},
            )
        )
    return points


def _trend_cutoffs(created: list[datetime]) -> list[datetime]:
    """Ends of the days with rankings (at most TREND_POINTS of them, evenly spread, the last
    always included): the trend is the figures over the rankings up to each cutoff."""
    days = sorted({timezone.localtime(at).date() for at in created})
    if len(days) > TREND_POINTS:
        step = (len(days) - 1) / (TREND_POINTS - 1)
        days = [days[round(i * step)] for i in range(TREND_POINTS)]
    zone = timezone.get_current_timezone()
    return [
        datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=zone) for day in days
    ]


# --------------------------------------------------------------------------------------------------
# Gold tasks: agreement with the reference rankings
# --------------------------------------------------------------------------------------------------

GOLD_KEY: Final = "gold_agreement"
GOLD_LABEL: Final = "agreement with the gold reference rankings (strict pairs; chance 50%)"
GOLD_N_OF: Final = "completion pairs compared (labeller and reference both strict)"

DriftBy = Literal["block", "week"]


@dataclass(frozen=True, slots=True)
class GoldRule:
    """When a labeller's gold agreement is reported as too low."""

    threshold: float = 0.7
    """agreement with the references below which the latest block is flagged (the campaign's
    ``onboarding_threshold``)"""
    block: int = 10
    """gold tasks per block of the drift series; the flag looks at the latest ``block``"""
    min_tasks: int = 5
    """gold tasks in the latest block before a labeller can be flagged"""


@dataclass(frozen=True, slots=True)
class GoldPoint:
    """One point of a labeller's gold agreement over time."""

    label: str
    """``gold tasks 1-10`` (blocks, in the order ranked) or ``2026-W47`` (ISO weeks)"""
    start: datetime
    """when the first ranking of the point was submitted"""
    end: datetime
    tasks: int
    agreement: Figure


@dataclass(frozen=True, slots=True)
class GoldRow:
    """One labeller's agreement with the gold references."""

    labeller_id: int
    username: str
    agreement: Figure
    """over all their gold tasks; interval by bootstrap over those tasks"""
    tasks: int
    drift: tuple[GoldPoint, ...]
    latest: Figure
    """over their latest ``rule.block`` gold tasks: what the flag looks at"""
    onboarding: str
    """``off`` (campaign without onboarding), ``in_progress``, ``passed`` or ``failed``"""
    onboarding_agreement: float | None
    flagged: bool
    flag_reason: str | None


@dataclass(frozen=True, slots=True)
class GoldTable:
    campaign_id: int
    gold_tasks: int
    """gold tasks in the campaign"""
    rankings: int
    """rankings of gold tasks"""
    fail_policy: FailPolicy
    bootstrap: Bootstrap
    rule: GoldRule
    drift_by: DriftBy
    rows: tuple[GoldRow, ...]
    """flagged first, then by agreement, lowest first"""


@dataclass(frozen=True, slots=True)
class OnboardingResult:
    gold_tasks: int
    """gold tasks ranked, at most the campaign's ``onboarding_gold_tasks``"""
    agreement: Estimate
    """over those, without an interval"""


def _gold_figure(estimate: Estimate) -> Figure:
    return Figure.of(
        estimate,
        key=GOLD_KEY,
        label=GOLD_LABEL,
        n_of=GOLD_N_OF,
        form="strict",
        chance=CHANCE["strict"],
    )


def gold_estimate(
    rankings: Sequence[tuple[int, Mapping[int, Label]]],
    references: Mapping[int, Mapping[int, Label]],
    *,
    fail_policy: FailPolicy = "rank_last",
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
) -> Estimate:
    """Agreement of one labeller's gold rankings ``(task id, labels)`` with the references.

    The labeller and the reference are two raters of each gold task and the figure is the
    pairwise agreement in the ``strict`` form (:func:`annotation.agreement.pairwise_agreement`):
    the share of completion pairs both ordered strictly that they order the same way; n = such
    pairs; the interval resamples the gold tasks. Rankings of tasks without a reference are
    ignored.
    """
    records = [
        agreement.RankingRecord(ranking_id=i + 1, task_id=task_id, labeller_id=1, items=items)
        for i, (task_id, items) in enumerate(rankings)
        if task_id in references
    ]
    records += [
        agreement.RankingRecord(
            ranking_id=0, task_id=task_id, labeller_id=0, items=references[task_id]
        )
        for task_id in sorted({r.task_id for r in records})
    ]
    if not records:
        return Estimate(value=None, n=0, ci_low=None, ci_high=None)
    table = agreement.ranking_table(records)
    votes = agreement.pair_votes(table, fail_policy=fail_policy)
    return agreement.pairwise_agreement(votes, form="strict", bootstrap=bootstrap).estimate


def task_strict_agreement(
    rankings: Sequence[Mapping[int, Label]], *, fail_policy: FailPolicy = "rank_last"
) -> tuple[float | None, int]:
    """(agreement, pairs compared) of one task's rankings: the share of (labeller pair,
    completion pair) comparisons where both ordered the pair strictly and the same way; None
    when no such comparison exists (fewer than two rankings, or only ties). The adaptive-overlap
    rule of :func:`annotation.services.ranking_submit`."""
    if len(rankings) < 2:
        return None, 0
    records = [
        agreement.RankingRecord(ranking_id=i + 1, task_id=1, labeller_id=i + 1, items=items)
        for i, items in enumerate(rankings)
    ]
    table = agreement.ranking_table(records)
    votes = agreement.pair_votes(table, fail_policy=fail_policy)
    agree, compared = agreement.agreement_by_task(votes, form="strict")[0]
    return (float(agree / compared) if compared > 0 else None), int(compared)


def _first_gold_rankings(
    *, campaign_id: int, labeller_id: int, limit: int
) -> list[tuple[int, dict[int, Label]]]:
    """(task id, labels) of the labeller's first ``limit`` gold rankings in the campaign."""
    firsts = list(
        Ranking.objects.filter(campaign_id=campaign_id, labeller_id=labeller_id, task__is_gold=True)
        .order_by("id")
        .values_list("id", "task_id")[:limit]
    )
    items: dict[int, dict[int, Label]] = defaultdict(dict)
    for ranking_id, completion_id, rank, failed in RankingItem.objects.filter(
        ranking_id__in=[ranking_id for ranking_id, _ in firsts]
    ).values_list("ranking_id", "completion_id", "rank", "failed"):
        items[ranking_id][completion_id] = FAIL if failed else rank
    return [(task_id, items[ranking_id]) for ranking_id, task_id in firsts]


def onboarding_result(*, campaign: Campaign, labeller_id: int, gold_tasks: int) -> OnboardingResult:
    """The labeller's agreement with the references over their first ``gold_tasks`` gold
    rankings (fewer if they have not ranked that many). Three queries, no interval."""
    rankings = _first_gold_rankings(
        campaign_id=campaign.pk, labeller_id=labeller_id, limit=gold_tasks
    )
    references = exports.gold_references(campaign_ids=[campaign.pk])
    estimate = gold_estimate(
        rankings, references, fail_policy="rank_last", bootstrap=Bootstrap(resamples=0)
    )
    return OnboardingResult(gold_tasks=len(rankings), agreement=estimate)


def _iso_week(at: datetime) -> str:
    year, week, _ = at.isocalendar()
    return f"{year}-W{week:02d}"


def _drift(
    mine: Sequence[exports.RankingRow],
    created: Mapping[int, datetime],
    references: Mapping[int, Mapping[int, Label]],
    *,
    by: DriftBy,
    block: int,
    fail_policy: FailPolicy,
    bootstrap: Bootstrap,
) -> tuple[GoldPoint, ...]:
    """The labeller's gold agreement per block of ``block`` gold tasks (in the order ranked;
    the last block may be shorter) or per ISO week of submission."""
    groups: dict[str, list[exports.RankingRow]] = {}
    if by == "week":
        for row in mine:
            groups.setdefault(_iso_week(created[row.ranking_id]), []).append(row)
    else:
        for first in range(0, len(mine), block):
            rows = list(mine[first : first + block])
            groups[f"gold tasks {first + 1}-{first + len(rows)}"] = rows
    points = []
    for label, rows in groups.items():
        estimate = gold_estimate(
            [(r.task_id, r.items) for r in rows],
            references,
            fail_policy=fail_policy,
            bootstrap=bootstrap,
        )
        points.append(
            GoldPoint(
                label=label,
                start=created[rows[0].ranking_id],
                end=created[rows[-1].ranking_id],
                tasks=len(rows),
                agreement=_gold_figure(estimate),
            )
        )
    return tuple(points)


def _onboarding_state(
    campaign: Campaign,
    membership: Membership | None,
    mine: Sequence[exports.RankingRow],
    references: Mapping[int, Mapping[int, Label]],
) -> tuple[str, float | None]:
    """What :func:`onboarding_result` would say, from the labeller's rows already read
    (oldest first, as the onboarding takes them)."""
    needed = campaign.onboarding_gold_tasks
    if needed == 0:
        return "off", None
    if membership is not None and membership.onboarding_passed_at is not None:
        return "passed", membership.onboarding_agreement
    first = [(r.task_id, r.items) for r in mine[:needed]]
    value = gold_estimate(first, references, bootstrap=Bootstrap(resamples=0)).value
    if len(first) < needed and len(mine) < len(references):  # gold left for them to rank
        return "in_progress", value
    if value is not None and value >= campaign.onboarding_threshold:
        return "passed", value
    return "failed", value


def gold_table(
    *,
    campaign: Campaign,
    fail_policy: FailPolicy = "rank_last",
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    rule: GoldRule | None = None,
    drift_by: DriftBy = "block",
) -> GoldTable:
    """Every labeller's agreement with the gold references: overall, over time, their latest
    block (flagged below ``rule.threshold``, by default the campaign's onboarding threshold)
    and their onboarding outcome. Labellers with no gold ranking are not listed."""
    rule = rule or GoldRule(threshold=campaign.onboarding_threshold)
    rows = exports.ranking_rows(campaign_ids=[campaign.pk], gold=True)
    references = exports.gold_references(campaign_ids=[campaign.pk])
    created = dict(
        Ranking.objects.filter(pk__in=[r.ranking_id for r in rows]).values_list("id", "created_at")
    )
    by_labeller: dict[int, list[exports.RankingRow]] = defaultdict(list)
    for row in rows:  # oldest first
        by_labeller[row.labeller_id].append(row)
    usernames = dict(
        get_user_model().objects.filter(pk__in=list(by_labeller)).values_list("pk", "username")
    )
    memberships = {
        m.user_id: m for m in Membership.objects.filter(campaign=campaign, user_id__in=by_labeller)
    }
    result = []
    for labeller_id, mine in by_labeller.items():
        overall = gold_estimate(
            [(r.task_id, r.items) for r in mine],
            references,
            fail_policy=fail_policy,
            bootstrap=bootstrap,
        )
        recent_rows = mine[-rule.block :]
        recent = gold_estimate(
            [(r.task_id, r.items) for r in recent_rows],
            references,
            fail_policy=fail_policy,
            bootstrap=bootstrap,
        )
        flagged = (
            len(recent_rows) >= rule.min_tasks
            and recent.value is not None
            and recent.value < rule.threshold
        )
        reason = None
        if flagged:
            earlier = mine[: -rule.block]
            before = gold_estimate(
                [(r.task_id, r.items) for r in earlier],
                references,
                fail_policy=fail_policy,
                bootstrap=Bootstrap(resamples=0),
            )
            reason = (
                f"agreement with the gold references {recent.value:.2f} over their last "
                f"{len(recent_rows)} gold tasks ({recent.n} pairs) is below {rule.threshold:.2f}"
            )
            if before.value is not None:
                reason += f" (before: {before.value:.2f} over {len(earlier)} gold tasks)"
        onboarding, onboarding_value = _onboarding_state(
            campaign, memberships.get(labeller_id), mine, references
        )
        result.append(
            GoldRow(
                labeller_id=labeller_id,
                username=usernames.get(labeller_id, ""),
                agreement=_gold_figure(overall),
                tasks=len(mine),
                drift=_drift(
                    mine,
                    created,
                    references,
                    by=drift_by,
                    block=rule.block,
                    fail_policy=fail_policy,
                    bootstrap=bootstrap,
                ),
                latest=_gold_figure(recent),
                onboarding=onboarding,
                onboarding_agreement=onboarding_value,
                flagged=flagged,
                flag_reason=reason,
            )
        )
    result.sort(
        key=lambda row: (
            not row.flagged,
            math.inf if row.agreement.value is None else row.agreement.value,
            row.labeller_id,
        )
    )
    return GoldTable(
        campaign_id=campaign.pk,
        gold_tasks=len(references),
        rankings=len(rows),
        fail_policy=fail_policy,
        bootstrap=bootstrap,
        rule=rule,
        drift_by=drift_by,
        rows=tuple(result),
    )


def _gold_only_row(labeller_id: int, username: str) -> LabellerRow:
    """A quality-table row for a labeller who ranked gold tasks only (e.g. in onboarding)."""
    return LabellerRow(
        labeller_id=labeller_id,
        username=username,
        agreement=Figure(
            key="agreement_with_consensus",
            label="agreement with the others' leave-one-out consensus (strict pairs; chance 50%)",
            value=None,
            n=0,
            n_of="completion pairs scored",
            ci_low=None,
            ci_high=None,
            form="strict",
            chance=CHANCE["strict"],
        ),
        tasks=0,
        tasks_with_overlap=0,
        fail_rate=None,
        tie_rate=None,
        median_seconds=None,
        robust_z=None,
        flagged=False,
        flag_reason=None,
    )


def _with_gold(row: LabellerRow, gold: GoldRow | None) -> LabellerRow:
    if gold is None:
        return replace(row, gold_agreement=_gold_figure(Estimate(None, 0, None, None)))
    reasons = [r for r in (row.flag_reason, gold.flag_reason) if r]
    return replace(
        row,
        gold_agreement=gold.agreement,
        gold_tasks=gold.tasks,
        gold_flagged=gold.flagged,
        flagged=row.flagged or gold.flagged,
        flag_reason="; ".join(reasons) or None,
    )
