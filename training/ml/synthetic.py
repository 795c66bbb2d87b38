"""A synthetic labeller with a hidden, known gold preference: humans are not available to tests.

The gold score is deliberately something a tiny, randomly initialised policy can learn to raise in
a few PPO steps: it rewards a few very common words, the letter ``e`` (the most frequent letter, so
almost every token moves it) and a moderate length. Benchmarks and quality tests compare a trained
policy's mean ``gold_score`` with the starting policy's.

``synthetic_ranking`` turns gold scores into the labels a human would give in the ranking UI:
rank 1 is best, equal ranks are ties, ``"F"`` marks a completion that fails the task.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

GOLD_WORDS: frozenset[str] = frozenset(
    {"the", "and", "good", "great", "water", "thank", "thanks", "you", "happy", "help"}
)
"""Words the gold labeller likes (case-insensitive, whole words)."""

TARGET_WORDS = 12
"""The gold labeller's favourite length, in words."""

FAVOURED_LETTER = "e"

_WORD_RE = re.compile(r"[a-z']+")

PROMPT_TOPICS: tuple[str, ...] = (
    "bread",
    "kettles",
    "plants",
    "yawning",
    "rain",
    "coffee",
    "bicycles",
    "music",
    "sleep",
    "gardens",
    "rivers",
    "clouds",
    "stars",
    "ovens",
    "tea",
    "books",
    "dogs",
    "cats",
    "trains",
    "bridges",
    "snow",
    "apples",
    "soup",
    "lamps",
    "maps",
    "boats",
    "shoes",
    "honey",
    "winter",
    "cheese",
    "mountains",
    "birds",
    "candles",
    "forests",
    "pianos",
    "islands",
)
"""Everyday topics for the synthetic loop's prompts."""

PROMPT_FORMS: tuple[str, ...] = (
    "Tell me about {}.",
    "Why do people like {}?",
    "Write a short note about {}.",
    "What should I know about {}?",
)
"""Question forms, each filled with every topic."""


def synthetic_prompts(
    n: int, *, topics: int = len(PROMPT_TOPICS), forms: int = len(PROMPT_FORMS)
) -> list[str]:
    """The first ``n`` prompts of the synthetic loop: each of the first ``forms`` question forms
    over the first ``topics`` topics, form by form."""
    return [f.format(t) for f in PROMPT_FORMS[:forms] for t in PROMPT_TOPICS[:topics]][:n]


Label = int | Literal["F"]
Rng = random.Random | np.random.Generator | int | None


def gold_score(text: str) -> float:
    """The hidden gold preference of the synthetic labeller; higher is better.

    ``score = 2 * gold_word_rate + 2 * e_rate - length_penalty`` where

    * ``gold_word_rate`` = fraction of words in :data:`GOLD_WORDS`,
    * ``e_rate`` = fraction of letters that are ``e`` (about 0.12 in English prose),
    * ``length_penalty`` = ``min(|n_words - 12| / 12, 1)``.

    The range is [-1, 4]; the empty string scores -1.
    """
    lowered = text.lower()
    words = _WORD_RE.findall(lowered)
    letters = [c for c in lowered if c.isalpha()]
    gold_word_rate = sum(w in GOLD_WORDS for w in words) / len(words) if words else 0.0
    e_rate = letters.count(FAVOURED_LETTER) / len(letters) if letters else 0.0
    length_penalty = min(abs(len(words) - TARGET_WORDS) / TARGET_WORDS, 1.0)
    return 2.0 * gold_word_rate + 2.0 * e_rate - length_penalty


def _as_rng(rng: Rng) -> random.Random | np.random.Generator:
    if isinstance(rng, random.Random | np.random.Generator):
        return rng
    return random.Random(rng)


def _gaussian(rng: random.Random | np.random.Generator, sigma: float) -> float:
    if sigma == 0.0:
        return 0.0
    if isinstance(rng, np.random.Generator):
        return float(rng.normal(0.0, sigma))
    return rng.gauss(0.0, sigma)


