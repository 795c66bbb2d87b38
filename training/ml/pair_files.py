"""Reading preference pairs and prompts from files, in the shapes trainers use; a malformed line
is reported with its file, line number and field, never as a traceback. No torch, no Django.

Each JSONL line (or Parquet row) of a pairs file is one of:

* **standard**, explicit prompt: ``{"prompt": "...", "chosen": "...", "rejected": "..."}``;
* **conversational**: ``prompt`` a list of ``{"role", "content"}`` messages, ``chosen`` and
  ``rejected`` each a list holding one assistant message (or a string);
* **implicit prompt**, as in the raw Anthropic HH files: only ``chosen`` and ``rejected``, whole
  dialogues (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) sharing their beginning. The prompt is
  the longest shared beginning that ends with ``"\\n\\nAssistant:"``; what follows is each
  completion (in the 5 of 2,312 HH test pairs whose dialogues part before the last turn, the
  completions then hold the later turns too). Conversational lists with an implicit prompt are
  split the same way, on their last shared message.

Optional keys, in the project's JSONL and in TRL's export (``rlhf_*``): ``prompt_id``
(``rlhf_prompt_id``), ``weight``, ``tie``, ``round`` (``rlhf_round``). ``margin`` is ignored.
A pair file of ties (``completion_a``/``completion_b``) is refused: ties are not preferences.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.ml.records import PreferencePair, Prompt

ASSISTANT = "\n\nAssistant:"
KNOWN = {
    "prompt",
    "chosen",
    "rejected",
    "prompt_id",
    "weight",
    "tie",
    "round",
    "margin",
    "messages",
}


@dataclass(frozen=True)
class PairFileError(ValueError):
    """A line that cannot be read: ``path:line: field: message``."""

    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line or row number, parsed object) of a JSONL (``.gz`` too) or Parquet file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield number, row
        return
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw)
            except json.JSONDecodeError as exc:
                raise PairFileError(
                    str(path), number, "line", f"not valid JSON: {exc.msg} at column {exc.colno}"
                ) from None


def split_implicit_prompt(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """(prompt, chosen completion, rejected completion) of two whole dialogues: the prompt is
    their longest shared beginning ending with ``"\\n\\nAssistant:"``; None without one."""
    shared = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        shared += 1
    end = chosen.rfind(ASSISTANT, 0, shared)
    if end < 0:
        return None
    cut = end + len(ASSISTANT)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _message_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )


def _completion(value: Any, where: str, fail) -> str:
    if isinstance(value, str):
        return value
    if _message_list(value):
        if len(value) != 1 or value[0]["role"] != "assistant":
            fail(where, "must be one assistant message (or a string)")
        return value[0]["content"]
    fail(where, "must be a string or a list of one assistant message")
    raise AssertionError  # fail raises


def pair_from_row(row: Any, *, path: str = "<pairs>", line: int = 0) -> PreferencePair:
    """One row in any of the module's shapes as a :class:`PreferencePair`."""

    def fail(field: str, message: str):
        raise PairFileError(path, line, field, message)

    if not isinstance(row, dict):
        fail("line", "must be a JSON object")
    if "completion_a" in row:
        fail("completion_a", "a file of tie pairs: ties are not preferences, train on the pairs")
    for key in ("chosen", "rejected"):
        if key not in row or row[key] is None:
            fail(key, "is missing")
    chosen, rejected = row["chosen"], row["rejected"]
    prompt: Prompt | None = row.get("prompt")
    if prompt is None and row.get("messages") is not None:
        prompt = row["messages"]  # the project's own JSONL: the chat prompt
    if prompt is None:
        if isinstance(chosen, str) and isinstance(rejected, str):
            split = split_implicit_prompt(chosen, rejected)
            if split is None:
                fail("chosen", f"no prompt: chosen and rejected share no {ASSISTANT.strip()!r}")
            prompt, chosen, rejected = split
        elif _message_list(chosen) and _message_list(rejected):
            shared = 0
            while (
                shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]
            ):
                shared += 1
            if shared == 0:
                fail("chosen", "no prompt: the conversations share no first message")
            prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        else:
            fail("prompt", "is missing (and chosen/rejected are not dialogues to take it from)")
    elif not isinstance(prompt, str) and not _message_list(prompt):
        fail("prompt", "must be a string or a list of {role, content} messages")
    chosen_text = _completion(chosen, "chosen", fail)
    rejected_text = _completion(rejected, "rejected", fail)
    prompt_id = row.get("prompt_id", row.get("rlhf_prompt_id"))
    if prompt_id is None:
        prompt_id = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
    elif isinstance(prompt_id, bool) or not isinstance(prompt_id, str | int):
        fail("prompt_id", "must be a string or an integer")
    weight = row.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
        fail("weight", "must be a number of at least 0")
    tie = row.get("tie", False)
    if not isinstance(tie, bool):
        fail("tie", "must be true or false")
    round_number = row.get("round", row.get("rlhf_round", 0))
    if isinstance(round_number, bool) or not isinstance(round_number, int):
        fail("round", "must be an integer")
    return PreferencePair(
        prompt=prompt,
        chosen=chosen_text,
        rejected=rejected_text,
        prompt_id=prompt_id,
        weight=float(weight),
        tie=tie,
        round=round_number,
    )


def read_pairs(path: str | Path) -> list[PreferencePair]:
    """Every pair of a JSONL or Parquet file; :class:`PairFileError` at the first bad line."""
    path = Path(path)
    pairs = [pair_from_row(row, path=str(path), line=n) for n, row in _rows(path)]
    if not pairs:
        raise PairFileError(str(path), 0, "file", "holds no pairs")
    return pairs


def read_prompts(path: str | Path) -> list[Prompt]:
    """Prompts, one per JSONL line (or Parquet row): ``{"prompt": text or messages}`` or
    ``{"messages": [...]}``; a pairs file's prompts are taken too (each distinct one once)."""
    path = Path(path)
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for number, row in _rows(path):
        if not isinstance(row, dict):
            raise PairFileError(str(path), number, "line", "must be a JSON object")
        prompt = row.get("prompt", row.get("messages"))
        if prompt is None and "chosen" in row:
            prompt = pair_from_row(row, path=str(path), line=number).prompt
        if not (isinstance(prompt, str) and prompt.strip()) and not _message_list(prompt):
            raise PairFileError(
                str(path), number, "prompt", "must be a non-empty string or a list of messages"
            )
        key = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append(prompt)
    if not prompts:
        raise PairFileError(str(path), 0, "file", "holds no prompts")
    return prompts
