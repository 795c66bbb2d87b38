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
  F rate, tie rate, median time per task, and the flag with its reason.

:func:`campaign_agreement` and :func:`labeller_quality_table` do the reading and one figure set
in one call. No access checks here: callers pass a campaign they were allowed to see.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from django.contrib.auth import get_user_model

from annotation import agreement, exports
from annotation.agreement import (
    CHANCE,
    AgreementForm,
    Bootstrap,
    Estimate,
    FlagRule,
    PairVotes,
    RankingTable,
)
from annotation.models import Campaign
from annotation.pairs import FailPolicy

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
    flag_reason: str | None


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
) -> list[LabellerRow]:
    """The labeller quality table, flagged labellers first, then by agreement (lowest first)."""
    quality = agreement.labeller_quality(inputs.table, inputs.votes, rule=rule, bootstrap=bootstrap)
    usernames = dict(
        get_user_model()
        .objects.filter(pk__in=[q.labeller_id for q in quality])
        .values_list("pk", "username")
    )
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
        )
        for q in quality
    ]
    rows.sort(
        key=lambda row: (
            not row.flagged,
            math.inf if row.agreement.value is None else row.agreement.value,
            row.labeller_id,
        )
    )
    return rows


def campaign_agreement(
    *,
    campaign: Campaign,
    fail_policy: FailPolicy = "rank_last",
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
) -> CampaignAgreement:
    """The campaign-wide figures of ``campaign``."""
    inputs = agreement_inputs(campaign=campaign, fail_policy=fail_policy)
    return campaign_figures(inputs, bootstrap=bootstrap)


def labeller_quality_table(
    *,
    campaign: Campaign,
    fail_policy: FailPolicy = "rank_last",
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    rule: FlagRule = DEFAULT_RULE,
) -> list[LabellerRow]:
    """The labeller quality table of ``campaign``."""
    inputs = agreement_inputs(campaign=campaign, fail_policy=fail_policy)
    return labeller_figures(inputs, bootstrap=bootstrap, rule=rule)
