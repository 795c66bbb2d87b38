"""JSON request bodies within limits.

Every JSON body the API reads goes through :class:`LimitedJSONParser` (the default parser in
``REST_FRAMEWORK`` and the views' ``parser_classes``). DRF's own parser reads a body of any
size, lets the ``RecursionError`` of deeply nested JSON through as a 500, and hands on text the
database refuses. This one answers 400 in the API's error shape (``{"detail", "code",
"errors"}``, annotation/api/exceptions.py) when the body

* is larger than :data:`MAX_BODY_BYTES` (code ``too_large``),
* is not JSON, or holds ``NaN``, ``Infinity``, a number out of range (``1e999``) or an integer
  of more than 4,300 digits (``parse_error``),
* nests objects and arrays more than ``MAX_JSON_DEPTH`` deep (``too_deep``),
* holds a NUL character or a lone surrogate (``"\\ud800"``) in any text or key (``invalid``,
  ``errors`` naming the place: ``eval_settings.note``).
"""

from __future__ import annotations

import json
import math
import re
import sys
from itertools import accumulate
from typing import Any

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError

from annotation.importing import MAX_JSON_DEPTH, TOO_DEEP, json_problems

MAX_BODY_BYTES = 2 * 1024 * 1024
"""The largest JSON body read; the largest legitimate one is a guideline of 200,000 characters."""

_SUSPECT = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
"""An escaped NUL or surrogate: only then can the parsed text hold what cannot be stored (raw
control characters are not JSON, and invalid UTF-8 is refused before parsing)."""
_STRING = re.compile(r'"(?:[^"\\]|\\.)*+"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class InvalidBody(ParseError):
    """A JSON body refused before any view sees it; ``errors`` maps places to reasons."""

    def __init__(self, detail: str, *, code: str, errors: dict[str, list[str]] | None = None):
        super().__init__(detail, code)
        self.errors = errors or {"body": [detail]}


class LimitedJSONParser(parsers.JSONParser):
    """DRF's JSON parser with limits on size and depth, and text the database can store."""

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        body = stream.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise InvalidBody(f"the body is larger than {MAX_BODY_BYTES:,} bytes", code="too_large")
        try:
            text = body.decode(encoding)
        except (LookupError, UnicodeDecodeError):
            raise InvalidBody(f"the body is not valid {encoding}", code="parse_error") from None
        value = _loads(text)
        if _depth(text) > MAX_JSON_DEPTH:
            raise InvalidBody(f"the body {TOO_DEEP}", code="too_deep")
        if _SUSPECT.search(text):  # the walk costs Python time per value: only when needed
            _check(value)
        return value


class _NotJSON(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJSON(f"the number {text[:20]} is out of range")
    return value


def _loads(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise InvalidBody(f"the body {TOO_DEEP}", code="too_deep") from None
    except (_NotJSON, json.JSONDecodeError) as exc:
        raise InvalidBody(f"JSON parse error - {exc}", code="parse_error") from None
    except ValueError:  # the only other: an integer too long to convert
        digits = sys.get_int_max_str_digits()
        raise InvalidBody(
            f"JSON parse error - an integer has more than {digits:,} digits", code="parse_error"
        ) from None


def _depth(text: str) -> int:
    """How deep the objects and arrays of valid JSON ``text`` nest, counted in C-speed steps
    (0.05 s for 2 MB of brackets; a walk of the parsed value takes seconds)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return 0  # cannot be deeper
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _check(value: Any) -> None:
    problems = json_problems(value)
    if not problems:
        return
    errors: dict[str, list[str]] = {}
    for path, reason in problems:
        errors.setdefault(path or "body", []).append(reason)
    path, reason = problems[0]
    raise InvalidBody(f"{path or 'body'}: {reason}", code="invalid", errors=errors)
