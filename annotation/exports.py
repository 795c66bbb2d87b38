"""Reading rankings out of the database as plain records: the bridge to the pure modules.

Everything here reads in a few bulk queries (no per-ranking queries) and yields plain dicts or
dataclasses, so exports stream and the agreement code receives plain types.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from annotation.agreement import RankingRecord
from annotation.models import Completion, Prompt, Ranking, RankingItem
from annotation.pairs import FAIL, FailPolicy, Label, expand_ranking


@dataclass(frozen=True, slots=True)
class RankingRow:
    """A stored ranking with its provenance, as plain data."""

    ranking_id: int
    campaign_id: int
    task_id: int
    prompt_id: int
    labeller_id: int
    guideline_version: int | None
    round: int
    seconds: float
    items: dict[int, Label]


def ranking_rows(*, campaign_ids: Sequence[int]) -> list[RankingRow]:
    """Every ranking of the campaigns, oldest first, in two queries."""
    meta = list(
        Ranking.objects.filter(campaign_id__in=campaign_ids)
        .order_by("id")
        .values_list(
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
        RankingItem.objects.filter(ranking__campaign_id__in=campaign_ids)
        .order_by()
        .values_list("ranking_id", "completion_id", "rank", "failed")
        .iterator(chunk_size=20_000)
    ):
        items[ranking_id][completion_id] = FAIL if failed else rank
    return [
        RankingRow(
            ranking_id=rid,
            campaign_id=cid,
            task_id=tid,
            prompt_id=pid,
            labeller_id=lid,
            guideline_version=version,
            round=round_number,
            seconds=ms / 1000.0,
            items=items[rid],
        )
        for rid, cid, tid, pid, lid, version, round_number, ms in meta
    ]


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


def texts_for(rows: Sequence[RankingRow]) -> Texts:
    prompt_ids = {row.prompt_id for row in rows}
    completion_ids = {cid for row in rows for cid in row.items}
    prompts, messages = {}, {}
    for pid, text, msgs in Prompt.objects.filter(pk__in=prompt_ids).values_list(
        "id", "text", "messages"
    ):
        prompts[pid] = text
        messages[pid] = msgs
    completions = dict(
        Completion.objects.filter(pk__in=completion_ids).values_list("id", "text").iterator()
    )
    return Texts(prompts=prompts, messages=messages, completions=completions)


def labeller_pairs(
    rows: Sequence[RankingRow],
    texts: Texts,
    *,
    ties: bool = False,
    fail_policy: FailPolicy = "drop",
) -> Iterator[dict]:
    """Every labeller's pairs as they are, one dict per pair with full provenance.

    Keys: ``prompt``, ``chosen``, ``rejected`` (as TRL and ``datasets`` read them), ``tie``,
    ``margin`` (1.0 for a labeller's own preference, 0.0 for a tie), ``messages`` (when the
    prompt has chat messages), ids and provenance.
    """
    for row in rows:
        for pair in expand_ranking(row.items, ties=ties, fail_policy=fail_policy):
            record = {
                "prompt": texts.prompts[row.prompt_id],
                "chosen": texts.completions[pair.chosen],
                "rejected": texts.completions[pair.rejected],
                "tie": pair.tie,
                "margin": 0.0 if pair.tie else 1.0,
                "prompt_id": row.prompt_id,
                "chosen_id": pair.chosen,
                "rejected_id": pair.rejected,
                "campaign": row.campaign_id,
                "task": row.task_id,
                "labeller": row.labeller_id,
                "ranking": row.ranking_id,
                "guideline_version": row.guideline_version,
                "round": row.round,
            }
            if texts.messages.get(row.prompt_id):
                record["messages"] = texts.messages[row.prompt_id]
            yield record
