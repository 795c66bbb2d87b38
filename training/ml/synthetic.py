"""A synthetic labeller with a hidden, known gold preference: humans are not available to tests.

The gold score is deliberately something a tiny, randomly initialised policy can learn to raise in
a few PPO steps: it rewards a few very common words, the letter ``e`` (the most frequent letter, so
almost every token moves it) and a moderate length. Benchmarks and quality tests compare a trained
policy's mean ``gold_score`` with the starting policy's.

``synthetic_ranking`` turns gold scores into the labels a human would give in the ranking UI:
rank 1 is best, equal ranks are ties, ``"F"`` marks a completion that fails the task.

Two golds (:data:`GOLD_KINDS`): ``"rules"`` is :func:`gold_score` above; ``"network"`` is
:class:`GoldNetwork`, a seeded, randomly initialised scorer several times the size of the tiny
reward model the loop trains (the proxy), for over-optimisation curves in the manner of Gao et
al. 2022, "Scaling Laws for Reward Model Overoptimization": the proxy learns the gold only from
the labels it gives, so it is a different, smaller network than the one whose preferences it
imitates.
"""

from __future__ import annotations

import functools
import math
import random
import re
import zlib
from collections.abc import Callable, Sequence
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


GoldKind = Literal["rules", "network"]
GOLD_KINDS: tuple[str, ...] = ("rules", "network")


class GoldNetwork:
    """A hidden gold reward model: a seeded, randomly initialised network over text features.

    Input: counts of words and character trigrams hashed (CRC-32) into :attr:`buckets` slots,
    each kind divided by its number, plus five dense features (gold-word rate, ``e`` rate, length
    error, repetition, length). Two tanh layers of :attr:`hidden` units, then a linear read-out
    with two parts:

    * a fixed read-out of the dense features: the rule's preferences (:func:`gold_score`) and a
      penalty for repetition, ``-3 * max(0, 0.75 - distinct words / words)``, which the rule
      lacks: a policy that repeats the words the rule likes is not a good one;
    * the random hidden units (a seeded Gaussian read-out scaled so that they contribute a
      standard deviation of about ``random_scale`` over ordinary prose): arbitrary, consistent
      tastes that a smaller proxy learns only approximately.

    With the defaults it has ``4096 * 256 + 256 * 256 + ...`` ≈ 1.1M parameters, about five times
    the tiny reward model (vocabulary 2048, 2 layers of 64). Plain numpy: labelling and evaluation
    need no torch, and a seed fixes it exactly.
    """

    DENSE = 5

    def __init__(
        self,
        *,
        seed: int = 0,
        buckets: int = 4096,
        hidden: int = 256,
        random_scale: float = 0.3,
    ) -> None:
        self.seed = seed
        self.buckets = buckets
        self.hidden = hidden
        rng = np.random.default_rng(seed)
        inputs = buckets + self.DENSE
        # About a dozen hashed inputs are active per text, each about 1/n: a wider first layer
        # keeps the pre-activations of order one.
        self.w1 = rng.normal(0.0, 4.0, (inputs, hidden)).astype(np.float32)
        self.b1 = rng.normal(0.0, 0.5, hidden).astype(np.float32)
        self.w2 = rng.normal(0.0, 1.0 / math.sqrt(hidden), (hidden, hidden)).astype(np.float32)
        self.b2 = rng.normal(0.0, 0.1, hidden).astype(np.float32)
        self.w3 = rng.normal(0.0, 1.0 / math.sqrt(hidden), hidden).astype(np.float32)
        self.random_scale = random_scale
        self._w3_scale = 1.0
        reference = [p + " " + p.lower() for p in synthetic_prompts(144)]
        spread = float(np.std([self._random_part(t) for t in reference])) or 1.0
        self._w3_scale = random_scale / spread

    @property
    def n_parameters(self) -> int:
        return sum(a.size for a in (self.w1, self.b1, self.w2, self.b2, self.w3)) + self.DENSE

    def features(self, text: str) -> np.ndarray:
        lowered = text.lower()
        words = _WORD_RE.findall(lowered)
        letters = [c for c in lowered if c.isalpha()]
        x = np.zeros(self.buckets + self.DENSE, dtype=np.float32)
        for word in words:
            x[zlib.crc32(b"w:" + word.encode()) % self.buckets] += 1.0 / len(words)
        padded = f" {' '.join(words)} "
        trigrams = [padded[i : i + 3] for i in range(len(padded) - 2)] if words else []
        for trigram in trigrams:
            x[zlib.crc32(b"c:" + trigram.encode()) % self.buckets] += 1.0 / len(trigrams)
        x[self.buckets :] = self._dense(words, letters)
        return x

    @staticmethod
    def _dense(words: list[str], letters: list[str]) -> list[float]:
        n = len(words)
        return [
            sum(w in GOLD_WORDS for w in words) / n if n else 0.0,
            letters.count(FAVOURED_LETTER) / len(letters) if letters else 0.0,
            min(abs(n - TARGET_WORDS) / TARGET_WORDS, 1.0),
            len(set(words)) / n if n else 0.0,
            n / TARGET_WORDS,
        ]

    def _random_part(self, text: str) -> float:
        x = self.features(text)
        active = np.flatnonzero(x)  # a few dozen of 4101 inputs: only their rows of w1
        h1 = np.tanh(x[active] @ self.w1[active] + self.b1)
        h2 = np.tanh(h1 @ self.w2 + self.b2)
        return float(h2 @ self.w3) * self._w3_scale

    def score(self, text: str) -> float:
        """The gold reward of ``text``; higher is better."""
        gold_words, e_rate, length_error, distinct, _ = self.features(text)[self.buckets :]
        words = bool(_WORD_RE.search(text.lower()))
        repetition = max(0.0, 0.75 - float(distinct)) if words else 0.0
        designed = 2.0 * gold_words + 2.0 * e_rate - length_error - 3.0 * repetition
        return float(designed) + self._random_part(text)


