"""Acquisition: which tasks to send to labellers next, so the reward model learns most per label.

Pure: plain types in, plain types out, no Django (``training/acquisition.py`` is the job that
reads the tasks and stores the priorities).

The score (uncertainty sampling on the reward model's own Bradley-Terry probabilities):

1. the reward model scores every completion of a task: raw scores ``r_1 .. r_N``, the logits
   it was trained on (``P(i beats j) = sigmoid(r_i - r_j)``), not the normalised reward (the
   normalisation rescales the gaps and would change the probabilities);
2. for each completion pair, the binary entropy ``H(p)`` (bits) of ``p = sigmoid(r_i - r_j)``:
   1 when the model cannot tell the two apart (gap 0), towards 0 as the gap grows;
3. the task's uncertainty is the mean over its ``N(N-1)/2`` pairs (a ranking labels every
   pair), in [0, 1]; the task priority is that number, the most uncertain first.

Why the score gap and not an ensemble or MC-dropout: the reward model is trained with dropout
off (``reward_model.disable_dropout_in_config``), so MC-dropout has no dropout to sample, and an
ensemble multiplies the training cost of every round by its size. The gap needs one forward pass
per completion and is deterministic for a fixed model. ``bench/bench_acquisition.py`` measures
whether it beats random order on the synthetic labeller; uncertainty sampling is known to pick
noisy or ambiguous pairs too, so read that figure before switching a campaign to it.

Order: higher priority first, then lower task id (:func:`acquisition_order`); the assignment
query applies the same keys after "tasks others have started first".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from training.ml.common import ProgressFn, StopFn, TrainingCancelled, check_stop

Prompt = str | list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class TaskTexts:
    """One task as the reward model sees it."""

    task_id: int
    prompt: Prompt
    """plain text, or chat messages (the reward model's chat template renders them)"""
    completions: tuple[str, ...]


def pair_entropy(gap: float) -> float:
    """Binary entropy in bits of ``sigmoid(gap)``: 1 at gap 0, symmetric, towards 0 for |gap|
    large (exactly 0 beyond float precision)."""
    gap = abs(float(gap))
    if gap > 700:  # exp overflows; the entropy is far below float precision anyway
        return 0.0
    p = 1.0 / (1.0 + math.exp(-gap))  # >= 0.5
    q = 1.0 - p
    if q <= 0.0:
        return 0.0
    return -(p * math.log2(p) + q * math.log2(q))


def task_uncertainty(scores: Sequence[float]) -> float:
    """Mean :func:`pair_entropy` over the completion pairs of one task, in [0, 1].

    Raises ``ValueError`` with fewer than two scores or a score that is not finite.
    """
    values = [float(s) for s in scores]
    if len(values) < 2:
        raise ValueError("a task needs at least two scored completions")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("scores must be finite")
    entropies = [
        pair_entropy(values[i] - values[j])
        for i in range(len(values))
        for j in range(i + 1, len(values))
    ]
    return sum(entropies) / len(entropies)


def uncertainty_priorities(scores: Mapping[int, Sequence[float]]) -> dict[int, float]:
    """Task id -> priority (its :func:`task_uncertainty`) for every task scored."""
    return {task_id: task_uncertainty(task_scores) for task_id, task_scores in scores.items()}


def acquisition_order(priorities: Mapping[int, float]) -> list[int]:
    """Task ids in the order they are served: highest priority first, then lowest id."""
    return sorted(priorities, key=lambda task_id: (-priorities[task_id], task_id))


def select_next(priorities: Mapping[int, float], *, k: int) -> list[int]:
    """The ``k`` tasks served first (for simulations of the labelling loop)."""
    return acquisition_order(priorities)[:k]


AcquisitionCancelled = TrainingCancelled
"""The old name of what :func:`score_tasks` raises when stopped: ``training/acquisition.py``
still catches it by this name."""


def score_tasks(
    reward_model: Any,
    tasks: Sequence[TaskTexts],
    *,
    batch_size: int = 32,
    chunk: int = 512,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict[int, list[float]]:
    """Raw reward-model scores of every completion of every task: task id -> scores in the
    task's completion order.

    ``reward_model`` is a :class:`training.ml.reward_model.RewardModel` (anything with
    ``raw_scores(list of (prompt, completion), batch_size)``). Sequences are scored ``chunk``
    at a time; between chunks ``should_stop()`` is polled (True raises
    :class:`~training.ml.common.TrainingCancelled`) and ``on_progress(done, total, metrics)`` is
    called.
    """
    flat = [(task.prompt, text) for task in tasks for text in task.completions]
    total = len(flat)
    raw: list[float] = []
    for start in range(0, total, chunk):
        check_stop(should_stop, "cancelled while scoring")
        raw.extend(reward_model.raw_scores(flat[start : start + chunk], batch_size))
        if on_progress is not None:
            on_progress(min(start + chunk, total), total, {"acquisition/scored": float(len(raw))})
    scores: dict[int, list[float]] = {}
    position = 0
    for task in tasks:
        scores[task.task_id] = [float(x) for x in raw[position : position + len(task.completions)]]
        position += len(task.completions)
    return scores


def summary(priorities: Mapping[int, float], *, top: int = 10) -> dict[str, Any]:
    """Figures of a set of priorities for a job summary (namespaced ``acquisition/*``)."""
    values = sorted(priorities.values())
    if not values:
        return {"acquisition/tasks": 0, "acquisition/top_tasks": []}
    middle = len(values) // 2
    median = values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2
    return {
        "acquisition/tasks": len(values),
        "acquisition/mean_uncertainty": sum(values) / len(values),
        "acquisition/median_uncertainty": median,
        "acquisition/max_uncertainty": values[-1],
        "acquisition/min_uncertainty": values[0],
        "acquisition/top_tasks": acquisition_order(priorities)[:top],
    }
