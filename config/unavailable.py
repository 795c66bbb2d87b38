"""When the database goes away mid-request (a restart, a failover), answer 503 with a retry hint
instead of a 500. The request's transaction was rolled back, so nothing is half-written; the
labeller page retries such answers, and submits are idempotent, so a retry stores exactly one
ranking.
"""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 2


class DatabaseUnavailableMiddleware:
    """Turns a database connection error raised by a view into a 503 (``process_exception``
    runs before Django converts the exception into a 500)."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        logger.warning(
            "database unavailable for %s %s: %s", request.method, request.path, exception
        )
        # A broken connection is dropped when the request finishes (Django's
        # close_old_connections) and health-checked at the next request's start.
        return unavailable_response(request)


def unavailable_response(request: HttpRequest) -> HttpResponse:
    message = "The database is unavailable for a moment. Please retry."
    if request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", ""):
        response: HttpResponse = JsonResponse(
            {"detail": message, "code": "unavailable"}, status=503
        )
    else:
        response = HttpResponse(
            f"<!doctype html><title>Unavailable</title><p>{message}</p>", status=503
        )
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