@functools.cache
def gold_network(seed: int = 0) -> GoldNetwork:
    """The gold network of ``seed``, built once per process."""
    return GoldNetwork(seed=seed)


def gold_scorer(gold: str = "rules", *, seed: int = 0) -> Callable[[str], float]:
    """The gold score function of a kind in :data:`GOLD_KINDS`."""
    if gold == "rules":
        return gold_score
    if gold == "network":
        return gold_network(seed).score
    raise ValueError(f"unknown gold {gold!r}: one of {', '.join(GOLD_KINDS)}")


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
    score: Callable[[str], float] = gold_score,
) -> list[Label]:
    """Label ``completions`` as a noisy labeller with the gold preference would.

    Returns one label per completion, in input order: an int rank (1 = best) or ``"F"``.

    * Each completion's perceived score is ``score(text) + N(0, noise²)`` (negated first when
      ``invert`` is true: an adversarial or drifted labeller who prefers what gold dislikes);
      ``score`` is the gold (:func:`gold_score` unless given, see :func:`gold_scorer`).
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
    perceived = [sign * score(text) + _gaussian(generator, noise) for text in completions]

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
    gold: GoldKind = "rules"
    """whose preferences the labeller has: ``rules`` (:func:`gold_score`) or ``network``
    (:class:`GoldNetwork` of seed 0)"""
    rankings_done: int = field(default=0, init=False)
    _rng: random.Random = field(init=False, repr=False)
    _score: Callable[[str], float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._score = gold_scorer(self.gold)

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
            score=self._score,
        )


def expected_gold_score(texts: Sequence[str], *, gold: str = "rules") -> float:
    """Mean gold score of ``texts`` (``nan`` for none): the quality measure of a policy."""
    if not texts:
        return math.nan
    score = gold_scorer(gold)
    return sum(score(t) for t in texts) / len(texts)


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
