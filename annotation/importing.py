"""Parsing and validating prompt/completion imports (JSONL or CSV). Pure: no Django.

Validation is all-or-nothing: ``parse_import`` either returns every record or raises
``ImportFailed`` with every problem found, each with its line number and field, so a user can
fix the whole file in one pass. The formats are documented in README.md ("Import formats").

Whatever the file holds, it is refused with line-numbered errors rather than stored or crashed
on: NUL characters and lone surrogates (PostgreSQL and UTF-8 refuse them), NaN, Infinity and
integers too long to convert, and JSON nested deeper than :data:`MAX_JSON_DEPTH`
(:func:`json_problems`). JSONL lines end at ``\n`` only: U+2028, U+2029 and U+0085 are
ordinary characters inside a JSON string.

A line may carry ``gold``: the reference labels of its completions, in their order (a rank, 1 =
best, or ``"F"``; ties and F only where the campaign allows them). Such a line becomes a gold
task: mixed into the labellers' queues and compared with the reference, never exported.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

ImportFormat = Literal["jsonl", "csv"]
MAX_ERRORS = 200  # stop collecting after this many; the file is refused either way
CSV_MAX_COMPLETIONS = 9
MAX_JSON_DEPTH = 32
"""Objects and arrays nested deeper than this (the outermost counted) are refused: whatever
reads them next (the JSON encoder, the database driver, a template) recurses once per level."""
TOO_DEEP = f"is nested more than {MAX_JSON_DEPTH} levels deep"
MAX_PATH_KEY_CHARS = 40  # a key longer than this is cut short where an error names its place


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
            self.errors.append(LineError(line, _printable(field_name), _printable(message)))

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
        problem = text_problem(value)
        if problem:
            self.error(line, field_name, problem)
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
            elif problem := text_problem(external_id):
                self.error(line, "id", problem)
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
            if problem := text_problem(source):
                self.error(line, f"{field_name}.source", problem)
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
    # Lines end at "\n" only (a "\r" before it is JSON whitespace): str.splitlines would also
    # split at U+2028, U+2029, U+0085 and other characters that are valid inside JSON strings.
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = load_json(raw)
        except json.JSONDecodeError as exc:
            checker.error(number, "line", f"not valid JSON: {exc.msg} at column {exc.colno}")
            continue
        except RecursionError:
            checker.error(number, "line", TOO_DEEP)
            continue
        if not isinstance(obj, dict):
            checker.error(number, "line", "must be a JSON object")
            continue
        problems = json_problems(obj)
        if problems:
            for path, reason in problems:
                checker.error(number, path or "line", reason)
            continue
        unknown = set(obj) - {"id", "prompt", "messages", "metadata", "completions", "gold"}
        if unknown:
            names = ", ".join(sorted(_path_key(name) for name in unknown))
            checker.error(number, "line", f"unknown field(s): {names}")
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
                    names = ", ".join(sorted(_path_key(key) for key in extra))
                    checker.error(number, name, f"unknown field(s): {names}")
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
        metadata, metadata_problems = _json_cell(cells, "metadata")
        gold, gold_problems = _json_cell(cells, "gold")
        if metadata_problems or gold_problems:
            for path, reason in metadata_problems + gold_problems:
                checker.error(start, path, reason)
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


def _json_cell(cells: dict[str, str], column: str) -> tuple[Any, list[tuple[str, str]]]:
    """The JSON value of a CSV cell (None when empty or absent) and what is wrong with it."""
    text = cells.get(column, "")
    if not text.strip():
        return None, []
    try:
        value = load_json(text)
    except json.JSONDecodeError as exc:
        return None, [(column, f"not valid JSON: {exc.msg}")]
    except RecursionError:
        return None, [(column, TOO_DEEP)]
    return value, json_problems(value, path=column)


# --- JSON that can be stored ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LongNumber:
    """An integer too long for Python to convert (``sys.get_int_max_str_digits()``, 4,300 by
    default): :func:`load_json` keeps its place so that :func:`json_problems` can name it."""

    digits: int


def _int_or_long(text: str) -> int | LongNumber:
    try:
        return int(text)
    except ValueError:
        return LongNumber(len(text.lstrip("-")))


def load_json(text: str) -> Any:
    """``json.loads`` that leaves what cannot be stored in place for :func:`json_problems` to
    name (``NaN``, ``Infinity`` and ``1e999`` as floats, over-long integers as
    :class:`LongNumber`) instead of failing on the whole text. Nesting deeper than the
    interpreter's recursion limit still raises ``RecursionError``."""
    return json.loads(text, parse_int=_int_or_long)


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None: PostgreSQL refuses NUL in text and
    jsonb, and a lone surrogate (what ``"\\ud800"`` parses to) has no UTF-8 encoding."""
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"contains a lone surrogate (U+{ord(value[exc.start]):04X})"
    return None


def json_problems(
    value: Any, *, path: str = "", max_depth: int = MAX_JSON_DEPTH, limit: int = 10
) -> list[tuple[str, str]]:
    """What a parsed JSON value holds that cannot be stored, as ``(path, reason)`` pairs (at
    most ``limit``), the path naming the place: ``metadata.tags[2]``, or ``path`` itself for
    the value as a whole. Checked: text and keys (:func:`text_problem`), numbers that are not
    finite or too long to convert (jsonb has no NaN or Infinity), and nesting deeper than
    ``max_depth`` (objects and arrays, the outermost counted).

    It walks one level of nesting at a time and screens each object's or array's values in
    bulk (their types, their text joined, their floats summed), so that only what looks wrong
    is looked at one by one: about 0.1 s for a million numbers where a plain walk takes 2.
    """
    reason = _value_problem(value)
    problems = [(path, reason)] if reason else []
    level = [(path, value)] if type(value) in (dict, list) else []
    depth = 1
    while level and len(problems) < limit:
        if depth > max_depth:
            problems.append((level[0][0], f"is nested more than {max_depth} levels deep"))
            break
        deeper: list[tuple[str, Any]] = []
        for where, node in level:
            if type(node) is dict:
                keys = list(node)
                if text_problem("".join(keys)):
                    problems += [
                        (where, f"has a key that {text_problem(k)}")
                        for k in keys
                        if text_problem(k)
                    ]
                values = list(node.values())
            else:
                keys = None
                values = node
            types = list(map(type, values))
            present = set(types)
            suspects = []
            if str in present and text_problem("".join(v for v in values if type(v) is str)):
                suspects += [i for i, t in enumerate(types) if t is str]
            if float in present and not math.isfinite(sum(v for v in values if type(v) is float)):
                suspects += [i for i, t in enumerate(types) if t is float]
            if LongNumber in present:
                suspects += [i for i, t in enumerate(types) if t is LongNumber]
            for i in sorted(suspects):
                if reason := _value_problem(values[i]):
                    problems.append((_child_path(where, keys, i), reason))
            if dict in present or list in present:
                deeper += [
                    (_child_path(where, keys, i), values[i])
                    for i, t in enumerate(types)
                    if t is dict or t is list
                ]
        level = deeper
        depth += 1
    return problems[:limit]


def _child_path(where: str, keys: list[str] | None, index: int) -> str:
    """The place of an object's (``keys``) or array's (None) ``index``-th value."""
    if keys is None:
        return f"{where}[{index}]"
    key = _path_key(keys[index])
    return f"{where}.{key}" if where else key


def _value_problem(value: Any) -> str | None:
    if type(value) is str:
        return text_problem(value)
    if type(value) is float and not math.isfinite(value):
        return f"is {json.dumps(value)}; only finite numbers can be stored"
    if type(value) is LongNumber:
        return f"is a number of {value.digits:,} digits; the limit is {_int_digits():,}"
    return None


def _int_digits() -> int:
    return sys.get_int_max_str_digits() or 4300


def _path_key(key: str) -> str:
    """A key as a place names it: cut short when long, NUL and lone surrogates escaped."""
    key = key if len(key) <= MAX_PATH_KEY_CHARS else f"{key[:MAX_PATH_KEY_CHARS]}…"
    return _printable(key)


def _printable(text: str) -> str:
    """``text`` safe to show anywhere: lone surrogates and NULs written as escapes."""
    if text_problem(text) is None:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
