"""Inter-labeller agreement on rankings: pairwise agreement rates, Krippendorff's alpha,
Kendall's W, Fleiss' kappa, and per-labeller quality with outlier flags.

Pure module: plain types in, plain types out, no Django. numpy does the work; the ``krippendorff``
package computes the point estimate of alpha.

How to use it::

    table = ranking_table(records)            # RankingRecord list -> numpy arrays, once
    votes = pair_votes(table)                 # votes per (task, completion pair), once
    pairwise_agreement(votes, form="strict")  # -> PairwiseAgreement (form, chance, Estimate)
    ...
    agreement_report(records)                 # everything above in one call

Conventions used by every metric here (the display should say them):

* **F items** (``fail_policy``, default ``"rank_last"``): a completion marked F is a bottom tier:
  every ranked completion beats it and two F completions are a *tie* (the labeller said the same
  thing about both). With ``"drop"`` F completions are treated as not shown. Note that
  :func:`annotation.pairs.expand_ranking` gives *no* pair for F vs F: a training pair says which is
  better, an agreement statistic compares what labellers said.
* **Ranks** only matter through their order. Where a numeric rank is needed (alpha, Kendall's W,
  consensus) each ranking is converted to mid-ranks over the completions it covers, with the F tier
  at the bottom (``{a: 1, b: 1, c: 3, d: F}`` -> a 1.5, b 1.5, c 3, d 4).
* **One ranking per (task, labeller)**: if a labeller ranked a task twice, the ranking with the
  highest ``ranking_id`` (the latest) is used.
* **Small samples** are never a bare number: every statistic is an :class:`Estimate` with its
  sample size and a percentile bootstrap 95% interval over *tasks* (tasks are resampled with
  replacement; default 1000 resamples, seed 0; the interval is ``None`` when fewer than two tasks
  contribute or the value is undefined).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import krippendorff
import numpy as np
import numpy.typing as npt
from scipy import sparse

from annotation.pairs import FAIL, FailPolicy, Label

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

AgreementForm = Literal["strict", "three_way", "tie_half"]
"""How a completion pair counts as agreed between two labellers:

* ``"strict"``: only pairs where both gave a strict preference; agreed when the same direction.
  Chance 50%. Comparable to InstructGPT (72.6 ± 1.5%) and Stiennon et al. (72-73%).
* ``"three_way"``: answers A>B / tie / B>A; agreed when identical. Chance 33% (uniform answers).
  Comparable to MT-Bench setup S1 (63% human-human).
