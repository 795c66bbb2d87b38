"""What reviewers and labellers read of the review: the queue, one task's review, a labeller's
feedback. Read from the database into plain dataclasses; no access checks here (callers go
through :mod:`annotation.selectors`, which pass a campaign or labeller they were allowed).

* :func:`review_queue` — the real tasks that reached their overlap, lowest agreement first
  (strict pairwise agreement of the task's labellers; undefined last), with filters: agreement
  below a threshold, one labeller's tasks, tasks with a flagged labeller (the quality table's
  flag), tasks with a labeller flagged on the gold references, and pending / reviewed;
* :func:`task_review` — every labeller's latest ranking side by side with time and comment, the
  ranked-pairs consensus, the task's agreement, provenance and adjudication;
* :func:`labeller_feedback` — for one labeller, their reviewed tasks: their ranking beside the
  adjudicated one, and which completion pairs differ. Never another labeller's ranking.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

from django.db.models import F
from django.db.models.functions import Substr

from annotation import agreement_figures, consensus, exports
from annotation.models import Adjudication, Campaign, Ranking, Task, TaskCompletion
from annotation.pairs import FAIL, Label

Status = Literal["pending", "reviewed", "all"]
STATUSES: Final[tuple[str, ...]] = ("pending", "reviewed", "all")
PROMPT_PREVIEW: Final = 160


@dataclass(frozen=True, slots=True)
class QueueFilter:
    status: Status = "pending"
    below: float | None = None
    """only tasks whose strict agreement is below this (undefined agreement never is)"""
    labeller: int | None = None
    """only tasks this labeller ranked"""
    flagged: bool = False
    """only tasks ranked by a labeller the quality table flags"""
    gold_failures: bool = False
    """only tasks ranked by a labeller whose recent gold agreement is flagged"""


@dataclass(frozen=True, slots=True)
class QueueEntry:
    task_id: int
    prompt_id: int
    prompt: str
    """the prompt's first characters"""
    rankings: int
    labellers: tuple[str, ...]
    agreement: float | None
    """strict pairwise agreement of the task's labellers (None: no pair both ordered)"""
    pairs: int
    """labeller pairs x completion pairs behind ``agreement``"""
    three_way: float | None
    provenance: str
    decision: str | None
    reviewer: str | None
    flagged: tuple[str, ...]
    """usernames of its labellers the quality table flags"""
    gold_flagged: tuple[str, ...]
    ranked_by_you: bool


@dataclass(frozen=True, slots=True)
class ReviewQueue:
    entries: list[QueueEntry]
    """the matching tasks, lowest agreement first"""
    complete: int
    """real tasks that reached their overlap"""
    reviewed: int
    own: int
    """matching tasks the reviewer ranked: left out, another reviewer adjudicates them"""


def _sort_key(entry: QueueEntry) -> tuple:
    return (entry.agreement is None, entry.agreement or 0.0, entry.task_id)


