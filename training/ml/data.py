"""Preference data for reward models: plain dataclasses, tokenisation with counted truncation,
the split by prompt, and collation. No Django; ``training/exports.py`` produces the inputs.

A scored sequence is ``[BOS] + prompt tokens + completion tokens + [EOS]``: prompt and completion
are tokenised separately (as a policy generates completion tokens after the prompt tokens), BOS
only when the tokenizer adds one by default, EOS when ``append_eos``. "EOS" is the end-of-turn
token of ``training.ml.prompts`` (a chat template's ``<|eot_id|>``, else EOS); an encoder
without BOS/EOS (BERT) gets its ``[CLS]`` first and ``[SEP]`` last, so that its pooled first
token is [CLS]. Nothing is inserted between prompt and completion: plain-text prompts carry
their own separator (e.g. ``"...\\n\\nAssistant:"`` + ``" reply"``); chat prompts are rendered
with the tokenizer's chat template and its generation prompt (:func:`render_prompt`, the one
prompt format of every trainer).

The tokenizer is the first argument of every function that takes one, as in ``training.ml.policy``
and ``training.ml.dpo``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from training.ml.prompts import end_of_turn_id, render_prompt, sequence_prefix
from training.ml.records import PreferencePair, Prompt

__all__ = ["render_prompt"]  # re-exported: callers read prompts through this module too


@dataclass(frozen=True, slots=True)
class EncodedSequence:
    """Token ids of one prompt + completion, with what truncation did to it."""

    input_ids: list[int]
    prompt_truncated: bool = False
    completion_truncated: bool = False


@dataclass(frozen=True, slots=True)
class EncodedPair:
    """A tokenised :class:`PreferencePair`."""

    chosen: EncodedSequence
    rejected: EncodedSequence
    weight: float
    tie: bool
    round: int
    prompt_id: str | int
    margin: float = 0.0
    """Llama 2's m(r) (:class:`~training.ml.records.PreferencePair`)"""

    @property
    def prompt_truncated(self) -> bool:
        return self.chosen.prompt_truncated or self.rejected.prompt_truncated

    @property
    def completion_truncated(self) -> bool:
        return self.chosen.completion_truncated or self.rejected.completion_truncated


@dataclass(slots=True)
class TruncationCounts:
    """How many items lost tokens. Nothing is ever dropped for being long."""

    items: int = 0
    """pairs (or sequences) encoded"""
    prompt_truncated: int = 0
    """items whose prompt lost tokens on its left"""
    completion_truncated: int = 0
    """items whose completion alone did not fit and lost tokens on its right"""

    def to_dict(self) -> dict[str, int]:
        return {
            "items": self.items,
            "prompt_truncated": self.prompt_truncated,
            "completion_truncated": self.completion_truncated,
        }


# --------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------


def sequence_suffix(tokenizer: Any, *, append_eos: bool) -> list[int]:
    """What a scored sequence ends with: the end-of-turn token when ``append_eos`` (see
    ``training.ml.prompts.end_of_turn_id``), else nothing."""
    end = end_of_turn_id(tokenizer) if append_eos else None
    return [end] if end is not None else []