* ``"tie_half"``: like ``"three_way"`` but a tie against a strict preference counts half an
  agreement (WebGPT's convention). Chance 5/9 (uniform answers).
"""

CHANCE: Final[Mapping[AgreementForm, float]] = {
    "strict": 1 / 2,
    "three_way": 1 / 3,
    "tie_half": 5 / 9,
}
"""Agreement of two labellers answering uniformly at random, per form."""

AlphaLevel = Literal["nominal", "ordinal", "interval"]

FIRST_BETTER: Final = 0
TIE: Final = 1
SECOND_BETTER: Final = 2
NO_ANSWER: Final = -1
"""Codes of one ranking's answer on one completion pair (first slot, second slot)."""


# --------------------------------------------------------------------------------------------------
# Plain types
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RankingRecord:
    """One labeller's ranking of the completions of one task."""

    ranking_id: int
    task_id: int
    labeller_id: int
    items: Mapping[int, Label]
    """completion id -> label (rank, 1 = best, or ``"F"``)"""
    seconds: float | None = None
    """time spent on the task"""


@dataclass(frozen=True, slots=True)
class Estimate:
    """A statistic with the size of the sample it rests on and a bootstrap 95% CI over tasks."""

    value: float | None
    """``None`` when undefined (no overlap, no variation, ...)"""
    n: int
    """sample size; each function says what it counts"""
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """Settings of the percentile bootstrap over tasks used for every confidence interval."""

    resamples: int = 1000
    """number of resamples of the tasks; 0 turns intervals off"""
    seed: int = 0
    """seed of the resampling; the same seed resamples the same tasks for every metric"""
    confidence: float = 0.95
    """coverage of the percentile interval"""


@dataclass(frozen=True, slots=True)
class PairwiseAgreement:
    """Pairwise agreement rate, with the form it was computed in and that form's chance level."""

    form: AgreementForm
    chance: float
    estimate: Estimate


@dataclass(frozen=True, slots=True)
class FleissKappa:
    """Fleiss' kappa with its parts (observed and chance agreement)."""

    kappa: float | None
    p_observed: float
    """mean over units with >= 2 ratings of the share of agreeing rater pairs"""
    p_expected: float
    """sum over categories of the squared mean category share"""
    units: int
    """units with at least two ratings"""


@dataclass(frozen=True, slots=True)
class FlagRule:
    """When a labeller's agreement with the others is "far below the rest".

    robust z = (agreement - median) / max(1.4826 * MAD, min_scale), over the labellers with at
    least ``min_tasks`` tasks shared with someone; flagged when z < ``z_threshold``. At least
    ``min_labellers`` such labellers are needed to compare at all. With the defaults a labeller
    must be at least 2.5 x 0.05 = 12.5 percentage points below the median to be flagged, however
    tightly the others agree.
    """

    z_threshold: float = -2.5
    min_scale: float = 0.05
    """floor of the spread, in agreement units (0.05 = 5 percentage points)"""
    min_tasks: int = 10
    """tasks shared with at least one other labeller before a labeller can be flagged"""
    min_labellers: int = 3
    time_fraction: float = 0.25
    """a labeller whose median time per task is below this share of the others' median time
    per task is flagged too ("far below the campaign's": 1 s against 20 s, say)"""
    min_timed_tasks: int = 10
    """rankings with a time before a labeller can be flagged for speed"""


@dataclass(frozen=True, slots=True)
class LabellerQuality:
    """One labeller's agreement with the others and their habits."""

    labeller_id: int
    agreement: Estimate
    """agreement with the leave-one-out consensus of the others (see :func:`labeller_quality`);
    n = completion pairs scored"""
    tasks: int
    """tasks ranked"""
    tasks_with_overlap: int
    """tasks also ranked by at least one other labeller"""
    fail_rate: float | None
    """share of the completions shown that the labeller marked F"""
    tie_rate: float | None
    """share of the pairs of completions they ranked (not F) that they put on the same rank"""
    median_seconds: float | None
    robust_z: float | None
    """(agreement - median) / scale, see :class:`FlagRule`; ``None`` when not comparable"""
    flagged: bool
    flag_reason: str | None


@dataclass(frozen=True, slots=True)
class AgreementReport:
    """Every agreement statistic of a set of rankings (typically one campaign)."""

    rankings: int
    tasks: int
    labellers: int
    tasks_with_overlap: int
    """tasks ranked by at least two labellers: the only ones agreement can rest on"""
    fail_policy: FailPolicy
    pairwise: tuple[PairwiseAgreement, ...]
    """one per form: strict, three_way, tie_half"""
    alpha_ranks: Estimate
    """ordinal alpha on ranks, see :func:`alpha_ranks`"""
    alpha_pairs: Estimate
    """nominal alpha on pair preferences, see :func:`alpha_pairs`"""
    alpha_fail: Estimate
    """nominal alpha on the F flags, see :func:`alpha_fail_flags`"""
    kendall_w: Estimate
    """mean over tasks of Kendall's W, see :func:`mean_kendall_w`"""
    fleiss_kappa: Estimate
    """Fleiss' kappa on pair preferences, see :func:`fleiss_kappa_pairs`"""
    labeller_quality: tuple[LabellerQuality, ...]


# --------------------------------------------------------------------------------------------------
# Records -> arrays
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class RankingTable:
    """Rankings as numpy arrays: R rankings, T tasks, L labellers, at most C completions a task.

    A task's completions occupy "slots" 0..C-1 in increasing completion id order. Rankings are
    sorted by (task, labeller).
    """

    task_ids: IntArray
    """(T,) task ids, increasing"""
    labeller_ids: IntArray
    """(L,) labeller ids, increasing"""
    completion_ids: IntArray
    """(T, C) completion id of each slot of each task; -1 where the task has fewer completions"""
    ranking_ids: IntArray
    """(R,)"""
    ranking_task: IntArray
    """(R,) index into ``task_ids``"""
    ranking_labeller: IntArray
    """(R,) index into ``labeller_ids``"""
    seconds: FloatArray
    """(R,) time spent; NaN = unknown"""
    labels: FloatArray
    """(R, C) the rank given; ``inf`` = F; NaN = the completion is not in this ranking"""

    @property
    def n_tasks(self) -> int:
        return len(self.task_ids)

    @property
    def n_slots(self) -> int:
        return self.labels.shape[1]


def ranking_table(records: Sequence[RankingRecord]) -> RankingTable:
    """Convert ranking records to a :class:`RankingTable` (validates the labels).

    Keeps one ranking per (task, labeller): the one with the highest ``ranking_id``. Raises
    ``ValueError`` on a label that is neither an integer rank >= 1 nor ``"F"``.
    """
    if not records:
        empty = np.zeros(0, dtype=np.int64)
        return RankingTable(
            task_ids=empty,
            labeller_ids=empty,
            completion_ids=np.zeros((0, 0), dtype=np.int64),
            ranking_ids=empty,
            ranking_task=empty,
            ranking_labeller=empty,
            seconds=np.zeros(0),
            labels=np.zeros((0, 0)),
        )
    ranking_ids = np.fromiter((r.ranking_id for r in records), np.int64, len(records))
    task_of = np.fromiter((r.task_id for r in records), np.int64, len(records))
    labeller_of = np.fromiter((r.labeller_id for r in records), np.int64, len(records))
    # Latest ranking per (task, labeller), rankings sorted by (task, labeller).
    order = np.lexsort((ranking_ids, labeller_of, task_of))
    last = np.ones(len(order), dtype=bool)
    last[:-1] = (task_of[order][1:] != task_of[order][:-1]) | (
        labeller_of[order][1:] != labeller_of[order][:-1]
    )
    keep = order[last]
    kept = [records[i] for i in keep]

    task_ids, ranking_task = np.unique(task_of[keep], return_inverse=True)
    labeller_ids, ranking_labeller = np.unique(labeller_of[keep], return_inverse=True)
    seconds = np.array([np.nan if r.seconds is None else r.seconds for r in kept], dtype=np.float64)

    sizes = np.fromiter((len(r.items) for r in kept), np.int64, len(kept))
    total = int(sizes.sum())
    item_ranking = np.repeat(np.arange(len(kept)), sizes)
    item_completion = np.fromiter(
        itertools.chain.from_iterable(r.items.keys() for r in kept), np.int64, total
    )
    item_label = _labels_to_floats(
        list(itertools.chain.from_iterable(r.items.values() for r in kept))
    )

    # Slots: a task's distinct completion ids in increasing order.
    item_task = ranking_task[item_ranking]
    by_task = np.lexsort((item_completion, item_task))
    t_sorted, c_sorted = item_task[by_task], item_completion[by_task]
    new_pair = np.ones(total, dtype=bool)
    new_pair[1:] = (t_sorted[1:] != t_sorted[:-1]) | (c_sorted[1:] != c_sorted[:-1])
    pair_index = np.cumsum(new_pair) - 1  # index of the distinct (task, completion) pair
    first_pair_of_task = np.full(len(task_ids), -1, dtype=np.int64)
    starts = np.ones(total, dtype=bool)  # first item of each task
    starts[1:] = t_sorted[1:] != t_sorted[:-1]
    first_pair_of_task[t_sorted[starts]] = pair_index[starts]
    slot_sorted = pair_index - first_pair_of_task[t_sorted]
    n_slots = int(slot_sorted.max()) + 1 if total else 0

    completion_ids = np.full((len(task_ids), n_slots), -1, dtype=np.int64)
    completion_ids[t_sorted, slot_sorted] = c_sorted
    labels = np.full((len(kept), n_slots), np.nan)
    labels[item_ranking[by_task], slot_sorted] = item_label[by_task]

    return RankingTable(
        task_ids=task_ids.astype(np.int64),
        labeller_ids=labeller_ids.astype(np.int64),
        completion_ids=completion_ids,
        ranking_ids=ranking_ids[keep],
        ranking_task=ranking_task.astype(np.int64),
        ranking_labeller=ranking_labeller.astype(np.int64),
        seconds=seconds,
        labels=labels,
    )


def _labels_to_floats(labels: list[Label]) -> FloatArray:
    """Labels as floats (F -> inf); raises ``ValueError`` on anything but ranks >= 1 and F."""
    converted = np.array([math.inf if label == FAIL else label for label in labels])
    if len(labels) and (converted.dtype.kind not in "iuf" or converted.dtype == bool):
        raise ValueError("labels must be integer ranks >= 1 or 'F'")  # a string, None, a bool
    values = converted.astype(np.float64)
    ranked = values[np.isfinite(values)]
    if np.isnan(values).any() or not ((ranked >= 1) & (ranked == np.floor(ranked))).all():
        raise ValueError("labels must be integer ranks >= 1 or 'F'")
    return values


def _policy_labels(labels: FloatArray, fail_policy: FailPolicy) -> FloatArray:
    """Labels with F (inf) kept as the bottom tier, or turned into 'not shown' (NaN) for drop."""
    if fail_policy == "rank_last":
        return labels
    if fail_policy == "drop":
        return np.where(np.isinf(labels), np.nan, labels)
    raise ValueError(f"unknown fail_policy {fail_policy!r}")


def _mid_ranks(labels: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Row-wise mid-ranks of (R, C) labels (NaN = absent, inf = bottom tier).

    Returns (mid-ranks with NaN where absent, size of each item's tie group with 0 where absent).
    """
    present = ~np.isnan(labels)
    below = (labels[:, None, :] < labels[:, :, None]).sum(axis=2)
    equal = (labels[:, None, :] == labels[:, :, None]).sum(axis=2)  # includes itself; NaN != NaN
    mid = np.where(present, below + (equal + 1) / 2, np.nan)
    return mid, np.where(present, equal, 0).astype(np.float64)


def rank_values(table: RankingTable, *, fail_policy: FailPolicy = "rank_last") -> FloatArray:
    """(R, C) mid-ranks of each ranking over the completions it covers (NaN: absent, dropped F)."""
    return _mid_ranks(_policy_labels(table.labels, fail_policy))[0]


def reliability_matrix(table: RankingTable, values: FloatArray) -> FloatArray:
    """The classic coders x units matrix of per-ranking ``values`` (R, C), NaN = missing.

    Coders = labellers (``table.labeller_ids`` order); units = (task, slot), task-major, i.e.
    column ``t * C + c``. Memory L x T x C floats: meant for export and cross-checks; the metrics
    here use per-unit value counts instead, which give the same alpha (alpha does not depend on
    which coder gave which value).
    """
    n_slots = table.n_slots
    matrix = np.full((len(table.labeller_ids), table.n_tasks * n_slots), np.nan)
    columns = table.ranking_task[:, None] * n_slots + np.arange(n_slots)
    matrix[table.ranking_labeller[:, None], columns] = values
    return matrix


@dataclass(frozen=True, slots=True, eq=False)
class PairVotes:
    """Every ranking's answer on every completion pair of its task, and the vote counts per unit.

    Units are (task, slot pair); slot pairs are ``slot_pairs[p] = (i, j)`` with i < j.
    """

    slot_pairs: IntArray
    """(P, 2)"""
    answers: npt.NDArray[np.int8]
    """(R, P) FIRST_BETTER / TIE / SECOND_BETTER, or NO_ANSWER"""
    counts: IntArray
    """(T, P, 3) number of rankings answering first better / tie / second better"""
    fail_policy: FailPolicy


def pair_votes(table: RankingTable, *, fail_policy: FailPolicy = "rank_last") -> PairVotes:
    """Answers and vote counts per (task, completion pair); see the module docstring for F."""
    labels = _policy_labels(table.labels, fail_policy)
    first, second = np.triu_indices(table.n_slots, k=1)
    a, b = labels[:, first], labels[:, second]
    answers = np.where(a < b, FIRST_BETTER, np.where(a == b, TIE, SECOND_BETTER)).astype(np.int8)
    answers[np.isnan(a) | np.isnan(b)] = NO_ANSWER
    n_pairs = len(first)
    unit = table.ranking_task[:, None] * n_pairs + np.arange(n_pairs)
    answered = answers != NO_ANSWER
    flat = unit[answered] * 3 + answers[answered]
    counts = np.bincount(flat, minlength=table.n_tasks * n_pairs * 3)
    return PairVotes(
        slot_pairs=np.stack([first, second], axis=1).astype(np.int64),
        answers=answers,
        counts=counts.reshape(table.n_tasks, n_pairs, 3).astype(np.int64),
        fail_policy=fail_policy,
    )


# --------------------------------------------------------------------------------------------------
# Bootstrap over tasks
# --------------------------------------------------------------------------------------------------

_CHUNK = 250  # resamples per matrix product


@functools.lru_cache(maxsize=1)
def _task_weights(n_tasks: int, resamples: int, seed: int) -> npt.NDArray[np.uint8]:
    """(resamples, n_tasks) multinomial counts: how often each task is drawn in each resample.

    Cached (one entry, resamples x n_tasks bytes) so that all metrics of a report resample the
    same tasks. uint8 cannot overflow in practice: a count is ~Poisson(1).
    """
    rng = np.random.default_rng(seed)
    weights = np.empty((resamples, n_tasks), dtype=np.uint8)
    for start in range(0, resamples, _CHUNK):
        rows = min(_CHUNK, resamples - start)
        draws = (
            rng.integers(0, n_tasks, size=(rows, n_tasks)) + (np.arange(rows) * n_tasks)[:, None]
        )
        counts = np.bincount(draws.ravel(), minlength=rows * n_tasks)
        weights[start : start + rows] = counts.reshape(rows, n_tasks)
    weights.flags.writeable = False
    return weights


def _resampled_sums(per_task: FloatArray | sparse.csr_array, bootstrap: Bootstrap) -> FloatArray:
    """(resamples, K) column sums of the (T, K) per-task statistics over each resample of tasks."""
    n_tasks = per_task.shape[0]
    weights = _task_weights(n_tasks, bootstrap.resamples, bootstrap.seed)
    out = np.empty((bootstrap.resamples, per_task.shape[1]))
    if sparse.issparse(per_task):
        transposed = sparse.csr_array(per_task.T)
        for start in range(0, bootstrap.resamples, _CHUNK):
            chunk = weights[start : start + _CHUNK].astype(np.float64)
            out[start : start + _CHUNK] = (transposed @ chunk.T).T
    else:
        for start in range(0, bootstrap.resamples, _CHUNK):
            out[start : start + _CHUNK] = (
                weights[start : start + _CHUNK].astype(np.float64) @ per_task
            )
    return out


def _estimate(
    per_task: FloatArray,
    statistic: Callable[[FloatArray], FloatArray],
    *,
    n: int,
    bootstrap: Bootstrap,
) -> Estimate:
    """An :class:`Estimate` of ``statistic(sum over tasks of per_task)`` with a task bootstrap.

    ``statistic`` maps (..., K) sums to (...) values (NaN = undefined); the per-task rows of tasks
    that do not contribute are zero.
    """
    value = float(statistic(per_task.sum(axis=0)[None, :])[0]) if len(per_task) else math.nan
    if not math.isfinite(value):
        return Estimate(value=None, n=n, ci_low=None, ci_high=None)
    contributing = int(np.count_nonzero(np.any(per_task != 0, axis=1)))
    low, high = _percentile_interval(per_task, statistic, contributing, bootstrap)
    return Estimate(value=value, n=n, ci_low=low, ci_high=high)


def _percentile_interval(
    per_task: FloatArray | sparse.csr_array,
    statistic: Callable[[FloatArray], FloatArray],
    contributing: int,
    bootstrap: Bootstrap,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval; ``None`` with fewer than two contributing tasks or when
    fewer than half the resamples give a defined value."""
    if contributing < 2 or bootstrap.resamples <= 0:
        return None, None
    replicates = statistic(_resampled_sums(per_task, bootstrap))
    replicates = replicates[np.isfinite(replicates)]
    if len(replicates) < bootstrap.resamples / 2:
        return None, None
    tail = (1 - bootstrap.confidence) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


def _ratio(sums: FloatArray) -> FloatArray:
    """sums[..., 0] / sums[..., 1], NaN where the denominator is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums[..., 1] > 0, sums[..., 0] / sums[..., 1], np.nan)


# --------------------------------------------------------------------------------------------------
# Pairwise agreement rate
# --------------------------------------------------------------------------------------------------


def _pairs_of(count: FloatArray) -> FloatArray:
    """Number of unordered pairs among ``count`` raters."""
    return count * (count - 1) / 2


def agreement_by_task(votes: PairVotes, *, form: AgreementForm) -> FloatArray:
    """(T, 2) per task: [agreeing labeller pairs, labeller pairs compared], summed over the
    task's completion pairs (``"tie_half"``: agreeing pairs may be half-integers)."""
    counts = votes.counts.astype(np.float64)
    first, tie, second = counts[..., FIRST_BETTER], counts[..., TIE], counts[..., SECOND_BETTER]
    if form == "strict":
        agree = _pairs_of(first) + _pairs_of(second)
        compared = agree + first * second
    elif form in ("three_way", "tie_half"):
        agree = _pairs_of(first) + _pairs_of(tie) + _pairs_of(second)
        if form == "tie_half":
            agree = agree + 0.5 * tie * (first + second)
        compared = _pairs_of(first + tie + second)
    else:
        raise ValueError(f"unknown agreement form {form!r}")
    return np.stack([agree.sum(axis=1), compared.sum(axis=1)], axis=1)


def pairwise_agreement(
    votes: PairVotes, *, form: AgreementForm = "strict", bootstrap: Bootstrap = Bootstrap()
) -> PairwiseAgreement:
    """Share of completion pairs that two labellers of the same task order the same way.

    Pooled over every two labellers who ranked the same task and every completion pair both
    answered (see :data:`AgreementForm` for the forms). n = labeller pairs x completion pairs
    compared (for ``"strict"``: those where both gave a strict preference).
    """
    per_task = agreement_by_task(votes, form=form)
    estimate = _estimate(per_task, _ratio, n=int(per_task[:, 1].sum()), bootstrap=bootstrap)
    return PairwiseAgreement(form=form, chance=CHANCE[form], estimate=estimate)


def observed_agreement(counts: npt.ArrayLike) -> float | None:
    """Share of agreeing rater pairs, pooled over units: the (three-way) pairwise agreement rate.

    ``counts`` is (units, categories): how many raters chose each category for each unit. For two
    raters this is the plain percent agreement. ``None`` when no unit has two ratings.
    """
    counts = np.asarray(counts, dtype=np.float64)
    compared = _pairs_of(counts.sum(axis=1)).sum()
    return float(_pairs_of(counts).sum() / compared) if compared > 0 else None


# --------------------------------------------------------------------------------------------------
# Fleiss' kappa
# --------------------------------------------------------------------------------------------------


def _fleiss_parts(counts: FloatArray) -> FloatArray:
    """(..., 2 + K + 1) sums over units of the (..., units, K) counts: [sum of per-unit agreement
    over units with >= 2 ratings, their number, sum of per-unit category shares (K) over units
    with >= 1 rating, their number]."""
    raters = counts.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit_agreement = np.where(
            raters >= 2, (counts * (counts - 1)).sum(axis=-1) / (raters * (raters - 1)), 0.0
        )
        shares = np.where(raters[..., None] >= 1, counts / raters[..., None], 0.0)
    return np.concatenate(
        [
            unit_agreement.sum(axis=-1)[..., None],
            (raters >= 2).sum(axis=-1)[..., None],
            shares.sum(axis=-2),
            (raters >= 1).sum(axis=-1)[..., None],
        ],
        axis=-1,
    ).astype(np.float64)


def _fleiss_statistic(sums: FloatArray) -> FloatArray:
    """Fleiss' kappa from :func:`_fleiss_parts` sums; NaN when undefined."""
    with np.errstate(invalid="ignore", divide="ignore"):
        p_observed = sums[..., 0] / sums[..., 1]
        p_expected = ((sums[..., 2:-1] / sums[..., -1:]) ** 2).sum(axis=-1)
        kappa = (p_observed - p_expected) / (1 - p_expected)
    return np.where((sums[..., 1] > 0) & (p_expected < 1), kappa, np.nan)


def fleiss_kappa(counts: npt.ArrayLike) -> FleissKappa | None:
    """Fleiss' kappa of (units, categories) rating counts; raters per unit may vary.

    With a varying number of raters this is Gwet's generalisation (as in irrCAC): the observed
    agreement averages the per-unit agreement over units with >= 2 ratings; the category shares
    average each unit's share over units with >= 1 rating. With a fixed number of raters it is
    Fleiss (1971). ``kappa`` is ``None`` when chance agreement is 1 (one category only).
    ``None`` when no unit has two ratings.
    """
    sums = _fleiss_parts(np.asarray(counts, dtype=np.float64))
    if sums[1] == 0:
        return None
    kappa = float(_fleiss_statistic(sums[None, :])[0])
    p_expected = float(((sums[2:-1] / sums[-1]) ** 2).sum())
    return FleissKappa(
        kappa=kappa if math.isfinite(kappa) else None,
        p_observed=float(sums[0] / sums[1]),
        p_expected=p_expected,
        units=int(sums[1]),
    )


def fleiss_kappa_pairs(votes: PairVotes, *, bootstrap: Bootstrap = Bootstrap()) -> Estimate:
    """Fleiss' kappa on pair preferences: units = (task, completion pair), categories = first
    better / tie / second better, raters = the labellers who answered that pair.

    The number of raters may vary between units (Gwet's generalisation, see
    :func:`fleiss_kappa`). n = units with at least two answers.
    """
    per_task = _fleiss_parts(votes.counts.astype(np.float64))
    return _estimate(per_task, _fleiss_statistic, n=int(per_task[:, 1].sum()), bootstrap=bootstrap)


# --------------------------------------------------------------------------------------------------
# Krippendorff's alpha
# --------------------------------------------------------------------------------------------------


def _coincidences(value_counts: FloatArray) -> FloatArray:
    """(..., V, V) coincidence matrices summed over the units axis of (..., units, V) counts."""
    pairable = value_counts.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(pairable >= 2, 1 / (pairable - 1), 0.0)
    scaled = value_counts * scale[..., None]
    outer = np.einsum("...uv,...uw->...vw", scaled, value_counts)
    diagonal = scaled.sum(axis=-2)
    return outer - diagonal[..., :, None] * np.eye(value_counts.shape[-1])


def _distances(values: FloatArray, totals: FloatArray, level: AlphaLevel) -> FloatArray:
    """(..., V, V) squared distances between values; ``totals`` (..., V) = pairable values each."""
    size = len(values)
    if level == "nominal":
        return np.broadcast_to(1 - np.eye(size), (*totals.shape[:-1], size, size))
    if level == "interval":
        return np.broadcast_to(
            (values[:, None] - values[None, :]) ** 2, (*totals.shape[:-1], size, size)
        )
    if level == "ordinal":
        cumulative = np.cumsum(totals, axis=-1)
        between = cumulative[..., None, :] - cumulative[..., :, None]
        between = between + (totals[..., :, None] - totals[..., None, :]) / 2
        return between**2
    raise ValueError(f"unknown level of measurement {level!r}")


def _alpha_statistic(values: FloatArray, level: AlphaLevel) -> Callable[[FloatArray], FloatArray]:
    """Statistic mapping (..., V*V) summed coincidences to alpha (NaN when undefined)."""
    size = len(values)

    def statistic(sums: FloatArray) -> FloatArray:
        coincidences = sums.reshape(*sums.shape[:-1], size, size)
        totals = coincidences.sum(axis=-1)
        pairable = totals.sum(axis=-1)
        distances = _distances(values, totals, level)
        observed = (coincidences * distances).sum(axis=(-2, -1))
        expected = (totals[..., :, None] * totals[..., None, :] * distances).sum(axis=(-2, -1))
        with np.errstate(invalid="ignore", divide="ignore"):
            alpha = 1 - (pairable - 1) * observed / expected
        return np.where((pairable > 1) & (expected > 0), alpha, np.nan)

    return statistic


def alpha_from_value_counts(
    value_counts: npt.ArrayLike, *, level: AlphaLevel, values: npt.ArrayLike | None = None
) -> float | None:
    """Krippendorff's alpha from (units, V) value counts, computed here (vectorised).

    The same coefficient as ``krippendorff.alpha(value_counts=...)``; this implementation is what
    the bootstrap uses. ``values`` are the V values in increasing order (default 0..V-1; only
    ``"interval"`` uses their size). ``None`` when undefined: fewer than two pairable values, or
    no variation at all (expected disagreement 0; e.g. every coder gave the same value).
    """
    counts = np.asarray(value_counts, dtype=np.float64)
    domain = (
        np.arange(counts.shape[1], dtype=np.float64)
        if values is None
        else np.asarray(values, float)
    )
    coincidences = _coincidences(counts)
    alpha = float(_alpha_statistic(domain, level)(coincidences.reshape(1, -1))[0])
    return alpha if math.isfinite(alpha) else None


def krippendorff_alpha(reliability_data: npt.ArrayLike, *, level: AlphaLevel) -> float | None:
    """Krippendorff's alpha of a coders x units matrix (NaN = missing), by the ``krippendorff``
    package. ``None`` where the package has no answer (under two values in all, no unit with two
    values, or no variation: 0/0)."""
    data = np.asarray(reliability_data, dtype=np.float64)
    present = data[~np.isnan(data)]
    if len(np.unique(present)) < 2 or not ((~np.isnan(data)).sum(axis=0) >= 2).any():
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))
    return alpha if math.isfinite(alpha) else None


PACKAGE_MAX_CELLS: Final = 10_000_000
"""Largest units x V x V array (80 MB of float64) handed to ``krippendorff.alpha``."""


def _value_counts(
    units: IntArray, value_index: IntArray, n_units: int, n_values: int
) -> FloatArray:
    """(n_units, n_values) counts of each value per unit from long-format (unit, value) pairs."""
    flat = np.bincount(units * n_values + value_index, minlength=n_units * n_values)
    return flat.reshape(n_units, n_values).astype(np.float64)


def alpha_estimate(
    value_counts: FloatArray,
    values: FloatArray,
    *,
    level: AlphaLevel,
    bootstrap: Bootstrap = Bootstrap(),
) -> Estimate:
    """Krippendorff's alpha of (T, units per task, V) value counts with a task bootstrap.

    ``values`` are the V values in increasing order. The point estimate is computed by the
    ``krippendorff`` package, the interval from per-task coincidence matrices (the same
    coefficient, vectorised over resamples). The package holds a dense units x V x V array;
    above :data:`PACKAGE_MAX_CELLS` cells (e.g. 100,000 rankings of 9 completions, where
    mid-ranks take 17 values) the point estimate comes from the per-task coincidences as well,
    which the tests check equal to the package's. n = units with at least two values.
    """
    n_units = int((value_counts.sum(axis=-1) >= 2).sum())
    if n_units == 0 or len(values) < 2:
        return Estimate(value=None, n=n_units, ci_low=None, ci_high=None)
    per_task = _coincidences(value_counts).reshape(value_counts.shape[0], -1)
    statistic = _alpha_statistic(values, level)
    if n_units * len(values) ** 2 <= PACKAGE_MAX_CELLS:
        flat_counts = value_counts.reshape(-1, len(values))
        flat_counts = flat_counts[flat_counts.sum(axis=1) >= 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            value = float(
                krippendorff.alpha(
                    value_counts=flat_counts, value_domain=values, level_of_measurement=level
                )
            )
    else:
        value = float(statistic(per_task.sum(axis=0)[None, :])[0])
    if not math.isfinite(value):
        return Estimate(value=None, n=n_units, ci_low=None, ci_high=None)
    contributing = int(np.count_nonzero(per_task.any(axis=1)))
    low, high = _percentile_interval(per_task, statistic, contributing, bootstrap)
    return Estimate(value=value, n=n_units, ci_low=low, ci_high=high)


def rank_value_counts(
    table: RankingTable, *, fail_policy: FailPolicy = "rank_last"
) -> tuple[FloatArray, FloatArray]:
    """(T, C, V) counts of each mid-rank value per unit (task, completion), and the V values."""
    mid = rank_values(table, fail_policy=fail_policy)
    present = ~np.isnan(mid)
    values, value_index = np.unique(mid[present], return_inverse=True)
    units = (table.ranking_task[:, None] * table.n_slots + np.arange(table.n_slots))[present]
    counts = _value_counts(units, value_index.ravel(), table.n_tasks * table.n_slots, len(values))
    return counts.reshape(table.n_tasks, table.n_slots, len(values)), values.astype(np.float64)


def alpha_ranks(
    table: RankingTable,
    *,
    fail_policy: FailPolicy = "rank_last",
    bootstrap: Bootstrap = Bootstrap(),
) -> Estimate:
    """Ordinal Krippendorff's alpha on ranks: units = (task, completion), coders = labellers,
    values = the mid-rank each labeller gave (F: the bottom tier, or missing with ``"drop"``).

    Ranks of different tasks share one scale (rank 1 is rank 1 in every task). n = units
    (task, completion) with at least two values.
    """
    counts, values = rank_value_counts(table, fail_policy=fail_policy)
    return alpha_estimate(counts, values, level="ordinal", bootstrap=bootstrap)


def alpha_pairs(votes: PairVotes, *, bootstrap: Bootstrap = Bootstrap()) -> Estimate:
    """Nominal Krippendorff's alpha on pair preferences: units = (task, completion pair),
    values = +1 (first better) / 0 (tie) / -1 (second better). n = units with >= 2 answers."""
    values = np.array([FIRST_BETTER, TIE, SECOND_BETTER], dtype=np.float64)
    return alpha_estimate(
        votes.counts.astype(np.float64), values, level="nominal", bootstrap=bootstrap
    )


def fail_value_counts(table: RankingTable) -> FloatArray:
    """(T, C, 2) per unit (task, completion): [labellers who ranked it, labellers who marked F]."""
    present = ~np.isnan(table.labels)
    fail = np.isinf(table.labels)
    units = (table.ranking_task[:, None] * table.n_slots + np.arange(table.n_slots))[present]
    counts = _value_counts(units, fail[present].astype(np.int64), table.n_tasks * table.n_slots, 2)
    return counts.reshape(table.n_tasks, table.n_slots, 2)


def alpha_fail_flags(table: RankingTable, *, bootstrap: Bootstrap = Bootstrap()) -> Estimate:
    """Nominal Krippendorff's alpha on the F flags: units = (task, completion), values = 0
    (ranked) / 1 (marked F). ``value`` is ``None`` when nobody ever marked F (no variation).
    n = units with at least two labellers."""
    values = np.array([0.0, 1.0])
    return alpha_estimate(fail_value_counts(table), values, level="nominal", bootstrap=bootstrap)


# --------------------------------------------------------------------------------------------------
# Kendall's W
# --------------------------------------------------------------------------------------------------


def kendall_w(scores: npt.ArrayLike) -> float | None:
    """Kendall's W with the tie correction for a judges x objects matrix (no missing values).

    Each judge's row is converted to mid-ranks (so raw scores work, and ranks with ties too).
    W = 12 S / (m²(n³ - n) - m Σ(t³ - t)), t over every tie group of every judge. ``None`` with
    fewer than two judges or objects, or when every judge ties everything.
    """
    data = np.asarray(scores, dtype=np.float64)
    if data.ndim != 2 or np.isnan(data).any():
        raise ValueError("scores must be a judges x objects matrix without missing values")
    judges, objects = data.shape
    if judges < 2 or objects < 2:
        return None
    mid, tie_sizes = _mid_ranks(data)
    rank_sums = mid.sum(axis=0)
    spread = ((rank_sums - judges * (objects + 1) / 2) ** 2).sum()
    ties = (tie_sizes**2 - 1).sum()  # Σ over tie groups of t³ - t
    denominator = judges**2 * (objects**3 - objects) - judges * ties
    return float(12 * spread / denominator) if denominator > 0 else None


def kendall_w_per_task(table: RankingTable, *, fail_policy: FailPolicy = "rank_last") -> FloatArray:
    """(T,) Kendall's W of each task (NaN = undefined), vectorised over tasks.

    Judges = the task's labellers, objects = the completions every one of them covers (F is a
    bottom tier, or left out with ``"drop"``). Undefined with fewer than two labellers or
    common completions, or when all tie everything.
    """
    labels = _policy_labels(table.labels, fail_policy)
    n_tasks, n_slots = table.n_tasks, table.n_slots
    judges = np.bincount(table.ranking_task, minlength=n_tasks).astype(np.float64)
    unit = table.ranking_task[:, None] * n_slots + np.arange(n_slots)
    cover = np.bincount(
        unit.ravel(), weights=(~np.isnan(labels)).ravel(), minlength=n_tasks * n_slots
    )
    common = cover.reshape(n_tasks, n_slots) == judges[:, None]
    mid, tie_sizes = _mid_ranks(np.where(common[table.ranking_task], labels, np.nan))
    rank_sums = np.bincount(
        unit.ravel(), weights=np.nan_to_num(mid).ravel(), minlength=n_tasks * n_slots
    ).reshape(n_tasks, n_slots)
    objects = common.sum(axis=1).astype(np.float64)
    centred = np.where(common, rank_sums - (judges * (objects + 1) / 2)[:, None], 0.0)
    spread = (centred**2).sum(axis=1)
    ties = np.bincount(
        table.ranking_task,
        weights=(np.maximum(tie_sizes, 1) ** 2 - 1).sum(axis=1),
        minlength=n_tasks,
    )
    denominator = judges**2 * (objects**3 - objects) - judges * ties
    with np.errstate(invalid="ignore", divide="ignore"):
        w = 12 * spread / denominator
    return np.where((judges >= 2) & (objects >= 2) & (denominator > 0), w, np.nan)


def kendall_w_by_task(
    table: RankingTable, *, fail_policy: FailPolicy = "rank_last"
) -> dict[int, float]:
    """Kendall's W per task id where defined (see :func:`kendall_w_per_task`)."""
    w = kendall_w_per_task(table, fail_policy=fail_policy)
    defined = np.isfinite(w)
    return dict(zip(table.task_ids[defined].tolist(), w[defined].tolist(), strict=True))


def mean_kendall_w(
    table: RankingTable,
    *,
    fail_policy: FailPolicy = "rank_last",
    bootstrap: Bootstrap = Bootstrap(),
) -> Estimate:
    """Mean over tasks of Kendall's W (each task weighs the same). n = tasks where W is defined.

    Under independent random rankings E[W] = 1/m for m labellers, not 0: read it against that.
    """
    w = kendall_w_per_task(table, fail_policy=fail_policy)
    defined = np.isfinite(w)
    per_task = np.stack([np.where(defined, w, 0.0), defined.astype(np.float64)], axis=1)
    return _estimate(per_task, _ratio, n=int(defined.sum()), bootstrap=bootstrap)


# --------------------------------------------------------------------------------------------------
# Per-labeller quality
# --------------------------------------------------------------------------------------------------


def consensus_credit(table: RankingTable, votes: PairVotes) -> tuple[FloatArray, FloatArray]:
    """(R,) per ranking: [credit, completion pairs scored] against the leave-one-out consensus.

    The consensus of the *other* labellers of the task is their mean rank (Borda) per completion,
    mid-ranks with F as a bottom tier under the votes' ``fail_policy``. Each completion pair the
    ranking orders strictly, and that at least one other labeller covers, scores 1 when the
    consensus orders it the same way, 1/2 when the consensus ties it, 0 when opposite. Pairs the
    labeller tied are left out (chance is then 50%, as for the ``"strict"`` form).
    """
    mid = rank_values(table, fail_policy=votes.fail_policy)
    n_tasks, n_slots = table.n_tasks, table.n_slots
    unit = (table.ranking_task[:, None] * n_slots + np.arange(n_slots)).ravel()
    present = ~np.isnan(mid)
    size = n_tasks * n_slots
    rank_sum = np.bincount(unit, weights=np.nan_to_num(mid).ravel(), minlength=size).reshape(
        n_tasks, n_slots
    )
    raters = np.bincount(unit, weights=present.ravel(), minlength=size).reshape(n_tasks, n_slots)
    others_sum = rank_sum[table.ranking_task] - np.nan_to_num(mid)
    others = raters[table.ranking_task] - present
    with np.errstate(invalid="ignore", divide="ignore"):
        others_mean = np.where(others > 0, others_sum / others, np.nan)
    first, second = votes.slot_pairs[:, 0], votes.slot_pairs[:, 1]
    mean_a, mean_b = others_mean[:, first], others_mean[:, second]
    scored = (
        ((votes.answers == FIRST_BETTER) | (votes.answers == SECOND_BETTER))
        & ~np.isnan(mean_a)
        & ~np.isnan(mean_b)
    )
    consensus = np.where(
        mean_a < mean_b, FIRST_BETTER, np.where(mean_a == mean_b, TIE, SECOND_BETTER)
    )
    credit = np.where(consensus == TIE, 0.5, (consensus == votes.answers).astype(np.float64))
    return np.where(scored, credit, 0.0).sum(axis=1), scored.sum(axis=1).astype(np.float64)


def _robust_z(
    agreements: FloatArray, eligible: npt.NDArray[np.bool_], rule: FlagRule
) -> tuple[FloatArray, float, float]:
    """Robust z of every labeller against the eligible ones: (z, median, scale); z NaN if none."""
    pool = agreements[eligible & np.isfinite(agreements)]
    if len(pool) < rule.min_labellers:
        return np.full(len(agreements), np.nan), math.nan, math.nan
    median = float(np.median(pool))
    scale = max(1.4826 * float(np.median(np.abs(pool - median))), rule.min_scale)
    return (agreements - median) / scale, median, scale


def labeller_quality(
    table: RankingTable,
    votes: PairVotes,
    *,
    rule: FlagRule = FlagRule(),
    bootstrap: Bootstrap = Bootstrap(),
) -> tuple[LabellerQuality, ...]:
    """Per labeller: agreement with the others' leave-one-out consensus, habits, and a flag.

    Agreement is :func:`consensus_credit` summed over the labeller's tasks (n = completion
    pairs scored; interval by the task bootstrap). A labeller is flagged when their agreement is
    far below the rest by :class:`FlagRule`; the reason says by how much. Labellers with fewer
    than ``rule.min_tasks`` shared tasks get a z-score but are never flagged.
    """
    n_labellers = len(table.labeller_ids)
    who = table.ranking_labeller
    credit, scored = consensus_credit(table, votes)
    credit_sum = np.bincount(who, weights=credit, minlength=n_labellers)
    scored_sum = np.bincount(who, weights=scored, minlength=n_labellers)
    with np.errstate(invalid="ignore", divide="ignore"):
        agreement = np.where(scored_sum > 0, credit_sum / scored_sum, np.nan)

    judges = np.bincount(table.ranking_task, minlength=table.n_tasks)
    overlap = np.bincount(who, weights=judges[table.ranking_task] >= 2, minlength=n_labellers)
    tasks = np.bincount(who, minlength=n_labellers)

    present = ~np.isnan(table.labels)
    shown = np.bincount(who, weights=present.sum(axis=1), minlength=n_labellers)
    failed = np.bincount(who, weights=np.isinf(table.labels).sum(axis=1), minlength=n_labellers)
    ranked = np.isfinite(table.labels)
    first, second = votes.slot_pairs[:, 0], votes.slot_pairs[:, 1]
    both_ranked = ranked[:, first] & ranked[:, second]
    tied = np.bincount(
        who, weights=(both_ranked & (votes.answers == TIE)).sum(axis=1), minlength=n_labellers
    )
    ranked_pairs = np.bincount(who, weights=both_ranked.sum(axis=1), minlength=n_labellers)

    # Interval: the same task resampling as everything else, all labellers in one product.
    per_task = sparse.csr_array(
        (
            np.concatenate([credit, scored]),
            (
                np.concatenate([table.ranking_task, table.ranking_task]),
                np.concatenate([2 * who, 2 * who + 1]),
            ),
        ),
        shape=(table.n_tasks, 2 * n_labellers),
    )
    task_count = np.bincount(who, weights=scored > 0, minlength=n_labellers)
    replicate_ratios: FloatArray | None = None
    if bootstrap.resamples > 0 and table.n_tasks:
        sums = _resampled_sums(per_task, bootstrap).reshape(bootstrap.resamples, n_labellers, 2)
        replicate_ratios = _ratio(sums)

    eligible = overlap >= rule.min_tasks
    z, median, scale = _robust_z(agreement, eligible, rule)
    tail = (1 - bootstrap.confidence) / 2 * 100

    results = []
    for index, labeller_id in enumerate(table.labeller_ids.tolist()):
        value = float(agreement[index]) if np.isfinite(agreement[index]) else None
        low = high = None
        if value is not None and replicate_ratios is not None and task_count[index] >= 2:
            replicates = replicate_ratios[:, index]
            replicates = replicates[np.isfinite(replicates)]
            if len(replicates) >= bootstrap.resamples / 2:
                low, high = (float(x) for x in np.percentile(replicates, [tail, 100 - tail]))
        z_value = float(z[index]) if np.isfinite(z[index]) else None
        flagged = bool(eligible[index] and z_value is not None and z_value < rule.z_threshold)
        reasons = []
        if flagged:
            reasons.append(
                f"agreement with the others' consensus {value:.2f} over {int(scored_sum[index])} "
                f"pairs is {-z_value:.1f} robust SDs below the median {median:.2f} of "
                f"{int((eligible & np.isfinite(agreement)).sum())} labellers "
                f"(scale {scale:.3f}, threshold z < {rule.z_threshold})"
            )
        too_fast = _too_fast(table.seconds, who == index, rule)
        if too_fast:
            flagged = True
            reasons.append(too_fast)
        reason = "; ".join(reasons) or None
        results.append(
            LabellerQuality(
                labeller_id=labeller_id,
                agreement=Estimate(value=value, n=int(scored_sum[index]), ci_low=low, ci_high=high),
                tasks=int(tasks[index]),
                tasks_with_overlap=int(overlap[index]),
                fail_rate=float(failed[index] / shown[index]) if shown[index] else None,
                tie_rate=float(tied[index] / ranked_pairs[index]) if ranked_pairs[index] else None,
                median_seconds=_median_seconds(table.seconds[who == index]),
                robust_z=z_value,
                flagged=flagged,
                flag_reason=reason,
            )
        )
    return tuple(results)


def _too_fast(seconds: FloatArray, mine: npt.NDArray[np.bool_], rule: FlagRule) -> str | None:
    """Why a labeller's median time per task is far below the others', or None: their median
    over at least ``rule.min_timed_tasks`` timed rankings is below ``rule.time_fraction`` of the
    median of everyone else's rankings."""
    own = seconds[mine & np.isfinite(seconds)]
    others = seconds[~mine & np.isfinite(seconds)]
    if len(own) < rule.min_timed_tasks or len(others) < rule.min_timed_tasks:
        return None
    theirs, typical = float(np.median(own)), float(np.median(others))
    if typical <= 0 or theirs >= rule.time_fraction * typical:
        return None
    return (
        f"median time per task {theirs:.1f} s over {len(own)} rankings is below "
        f"{rule.time_fraction:.0%} of the others' median {typical:.1f} s "
        f"({theirs / typical:.0%} of it)"
    )


def _median_seconds(seconds: FloatArray) -> float | None:
    known = seconds[np.isfinite(seconds)]
    return float(np.median(known)) if len(known) else None


# --------------------------------------------------------------------------------------------------
# Cohen's kappa per pair of labellers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PairKappa:
    """Cohen's kappa of two labellers on the pair preferences they both gave."""

    labeller_a: int
    labeller_b: int
    """``labeller_a < labeller_b``"""
    kappa: Estimate
    """n = (task, completion pair) units both answered; interval by the task bootstrap"""
    tasks: int
    """tasks both ranked"""


def _kappa_of(confusion: FloatArray) -> FloatArray:
    """Cohen's kappa of (..., 3, 3) confusion counts; NaN when undefined (no units, or chance
    agreement 1: both gave one same answer throughout)."""
    total = confusion.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = np.trace(confusion, axis1=-2, axis2=-1) / total
        rows = confusion.sum(axis=-1) / total[..., None]
        cols = confusion.sum(axis=-2) / total[..., None]
        expected = (rows * cols).sum(axis=-1)
        return np.where(expected < 1, (observed - expected) / (1 - expected), np.nan)


def cohen_kappa(first: npt.ArrayLike, second: npt.ArrayLike) -> float | None:
    """Cohen's kappa of two raters' answers (codes 0..2) on the same units; None if undefined."""
    a, b = np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)
    confusion = np.zeros((3, 3))
    np.add.at(confusion, (a, b), 1)
    value = float(_kappa_of(confusion))
    return value if math.isfinite(value) else None


def pairwise_kappa(
    table: RankingTable, votes: PairVotes, *, bootstrap: Bootstrap = Bootstrap()
) -> tuple[PairKappa, ...]:
    """Cohen's kappa on pair preferences (better / tie / worse, F as ``votes.fail_policy``
    pairs it) for every two labellers who ranked a task in common, with n and a percentile
    bootstrap interval over the campaign's tasks (the same resamples as every other figure)."""
    ranking_of: dict[tuple[int, int], int] = {
        (int(t), int(w)): r
        for r, (t, w) in enumerate(zip(table.ranking_task, table.ranking_labeller, strict=True))
    }
    by_task: dict[int, list[int]] = {}
    for task, labeller in ranking_of:
        by_task.setdefault(task, []).append(labeller)
    pair_index: dict[tuple[int, int], int] = {}
    rows, cols, values = [], [], []
    shared: dict[int, int] = {}
    for task, labellers in by_task.items():
        labellers.sort()
        for x, i in enumerate(labellers):
            for j in labellers[x + 1 :]:
                k = pair_index.setdefault((i, j), len(pair_index))
                shared[k] = shared.get(k, 0) + 1
                a = votes.answers[ranking_of[(task, i)]]
                b = votes.answers[ranking_of[(task, j)]]
                both = (a != NO_ANSWER) & (b != NO_ANSWER)
                confusion = np.zeros((3, 3))
                np.add.at(confusion, (a[both], b[both]), 1)
                cells = np.flatnonzero(confusion)
                rows.extend([task] * len(cells))
                cols.extend((k * 9 + cells).tolist())
                values.extend(confusion.ravel()[cells].tolist())
    n_pairs = len(pair_index)
    if not n_pairs:
        return ()
    per_task = sparse.csr_array(
        (np.asarray(values, dtype=np.float64), (np.asarray(rows), np.asarray(cols))),
        shape=(table.n_tasks, n_pairs * 9),
    )
    totals = np.asarray(per_task.sum(axis=0)).reshape(n_pairs, 3, 3)
    point = _kappa_of(totals)
    replicates = None
    if bootstrap.resamples > 0 and table.n_tasks:
        sums = _resampled_sums(per_task, bootstrap).reshape(bootstrap.resamples, n_pairs, 3, 3)
        replicates = _kappa_of(sums)
    tail = (1 - bootstrap.confidence) / 2 * 100
    result = []
    for (i, j), k in sorted(pair_index.items()):
        value = float(point[k]) if np.isfinite(point[k]) else None
        low = high = None
        if value is not None and replicates is not None and shared[k] >= 2:
            draws = replicates[:, k][np.isfinite(replicates[:, k])]
            if len(draws) >= bootstrap.resamples / 2:
                low, high = (float(x) for x in np.percentile(draws, [tail, 100 - tail]))
        result.append(
            PairKappa(
                labeller_a=int(table.labeller_ids[i]),
                labeller_b=int(table.labeller_ids[j]),
                kappa=Estimate(value=value, n=int(totals[k].sum()), ci_low=low, ci_high=high),
                tasks=shared[k],
            )
        )
    return tuple(result)


# --------------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------------


def agreement_report(
    records: Sequence[RankingRecord],
    *,
    fail_policy: FailPolicy = "rank_last",
    bootstrap: Bootstrap = Bootstrap(),
    rule: FlagRule = FlagRule(),
) -> AgreementReport:
    """All agreement statistics of ``records``; every interval resamples the same tasks."""
    table = ranking_table(records)
    votes = pair_votes(table, fail_policy=fail_policy)
    judges = np.bincount(table.ranking_task, minlength=table.n_tasks)
    forms: tuple[AgreementForm, ...] = ("strict", "three_way", "tie_half")
    return AgreementReport(
        rankings=len(table.ranking_ids),
        tasks=table.n_tasks,
        labellers=len(table.labeller_ids),
        tasks_with_overlap=int((judges >= 2).sum()),
        fail_policy=fail_policy,
        pairwise=tuple(pairwise_agreement(votes, form=form, bootstrap=bootstrap) for form in forms),
        alpha_ranks=alpha_ranks(table, fail_policy=fail_policy, bootstrap=bootstrap),
        alpha_pairs=alpha_pairs(votes, bootstrap=bootstrap),
        alpha_fail=alpha_fail_flags(table, bootstrap=bootstrap),
        kendall_w=mean_kendall_w(table, fail_policy=fail_policy, bootstrap=bootstrap),
        fleiss_kappa=fleiss_kappa_pairs(votes, bootstrap=bootstrap),
        labeller_quality=labeller_quality(table, votes, rule=rule, bootstrap=bootstrap),
    )