def review_queue(*, campaign: Campaign, reviewer_id: int, filters: QueueFilter) -> ReviewQueue:
    """The review queue of ``campaign`` as ``reviewer_id`` sees it (module docstring)."""
    tasks = {
        pk: (prompt_id, preview)
        for pk, prompt_id, preview in Task.objects.filter(
            campaign=campaign, is_gold=False, submitted_count__gte=F("target_overlap")
        )
        .annotate(preview=Substr("prompt__text", 1, PROMPT_PREVIEW))
        .values_list("pk", "prompt_id", "preview")
    }
    rows = [row for row in exports.ranking_rows(campaign_ids=[campaign.pk]) if row.task_id in tasks]
    decisions = {
        task_id: (decision, reviewer)
        for task_id, decision, reviewer in Adjudication.objects.filter(
            campaign=campaign
        ).values_list("task_id", "decision", "reviewer__username")
    }
    provenance = exports.task_provenance(rows, decisions)
    figures = agreement_figures.task_agreement_by_id(campaign=campaign)
    usernames = agreement_figures.usernames({row.labeller_id for row in rows})
    flagged: set[int] = set()
    gold_flagged: set[int] = set()
    if rows:
        for line in agreement_figures.labeller_quality_table(campaign=campaign):
            if line.flagged:
                flagged.add(line.labeller_id)
            if line.gold_flagged:
                gold_flagged.add(line.labeller_id)
    by_task: dict[int, list[exports.RankingRow]] = defaultdict(list)
    for row in rows:
        by_task[row.task_id].append(row)
    entries, own = [], 0
    for task_id, task_rows in by_task.items():
        labeller_ids = [row.labeller_id for row in task_rows]
        decision, reviewer = decisions.get(task_id, (None, None))
        if filters.status == "pending" and decision is not None:
            continue
        if filters.status == "reviewed" and decision is None:
            continue
        strict, pairs, three_way = figures.get(task_id, (None, 0, None))
        if filters.below is not None and (strict is None or strict >= filters.below):
            continue
        if filters.labeller is not None and filters.labeller not in labeller_ids:
            continue
        if filters.flagged and not flagged.intersection(labeller_ids):
            continue
        if filters.gold_failures and not gold_flagged.intersection(labeller_ids):
            continue
        mine = reviewer_id in labeller_ids
        if mine and decision is None:
            own += 1
            continue
        prompt_id, preview = tasks[task_id]
        entries.append(
            QueueEntry(
                task_id=task_id,
                prompt_id=prompt_id,
                prompt=preview,
                rankings=len(task_rows),
                labellers=tuple(usernames.get(pk, "") for pk in labeller_ids),
                agreement=strict,
                pairs=pairs,
                three_way=three_way,
                provenance=provenance[task_id],
                decision=decision,
                reviewer=reviewer,
                flagged=tuple(usernames.get(pk, "") for pk in labeller_ids if pk in flagged),
                gold_flagged=tuple(
                    usernames.get(pk, "") for pk in labeller_ids if pk in gold_flagged
                ),
                ranked_by_you=mine,
            )
        )
    entries.sort(key=_sort_key)
    return ReviewQueue(
        entries=entries,
        complete=len(tasks),
        reviewed=sum(1 for task_id in tasks if task_id in decisions),
        own=own,
    )


# --------------------------------------------------------------------------------------------------
# One task
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompletionView:
    completion_id: int
    position: int
    letter: str
    text: str
    source: str


@dataclass(frozen=True, slots=True)
class RankingView:
    ranking_id: int
    labeller_id: int
    username: str
    labels: dict[int, Label]
    version: int
    seconds: float
    comment: str
    created_at: datetime
    edited_at: datetime | None


@dataclass(frozen=True, slots=True)
class AdjudicationView:
    decision: str
    reviewer: str
    labels: dict[int, Label]
    note: str
    source_ranking: int | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TaskReview:
    task_id: int
    campaign_id: int
    prompt: str
    messages: list | None
    complete: bool
    """the task reached its overlap (only then can it be adjudicated)"""
    completions: list[CompletionView]
    rankings: list[RankingView]
    consensus: dict[int, Label]
    """ranked pairs of the labellers' rankings (what "accept the consensus" stores)"""
    agreement: float | None
    pairs: int
    provenance: str
    adjudication: AdjudicationView | None
    ranked_by_you: bool
    next_task: int | None = None
    """the next pending task of the reviewer's queue, if any"""
    scores: dict[int, float] = field(default_factory=dict)


LETTERS: Final = ("A", "B", "C", "D", "E", "H", "I", "J", "K")
"""As the labeller page names cards (no F, no G: they are keys)."""


def task_review(*, task: Task, reviewer_id: int) -> TaskReview:
    """One task's review (module docstring); ``task`` with its prompt selected."""
    completions = [
        CompletionView(
            completion_id=cid, position=position, letter=LETTERS[i], text=text, source=source
        )
        for i, (cid, position, text, source) in enumerate(
            TaskCompletion.objects.filter(task=task)
            .order_by("position")
            .values_list("completion_id", "position", "completion__text", "completion__source")
        )
    ]
    rankings = list(
        Ranking.objects.filter(task=task)
        .select_related("labeller")
        .prefetch_related("items")
        .order_by("labeller__username", "id")
    )
    views = [
        RankingView(
            ranking_id=r.pk,
            labeller_id=r.labeller_id,
            username=r.labeller.get_username(),
            labels={item.completion_id: item.label for item in r.items.all()},
            version=r.version,
            seconds=r.time_spent_ms / 1000,
            comment=r.comment,
            created_at=r.created_at,
            edited_at=r.edited_at,
        )
        for r in rankings
    ]
    labels = [v.labels for v in views]
    strict, pairs = agreement_figures.task_strict_agreement(labels)
    adjudication = (
        Adjudication.objects.filter(task=task).select_related("reviewer").first()
        if not task.is_gold
        else None
    )
    decided = (
        AdjudicationView(
            decision=adjudication.decision,
            reviewer=adjudication.reviewer.get_username(),
            labels={int(c): label for c, label in adjudication.items.items()},
            note=adjudication.note,
            source_ranking=adjudication.source_ranking_id,
            updated_at=adjudication.updated_at,
        )
        if adjudication is not None
        else None
    )
    return TaskReview(
        task_id=task.pk,
        campaign_id=task.campaign_id,
        prompt=task.prompt.text,
        messages=task.prompt.messages,
        complete=task.submitted_count >= task.target_overlap,
        completions=completions,
        rankings=views,
        consensus=consensus.ranked_pairs(labels) if labels else {},
        agreement=strict,
        pairs=pairs,
        provenance=consensus.provenance(labels, adjudicated=decided is not None),
        adjudication=decided,
        ranked_by_you=any(v.labeller_id == reviewer_id for v in views),
    )


