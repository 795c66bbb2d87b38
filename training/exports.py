"""Database rows → plain ML inputs: the one bridge between Django and ``training.ml``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from annotation import exports
from annotation.models import Completion, Prompt
from annotation.pairs import FailPolicy
from training.ml.records import PreferencePair


def preference_pairs(
    *,
    campaign_ids: Sequence[int],
    ties: bool = False,
    fail_policy: FailPolicy = "drop",
) -> list[PreferencePair]:
    """Every labeller's pairs from the campaigns, as reward-model training pairs; a pair whose
    labeller gave its preference strength carries Llama 2's margin of it (``margin``).

    Chat prompts keep their messages (the tokenizer's chat template renders them); the split
    key is the prompt's content (:func:`prompt_key`), so no prompt lands in both the training
    and the evaluation set, even when a later round copied it or it was imported twice, and the
    split does not depend on database ids.
    """
    rows = exports.ranking_rows(campaign_ids=campaign_ids)
    texts = exports.texts_for(rows)
    strength = exports.ranking_strengths(campaign_ids=campaign_ids)
    return [
        PreferencePair(
            prompt=record.get("messages") or record["prompt"],
            chosen=record["chosen"],
            rejected=record["rejected"],
            prompt_id=prompt_key(record.get("messages") or record["prompt"]),
            tie=record["tie"],
            round=record["round"],
            # Llama 2's margin m(r) where the labeller said how much better (else 0)
            margin=record["margin"] if record.get("strength") is not None else 0.0,
        )
        for record in exports.labeller_pairs(
            rows, texts, ties=ties, fail_policy=fail_policy, strength=strength or None
        )
    ]


def reference_samples(
    *, campaign_ids: Sequence[int], model_version_id: int | None
) -> list[tuple[str | list, str]]:
    """(prompt, completion) from the reference policy on the campaigns' prompts, for reward
    normalisation; empty when no completion of the campaigns came from that model version.
    Gold tasks' completions are left out: gold prompts are checks of the labellers, not data."""
    if model_version_id is None:
        return []
    completions = Completion.objects.filter(
        model_version_id=model_version_id,
        task_completions__task__campaign_id__in=campaign_ids,
        task_completions__task__is_gold=False,
    ).distinct()
    return [
        (prompt_messages or prompt_text, text)
        for text, prompt_text, prompt_messages in completions.values_list(
            "text", "prompt__text", "prompt__messages"
        )
    ]


@dataclass(frozen=True, slots=True)
class PromptRecord:
    """A prompt as the ML code takes it, with its id and a key that survives copying."""

    id: int
    prompt: str | list
    """the chat messages when there are some, else the text"""
    key: str
    """a hash of the prompt's content: equal for a prompt and its copies in later rounds"""


def campaign_prompts(
    *, campaign_ids: Sequence[int], without_tasks_in: int | None = None
) -> list[PromptRecord]:
    """The campaigns' prompts in id order (only those with no task in campaign
    ``without_tasks_in``, when given: prompts imported without completions, say). Prompts of
    gold tasks are left out: they check the labellers and must not become training data."""
    prompts = (
        Prompt.objects.filter(campaign_id__in=campaign_ids)
        .exclude(tasks__is_gold=True)
        .order_by("id")
    )
    if without_tasks_in is not None:
        prompts = prompts.exclude(tasks__campaign_id=without_tasks_in)
    return [
        PromptRecord(id=pk, prompt=messages or text, key=prompt_key(messages or text))
        for pk, text, messages in prompts.values_list("id", "text", "messages")
    ]


def prompt_key(prompt: str | list) -> str:
    """A hash of a prompt's content (its chat messages, or its text)."""
    content = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()


def held_out_split(
    records: Sequence[PromptRecord], *, fraction: float
) -> tuple[list[PromptRecord], list[PromptRecord]]:
    """``(train, held_out)``: a prompt is held out when its key hashes below ``fraction``, so
    the same prompts are held out in every round. ``train`` is never empty, and with
    ``fraction > 0`` and two prompts or more neither is ``held_out``; prompts with the same
    content stay on one side."""
    if fraction <= 0 or not records:
        return list(records), []
    position = {r.key: int(r.key[:12], 16) / 16**12 for r in records}
    held = {key for key, value in position.items() if value < fraction}
    keys = sorted(position, key=position.__getitem__)
    if not held and len(keys) > 1:
        held = {keys[0]}
    if held == set(keys):  # something must be left to train on
        held.discard(keys[-1])
    return [r for r in records if r.key not in held], [r for r in records if r.key in held]
