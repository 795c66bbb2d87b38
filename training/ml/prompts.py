"""One prompt format for every trainer: the reward model, PPO, DPO, generation and evaluation
read prompts and frame completions through these functions.

* :func:`render_prompt`: a string as it is; chat messages through the tokenizer's chat template
  with the generation prompt; for a base model without a template, ``"Role: content"`` turns
  joined by blank lines and ending in ``"\\n\\nAssistant:"`` (the Anthropic HH layout).
* :func:`encode_prompt`: its token ids, with the special tokens the tokenizer adds (BOS).
* :func:`end_of_turn_id`: the token that ends a reply. With a chat template it is the token the
  template closes an assistant turn with (``<|eot_id|>`` for Llama 3, ``<|im_end|>`` for Qwen),
  not ``eos_token``, which such models never emit at the end of a turn; without one it is EOS,
  and for an encoder without EOS (BERT) the separator ``[SEP]``.
* :func:`sequence_prefix`: the token a scored sequence starts with: BOS where the tokenizer adds
  one, else an encoder's ``[CLS]`` (where its pooled output reads the score).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

Prompt = str | Sequence[dict]
"""A prompt: raw text, or chat messages (``[{"role": "user", "content": ...}, ...]``)."""

_REPLY_MARKER = "Zq7 reply marker"


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, prompt: Prompt) -> str:
    """The prompt as text (see the module docstring)."""
    if isinstance(prompt, str):
        return prompt
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            list(prompt), tokenize=False, add_generation_prompt=True
        )
    turns = "".join(f"\n\n{m['role'].capitalize()}: {m['content']}" for m in prompt)
    return f"{turns}\n\nAssistant:"


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids of a prompt: chat messages through the chat template (generation prompt
    appended), anything else as :func:`render_prompt` renders it, with the special tokens the
    tokenizer adds by default (BOS)."""
    if not isinstance(prompt, str) and has_chat_template(tokenizer):
        ids = tokenizer.apply_chat_template(
            list(prompt), add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # some versions return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    return list(tokenizer(render_prompt(tokenizer, prompt))["input_ids"])


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(i for i, token in decoder.items() if getattr(token, "special", False))
    return ids


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The token that ends a completion (see the module docstring); None when the tokenizer
    has none of them. Cached on the tokenizer."""
    cached = getattr(tokenizer, "_rlhf_end_of_turn", False)
    if cached is not False:
        return cached
    found = tokenizer.eos_token_id
    if found is None:
        found = getattr(tokenizer, "sep_token_id", None)
    if has_chat_template(tokenizer):
        try:
            text = tokenizer.apply_chat_template(
                [
                    {"role": "user", "content": "Hello"},
                    {"role": "assistant", "content": _REPLY_MARKER},
                ],
                tokenize=False,
            )
            after = text.split(_REPLY_MARKER, 1)[1]
            special = _special_ids(tokenizer)
            ids = tokenizer(after, add_special_tokens=False)["input_ids"]
            found = next((i for i in ids if i in special), found)
        except Exception:  # a template that refuses this conversation: keep EOS
            pass
    with contextlib.suppress(AttributeError):
        tokenizer._rlhf_end_of_turn = found
    return found


def sequence_prefix(tokenizer: Any) -> int | None:
    """The id a scored sequence starts with: the BOS the tokenizer prepends by default
    (Llama-style), or an encoder's [CLS]; None when it adds neither."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    first = ids[0] if ids else None
    candidates = (
        getattr(tokenizer, "bos_token_id", None),
        getattr(tokenizer, "cls_token_id", None),
    )
    for candidate in candidates:
        if candidate is not None and first == candidate:
            return candidate
    return None


def encode_response(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a completion's text followed by the end-of-turn token (no BOS): what the
    policy should emit."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    end = end_of_turn_id(tokenizer)
    return [*ids, end] if end is not None else list(ids)
