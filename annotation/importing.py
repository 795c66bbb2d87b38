"""Parsing and validating prompt/completion imports (JSONL or CSV). Pure: no Django.

Validation is all-or-nothing: ``parse_import`` either returns every record or raises
``ImportFailed`` with every problem found, each with its line number and field, so a user can
fix the whole file in one pass. The formats are documented in README.md ("Import formats").

A line may carry ``gold``: the reference labels of its completions, in their order (a rank, 1 =
best, or ``"F"``; ties and F only where the campaign allows them). Such a line becomes a gold
task: mixed into the labellers' queues and compared with the reference, never exported.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

ImportFormat = Literal["jsonl", "csv"]
MAX_ERRORS = 200  # stop collecting after this many; the file is refused either way
CSV_MAX_COMPLETIONS = 9


@dataclass(frozen=True, slots=True)
class ParsedCompletion:
    text: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ParsedPrompt:
    line: int
    text: str
    external_id: str = ""
    messages: list[dict[str, str]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    completions: tuple[ParsedCompletion, ...] = ()
    gold: tuple[int | str, ...] | None = None
    """reference labels of ``completions`` (same order): the line is a gold task"""


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


class ImportFailed(Exception):
    """The file was refused; ``errors`` lists every problem with its line and field."""

    def __init__(self, errors: list[LineError]) -> None:
        self.errors = errors
        shown = "; ".join(str(e) for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{len(errors)} error(s): {shown}{more}")


def detect_format(filename: str) -> ImportFormat:
    lowered = filename.lower()
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lowered.endswith(".csv"):
        return "csv"
    raise ImportFailed(
        [LineError(0, "file", f"cannot tell the format of {filename!r}: use .jsonl or .csv")]
    )


def parse_import(
    data: bytes,
    *,
    fmt: ImportFormat,
    completions_per_task: int,
    max_text_chars: int,
    max_bytes: int,
    default_source: str = "import",
    allow_ties: bool = True,
    allow_fail: bool = True,
) -> list[ParsedPrompt]:
    """Parse and validate a whole file; raise ``ImportFailed`` listing every problem."""
    check_size(len(data), max_bytes=max_bytes)
    text = _decode(data)
    checker = _Checker(
        completions_per_task,
        max_text_chars,
        default_source,
        allow_ties=allow_ties,
        allow_fail=allow_fail,
    )
    rows = _jsonl_rows(text, checker) if fmt == "jsonl" else _csv_rows(text, checker)
    records = [record for record in rows if record is not None]
    if checker.errors:
        raise ImportFailed(checker.errors)
    if not records:
        raise ImportFailed([LineError(0, "file", "the file holds no prompts")])
    return records


def check_size(size: int, *, max_bytes: int) -> None:
    """Refuse a file larger than ``max_bytes`` before anything reads it."""
    if size > max_bytes:
        raise ImportFailed(
            [LineError(0, "file", f"file is {size:,} bytes; the limit is {max_bytes:,}")]
        )


def _decode(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ImportFailed(
            [LineError(line, "file", f"not valid UTF-8 (byte {data[exc.start]:#04x})")]
        ) from None


class _Checker:
    """Collects errors across the whole file while building records."""

    def __init__(
        self,
        n: int,
        max_chars: int,
        default_source: str,
        *,
        allow_ties: bool = True,
        allow_fail: bool = True,
    ) -> None:
        self.n = n
        self.max_chars = max_chars
        self.default_source = default_source
        self.allow_ties = allow_ties
        self.allow_fail = allow_fail
        self.errors: list[LineError] = []

    def error(self, line: int, field_name: str, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(LineError(line, field_name, message))

    def text(self, line: int, field_name: str, value: Any) -> str | None:
        if not isinstance(value, str):
            self.error(line, field_name, f"must be a string, got {type(value).__name__}")
            return None
        if not value.strip():
            self.error(line, field_name, "is empty")
            return None
        if len(value) > self.max_chars:
            self.error(
                line, field_name, f"is {len(value):,} characters; the limit is {self.max_chars:,}"
            )
            return None
        if "\x00" in value:
            self.error(line, field_name, "contains a NUL character")
            return None
        return value

    def build(
        self,
        line: int,
        *,
        prompt: Any,
        messages: Any,
        external_id: Any,
        metadata: Any,
        completions: list[tuple[str, Any, Any, Any]],
        gold: Any = None,
    ) -> ParsedPrompt | None:
        """``completions`` holds (field name, text, source, metadata) for each completion."""
        errors_before = len(self.errors)
        parsed_messages = self._messages(line, messages)
        if prompt is None and parsed_messages:
            prompt = next(
                (m["content"] for m in reversed(parsed_messages) if m["role"] == "user"), None
            )
        if prompt is None:
            self.error(line, "prompt", "is missing")
            prompt_text = None
        else:
            prompt_text = self.text(line, "prompt", prompt)
        if external_id is None:
            external_id = ""
        elif isinstance(external_id, int | str) and not isinstance(external_id, bool):
            external_id = str(external_id)
            if len(external_id) > 200:
                self.error(line, "id", "is longer than 200 characters")
        else:
            self.error(line, "id", "must be a string or an integer")
        if metadata is None:
            metadata = {}
        elif not isinstance(metadata, dict):
            self.error(line, "metadata", "must be an object")
        if completions and len(completions) != self.n:
            self.error(
                line,
                "completions",
                f"has {len(completions)} completions; this campaign needs {self.n} "
                "(or none, to generate them later)",
            )
        parsed: list[ParsedCompletion] = []
        seen: dict[str, str] = {}
        for field_name, c_text, c_source, c_meta in completions:
            value = self.text(line, field_name, c_text)
            if value is None:
                continue
            key = value.strip()
            if key in seen:
                self.error(line, field_name, f"duplicates {seen[key]}")
                continue
            seen[key] = field_name
            source = self.default_source if c_source in (None, "") else c_source
            if not isinstance(source, str) or len(source) > 200:
                self.error(line, f"{field_name}.source", "must be a string of at most 200 chars")
                continue
            if c_meta is None:
                c_meta = {}
            if not isinstance(c_meta, dict):
                self.error(line, f"{field_name}.metadata", "must be an object")
                continue
            parsed.append(ParsedCompletion(text=value, source=source, metadata=c_meta))
        if len(self.errors) > errors_before or prompt_text is None:
            return None
        return ParsedPrompt(
            line=line,
            text=prompt_text,
            external_id=external_id,
            messages=parsed_messages,
            metadata=metadata,
            completions=tuple(parsed),
            gold=self._gold(line, gold, len(completions)),
        )

    def _gold(self, line: int, gold: Any, completions: int) -> tuple[int | str, ...] | None:
        """The reference labels of a gold line, or None (errors recorded on ``gold``)."""
        if gold is None:
            return None
        if not completions:
            self.error(line, "gold", "a gold task needs its completions on the same line")
            return None
        if not isinstance(gold, list) or len(gold) != completions:
            self.error(line, "gold", f"must be a list of {completions} labels, one per completion")
            return None
        labels: list[int | str] = []
        for i, label in enumerate(gold):
            if label == "F":
                if not self.allow_fail:
                    self.error(line, f"gold[{i}]", "this campaign does not allow F (fail)")
                    return None
            elif isinstance(label, bool) or not isinstance(label, int):
                self.error(line, f"gold[{i}]", f'must be an integer 1..{completions} or "F"')
                return None
            elif not 1 <= label <= completions:
                self.error(line, f"gold[{i}]", f"must be between 1 and {completions}")
                return None
            labels.append(label)
        ranks = [label for label in labels if label != "F"]
        if not self.allow_ties and len(set(ranks)) != len(ranks):
            self.error(line, "gold", "this campaign does not allow ties (equal ranks)")
            return None
        if len(set(labels)) < 2:
            self.error(line, "gold", "says no completion is better than another")
            return None
        return tuple(labels)

    def _messages(self, line: int, messages: Any) -> list[dict[str, str]] | None:
        if messages is None:
            return None
        if not isinstance(messages, list) or not messages:
            self.error(line, "messages", "must be a non-empty list of {role, content} objects")
            return None
        result = []
        for i, message in enumerate(messages):
            name = f"messages[{i}]"
            if not isinstance(message, dict):
                self.error(line, name, "must be an object with role and content")
                return None
            role, content = message.get("role"), message.get("content")
            if role not in {"system", "user", "assistant"}:
                self.error(line, f"{name}.role", "must be system, user or assistant")
                return None
            if self.text(line, f"{name}.content", content) is None:
                return None
            result.append({"role": role, "content": content})
        return result


def _jsonl_rows(text: str, checker: _Checker) -> Iterator[ParsedPrompt | None]:
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            checker.error(number, "line", f"not valid JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(obj, dict):
            checker.error(number, "line", "must be a JSON object")
            continue
        unknown = set(obj) - {"id", "prompt", "messages", "metadata", "completions", "gold"}
        if unknown:
            checker.error(number, "line", f"unknown field(s): {', '.join(sorted(unknown))}")
            continue
        raw_completions = obj.get("completions") or []
        if not isinstance(raw_completions, list):
            checker.error(number, "completions", "must be a list")
            continue
        completions = []
        shape_ok = True
        for i, item in enumerate(raw_completions):
            name = f"completions[{i}]"
            if isinstance(item, dict):
                extra = set(item) - {"text", "source", "metadata"}
                if extra:
                    checker.error(number, name, f"unknown field(s): {', '.join(sorted(extra))}")
                    shape_ok = False
                elif "text" not in item:
                    checker.error(number, f"{name}.text", "is missing")
                    shape_ok = False
                else:
                    completions.append(
                        (name, item["text"], item.get("source"), item.get("metadata"))
                    )
            else:
                completions.append((name, item, None, None))
        if not shape_ok:
            continue
        yield checker.build(
            number,
            prompt=obj.get("prompt"),
            messages=obj.get("messages"),
            external_id=obj.get("id"),
            metadata=obj.get("metadata"),
            completions=completions,
            gold=obj.get("gold"),
        )


def _csv_rows(text: str, checker: _Checker) -> Iterator[ParsedPrompt | None]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        checker.error(1, "header", f"not valid CSV: {exc}")
        return
    columns = [name.strip() for name in header]
    allowed = {"id", "prompt", "metadata", "source", "gold"} | {
        f"{kind}_{i}"
        for kind in ("completion", "source")
        for i in range(1, CSV_MAX_COMPLETIONS + 1)
    }
    unknown = [c for c in columns if c not in allowed]
    if unknown or "prompt" not in columns:
        if "prompt" not in columns:
            checker.error(1, "header", "needs a 'prompt' column")
        if unknown:
            checker.error(1, "header", f"unknown column(s): {', '.join(unknown)}")
        return
    if len(set(columns)) != len(columns):
        checker.error(1, "header", "repeats a column name")
        return
    line = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            checker.error(line, "line", f"not valid CSV: {exc}")
            return
        start, line = line, reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            checker.error(start, "line", f"has {len(row)} cells; the header has {len(columns)}")
            continue
        cells = dict(zip(columns, row, strict=True))
        metadata: Any = None
        if cells.get("metadata", "").strip():
            try:
                metadata = json.loads(cells["metadata"])
            except json.JSONDecodeError as exc:
                checker.error(start, "metadata", f"not valid JSON: {exc.msg}")
                continue
        gold: Any = None
        if cells.get("gold", "").strip():
            try:
                gold = json.loads(cells["gold"])
            except json.JSONDecodeError as exc:
                checker.error(start, "gold", f"not valid JSON: {exc.msg}")
                continue
        completions = [
            (
                f"completion_{i}",
                cells[f"completion_{i}"],
                cells.get(f"source_{i}") or cells.get("source"),
                None,
            )
            for i in range(1, CSV_MAX_COMPLETIONS + 1)
            if cells.get(f"completion_{i}", "") != ""
        ]
        yield checker.build(
            start,
            prompt=cells["prompt"],
            messages=None,
            external_id=cells.get("id") or None,
            metadata=metadata,
            completions=completions,
            gold=gold,
        )