# --------------------------------------------------------------------------------------------------
# A labeller's feedback
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedbackCompletion:
    completion_id: int
    letter: str
    text: str
    yours: Label | None
    adjudicated: Label | None


@dataclass(frozen=True, slots=True)
class Feedback:
    ranking_id: int
    assignment_id: int
    campaign_id: int
    campaign: str
    prompt: str
    completions: list[FeedbackCompletion]
    differs: bool
    """the adjudicated ranking orders some completion pair differently from yours"""
    pairs_differing: list[tuple[str, str]]
    """(letter, letter) of each completion pair ordered differently (better / tie / worse)"""
    pairs: int
    decision: str
    """what the reviewer did, as a labeller may read it"""
    note: str
    reviewed_at: datetime


def _answer(a: Label | None, b: Label | None) -> int | None:
    if a is None or b is None:
        return None
    if a == FAIL and b == FAIL:
        return 0
    if a == FAIL:
        return -1
    if b == FAIL:
        return 1
    return (a < b) - (a > b)  # type: ignore[operator]


def labeller_feedback(*, labeller_id: int, campaign_id: int | None = None) -> list[Feedback]:
    """The labeller's reviewed tasks, newest decision first (module docstring). Their own
    labels and the reviewer's only: no other labeller's ranking, name or count."""
    mine = Ranking.objects.filter(labeller_id=labeller_id, task__adjudication__isnull=False)
    if campaign_id is not None:
        mine = mine.filter(campaign_id=campaign_id)
    rankings = list(
        mine.select_related("task__prompt", "task__adjudication", "campaign")
        .prefetch_related("items")
        .order_by("-task__adjudication__updated_at", "-id")
    )
    slots: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for task_id, cid, text in (
        TaskCompletion.objects.filter(task_id__in=[r.task_id for r in rankings])
        .order_by("task_id", "position")
        .values_list("task_id", "completion_id", "completion__text")
    ):
        slots[task_id].append((cid, text))
    result = []
    for r in rankings:
        adjudication = r.task.adjudication
        yours = {item.completion_id: item.label for item in r.items.all()}
        theirs = {int(c): label for c, label in adjudication.items.items()}
        order = slots[r.task_id]
        letters = {cid: LETTERS[i] for i, (cid, _) in enumerate(order)}
        differing = []
        pairs = 0
        for i, (a, _) in enumerate(order):
            for b, _ in order[i + 1 :]:
                mine_answer = _answer(yours.get(a), yours.get(b))
                their_answer = _answer(theirs.get(a), theirs.get(b))
                if mine_answer is None or their_answer is None:
                    continue
                pairs += 1
                if mine_answer != their_answer:
                    differing.append((letters[a], letters[b]))
        if adjudication.decision == Adjudication.Decision.LABELLER:
            decision = (
                "picked your ranking"
                if adjudication.source_ranking_id == r.pk
                else "picked another labeller's ranking"
            )
        elif adjudication.decision == Adjudication.Decision.CONSENSUS:
            decision = "accepted the labellers' consensus"
        else:
            decision = "wrote the ranking that stands"
        result.append(
            Feedback(
                ranking_id=r.pk,
                assignment_id=r.assignment_id,
                campaign_id=r.campaign_id,
                campaign=r.campaign.name,
                prompt=r.task.prompt.text,
                completions=[
                    FeedbackCompletion(
                        completion_id=cid,
                        letter=letters[cid],
                        text=text,
                        yours=yours.get(cid),
                        adjudicated=theirs.get(cid),
                    )
                    for cid, text in order
                ],
                differs=bool(differing),
                pairs_differing=differing,
                pairs=pairs,
                decision=decision,
                note=adjudication.note,
                reviewed_at=adjudication.updated_at,
            )
        )
    return result
