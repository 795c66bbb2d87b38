"""One error shape for every API failure.

``{"detail": "<sentence>", "code": "<machine code>", "errors": {"<field path>": ["<reason>"]}}``
with field paths such as ``items[2].rank``. Service errors carry their own status code (400,
403, 404, 409); DRF's validation errors are flattened into the same shape, and so are bodies
the parsers refuse (``errors`` naming the place, or ``body``).
"""

from __future__ import annotations

import traceback
from typing import Any

from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from annotation.api.parsers import InvalidBody
from annotation.errors import ServiceError
from annotation.importing import TOO_DEEP, ImportFailed


def flatten_errors(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """``{"items": [{}, {"rank": ["bad"]}]}`` → ``{"items[1].rank": ["bad"]}``."""
    flat: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            if isinstance(key, int):  # ListSerializer errors keyed by item index
                path = f"{prefix}[{key}]"
            elif key == "non_field_errors":  # errors about the object itself
                path = prefix or "non_field_errors"
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            flat.update(flatten_errors(value, path))
    elif isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            flat[prefix or "non_field_errors"] = [str(item) for item in detail]
        else:
            for index, item in enumerate(detail):
                flat.update(flatten_errors(item, f"{prefix}[{index}]"))
    else:
        flat[prefix or "non_field_errors"] = [str(detail)]
    return {path: messages for path, messages in flat.items() if messages}


def _import_errors(exc: ImportFailed) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for e in exc.errors:
        errors.setdefault(f"line {e.line}: {e.field}" if e.line else e.field, []).append(e.message)
    return errors


def _raised_while_parsing(exc: BaseException) -> bool:
    """Whether ``exc`` came out of DRF reading a request body: a view with DRF's own parsers
    (the token endpoint's) lets JSON's ``RecursionError`` through."""
    parse = Request._parse.__code__
    return any(frame.f_code is parse for frame, _ in traceback.walk_tb(exc.__traceback__))


def exception_handler(exc, context):
    if isinstance(exc, RecursionError) and _raised_while_parsing(exc):
        exc = InvalidBody(f"the body {TOO_DEEP}", code="too_deep")
    if isinstance(exc, ServiceError):
        headers = {"Retry-After": "1"} if exc.status_code == 503 else None
        return Response(exc.as_dict(), status=exc.status_code, headers=headers)
    if isinstance(exc, ImportFailed):
        return Response(
            {
                "detail": f"the file was not imported: {exc.count} error(s); nothing was stored",
                "code": "import_failed",
                "errors": _import_errors(exc),
                "lines": [
                    {"line": e.line, "field": e.field, "message": e.message} for e in exc.errors
                ],
            },
            status=400,
        )
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, ValidationError):
        errors = flatten_errors(exc.detail)
        first = next(iter(errors.items()), ("request", ["invalid"]))
        response.data = {
            "detail": f"{first[0]}: {first[1][0]}",
            "code": "invalid",
            "errors": errors,
        }
    elif response is not None and isinstance(exc, ParseError):
        detail = str(exc.detail)
        response.data = {
            "detail": detail,
            "code": getattr(exc.detail, "code", "parse_error"),
            "errors": getattr(exc, "errors", {"body": [detail]}),
        }
    elif response is not None and isinstance(response.data, dict) and "detail" in response.data:
        response.data = {
            "detail": str(response.data["detail"]),
            "code": getattr(response.data["detail"], "code", "error"),
        }
    return response
