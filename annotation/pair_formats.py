"""Preference pairs in the formats trainers read exactly: TRL's JSONL and Parquet.

The project's own pair export (:func:`annotation.exports.pairs_jsonl`) carries ``margin``,
``messages`` and ``tie`` columns that TRL interprets (``margin`` turns its reward loss into a
margin loss; ``messages`` makes it guess the format; a tie pair reads as a preference). The
formats here give trainers only what they mean:

* ``style="standard"``: ``prompt``, ``chosen``, ``rejected`` as strings (TRL's "standard"
  preference format, explicit prompt);
* ``style="conversational"``: the same three as lists of ``{"role", "content"}`` messages, the
  prompt being the whole conversation (system turn included) and each completion one assistant
  message (TRL applies the model's chat template);
* the project's fields under names no trainer interprets, all prefixed ``rlhf_``
  (``rlhf_columns=False`` drops them);
* ties never among the pairs: ``part="ties"`` is a file of its own, ``prompt``,
  ``completion_a``, ``completion_b`` (no ``chosen``/``rejected``, so nothing reads it as a
  preference);
* every column has one type in every row (no nulls: a ranking made without guidelines has
  ``rlhf_guideline_version`` 0), and Parquet is written with the fixed schema of
  :func:`schema_for`.

Rows and texts come from :mod:`annotation.exports` (its readers and pair expansion); nothing
here queries the database.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, Literal, get_args

from annotation.exports import (
    Aggregate,
    RankingRow,
    Texts,
    aggregated_pairs,
    chunked,
    labeller_pairs,
)
from annotation.pairs import FailPolicy

Style = Literal["standard", "conversational"]
Part = Literal["pairs", "ties"]
STYLES: Final = get_args(Style)
PARTS: Final = get_args(Part)


class ChatPromptsNeedConversational(ValueError):
    """A standard-style export of prompts that are chat conversations would keep only the last
    user message, dropping the system turn and the earlier ones."""


def style_for(rows: Sequence[RankingRow], texts: Texts) -> Style:
    """``conversational`` when any exported prompt is a chat conversation, else ``standard``."""
    prompt_ids = {row.prompt_id for row in rows}
    chat = any(texts.messages.get(pid) for pid in prompt_ids)
    return "conversational" if chat else "standard"


def _prompt(texts: Texts, prompt_id: int, style: Style) -> Any:
    if style == "standard":
        if texts.messages.get(prompt_id):
            raise ChatPromptsNeedConversational(
                f"prompt {prompt_id} is a chat conversation: a standard export would keep only "
                "its last user message; use style=conversational"
            )
        return texts.prompts[prompt_id]
    messages = texts.messages.get(prompt_id)
    if messages:
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    return [{"role": "user", "content": texts.prompts[prompt_id]}]


def _completion(text: str, style: Style) -> Any:
    return text if style == "standard" else [{"role": "assistant", "content": text}]


def trl_records(
    rows: Sequence[RankingRow],
    texts: Texts,
    *,
    style: Style | None = None,
    part: Part = "pairs",
    aggregate: Aggregate = "none",
    fail_policy: FailPolicy = "drop",
    rlhf_columns: bool = True,
    **selection: Any,
) -> Iterator[dict[str, Any]]:
    """The pairs (``part="pairs"``: strict preferences only) or the tie pairs (``"ties"``) of
    the rows in TRL's format, ``style`` chosen by :func:`style_for` when None; keys in the
    order of :func:`columns_for`. ``selection`` goes to the pair readers of
    :mod:`annotation.exports` as it is (which tasks, adjudicated rankings)."""
    if style is None:
        style = style_for(rows, texts)
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}")
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}")
    ties = part == "ties"
    if aggregate == "none":
        selection.pop("adjudicated", None)  # the labellers' own pairs are never replaced
        pairs = labeller_pairs(rows, texts, ties=ties, fail_policy=fail_policy, **selection)
    else:
        pairs = aggregated_pairs(
            rows, texts, aggregate=aggregate, ties=ties, fail_policy=fail_policy, **selection
        )
    first, second = ("completion_a", "completion_b") if ties else ("chosen", "rejected")
    for pair in pairs:
        if pair["tie"] != ties:
            continue
        record = {
            "prompt": _prompt(texts, pair["prompt_id"], style),
            first: _completion(pair["chosen"], style),
            second: _completion(pair["rejected"], style),
        }
        if rlhf_columns:
            record.update(_rlhf_columns(pair, aggregate=aggregate, ids=(first, second)))
        yield record


def _rlhf_columns(pair: dict, *, aggregate: Aggregate, ids: tuple[str, str]) -> dict[str, Any]:
    common = {
        "rlhf_prompt_id": pair["prompt_id"],
        f"rlhf_{ids[0]}_id": pair["chosen_id"],
        f"rlhf_{ids[1]}_id": pair["rejected_id"],
        "rlhf_campaign": pair["campaign"],
        "rlhf_task": pair["task"],
        "rlhf_round": pair["round"],
    }
    if aggregate == "none":
        return {
            **common,
            "rlhf_labeller": pair["labeller"],
            "rlhf_ranking": pair["ranking"],
            "rlhf_guideline_version": pair["guideline_version"] or 0,
        }
    extra = {
        "rlhf_aggregate": pair["aggregate"],
        "rlhf_votes_for": pair["votes_for"],
        "rlhf_votes_against": pair["votes_against"],
        "rlhf_vote_ties": pair["vote_ties"],
        "rlhf_voters": pair["voters"],
        "rlhf_vote_margin": float(pair["margin"]),
        "rlhf_labellers": pair["labellers"],
        "rlhf_rankings": pair["rankings"],
        "rlhf_guideline_versions": pair["guideline_versions"],
    }
    if aggregate == "bradley_terry":
        extra["rlhf_score_margin"] = float(pair["score_margin"])
    return {**common, **extra}


def columns_for(
    *, style: Style, part: Part = "pairs", aggregate: Aggregate = "none", rlhf_columns: bool = True
) -> list[tuple[str, str]]:
    """(column, type) of an export, in order; types ``text`` (a string, or a message list in
    the conversational style), ``int``, ``float``, ``str``, ``ints`` (a list of integers)."""
    first, second = ("completion_a", "completion_b") if part == "ties" else ("chosen", "rejected")
    columns = [("prompt", "text"), (first, "text"), (second, "text")]
    if not rlhf_columns:
        return columns
    columns += [
        ("rlhf_prompt_id", "int"),
        (f"rlhf_{first}_id", "int"),
        (f"rlhf_{second}_id", "int"),
        ("rlhf_campaign", "int"),
        ("rlhf_task", "int"),
        ("rlhf_round", "int"),
    ]
    if aggregate == "none":
        return [
            *columns,
            ("rlhf_labeller", "int"),
            ("rlhf_ranking", "int"),
            ("rlhf_guideline_version", "int"),
        ]
    columns += [
        ("rlhf_aggregate", "str"),
        ("rlhf_votes_for", "int"),
        ("rlhf_votes_against", "int"),
        ("rlhf_vote_ties", "int"),
        ("rlhf_voters", "int"),
        ("rlhf_vote_margin", "float"),
        ("rlhf_labellers", "ints"),
        ("rlhf_rankings", "ints"),
        ("rlhf_guideline_versions", "ints"),
    ]
    if aggregate == "bradley_terry":
        columns.append(("rlhf_score_margin", "float"))
    return columns


def schema_for(**options: Any):
    """The fixed Parquet (Arrow) schema of an export with these options (see
    :func:`columns_for`): the same whatever the data, an empty export included."""
    import pyarrow as pa

    message = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    text = message if options.get("style") == "conversational" else pa.string()
    types = {
        "text": text,
        "int": pa.int64(),
        "float": pa.float64(),
        "str": pa.string(),
        "ints": pa.list_(pa.int64()),
    }
    return pa.schema([(name, types[kind]) for name, kind in columns_for(**options)])


def trl_jsonl(records: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    """Records as UTF-8 JSONL, in chunks of whole lines."""
    lines = (json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    for chunk in chunked(lines):
        yield chunk.encode()


def trl_parquet(records: Iterable[dict[str, Any]], *, row_group: int = 10_000, **options) -> bytes:
    """Records as one Parquet file with :func:`schema_for`'s schema (zstd), built in row
    groups of ``row_group`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = schema_for(**options)
    sink = io.BytesIO()
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        batch: list[dict[str, Any]] = []
        for record in records:
            batch.append(record)
            if len(batch) >= row_group:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    return sink.getvalue()


FORMATS: Final = ("jsonl", "trl", "parquet")
"""``jsonl``: the project's own pair export (:func:`annotation.exports.pairs_jsonl`, as ever);
``trl``: TRL's format as JSONL; ``parquet``: TRL's format as Parquet with a fixed schema."""


def pair_export(
    rows: Sequence[RankingRow],
    texts: Texts,
    *,
    fmt: str = "jsonl",
    style: Style | None = None,
    part: Part = "pairs",
    aggregate: Aggregate = "none",
    fail_policy: FailPolicy = "drop",
    ties: bool = False,
    rlhf_columns: bool = True,
    **selection: Any,
) -> Iterator[bytes]:
    """The pair export in ``fmt`` as chunks of bytes (Parquet: one chunk). ``ties`` belongs to
    the ``jsonl`` format only: TRL's formats keep ties in ``part="ties"``. ``selection`` goes
    to the pair readers of :mod:`annotation.exports` as it is."""
    from annotation.exports import pairs_jsonl

    if fmt == "jsonl":
        yield from pairs_jsonl(
            rows, texts, aggregate=aggregate, ties=ties, fail_policy=fail_policy, **selection
        )
        return
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    if style == "standard" and style_for(rows, texts) == "conversational":
        raise ChatPromptsNeedConversational(
            "these prompts are chat conversations: a standard export would keep only their "
            "last user message; use style=conversational"
        )
    style = style or style_for(rows, texts)
    options = {
        "style": style,
        "part": part,
        "aggregate": aggregate,
        "fail_policy": fail_policy,
        "rlhf_columns": rlhf_columns,
    }
    records = trl_records(rows, texts, **options, **selection)
    if fmt == "trl":
        yield from trl_jsonl(records)
        return
    del options["fail_policy"]
    yield trl_parquet(records, **options)
