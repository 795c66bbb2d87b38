"""Database rows → plain ML inputs: the one bridge between Django and ``training.ml``."""

from __future__ import annotations

from collections.abc import Sequence

from annotation import exports
from annotation.models import Completion
from annotation.pairs import FailPolicy
from training.ml.data import PreferencePair


def preference_pairs(
    *,
    campaign_ids: Sequence[int],
    ties: bool = False,
    fail_policy: FailPolicy = "drop",
) -> list[PreferencePair]:
    """Every labeller's pairs from the campaigns, as reward-model training pairs.

    Chat prompts keep their messages (the tokenizer's chat template renders them); the split
    key is the prompt id, so no prompt lands in both the training and the evaluation set.
    """
    rows = exports.ranking_rows(campaign_ids=campaign_ids)
    texts = exports.texts_for(rows)
    return [
        PreferencePair(
            prompt=record.get("messages") or record["prompt"],
            chosen=record["chosen"],
            rejected=record["rejected"],
            prompt_id=record["prompt_id"],
            tie=record["tie"],
            round=record["round"],
        )
        for record in exports.labeller_pairs(rows, texts, ties=ties, fail_policy=fail_policy)
    ]


def reference_samples(
    *, campaign_ids: Sequence[int], model_version_id: int | None
) -> list[tuple[str | list, str]]:
    """(prompt, completion) from the reference policy on the campaigns' prompts, for reward
    normalisation; empty when no completion of the campaigns came from that model version."""
    if model_version_id is None:
        return []
    completions = Completion.objects.filter(
        model_version_id=model_version_id,
        task_completions__task__campaign_id__in=campaign_ids,
    ).distinct()
    return [
        (prompt_messages or prompt_text, text)
        for text, prompt_text, prompt_messages in completions.values_list(
            "text", "prompt__text", "prompt__messages"
        )
    ]
