"""An account that must choose its own password (an invitation's one-time password) can do
nothing else until it has: pages redirect to the password change, the API answers 403
``password_change_required``.

The mark is put in the session at login (accounts/signals.py), so requests of everyone else
cost no query here: the session is read anyway by the authentication that follows. Token
requests never carry it: such an account has no live token (its tokens are revoked when the
rule is set and the token endpoint refuses it).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse

from accounts.services import SESSION_PASSWORD_CHANGE_KEY

PASSWORD_CHANGE_REQUIRED = {
    "detail": "Choose your own password first: log in on the site and change it.",
    "code": "password_change_required",
}
ALLOWED = ("password_change", "password_change_done", "logout", "login", "healthz")
"""URL names such an account may still open."""


class PasswordChangeRequiredMiddleware:
    """After AuthenticationMiddleware (it reads the session and ``request.user``)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if (
            request.session.get(SESSION_PASSWORD_CHANGE_KEY)
            and request.user.is_authenticated
            and request.path not in {reverse(name) for name in ALLOWED}
        ):
            if request.path_info.startswith("/api/"):
                return JsonResponse(PASSWORD_CHANGE_REQUIRED, status=403)
            query = urlencode({"next": request.get_full_path()})
            return redirect(f"{reverse('password_change')}?{query}")
        return self.get_response(request)