def fit_sequence(
    prompt_ids: Sequence[int],
    completion_ids: Sequence[int],
    *,
    max_length: int,
    prefix: Sequence[int] = (),
    suffix: Sequence[int] = (),
) -> EncodedSequence:
    """Join ``prefix + prompt + completion + suffix`` into at most ``max_length`` tokens.

    ``prefix`` (BOS) and ``suffix`` (EOS) are always kept. If too long, the prompt loses tokens
    from its LEFT (its end, next to the completion, is kept). If the completion cannot fit even
    with the prompt cut down to a quarter of the budget, the prompt keeps its last quarter and
    the completion is cut on its RIGHT. Both cases are flagged on the result.
    """
    budget = max_length - len(prefix) - len(suffix)
    if budget < 2:
        raise ValueError(f"max_length {max_length} leaves no room for prompt and completion")
    prompt, completion = list(prompt_ids), list(completion_ids)
    prompt_truncated = completion_truncated = False
    if len(prompt) + len(completion) > budget:
        reserve = min(len(prompt), budget // 4)
        if len(completion) <= budget - reserve:
            keep = budget - len(completion)
        else:
            completion = completion[: budget - reserve]
            completion_truncated = True
            keep = reserve
        prompt_truncated = keep < len(prompt)
        prompt = prompt[len(prompt) - keep :]
    return EncodedSequence(
        input_ids=[*prefix, *prompt, *completion, *suffix],
        prompt_truncated=prompt_truncated,
        completion_truncated=completion_truncated,
    )


def encode_sequences(
    tokenizer: Any,
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    *,
    max_length: int,
    append_eos: bool = True,
) -> list[EncodedSequence]:
    """Tokenise ``prompts[i] + completions[i]`` for every i (see :func:`fit_sequence`)."""
    if len(prompts) != len(completions):
        raise ValueError("prompts and completions differ in length")
    if not prompts:
        return []
    bos = sequence_prefix(tokenizer)
    suffix = sequence_suffix(tokenizer, append_eos=append_eos)
    texts = [render_prompt(tokenizer, p) for p in prompts]
    unique = list(dict.fromkeys(texts))
    # verbose=False: long texts are expected here, fit_sequence truncates them (and counts it)
    encode = {"add_special_tokens": False, "verbose": False}
    prompt_ids = dict(zip(unique, tokenizer(unique, **encode)["input_ids"], strict=True))
    completion_ids = tokenizer(list(completions), **encode)["input_ids"]
    out = []
    for text, c_ids in zip(texts, completion_ids, strict=True):
        p_ids = prompt_ids[text]
        prefix: list[int] = []
        if bos is not None and (not p_ids or p_ids[0] != bos):
            prefix = [bos]
        elif bos is not None:  # the rendered prompt already starts with BOS: keep it in front
            prefix, p_ids = [bos], p_ids[1:]
        out.append(fit_sequence(p_ids, c_ids, max_length=max_length, prefix=prefix, suffix=suffix))
    return out


def encode_pairs(
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    *,
    max_length: int,
    append_eos: bool = True,
) -> tuple[list[EncodedPair], TruncationCounts]:
    """Tokenise pairs; returns them (same order, none dropped) and the truncation counts."""
    prompts = [p.prompt for p in pairs]
    sequences = encode_sequences(
        tokenizer,
        prompts + prompts,
        [p.chosen for p in pairs] + [p.rejected for p in pairs],
        max_length=max_length,
        append_eos=append_eos,
    )
    n = len(pairs)
    encoded = [
        EncodedPair(
            chosen=sequences[i],
            rejected=sequences[n + i],
            weight=float(pair.weight),
            margin=float(getattr(pair, "margin", 0.0)),
            tie=bool(pair.tie),
            round=int(pair.round),
            prompt_id=pair.prompt_id,
        )
        for i, pair in enumerate(pairs)
    ]
    counts = TruncationCounts(
        items=n,
        prompt_truncated=sum(e.prompt_truncated for e in encoded),
        completion_truncated=sum(e.completion_truncated for e in encoded),
    )
    return encoded, counts


# --------------------------------------------------------------------------------------------
# Split
# --------------------------------------------------------------------------------------------


class _HasPromptId(Protocol):
    @property
    def prompt_id(self) -> Hashable: ...


T = TypeVar("T", bound=_HasPromptId)


def split_by_prompt(
    items: Sequence[T], *, eval_fraction: float, seed: int
) -> tuple[list[T], list[T]]:
    """Split into (train, eval) by prompt: every item of a prompt lands on the same side.

    ``round(eval_fraction * n_prompts)`` prompts go to eval, clamped to at least one when
    ``eval_fraction > 0`` and at most ``n_prompts - 1`` (a single prompt always trains). The choice
    depends only on the set of prompt ids and the seed, not on the order of ``items``. Items keep
    their order within each side.
    """
    ids = sorted({item.prompt_id for item in items}, key=lambda x: (type(x).__name__, str(x)))
    n_eval = min(round(eval_fraction * len(ids)), len(ids) - 1)
    if eval_fraction > 0 and len(ids) >= 2:
        n_eval = max(n_eval, 1)
    random.Random(seed).shuffle(ids)
    eval_ids = set(ids[:n_eval])
    train = [item for item in items if item.prompt_id not in eval_ids]
    held_out = [item for item in items if item.prompt_id in eval_ids]
    return train, held_out


def batches(n: int, batch_size: int, *, shuffle_seed: int | None = None) -> list[list[int]]:
    """Batches of indices into ``range(n)``, shuffled with ``shuffle_seed`` if given."""
    order = list(range(n))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def num_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


# --------------------------------------------------------------------------------------------
# Collation
# --------------------------------------------------------------------------------------------


def collate(
    sequences: Iterable[Sequence[int]],
    *,
    pad_token_id: int,
    padding_side: str = "right",
) -> dict[str, torch.Tensor]:
    """Pad token id lists into ``input_ids``, ``attention_mask`` and ``position_ids`` tensors.

    Position ids count real tokens only (0 at the first real token), so a left-padded row gets the
    same positions as the same row right-padded.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    rows = [list(s) for s in sequences]
    if not rows or any(not r for r in rows):
        raise ValueError("collate needs at least one sequence and no empty sequence")
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if padding_side == "right":
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        else:
            input_ids[i, width - len(row) :] = torch.tensor(row)
            attention_mask[i, width - len(row) :] = 1
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real (mask 1) token of each row, for left or right padding alike.

    Uses the attention mask, never token ids, so it is right when PAD == EOS.
    """
    width = attention_mask.shape[1]
    flipped = attention_mask.flip(dims=[1]).to(torch.long)
    return (width - 1 - flipped.argmax(dim=1)).to(torch.long)
