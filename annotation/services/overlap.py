"""Overlap: how many labellers a task gets.

A task starts at the campaign's overlap, or at ``overlap_min`` (k_min) with adaptive overlap
(``Campaign.overlap_min`` set). With adaptive overlap the submit that fills a task's target
raises the target by one while the task's labellers disagree (strict-pair agreement below
``Campaign.reopen_below``), up to ``Campaign.overlap`` (k_max). Gold tasks have no cap: their
target follows what is handed out (:mod:`.assignment`).
"""

from __future__ import annotations

from django.db.models import F, Value
from django.db.models.functions import Greatest, Least

from annotation import agreement_figures
from annotation.models import (
    Campaign,
    RankingItem,
)
from annotation.pairs import FAIL, Label


def retarget_tasks(campaign: Campaign, *, was_adaptive: bool) -> None:
    """Move the tasks' targets after an overlap change (see :func:`campaign_update`)."""
    real = campaign.tasks.filter(is_gold=False)
    if campaign.adaptive_overlap:
        k_min, k_max = Value(campaign.overlap_min), Value(campaign.overlap)
        start = Greatest(F("target_overlap"), k_min) if was_adaptive else k_min
        real.update(target_overlap=Greatest(F("active_count"), Least(start, k_max)))
    else:
        real.update(target_overlap=Greatest(F("active_count"), Value(campaign.overlap)))
    # Gold tasks have no cap: their target only says when progress counts them as complete.
    campaign.tasks.filter(is_gold=True).update(
        target_overlap=Greatest(F("active_count"), Value(campaign.overlap))
    )


def initial_overlap(campaign: Campaign) -> int:
    """The target a new task starts with: k_min with adaptive overlap, else the overlap."""
    return campaign.overlap_min if campaign.adaptive_overlap else campaign.overlap


def task_disagrees(*, task_id: int, threshold: float) -> bool:
    """Whether the task's labellers agree on fewer than ``threshold`` of the strict pairs they
    both ordered (:func:`annotation.agreement_figures.task_strict_agreement`); False when
    undefined."""
    rankings: dict[int, dict[int, Label]] = {}
    for ranking_id, completion_id, rank, failed in RankingItem.objects.filter(
        ranking__task_id=task_id
    ).values_list("ranking_id", "completion_id", "rank", "failed"):
        rankings.setdefault(ranking_id, {})[completion_id] = FAIL if failed else rank
    value, _ = agreement_figures.task_strict_agreement(list(rankings.values()))
    return value is not None and value < threshold
