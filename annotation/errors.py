"""Errors the services raise; the API turns each into a response with its status code.

Services never return half-done work: they raise one of these inside their transaction, so
nothing is written.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: a message for people, a machine-readable code and, where known, the field."""

    status_code = 400
    default_code = "invalid"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        errors: dict[str, list[str]] | None = None,
        extra: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code or self.default_code
        self.errors = errors if errors is not None else ({field: [message]} if field else {})
        self.extra = extra or {}

    def as_dict(self) -> dict:
        body = {"detail": self.message, "code": self.code}
        if self.errors:
            body["errors"] = self.errors
        body.update(self.extra)
        return body


class InvalidInput(ServiceError):
    status_code = 400
    default_code = "invalid"


class PermissionDenied(ServiceError):
    status_code = 403
    default_code = "permission_denied"


class NotFound(ServiceError):
    status_code = 404
    default_code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    default_code = "conflict"


class Busy(ServiceError):
    """A transient contention the client should retry (HTTP 503 with Retry-After)."""

    status_code = 503
    default_code = "busy"
