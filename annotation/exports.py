"""Reading rankings out of the database as plain records: the bridge to the pure modules.

Everything here reads in a few bulk queries (no per-ranking queries) and yields plain dicts,
dataclasses or ready-made JSONL/CSV lines, so exports stream and the agreement code receives
plain types.

Pair exports (JSONL, one pair per line) read as they are by TRL and the Hugging Face ``datasets``
JSON loader: ``prompt``, ``chosen``, ``rejected`` (texts), ``margin``, and provenance. Every line
of one export has the same keys with the same value types (``messages`` is always there, null for
a plain-text prompt). Two shapes:

* ``aggregate="none"``: every labeller's pairs as they are (:func:`labeller_pairs`);
* ``aggregate="ranked_pairs" | "bradley_terry" | "majority"``: one set of pairs per task from the
  labellers' consensus (:func:`aggregated_pairs`).

Gold tasks (``Task.is_gold``) are checks of the labellers, not training data: the readers here
(:func:`ranking_rows`, :func:`ranking_export`) leave their rankings out unless asked for them
(``gold=True`` reads only them, for the comparison with the references), so no export, no
``training.exports`` pair and no inter-labeller agreement figure ever contains one.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Final, Literal, NamedTuple, get_args

from annotation import consensus
from annotation import strength as strength_rules
from annotation.agreement import RankingRecord
from annotation.models import (
    Adjudication,
    Completion,
    Prompt,
    Ranking,
    RankingItem,
    RankingVersion,
    Task,
    TaskCompletion,
)
from annotation.pairs import FAIL, FailPolicy, Label, Pair, expand_ranking, preference

Aggregate = Literal["none", "ranked_pairs", "bradley_terry", "majority"]
"""How pairs of several labellers of one task are exported: as they are, or aggregated."""

AGGREGATES: Final[tuple[str, ...]] = get_args(Aggregate)
FAIL_POLICIES: Final[tuple[str, ...]] = get_args(FailPolicy)
PAIRS_FAIL_POLICY: Final = "drop"
"""The pair export's default for F completions (they give no pairs); the quality page's too."""

CSV_INJECTION_PREFIXES: Final = ("=", "+", "-", "@", "\t", "\r")
"""A spreadsheet cell starting with one of these may be run as a formula: it gets a quote."""


class RankingRow(NamedTuple):
    """A stored ranking with its provenance, as plain data (immutable; a named tuple, which
    builds several times faster than a frozen dataclass: 100,000 rows are read at once)."""

    ranking_id: int
    campaign_id: int
    task_id: int
    prompt_id: int
    labeller_id: int
    guideline_version: int | None
    round: int
    seconds: float
    items: dict[int, Label]


def ranking_rows(
    *, campaign_ids: Sequence[int], gold: bool = False, task_ids: Sequence[int] | None = None
) -> list[RankingRow]:
    """Every ranking of the campaigns' real tasks (``gold=True``: of their gold tasks only;
    ``task_ids``: of these tasks only), oldest first, in two queries."""
    rankings = Ranking.objects.filter(campaign_id__in=campaign_ids, task__is_gold=gold)
    labels = RankingItem.objects.filter(
        ranking__campaign_id__in=campaign_ids, ranking__task__is_gold=gold
    )
    if task_ids is not None:
        rankings = rankings.filter(task_id__in=task_ids)
        labels = labels.filter(ranking__task_id__in=task_ids)
    meta = list(
        rankings.order_by("id").values_list(
            "id",
            "campaign_id",
            "task_id",
            "task__prompt_id",
            "labeller_id",
            "guideline__version",
            "campaign__round_number",
            "time_spent_ms",
        )
    )
    items: dict[int, dict[int, Label]] = defaultdict(dict)
    for ranking_id, completion_id, rank, failed in (
        labels.order_by()
        .values_list("ranking_id", "completion_id", "rank", "failed")
        .iterator(chunk_size=20_000)
    ):
        items[ranking_id][completion_id] = FAIL if failed else rank
    return [
        RankingRow(rid, cid, tid, pid, lid, version, round_number, ms / 1000.0, items[rid])
        for rid, cid, tid, pid, lid, version, round_number, ms in meta
    ]


def gold_references(*, campaign_ids: Sequence[int]) -> dict[int, dict[int, Label]]:
    """Task id -> the reference ranking {completion id: label} of every gold task."""
    return {
        task_id: {int(completion): label for completion, label in (reference or {}).items()}
        for task_id, reference in Task.objects.filter(
            campaign_id__in=campaign_ids, is_gold=True
        ).values_list("id", "gold_ranking")
    }


def ranking_records(rows: Iterable[RankingRow]) -> list[RankingRecord]:
    """The rows as the agreement module's input type."""
    return [
        RankingRecord(
            ranking_id=row.ranking_id,
            task_id=row.task_id,
            labeller_id=row.labeller_id,
            items=row.items,
            seconds=row.seconds,
        )
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class Texts:
    prompts: dict[int, str]
    messages: dict[int, list | None]
    completions: dict[int, str]


SMALL_ID_SET: Final = 5_000
"""Up to this many ids, texts are read by id; above, by joining the campaign (a query with
100,000 ids in ``IN (...)`` takes seconds on PostgreSQL, the join a fraction of that)."""


def texts_for(rows: Sequence[RankingRow]) -> Texts:
    """The prompt texts, chat messages and completion texts the rows refer to (two queries)."""
    prompt_ids = {row.prompt_id for row in rows}
    completion_ids = {cid for row in rows for cid in row.items}
    campaign_ids = sorted({row.campaign_id for row in rows})
    prompt_query = Prompt.objects.all()
    completion_query = Completion.objects.all()
    if len(completion_ids) <= SMALL_ID_SET:
        prompt_query = prompt_query.filter(pk__in=prompt_ids)
        completion_query = completion_query.filter(pk__in=completion_ids)
    else:  # every text of the campaigns' tasks: a superset, filtered below
        prompt_query = prompt_query.filter(tasks__campaign_id__in=campaign_ids)
        completion_query = completion_query.filter(
            task_completions__task__campaign_id__in=campaign_ids
        )
    prompts, messages = {}, {}
    for pid, text, msgs in prompt_query.order_by().values_list("id", "text", "messages"):
        if pid in prompt_ids:
            prompts[pid] = text
            messages[pid] = msgs
    completions = {
        cid: text
        for cid, text in completion_query.order_by()
        .values_list("id", "text")
        .iterator(chunk_size=20_000)
        if cid in completion_ids
    }
    # Anything the join did not reach (e.g. a ranked completion no longer in its task): by id.
    for pid, text, msgs in Prompt.objects.filter(pk__in=prompt_ids - prompts.keys()).values_list(
        "id", "text", "messages"
    ):
        prompts[pid] = text
        messages[pid] = msgs
    completions.update(
        Completion.objects.filter(pk__in=completion_ids - completions.keys()).values_list(
            "id", "text"
        )
    )
    return Texts(prompts=prompts, messages=messages, completions=completions)


# --------------------------------------------------------------------------------------------------
# Review: each task's provenance and the reviewers' rankings (issue 17; kept apart from the
# export formats, which take them as parameters)
# --------------------------------------------------------------------------------------------------

PROVENANCES: Final[tuple[str, ...]] = consensus.PROVENANCES


def adjudicated_rankings(*, campaign_ids: Sequence[int]) -> dict[int, dict[int, Label]]:
    """Task id -> the reviewer's ranking {completion id: label} of every adjudicated task."""
    return {
        task_id: {int(completion): label for completion, label in items.items()}
        for task_id, items in Adjudication.objects.filter(campaign_id__in=campaign_ids).values_list(
            "task_id", "items"
        )
    }


def task_provenance(
    rows: Sequence[RankingRow], adjudicated: Mapping[int, object]
) -> dict[int, str]:
    """Task id -> how its label was settled (:func:`annotation.consensus.provenance`) for
    every task of ``rows``: ``adjudicated`` when a reviewer decided, else from its rankings."""
    by_task: dict[int, list[dict[int, Label]]] = defaultdict(list)
    for row in rows:
        by_task[row.task_id].append(row.items)
    return {
        task_id: consensus.provenance(rankings, adjudicated=task_id in adjudicated)
        for task_id, rankings in by_task.items()
    }


def ranking_strengths(*, campaign_ids: Sequence[int]) -> dict[int, tuple[str, list[int]]]:
    """Ranking id -> (its campaign's strength scale, its levels per adjacent rank gap) of every
    ranking with a strength (:mod:`annotation.strength`); empty for campaigns without a scale."""
    return {
        ranking_id: (scale, levels)
        for ranking_id, scale, levels in Ranking.objects.filter(
            campaign_id__in=campaign_ids, strength__isnull=False
        )
        .exclude(campaign__strength_scale="none")
        .values_list("id", "campaign__strength_scale", "strength")
        if levels
    }


def with_provenance(
    rows: Sequence[RankingRow], provenance: Mapping[int, str], wanted: Iterable[str] | None
) -> list[RankingRow]:
    """The rows whose task's provenance is one of ``wanted`` (all of them for None)."""
    if not wanted:
        return list(rows)
    keep = set(wanted)
    return [row for row in rows if provenance.get(row.task_id) in keep]


# --------------------------------------------------------------------------------------------------
# Every labeller's pairs as they are
# --------------------------------------------------------------------------------------------------


def labeller_pairs(
    rows: Sequence[RankingRow],
    texts: Texts,
    *,
    ties: bool = False,
    fail_policy: FailPolicy = "drop",
    provenance: Mapping[int, str] | None = None,
    strength: Mapping[int, tuple[str, Sequence[int]]] | None = None,
) -> Iterator[dict]:
    """Every labeller's pairs as they are, one dict per pair with full provenance.

    Keys, the same for every pair: ``prompt``, ``chosen``, ``rejected`` (texts, as TRL and
    ``datasets`` read them), ``messages`` (the prompt's chat messages, or ``None``), ``tie``,
    ``margin`` (1.0 for a labeller's own preference, 0.0 for a tie), ``prompt_id``,
    ``chosen_id``, ``rejected_id``, and the provenance ``campaign``, ``task``, ``labeller``,
    ``ranking``, ``guideline_version`` (``None`` when the campaign had no guidelines) and
    ``round``; with ``provenance`` (task id -> :func:`task_provenance`) also ``provenance``.

    With ``strength`` (ranking id -> (scale, levels): :func:`ranking_strengths`) every pair also
    has ``strength``: the level of chosen over rejected (:func:`annotation.strength.pair_level`;
    None for a tie, a pair with an F completion, or a ranking without strength), and a judged
    pair's ``margin`` is Llama 2's m(r) of that level (level / 3) instead of 1.0.
    """
    for row in rows:
        judged = None if strength is None else strength.get(row.ranking_id)
        for pair in expand_ranking(row.items, ties=ties, fail_policy=fail_policy):
            extra = {} if provenance is None else {"provenance": provenance[row.task_id]}
            margin = 0.0 if pair.tie else 1.0
            if strength is not None:
                level = None
                if judged is not None and not pair.tie:
                    scale, levels = judged
                    level = strength_rules.pair_level(
                        row.items, levels, pair.chosen, pair.rejected, scale=scale
                    )
                extra["strength"] = level
                if level is not None:
                    margin = strength_rules.margin(level)
            yield {
                "prompt": texts.prompts[row.prompt_id],
                "chosen": texts.completions[pair.chosen],
                "rejected": texts.completions[pair.rejected],
                "messages": texts.messages.get(row.prompt_id) or None,
                "tie": pair.tie,
                "margin": margin,
                "prompt_id": row.prompt_id,
                "chosen_id": pair.chosen,
                "rejected_id": pair.rejected,
                "campaign": row.campaign_id,
                "task": row.task_id,
                "labeller": row.labeller_id,
                "ranking": row.ranking_id,
                "guideline_version": row.guideline_version,
                "round": row.round,
                **extra,
            }


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _json_bytes(value: object) -> bytes:
    if isinstance(value, str):  # what json.dumps(value, ensure_ascii=False) does, minus overhead
        return encode_basestring(value).encode()
    return json.dumps(value, ensure_ascii=False).encode()


class PairExpander:
    """:func:`annotation.pairs.expand_ranking` as (chosen, rejected, tie) tuples, memoised by the
    ranking's pattern: its labels in increasing completion id order.

    The pairs of a ranking depend on its completion ids only through their order (the rules sort
    by label, then id, and give a tie pair lower id first), so the pairs of the pattern, found by
    ``expand_ranking`` on slots 0..n-1, map to any ids in the same order. A campaign of N = 4 has
    at most 5^4 patterns; expanding 100,000 rankings becomes 100,000 look-ups.
    """

    def __init__(self, *, ties: bool, fail_policy: FailPolicy) -> None:
        self.ties = ties
        self.fail_policy = fail_policy
        self._patterns: dict[tuple[Label, ...], list[tuple[int, int, bool]]] = {}

    def __call__(self, items: dict[int, Label]) -> list[tuple[int, int, bool]]:
        ids = sorted(items)
        pattern = tuple(items[completion_id] for completion_id in ids)
        slots = self._patterns.get(pattern)
        if slots is None:
            pairs = expand_ranking(
                dict(enumerate(pattern)), ties=self.ties, fail_policy=self.fail_policy
            )
            slots = self._patterns[pattern] = [(p.chosen, p.rejected, p.tie) for p in pairs]
        return [(ids[chosen], ids[rejected], tie) for chosen, rejected, tie in slots]


_REJECTED: Final = b', "rejected": '
_TIE: Final = b'true, "margin": 0.0'
_STRICT: Final = b'false, "margin": 1.0'
_REJECTED_ID: Final = b', "rejected_id": '


def labeller_pairs_jsonl(
    rows: Sequence[RankingRow],
    texts: Texts,
    *,
    ties: bool = False,
    fail_policy: FailPolicy = "drop",
    chunk_pairs: int = 64,
    provenance: Mapping[int, str] | None = None,
) -> Iterator[bytes]:
    """:func:`labeller_pairs` as UTF-8 JSONL, in chunks of ``chunk_pairs`` whole lines.

    Byte for byte ``json.dumps(pair, ensure_ascii=False) + "\n"`` of every pair, several times
    faster: each prompt, completion text and ranking's provenance is encoded once, not once
    per pair, and a chunk is joined from those pieces in one copy.
    """
    text: dict[int, bytes] = {}  # completion id -> its text as a JSON string
    digits: dict[int, bytes] = {}  # completion id -> its id as JSON
    prompt_parts: dict[int, tuple[bytes, bytes]] = {}
    parts: list[bytes] = []
    pending = 0
    expand = PairExpander(ties=ties, fail_policy=fail_policy)
    for row in rows:
        pairs = expand(row.items)
        if not pairs:
            continue
        for completion_id in row.items:
            if completion_id not in text:
                text[completion_id] = _json_bytes(texts.completions[completion_id])
                digits[completion_id] = str(completion_id).encode()
        found = prompt_parts.get(row.prompt_id)
        if found is None:
            found = prompt_parts[row.prompt_id] = (
                b'{"prompt": ' + _json_bytes(texts.prompts[row.prompt_id]) + b', "chosen": ',
                b', "messages": '
                + _json_bytes(texts.messages.get(row.prompt_id) or None)
                + b', "tie": ',
            )
        head, middle = found
        prompt_id = f', "prompt_id": {row.prompt_id}, "chosen_id": '.encode()
        version = row.guideline_version
        tail = (
            f', "campaign": {row.campaign_id}, "task": {row.task_id}, '
            f'"labeller": {row.labeller_id}, "ranking": {row.ranking_id}, '
            f'"guideline_version": {"null" if version is None else int(version)}, '
            f'"round": {row.round}'
            + ("" if provenance is None else f', "provenance": "{provenance[row.task_id]}"')
            + "}\n"
        ).encode()
        for chosen, rejected, tie in pairs:
            parts.extend(
                (
                    head,
                    text[chosen],
                    _REJECTED,
                    text[rejected],
                    middle,
                    _TIE if tie else _STRICT,
                    prompt_id,
                    digits[chosen],
                    _REJECTED_ID,
                    digits[rejected],
                    tail,
                )
            )
        pending += len(pairs)
        if pending >= chunk_pairs:
            yield b"".join(parts)
            parts.clear()
            pending = 0
    if parts:
        yield b"".join(parts)


# --------------------------------------------------------------------------------------------------
# Aggregated pairs: one set per task
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Votes:
    """Labellers' answers on one completion pair: for chosen, for rejected, tied."""

    for_chosen: int
    against: int
    ties: int

    @property
    def voters(self) -> int:
        return self.for_chosen + self.against + self.ties

    @property
    def margin(self) -> float:
        """(for - against) / voters in [-1, 1]; 0.0 without voters."""
        return (self.for_chosen - self.against) / self.voters if self.voters else 0.0


def _bottom_tier_votes(rankings: Sequence[dict[int, Label]], chosen: int, rejected: int) -> Votes:
    """Votes as the consensus methods count them: F a bottom tier, F vs F a tie."""
    for_chosen = against = ties = 0
    for items in rankings:
        if chosen not in items or rejected not in items:
            continue
        a, b = items[chosen], items[rejected]
        answer = 0 if a == FAIL and b == FAIL else preference(a, b, fail_policy="rank_last")
        if answer == 1:
            for_chosen += 1
        elif answer == -1:
            against += 1
        else:
            ties += 1
    return Votes(for_chosen=for_chosen, against=against, ties=ties)


def _task_pairs(
    aggregate: Aggregate,
    rankings: Sequence[dict[int, Label]],
    *,
    ties: bool,
    fail_policy: FailPolicy,
) -> Iterator[tuple[Pair, Votes, float | None]]:
    """(pair, votes, Bradley-Terry score difference or None) for one task's consensus."""
    if aggregate == "majority":
        for majority in consensus.majority_pairs(rankings, fail_policy=fail_policy):
            if majority.tie and not ties:
                continue
            votes = Votes(
                for_chosen=majority.votes_for, against=majority.votes_against, ties=majority.ties
            )
            yield Pair(majority.chosen, majority.rejected, majority.tie), votes, None
        return
    scores: dict[int, float] | None = None
    if aggregate == "ranked_pairs":
        ranking = consensus.ranked_pairs(rankings)
    elif aggregate == "bradley_terry":
        fit = consensus.bradley_terry(rankings)
        ranking, scores = fit.ranking, fit.scores
    else:
        raise ValueError(f"unknown aggregate {aggregate!r}")
    for pair in expand_ranking(ranking, ties=ties, fail_policy=fail_policy):
        votes = _bottom_tier_votes(rankings, pair.chosen, pair.rejected)
        score_margin = None if scores is None else scores[pair.chosen] - scores[pair.rejected]
        yield pair, votes, score_margin


def aggregated_pairs(
    rows: Sequence[RankingRow],
    texts: Texts,
    *,
    aggregate: Aggregate,
    ties: bool = False,
    fail_policy: FailPolicy = "drop",
    provenance: Mapping[int, str] | None = None,
    adjudicated: Mapping[int, Mapping[int, Label]] | None = None,
) -> Iterator[dict]:
    """One set of pairs per task from all its labellers, tasks in increasing id order.

    * ``"ranked_pairs"``: the Tideman consensus ranking (:func:`consensus.ranked_pairs`: ties
      count 1/2 each, F a bottom tier, completions most labellers marked F labelled F),
      expanded like a labeller's ranking with ``ties`` and ``fail_policy``;
    * ``"bradley_terry"``: the same with the Bradley-Terry ranking
      (:func:`consensus.bradley_terry`); ``score_margin`` is the difference of the fitted log
      strengths, chosen minus rejected (a logit: P(chosen wins) = sigmoid(score_margin));
    * ``"majority"``: per completion pair the majority direction
      (:func:`consensus.majority_pairs`, votes counted as ``fail_policy`` pairs them; a tie in
      votes gives a tie pair, exported only with ``ties``).

    ``margin`` is the vote margin (for - against) / voters of chosen over rejected, a labeller's
    tie counting as a voter for neither side: 1 = unanimous, 0 = balanced. For the two consensus
    rankings the votes are counted as they were for the consensus (F a bottom tier, F vs F a
    tie), and the margin can be negative where ranked pairs broke a cycle against the direct
    vote. A tie pair's margin is that of the lower id over the higher one.

    Keys, the same for every pair: ``prompt``, ``chosen``, ``rejected``, ``messages``, ``tie``,
    ``margin``, ``prompt_id``, ``chosen_id``, ``rejected_id``, ``campaign``, ``task``,
    ``round``, ``aggregate``, ``votes_for``, ``votes_against``, ``vote_ties``, ``voters``,
    ``score_margin`` (``None`` but for Bradley-Terry), and the provenance of the consensus:
    ``labellers``, ``rankings`` (ids, increasing) and ``guideline_versions`` (distinct,
    increasing).

    With ``adjudicated`` (task id -> the reviewer's ranking, :func:`adjudicated_rankings`) a
    reviewed task's pairs are those of the reviewer's ranking, whatever ``aggregate`` says
    (expanded with ``ties`` and ``fail_policy``; votes and margin still count the labellers;
    ``score_margin`` None). With ``provenance`` every line also has ``provenance``.
    """
    if aggregate not in AGGREGATES or aggregate == "none":
        raise ValueError(f"unknown aggregate {aggregate!r}")
    by_task: dict[int, list[RankingRow]] = defaultdict(list)
    for row in rows:
        by_task[row.task_id].append(row)
    for task_id in sorted(by_task):
        task_rows = sorted(by_task[task_id], key=lambda row: row.ranking_id)
        first = task_rows[0]
        rankings = [row.items for row in task_rows]
        where = {
            "campaign": first.campaign_id,
            "task": task_id,
            "round": first.round,
            "aggregate": aggregate,
        }
        origin = {
            "labellers": sorted(row.labeller_id for row in task_rows),
            "rankings": [row.ranking_id for row in task_rows],
            "guideline_versions": sorted(
                {row.guideline_version for row in task_rows if row.guideline_version is not None}
            ),
        }
        if provenance is not None:
            origin["provenance"] = provenance[task_id]
        decided = None if adjudicated is None else adjudicated.get(task_id)
        if decided is not None:
            task_pairs: Iterable[tuple[Pair, Votes, float | None]] = (
                (pair, _bottom_tier_votes(rankings, pair.chosen, pair.rejected), None)
                for pair in expand_ranking(decided, ties=ties, fail_policy=fail_policy)
            )
        else:
            task_pairs = _task_pairs(aggregate, rankings, ties=ties, fail_policy=fail_policy)
        for pair, votes, score_margin in task_pairs:
            yield {
                "prompt": texts.prompts[first.prompt_id],
                "chosen": texts.completions[pair.chosen],
                "rejected": texts.completions[pair.rejected],
                "messages": texts.messages.get(first.prompt_id) or None,
                "tie": pair.tie,
                "margin": votes.margin,
                "prompt_id": first.prompt_id,
                "chosen_id": pair.chosen,
                "rejected_id": pair.rejected,
                **where,
                "votes_for": votes.for_chosen,
                "votes_against": votes.against,
                "vote_ties": votes.ties,
                "voters": votes.voters,
                "score_margin": score_margin,
                **origin,
            }


def pairs_jsonl(
    rows: Sequence[RankingRow],
    texts: Texts,
    *,
    aggregate: Aggregate = "none",
    ties: bool = False,
    fail_policy: FailPolicy = "drop",
    provenance: Mapping[int, str] | None = None,
    adjudicated: Mapping[int, Mapping[int, Label]] | None = None,
    strength: Mapping[int, tuple[str, Sequence[int]]] | None = None,
) -> Iterator[bytes]:
    """The pair export as UTF-8 JSONL in chunks of whole lines, for any ``aggregate``
    (``provenance`` and ``adjudicated``: see :func:`aggregated_pairs`; the labellers' own pairs
    take ``provenance`` and ``strength``: see :func:`labeller_pairs`)."""
    if fail_policy not in FAIL_POLICIES:
        raise ValueError(f"unknown fail_policy {fail_policy!r}")
    if aggregate == "none" and strength is not None:  # per-ranking levels: no shared patterns
        records = labeller_pairs(
            rows,
            texts,
            ties=ties,
            fail_policy=fail_policy,
            provenance=provenance,
            strength=strength,
        )
        for chunk in chunked(_dumps(record) + "\n" for record in records):
            yield chunk.encode()
        return
    if aggregate == "none":
        yield from labeller_pairs_jsonl(
            rows, texts, ties=ties, fail_policy=fail_policy, provenance=provenance
        )
        return
    records = aggregated_pairs(
        rows,
        texts,
        aggregate=aggregate,
        ties=ties,
        fail_policy=fail_policy,
        provenance=provenance,
        adjudicated=adjudicated,
    )
    for chunk in chunked(_dumps(record) + "\n" for record in records):
        yield chunk.encode()


def chunked(lines: Iterable[str], *, size: int = 1 << 16) -> Iterator[str]:
    """Join lines into chunks of about ``size`` characters, for a streamed response."""
    buffer: list[str] = []
    length = 0
    for line in lines:
        buffer.append(line)
        length += len(line)
        if length >= size:
            yield "".join(buffer)
            buffer, length = [], 0
    if buffer:
        yield "".join(buffer)


# --------------------------------------------------------------------------------------------------
# Rankings export: one row per ranking, a label per completion
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RankingsExport:
    """Every ranking of some campaigns with its provenance and a label per completion."""

    max_completions: int
    """the most completions any exported task has: the CSV's number of completion columns"""
    records: list[dict]
    """one dict per ranking, oldest first; see :func:`ranking_export`"""
    extra_columns: tuple[str, ...] = ()
    """record keys the CSV has after :data:`RANKING_CSV_COLUMNS` (:func:`with_review`)"""


def ranking_export(*, campaign_ids: Sequence[int]) -> RankingsExport:
    """Every ranking of the campaigns' real tasks (never a gold task's), oldest first, in five
    queries.

    Each record: ``ranking``, ``campaign``, ``task``, ``round``, ``prompt_id``,
    ``prompt_external_id``, ``prompt``, ``messages`` (or ``None``), ``labeller``, ``username``,
    ``guideline_version``, ``time_spent_ms``, ``comment``, ``created_at`` (ISO 8601) and
    ``completions``: the task's completions in import order, each ``{"id", "position", "text",
    "source", "rank", "failed"}`` (``rank`` 1 = best, equal ranks tie; ``None`` when marked F).
    """
    meta = list(
        Ranking.objects.filter(campaign_id__in=campaign_ids, task__is_gold=False)
        .order_by("id")
        .values_list(
            "id",
            "campaign_id",
            "task_id",
            "campaign__round_number",
            "task__prompt_id",
            "labeller_id",
            "labeller__username",
            "guideline__version",
            "time_spent_ms",
            "comment",
            "created_at",
        )
    )
    labels: dict[int, dict[int, tuple[int | None, bool]]] = defaultdict(dict)
    for ranking_id, completion_id, rank, failed in (
        RankingItem.objects.filter(
            ranking__campaign_id__in=campaign_ids, ranking__task__is_gold=False
        )
        .order_by()
        .values_list("ranking_id", "completion_id", "rank", "failed")
        .iterator(chunk_size=20_000)
    ):
        labels[ranking_id][completion_id] = (rank, failed)
    slots: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for task_id, completion_id, position in (
        TaskCompletion.objects.filter(task__campaign_id__in=campaign_ids, task__is_gold=False)
        .order_by("task_id", "position")
        .values_list("task_id", "completion_id", "position")
        .iterator(chunk_size=20_000)
    ):
        slots[task_id].append((completion_id, position))
    prompts = {
        pid: (external_id, text, messages)
        for pid, external_id, text, messages in Prompt.objects.filter(
            tasks__campaign_id__in=campaign_ids
        ).values_list("id", "external_id", "text", "messages")
    }
    completions = {
        cid: (text, source)
        for cid, text, source in Completion.objects.filter(
            task_completions__task__campaign_id__in=campaign_ids
        )
        .values_list("id", "text", "source")
        .iterator(chunk_size=20_000)
    }
    records = []
    for (
        ranking_id,
        campaign_id,
        task_id,
        round_number,
        prompt_id,
        labeller_id,
        username,
        version,
        time_spent_ms,
        comment,
        created_at,
    ) in meta:
        external_id, prompt_text, messages = prompts[prompt_id]
        given = labels[ranking_id]
        items = []
        # The task's completions in import order; any the ranking holds beyond them last.
        order = slots[task_id]
        if len(given) != len(order) or any(cid not in given for cid, _ in order):
            shown = {cid for cid, _ in order}
            order = order + [(cid, None) for cid in sorted(given) if cid not in shown]
        for completion_id, position in order:
            text, source = completions.get(completion_id, ("", ""))
            rank, failed = given.get(completion_id, (None, False))
            items.append(
                {
                    "id": completion_id,
                    "position": position,
                    "text": text,
                    "source": source,
                    "rank": rank,
                    "failed": failed,
                }
            )
        records.append(
            {
                "ranking": ranking_id,
                "campaign": campaign_id,
                "task": task_id,
                "round": round_number,
                "prompt_id": prompt_id,
                "prompt_external_id": external_id,
                "prompt": prompt_text,
                "messages": messages or None,
                "labeller": labeller_id,
                "username": username,
                "guideline_version": version,
                "time_spent_ms": time_spent_ms,
                "comment": comment,
                "created_at": created_at.isoformat(),
                "completions": items,
            }
        )
    return RankingsExport(
        max_completions=max((len(r["completions"]) for r in records), default=0),
        records=records,
    )


REVIEW_COLUMNS: Final = ("version", "latest", "edited_at", "provenance", "adjudication")
"""What :func:`with_review` adds to each rankings-export record (and CSV row)."""

Versions = Literal["latest", "all"]


def with_review(
    export: RankingsExport,
    *,
    campaign_ids: Sequence[int],
    versions: Versions = "latest",
    provenance: Iterable[str] | None = None,
) -> RankingsExport:
    """The rankings export with each record's version and its task's review (three queries).

    Every record gains ``version`` (1 = as first submitted), ``latest`` (True),
    ``edited_at`` (ISO 8601, or None), ``provenance`` (:func:`task_provenance`) and
    ``adjudication``: None, or the reviewer's decision ``{"decision", "reviewer", "note",
    "labels": {"<completion id>": rank or "F"}}``. With ``versions="all"`` each edited
    ranking's earlier versions come too, just before it (``latest`` False, their own labels,
    time, comment and guideline version; ``created_at`` when that version was submitted). With
    ``provenance`` only the tasks settled so are kept.
    """
    ids = [record["ranking"] for record in export.records]
    current = (
        {
            pk: (version, edited_at)
            for pk, version, edited_at in Ranking.objects.filter(pk__in=ids).values_list(
                "id", "version", "edited_at"
            )
        }
        if ids
        else {}
    )
    decisions = {
        task_id: {
            "decision": decision,
            "reviewer": reviewer,
            "note": note,
            "labels": items,
        }
        for task_id, decision, reviewer, note, items in Adjudication.objects.filter(
            campaign_id__in=campaign_ids
        ).values_list("task_id", "decision", "reviewer__username", "note", "items")
    }
    by_task: dict[int, list[dict[int, Label]]] = defaultdict(list)
    for record in export.records:
        by_task[record["task"]].append(
            {
                item["id"]: FAIL if item["failed"] else item["rank"]
                for item in record["completions"]
                if item["failed"] or item["rank"] is not None
            }
        )
    settled = {
        task_id: consensus.provenance(rankings, adjudicated=task_id in decisions)
        for task_id, rankings in by_task.items()
    }
    earlier: dict[int, list[tuple]] = defaultdict(list)
    if versions == "all" and ids:
        for row in (
            RankingVersion.objects.filter(ranking_id__in=ids)
            .order_by("ranking_id", "version")
            .values_list(
                "ranking_id",
                "version",
                "items",
                "guideline__version",
                "time_spent_ms",
                "comment",
                "submitted_at",
            )
        ):
            earlier[row[0]].append(row)
    wanted = set(provenance or ())
    records = []
    for record in export.records:
        task_provenance_ = settled[record["task"]]
        if wanted and task_provenance_ not in wanted:
            continue
        version, edited_at = current.get(record["ranking"], (1, None))
        review = {
            "provenance": task_provenance_,
            "adjudication": decisions.get(record["task"]),
        }
        for _, number, items, guideline, ms, comment, submitted in earlier[record["ranking"]]:
            records.append(
                {
                    **record,
                    "guideline_version": guideline,
                    "time_spent_ms": ms,
                    "comment": comment,
                    "created_at": submitted.isoformat(),
                    "completions": [
                        {
                            **item,
                            "rank": None
                            if items.get(str(item["id"])) in (None, FAIL)
                            else items[str(item["id"])],
                            "failed": items.get(str(item["id"])) == FAIL,
                        }
                        for item in record["completions"]
                    ],
                    "version": number,
                    "latest": False,
                    "edited_at": None,
                    **review,
                }
            )
        records.append(
            {
                **record,
                "version": version,
                "latest": True,
                "edited_at": edited_at.isoformat() if edited_at else None,
                **review,
            }
        )
    return RankingsExport(
        max_completions=export.max_completions, records=records, extra_columns=REVIEW_COLUMNS
    )


def rankings_jsonl(export: RankingsExport) -> Iterator[str]:
    """The rankings export as JSONL lines, one ranking per line."""
    for record in export.records:
        yield _dumps(record) + "\n"


RANKING_CSV_COLUMNS: Final = (
    "ranking",
    "campaign",
    "task",
    "round",
    "prompt_id",
    "prompt_external_id",
    "prompt",
    "messages",
    "labeller",
    "username",
    "guideline_version",
    "time_spent_ms",
    "comment",
    "created_at",
)


def csv_cell(value: object) -> object:
    """A value safe to put in a spreadsheet: text starting with ``= + - @``, a tab or a carriage
    return gets a leading single quote, so no spreadsheet runs it as a formula (OWASP CSV
    injection). ``None`` becomes an empty cell; numbers pass unchanged."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(CSV_INJECTION_PREFIXES):
        return "'" + value
    return value


class _Line:
    """A file-like object whose ``write`` returns what it is given, for ``csv.writer``."""

    def write(self, value: str) -> str:
        return value


def rankings_csv(export: RankingsExport) -> Iterator[str]:
    """The rankings export as CSV lines: a header, then one row per ranking.

    Columns: :data:`RANKING_CSV_COLUMNS` (``messages`` as JSON), then for each completion k of the
    task (import order) ``completion_k_id``, ``completion_k``, ``completion_k_source`` and
    ``completion_k_label`` (the rank, or ``F``). Text cells are escaped by :func:`csv_cell`.
    """
    writer = csv.writer(_Line())
    columns = RANKING_CSV_COLUMNS + export.extra_columns
    header = list(columns)
    for k in range(1, export.max_completions + 1):
        header += [f"completion_{k}_id", f"completion_{k}", f"completion_{k}_source"]
        header += [f"completion_{k}_label"]
    yield writer.writerow(header)
    for record in export.records:
        cells = [record[column] for column in columns]
        if record["messages"] is not None:
            cells[RANKING_CSV_COLUMNS.index("messages")] = _dumps(record["messages"])
        cells = [_dumps(c) if isinstance(c, dict | bool) else c for c in cells]
        for item in record["completions"]:
            label = FAIL if item["failed"] else item["rank"]
            cells += [item["id"], item["text"], item["source"], label]
        cells += [None] * (len(header) - len(cells))
        yield writer.writerow([csv_cell(cell) for cell in cells])
