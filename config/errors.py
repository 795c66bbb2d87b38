"""Django's own error pages, in the API's error shape under ``/api/``.

A URL under /api/ that matches no route (``/api/assignments/abc/``), or a request Django refuses
before any view, never reaches DRF; a client still gets ``{"detail", "code"}`` as JSON, as the
schema declares, not an HTML page.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Requests Django itself refuses before any view (too many form fields, a body over
    DATA_UPLOAD_MAX_MEMORY_SIZE, a suspicious header)."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "bad request", "code": "bad_request"}, status=400)
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "forbidden", "code": "permission_denied"}, status=403)
    return defaults.permission_denied(request, exception)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "not found", "code": "not_found"}, status=404)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "internal error", "code": "server_error"}, status=500)
    return defaults.server_error(request)
