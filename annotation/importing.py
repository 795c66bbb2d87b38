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
from datetime import UTC, datetime
from typing import Any, Final, Literal

from annotation import strength as strength_rules

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
    """The file was refused; ``errors`` lists every problem with its line and field, up to
    :data:`MAX_ERRORS`: ``truncated`` says more were found and left out, and :attr:`count`
    says so ("at least 200")."""

    def __init__(self, errors: list[LineError], *, truncated: bool = False) -> None:
        self.errors = errors
        self.truncated = truncated
        shown = "; ".join(str(e) for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{self.count} error(s): {shown}{more}")

    @property
    def count(self) -> str:
        """How many errors, as said to people: ``"at least 200"`` once the cap was reached."""
        return f"at least {len(self.errors)}" if self.truncated else str(len(self.errors))


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
    allow_empty: bool = False,
    allow_identical: bool = False,
    warnings: Warnings | None = None,
) -> list[ParsedPrompt]:
    """Parse and validate a whole file; raise ``ImportFailed`` listing every problem.

    ``allow_empty`` / ``allow_identical`` (the campaign's options) accept empty completions and
    completions identical to another of the same prompt instead of refusing them; each one
    accepted is counted in ``warnings`` when given."""
    check_size(len(data), max_bytes=max_bytes)
    text = _decode(data)
    checker = _Checker(
        completions_per_task,
        max_text_chars,
        default_source,
        allow_ties=allow_ties,
        allow_fail=allow_fail,
        allow_empty=allow_empty,
        allow_identical=allow_identical,
    )
    rows = _jsonl_rows(text, checker) if fmt == "jsonl" else _csv_rows(text, checker)
    records = [record for record in rows if record is not None]
    checker.raise_errors()
    if not records:
        raise ImportFailed([LineError(0, "file", "the file holds no prompts")])
    if warnings is not None:
        warnings.add(checker.warnings)
    return records