def synthetic_ranking(
    completions: Sequence[str],
    *,
    noise: float = 0.0,
    rng: Rng = None,
    allow_ties: bool = False,
    fail_below: float | None = None,
    invert: bool = False,
    tie_epsilon: float = 0.05,
) -> list[Label]:
    """Label ``completions`` as a noisy labeller with the gold preference would.

    Returns one label per completion, in input order: an int rank (1 = best) or ``"F"``.

    * Each completion's perceived score is ``gold_score(text) + N(0, noise²)`` (negated first when
      ``invert`` is true: an adversarial or drifted labeller who prefers what gold dislikes).
    * ``"F"`` when the perceived score is below ``fail_below`` (``None``: never fail). Failed
      completions take no rank; the rest are ranked among themselves.
    * Ranks are dense: with ``allow_ties``, a completion whose perceived score is within
      ``tie_epsilon`` of the previous (next better) one shares its rank, so labels look like
      ``[1, 1, 2]``; without ties the ranks are a permutation of ``1..n`` (equal scores broken by
      input order).

    ``rng`` is a ``random.Random``, a ``numpy.random.Generator``, or an int seed (``None``: seed 0);
    one Gaussian draw per completion, in input order, so a seed fixes the labels.
    """
    if noise < 0:
        raise ValueError("noise must be >= 0")
    generator = _as_rng(0 if rng is None else rng)
    sign = -1.0 if invert else 1.0
    perceived = [sign * gold_score(text) + _gaussian(generator, noise) for text in completions]

    labels: list[Label] = ["F"] * len(completions)
    ranked = [i for i, s in enumerate(perceived) if fail_below is None or s >= fail_below]
    ranked.sort(key=lambda i: (-perceived[i], i))
    rank = 0
    previous: float | None = None
    for i in ranked:
        score = perceived[i]
        if not (allow_ties and previous is not None and previous - score <= tie_epsilon):
            rank += 1
        labels[i] = rank
        previous = score
    return labels


@dataclass
class SyntheticLabeller:
    """A labeller with its own random stream, for demos and benchmarks that label many tasks.

    ``invert=True`` gives an adversarial labeller (prefers low gold scores); ``flip_after`` makes
    a drifting one: it labels honestly for its first ``flip_after`` rankings, inverted after.
    """

    noise: float = 0.3
    """standard deviation of the Gaussian noise added to the gold score"""
    seed: int = 0
    """seed of this labeller's random stream"""
    allow_ties: bool = False
    """whether scores within ``tie_epsilon`` share a rank"""
    tie_epsilon: float = 0.05
    """perceived-score gap at or below which two neighbours tie"""
    fail_below: float | None = None
    """perceived score below which a completion is labelled ``"F"``; ``None`` never fails"""
    invert: bool = False
    """prefer what the gold score dislikes, from the first ranking on"""
    flip_after: int | None = None
    """number of honest rankings before the labeller starts inverting; ``None`` never drifts"""
    rankings_done: int = field(default=0, init=False)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def rank(self, completions: Sequence[str]) -> list[Label]:
        """Label one task's completions (see :func:`synthetic_ranking`)."""
        drifted = self.flip_after is not None and self.rankings_done >= self.flip_after
        self.rankings_done += 1
        return synthetic_ranking(
            completions,
            noise=self.noise,
            rng=self._rng,
            allow_ties=self.allow_ties,
            fail_below=self.fail_below,
            invert=self.invert != drifted,
            tie_epsilon=self.tie_epsilon,
        )


def expected_gold_score(texts: Sequence[str]) -> float:
    """Mean gold score of ``texts`` (``nan`` for none): the quality measure of a policy."""
    if not texts:
        return math.nan
    return sum(gold_score(t) for t in texts) / len(texts)


LLAMA2_THRESHOLDS: tuple[float, float, float] = (0.15, 0.4, 0.8)
"""Perceived-score gaps at which the synthetic labeller's Llama 2 level steps up (0 negligibly
better or unsure below 0.15, 1 slightly, 2 better, 3 significantly better from 0.8)."""


def synthetic_strength(
    perceived_gap: float, *, thresholds: Sequence[float] = LLAMA2_THRESHOLDS
) -> int:
    """How much better a labeller says the preferred completion is: the number of
    ``thresholds`` its perceived score gap (``|s_chosen - s_rejected|``, noise included) reaches.
    With the defaults, Llama 2's four levels 0..3."""
    gap = abs(perceived_gap)
    return sum(gap >= t for t in thresholds)
