"""Does preference strength buy reward-model accuracy? Plain Bradley-Terry against Llama 2's
margin loss at the same number of labels, with the synthetic labeller (training/ml/synthetic.py).

Each task is a pair of synthetic completions (random word sequences over a vocabulary holding
the gold labeller's favourite words, words rich and poor in ``e``, of 3 to 24 words). The
labeller perceives ``gold_score + N(0, noise^2)``, prefers the higher, and says how much better
on Llama 2's four levels from the perceived gap (``synthetic_strength``: 0 below 0.15, 1, 2, 3
from 0.8). Both reward models are the same linear scorer on the text's features (word rates,
letter rates, one-hot length), trained full-batch with Adam on the project's loss,
``training.ml.reward_model.preference_loss``: once plain, once with ``margins`` = level / 3
(Llama 2's small margins, what the pair export and ``training.exports`` give), and, as a
control, with one constant margin for every pair (the mean of those levels / 3): a gain the
constant margin also gets comes from a wider required gap, not from what strength says. Held-out
accuracy is against the gold (noise-free) preference on 4,000 fresh pairs; each budget is run
over many seeds (the same labels for both models within a seed), and the difference is paired.

Usage:
    python bench/bench_strength.py                       # the figures in bench/README.md
    python bench/bench_strength.py --seeds 5 --budgets 100 400   # quicker
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.ml.reward_model import preference_loss  # noqa: E402
from training.ml.synthetic import GOLD_WORDS, gold_score, synthetic_strength  # noqa: E402

FILLER = [
    *("tree", "stone", "river", "seven", "green", "between", "every", "sleep", "cheese"),
    *("needle", "cat", "dog", "sun", "moon", "black", "window", "sharp", "lamp", "cup"),
    *("box", "tall", "hill", "word", "road", "city", "farm", "wall", "iron", "glass"),
    *("paper", "music", "light", "storm"),
]  # e-rich and e-poor words the gold labeller has no view on
VOCAB = sorted(GOLD_WORDS) + FILLER
WORD_RE = re.compile(r"[a-z']+")
MAX_WORDS = 24


def random_text(rng: np.random.Generator) -> str:
    n = int(rng.integers(3, MAX_WORDS + 1))
    gold_share = rng.uniform(0.0, 0.6)  # some texts lean on the favourite words, some do not
    words = [
        VOCAB[rng.integers(len(GOLD_WORDS))]
        if rng.random() < gold_share
        else FILLER[rng.integers(len(FILLER))]
        for _ in range(n)
    ]
    return " ".join(words)


def features(text: str) -> np.ndarray:
    """Word rates over the vocabulary, letter rates, and the length one-hot: a scorer linear in
    these can represent the gold score, but has ~90 weights to learn from the labels."""
    words = WORD_RE.findall(text.lower())
    word_rates = np.array([words.count(w) for w in VOCAB], dtype=np.float64) / max(len(words), 1)
    letters = [c for c in text.lower() if c.isalpha()]
    letter_rates = np.array(
        [letters.count(c) for c in "abcdefghijklmnopqrstuvwxyz"], dtype=np.float64
    ) / max(len(letters), 1)
    length = np.zeros(MAX_WORDS + 1)
    length[min(len(words), MAX_WORDS)] = 1.0
    return np.concatenate([word_rates, letter_rates, length])


def labelled_pairs(rng: np.random.Generator, count: int, noise: float):
    """(chosen features, rejected features, Llama 2 level) of ``count`` pairs a noisy labeller
    judged."""
    chosen, rejected, levels = [], [], []
    for _ in range(count):
        a, b = random_text(rng), random_text(rng)
        sa = gold_score(a) + rng.normal(0.0, noise)
        sb = gold_score(b) + rng.normal(0.0, noise)
        if sa < sb:
            a, b, sa, sb = b, a, sb, sa
        chosen.append(features(a))
        rejected.append(features(b))
        levels.append(synthetic_strength(sa - sb))
    return np.array(chosen), np.array(rejected), np.array(levels)


def held_out(rng: np.random.Generator, count: int):
    """Pairs with the gold preference (exact gold ties left out)."""
    better, worse = [], []
    while len(better) < count:
        a, b = random_text(rng), random_text(rng)
        ga, gb = gold_score(a), gold_score(b)
        if ga == gb:
            continue
        if ga < gb:
            a, b = b, a
        better.append(features(a))
        worse.append(features(b))
    return torch.tensor(np.array(better)), torch.tensor(np.array(worse))


def train(chosen, rejected, margins, *, seed: int, steps: int, lr: float) -> torch.nn.Linear:
    torch.manual_seed(seed)
    model = torch.nn.Linear(chosen.shape[1], 1, bias=False).double()
    torch.nn.init.zeros_(model.weight)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    xc, xr = torch.tensor(chosen), torch.tensor(rejected)
    m = None if margins is None else torch.tensor(margins)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = preference_loss(model(xc).squeeze(-1), model(xr).squeeze(-1), margins=m)
        loss.backward()
        optimiser.step()
    return model


def accuracy(model, better, worse) -> float:
    with torch.no_grad():
        return float((model(better) > model(worse)).double().mean())


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% interval (t with n - 1 degrees of freedom ~ 2.0)."""
    array = np.asarray(values)
    if len(array) < 2:
        return float(array.mean()), math.nan
    t = {5: 2.776, 10: 2.262, 20: 2.093, 30: 2.045}.get(len(array), 1.96)
    return float(array.mean()), float(t * array.std(ddof=1) / math.sqrt(len(array)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 200, 400, 800])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.3, 0.6])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--held-out", type=int, default=4000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    test = held_out(np.random.default_rng(10_000), args.held_out)
    print(
        f"held-out pairs {args.held_out}, seeds {args.seeds}, {args.steps} full-batch Adam "
        f"steps at lr {args.lr}; accuracy vs the gold preference, mean ± 95% CI"
    )
    print(
        "noise  labels  plain            strength (margin)  difference (paired)   "
        "constant margin   strength - constant   levels 0/1/2/3"
    )
    for noise in args.noise:
        for budget in args.budgets:
            plain, margin, diff, level_counts = [], [], [], np.zeros(4)
            constant, over_constant = [], []
            for seed in range(args.seeds):
                rng = np.random.default_rng(seed * 1_000 + budget)
                chosen, rejected, levels = labelled_pairs(rng, budget, noise)
                level_counts += np.bincount(levels, minlength=4)
                base = train(chosen, rejected, None, seed=seed, steps=args.steps, lr=args.lr)
                aware = train(
                    chosen, rejected, levels / 3.0, seed=seed, steps=args.steps, lr=args.lr
                )
                flat = train(
                    chosen,
                    rejected,
                    np.full(len(levels), levels.mean() / 3.0),
                    seed=seed,
                    steps=args.steps,
                    lr=args.lr,
                )
                a, b, c = accuracy(base, *test), accuracy(aware, *test), accuracy(flat, *test)
                plain.append(a)
                margin.append(b)
                diff.append(b - a)
                constant.append(c)
                over_constant.append(b - c)
            (pm, ph), (mm, mh), (dm, dh) = mean_ci(plain), mean_ci(margin), mean_ci(diff)
            (cm, ch), (om, oh) = mean_ci(constant), mean_ci(over_constant)
            shares = "/".join(f"{c / level_counts.sum():.2f}" for c in level_counts)
            print(
                f"{noise:<5}  {budget:>6}  {pm:.3f} ± {ph:.3f}    {mm:.3f} ± {mh:.3f}      "
                f"{dm:+.3f} ± {dh:.3f}        {cm:.3f} ± {ch:.3f}     {om:+.3f} ± {oh:.3f}"
                f"        {shares}"
            )
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