@dataclass(slots=True)
class Warnings:
    """What an import accepted only because the campaign allows it, counted."""

    empty_completions: int = 0
    identical_completions: int = 0

    def add(self, other: Warnings) -> None:
        self.empty_completions += other.empty_completions
        self.identical_completions += other.identical_completions


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
        allow_empty: bool = False,
        allow_identical: bool = False,
    ) -> None:
        self.n = n
        self.max_chars = max_chars
        self.default_source = default_source
        self.allow_ties = allow_ties
        self.allow_fail = allow_fail
        self.allow_empty = allow_empty
        self.allow_identical = allow_identical
        self.errors: list[LineError] = []
        self.truncated = False
        self.warnings = Warnings()
        self.strength_scale = "none"
        """rankings: the campaign's preference-strength scale (annotation.strength)"""

    def error(self, line: int, field_name: str, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(LineError(line, _printable(field_name), _printable(message)))
        else:
            self.truncated = True

    def raise_errors(self) -> None:
        if self.errors:
            raise ImportFailed(self.errors, truncated=self.truncated)

    def text(
        self, line: int, field_name: str, value: Any, *, may_be_empty: bool = False
    ) -> str | None:
        if not isinstance(value, str):
            self.error(line, field_name, f"must be a string, got {type(value).__name__}")
            return None
        if not value.strip() and not may_be_empty:
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
            value = self.text(line, field_name, c_text, may_be_empty=self.allow_empty)
            if value is None:
                continue
            key = value.strip()
            if not key:
                self.warnings.empty_completions += 1
            elif key in seen:
                if not self.allow_identical:
                    self.error(line, field_name, f"duplicates {seen[key]}")
                    continue
                self.warnings.identical_completions += 1
            seen.setdefault(key, field_name)
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


def _jsonl_objects(
    text: str, checker: _Checker, allowed: frozenset[str]
) -> Iterator[tuple[int, dict]]:
    """(line number, object) of every non-blank line that is a storable JSON object with only
    ``allowed`` keys; the others are recorded as errors."""
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
        unknown = set(obj) - allowed
        if unknown:
            names = ", ".join(sorted(_path_key(name) for name in unknown))
            checker.error(number, "line", f"unknown field(s): {names}")
            continue
        yield number, obj


def _jsonl_completions(
    number: int, raw_completions: Any, checker: _Checker
) -> list[tuple[str, Any, Any, Any]] | None:
    """The (field name, text, source, metadata) of a JSONL line's completions (strings or
    ``{text, source, metadata}`` objects), or None after recording what is wrong."""
    if raw_completions is None:
        return []
    if not isinstance(raw_completions, list):
        checker.error(number, "completions", "must be a list")
        return None
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
                completions.append((name, item["text"], item.get("source"), item.get("metadata")))
        else:
            completions.append((name, item, None, None))
    return completions if shape_ok else None


TASK_KEYS: Final = frozenset({"id", "prompt", "messages", "metadata", "completions", "gold"})


def _jsonl_rows(text: str, checker: _Checker) -> Iterator[ParsedPrompt | None]:
    for number, obj in _jsonl_objects(text, checker, TASK_KEYS):
        completions = _jsonl_completions(number, obj.get("completions") or [], checker)
        if completions is None:
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


CSV_COMPLETION_COLUMNS: Final = frozenset(
    f"{kind}_{i}" for kind in ("completion", "source") for i in range(1, CSV_MAX_COMPLETIONS + 1)
)
CSV_TASK_COLUMNS: Final = frozenset({"id", "prompt", "metadata", "source", "gold"})


def _csv_records(
    text: str, checker: _Checker, allowed: frozenset[str], *, required: str
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line a record starts on, {column: cell}) of every non-blank CSV record whose header has
    only ``allowed`` columns, ``required`` among them; the others are recorded as errors."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        checker.error(1, "header", f"not valid CSV: {exc}")
        return
    columns = [name.strip() for name in header]
    unknown = [c for c in columns if c not in allowed]
    if unknown or required not in columns:
        if required not in columns:
            checker.error(1, "header", f"needs a '{required}' column")
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
        yield start, dict(zip(columns, row, strict=True))


def _csv_completions(
    cells: dict[str, str], *, keep_empty: bool = False
) -> list[tuple[str, Any, Any, Any]]:
    """The completion columns of a CSV record that hold text (``keep_empty``: every one the
    header has, an empty cell an empty completion)."""
    present = [i for i in range(1, CSV_MAX_COMPLETIONS + 1) if f"completion_{i}" in cells]
    if not any(cells[f"completion_{i}"] != "" for i in present):
        return []  # a prompt without completions
    return [
        (
            f"completion_{i}",
            cells[f"completion_{i}"],
            cells.get(f"source_{i}") or cells.get("source"),
            None,
        )
        for i in present
        if keep_empty or cells[f"completion_{i}"] != ""
    ]


def _csv_rows(text: str, checker: _Checker) -> Iterator[ParsedPrompt | None]:
    allowed = CSV_TASK_COLUMNS | CSV_COMPLETION_COLUMNS
    for start, cells in _csv_records(text, checker, allowed, required="prompt"):
        metadata, metadata_problems = _json_cell(cells, "metadata")
        gold, gold_problems = _json_cell(cells, "gold")
        if metadata_problems or gold_problems:
            for path, reason in metadata_problems + gold_problems:
                checker.error(start, path, reason)
            continue
        completions = _csv_completions(cells, keep_empty=checker.allow_empty)
        yield checker.build(
            start,
            prompt=cells["prompt"],
            messages=None,
            external_id=cells.get("id") or None,
            metadata=metadata,
            completions=completions,
            gold=gold,
        )


# --- Rankings in -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedRanking:
    """One labeller's ranking of one prompt's completions, as read from a rankings import.

    The task it belongs to is named by its prompt (``prompt.external_id``, else the prompt's
    text) and its completions' texts: every line with the same prompt and completions is a
    ranking of the same task."""

    line: int
    prompt: ParsedPrompt
    labeller: str
    """the account's username, or empty when only ``labeller_external_id`` names it"""
    labeller_external_id: str
    labels: tuple[int | str, ...]
    """one label per completion of ``prompt``, in their order: a rank (1 = best) or ``"F"``"""
    time_spent_ms: int = 0
    comment: str = ""
    created_at: datetime | None = None
    strength: tuple[int, ...] | None = None
    """preference strength, one level per adjacent rank gap (:mod:`annotation.strength`), on the
    campaign's scale; None where the campaign asks none"""
    justification: str = ""

    @property
    def task_key(self) -> tuple[str, str, tuple[str, ...]]:
        """What names the ranking's task: the prompt (its external id, else its text) and the
        completions' texts in their order."""
        prompt = self.prompt
        kind, name = ("id", prompt.external_id) if prompt.external_id else ("text", prompt.text)
        return kind, name, tuple(c.text for c in prompt.completions)


RANKING_KEYS: Final = frozenset(
    {
        "prompt_id",
        "prompt",
        "messages",
        "metadata",
        "completions",
        "labeller",
        "labeller_external_id",
        "ranks",
        "time_spent_ms",
        "comment",
        "created_at",
        "strength",
        "justification",
    }
)
CSV_RANKING_COLUMNS: Final = (
    frozenset(RANKING_KEYS - {"messages", "completions", "ranks"})
    | CSV_COMPLETION_COLUMNS
    | {"source"}
    | {f"rank_{i}" for i in range(1, CSV_MAX_COMPLETIONS + 1)}
)
MAX_COMMENT_CHARS = 5000
MAX_TIME_SPENT_MS = 7 * 24 * 3600 * 1000
PARTIAL_REFUSED = (
    "is unranked: partial rankings are not imported (every completion needs a rank or F); "
    "rank it, mark it F, or leave this ranking out"
)


def parse_rankings(
    data: bytes,
    *,
    fmt: ImportFormat,
    completions_per_task: int,
    max_text_chars: int,
    max_bytes: int,
    default_source: str = "import",
    allow_ties: bool = True,
    allow_fail: bool = True,
    allow_empty: bool = False,
    allow_identical: bool = False,
    strength_scale: str = "none",
    warnings: Warnings | None = None,
) -> list[ParsedRanking]:
    """Parse and validate a whole rankings file (README "Rankings in"); raise ``ImportFailed``
    listing every problem with its line and field, as :func:`parse_import` does.

    Beside each line's own checks (those of a task line, then the labeller, one label per
    completion with the campaign's rules on ties and F, time, comment, timestamp), the lines of
    one task must give the prompt the same text, and a labeller ranks a task once. A partial
    ranking (a completion without a label: ``null``, or an empty CSV cell) is refused.
    ``strength`` (and ``justification``) are checked against ``strength_scale``, the campaign's
    (:func:`annotation.strength.validate`)."""
    check_size(len(data), max_bytes=max_bytes)
    text = _decode(data)
    checker = _Checker(
        completions_per_task,
        max_text_chars,
        default_source,
        allow_ties=allow_ties,
        allow_fail=allow_fail,
        allow_empty=allow_empty,
        allow_identical=allow_identical,
    )
    checker.strength_scale = strength_scale
    rows = _jsonl_rankings(text, checker) if fmt == "jsonl" else _csv_rankings(text, checker)
    records = [record for record in rows if record is not None]
    _check_across_lines(records, checker)
    checker.raise_errors()
    if not records:
        raise ImportFailed([LineError(0, "file", "the file holds no rankings")])
    if warnings is not None:
        warnings.add(checker.warnings)
    return records


def _jsonl_rankings(text: str, checker: _Checker) -> Iterator[ParsedRanking | None]:
    for number, obj in _jsonl_objects(text, checker, RANKING_KEYS):
        completions = _jsonl_completions(number, obj.get("completions"), checker)
        if completions is None:
            continue
        yield _ranking(checker, number, obj, completions, obj.get("ranks"))


def _csv_rankings(text: str, checker: _Checker) -> Iterator[ParsedRanking | None]:
    for start, cells in _csv_records(text, checker, CSV_RANKING_COLUMNS, required="labeller"):
        metadata, problems = _json_cell(cells, "metadata")
        strength, strength_problems = _json_cell(cells, "strength")
        if problems or strength_problems:
            for path, reason in problems + strength_problems:
                checker.error(start, path, reason)
            continue
        completions = _csv_completions(cells, keep_empty=checker.allow_empty)
        ranks: list[Any] = []
        for i in range(1, len(completions) + 1):
            cell = cells.get(f"rank_{i}", "").strip()
            ranks.append(None if cell == "" else (int(cell) if cell.isdigit() else cell))
        obj: dict[str, Any] = {key: cells[key] for key in RANKING_KEYS if cells.get(key, "") != ""}
        obj["metadata"] = metadata
        obj["strength"] = strength
        if "time_spent_ms" in obj and obj["time_spent_ms"].strip().isdigit():
            obj["time_spent_ms"] = int(obj["time_spent_ms"])
        yield _ranking(checker, start, obj, completions, ranks)


def _ranking(
    checker: _Checker,
    line: int,
    obj: dict[str, Any],
    completions: list[tuple[str, Any, Any, Any]],
    ranks: Any,
) -> ParsedRanking | None:
    errors_before = len(checker.errors)
    if not completions:
        checker.error(line, "completions", "a ranking needs the completions it ranks")
        return None
    prompt = checker.build(
        line,
        prompt=obj.get("prompt"),
        messages=obj.get("messages"),
        external_id=obj.get("prompt_id"),
        metadata=obj.get("metadata"),
        completions=completions,
    )
    username = _short_text(checker, line, "labeller", obj.get("labeller"), 150)
    external = _short_text(
        checker, line, "labeller_external_id", obj.get("labeller_external_id"), 200
    )
    if not username and not external and len(checker.errors) == errors_before:
        checker.error(line, "labeller", "is missing (give labeller or labeller_external_id)")
    labels = _ranking_labels(checker, line, ranks, len(completions))
    time_spent = obj.get("time_spent_ms", 0)
    if (
        isinstance(time_spent, bool)
        or not isinstance(time_spent, int)
        or not 0 <= time_spent <= MAX_TIME_SPENT_MS
    ):
        checker.error(line, "time_spent_ms", "must be an integer 0..604800000 (one week)")
    comment = obj.get("comment") or ""
    if not isinstance(comment, str):
        checker.error(line, "comment", "must be a string")
    elif len(comment) > MAX_COMMENT_CHARS:
        checker.error(line, "comment", f"is longer than {MAX_COMMENT_CHARS:,} characters")
    elif problem := text_problem(comment):
        checker.error(line, "comment", problem)
    created_at = _timestamp(checker, line, obj.get("created_at"))
    levels, justification = None, ""
    if labels is not None:
        try:
            levels, justification = strength_rules.validate(
                obj.get("strength"),
                labels=dict(enumerate(labels)),
                scale=checker.strength_scale,
                justification=obj.get("justification"),
            )
        except strength_rules.StrengthError as exc:
            checker.error(line, exc.field, exc.message)
    if prompt is None or labels is None or len(checker.errors) > errors_before:
        return None
    return ParsedRanking(
        line=line,
        prompt=prompt,
        labeller=username or "",
        labeller_external_id=external or "",
        labels=labels,
        time_spent_ms=time_spent,
        comment=comment,
        created_at=created_at,
        strength=None if levels is None else tuple(levels),
        justification=justification,
    )


def _short_text(checker: _Checker, line: int, name: str, value: Any, limit: int) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        checker.error(line, name, "must be a non-empty string")
        return None
    value = value.strip()
    if len(value) > limit:
        checker.error(line, name, f"is longer than {limit} characters")
        return None
    if problem := text_problem(value):
        checker.error(line, name, problem)
        return None
    return value


def _ranking_labels(
    checker: _Checker, line: int, ranks: Any, count: int
) -> tuple[int | str, ...] | None:
    """One label per completion (a rank 1..count or "F"), under the campaign's rules; a
    missing label refuses the line as partial (:data:`PARTIAL_REFUSED`)."""
    if not isinstance(ranks, list):
        checker.error(line, "ranks", f"must be a list of {count} labels, one per completion")
        return None
    if len(ranks) != count:
        checker.error(
            line, "ranks", f"has {len(ranks)} labels for {count} completions; give one each"
        )
        return None
    labels: list[int | str] = []
    ok = True
    for i, label in enumerate(ranks):
        where = f"ranks[{i}]"
        if label is None or label == "":
            checker.error(line, where, f"completion {i + 1} {PARTIAL_REFUSED}")
            ok = False
        elif label == "F":
            if not checker.allow_fail:
                checker.error(line, where, "this campaign does not allow F (fail)")
                ok = False
            labels.append(label)
        elif isinstance(label, bool) or not isinstance(label, int):
            checker.error(line, where, f'must be an integer 1..{count} or "F"')
            ok = False
        elif not 1 <= label <= count:
            checker.error(line, where, f"must be between 1 and {count}")
            ok = False
        else:
            labels.append(label)
    if not ok:
        return None
    ranked = [label for label in labels if label != "F"]
    if not checker.allow_ties and len(set(ranked)) != len(ranked):
        checker.error(line, "ranks", "this campaign does not allow ties (equal ranks)")
        return None
    return tuple(labels)


def _timestamp(checker: _Checker, line: int, value: Any) -> datetime | None:
    """An ISO 8601 timestamp (``2024-05-01T12:00:00Z``); one without an offset is UTC."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        checker.error(line, "created_at", "must be an ISO 8601 timestamp string")
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        checker.error(line, "created_at", f"is not an ISO 8601 timestamp: {value[:40]!r}")
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def _check_across_lines(records: list[ParsedRanking], checker: _Checker) -> None:
    """One prompt id names one prompt text, and a labeller ranks a task once."""
    texts: dict[str, tuple[int, str]] = {}
    rankers: dict[tuple, int] = {}
    for record in records:
        prompt = record.prompt
        if prompt.external_id:
            first = texts.setdefault(prompt.external_id, (record.line, prompt.text))
            if first[1] != prompt.text:
                checker.error(
                    record.line,
                    "prompt",
                    f"prompt {prompt.external_id!r} has another text on line {first[0]}",
                )
                continue
        who = ("id", record.labeller_external_id) if not record.labeller else record.labeller
        earlier = rankers.setdefault((record.task_key, who), record.line)
        if earlier != record.line:
            checker.error(
                record.line,
                "labeller",
                f"{record.labeller or record.labeller_external_id!r} already ranked this task "
                f"(same prompt and completions) on line {earlier}",
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
