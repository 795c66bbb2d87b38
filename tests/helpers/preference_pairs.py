"""Synthetic preference pairs a tiny reward model learns in a few steps (no Django)."""

from __future__ import annotations

import random

from training.ml.records import PreferencePair

WORDS = ("the", "kettle", "water", "bread", "onion", "sky", "rice", "soup", "cat", "sleep", "light")
WORDS += ("sound", "metal", "rust", "moon", "leaf", "plant", "test", "code", "loop", "list", "file")


def marker_pairs(n: int, *, seed: int = 0, rounds: int = 1) -> list[PreferencePair]:
    """Chosen completions always contain 'banana'; rejected ones never do."""
    rng = random.Random(seed)

    def words(k: int) -> list[str]:
        return [rng.choice(WORDS) for _ in range(k)]

    pairs = []
    for i in range(n):
        chosen = words(rng.randint(4, 8))
        chosen.insert(rng.randint(0, len(chosen)), "banana")
        pairs.append(
            PreferencePair(
                prompt=f"Question {i}: tell me about {' '.join(words(3))}.\nAnswer:",
                chosen=" " + " ".join(chosen),
                rejected=" " + " ".join(words(rng.randint(4, 8))),
                prompt_id=i,
                round=i % rounds,
            )
        )
    return pairs
