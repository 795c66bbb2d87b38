"""Round 0 of the RLHF loop on the tiny model: its prompts, its evaluation settings, and a
synthetic labeller ranking its tasks (the ``loop`` fixture of tests/training/conftest.py)."""

from __future__ import annotations

from annotation import services as annotation_services
from annotation.models import Campaign, Completion
from training.ml.synthetic import SyntheticLabeller

PROMPTS = [
    "Why does bread go stale?",
    "Tell me about houseplants.",
    "How does a kettle know when to stop?",
    "Why do we yawn?",
    "What is rain made of?",
    "Tell me about rivers.",
    "How do bicycles stay up?",
    "Why is the sky blue?",
]
EVAL = {
    "eval_fraction": 0.25,
    "samples_per_prompt": 2,
    "temperature": 1.0,
    "max_new_tokens": 6,
    "gold_score": True,
    # structure tests on a handful of prompts: no round is held for review (test_round_trust)
    "min_held_out_pairs": 0,
    "reward_must_not_fall": False,
}


def label(campaign: Campaign, labeller, seed: int = 0) -> int:
    """A synthetic labeller ranks every task ``labeller`` can get; returns how many."""
    synthetic = SyntheticLabeller(noise=0.1, seed=seed)
    count = 0
    while a := annotation_services.task_assign_next(labeller=labeller, campaign=campaign):
        by_id = sorted(a.display_order)
        texts = dict(Completion.objects.filter(pk__in=by_id).values_list("pk", "text"))
        labels = synthetic.rank([texts[c] for c in by_id])
        items = [{"completion": c, "rank": r} for c, r in zip(by_id, labels, strict=True)]
        annotation_services.ranking_submit(
            labeller=labeller, assignment=a, items=items, time_spent_ms=100
        )
        count += 1
    return count
