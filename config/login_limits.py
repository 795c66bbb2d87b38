"""Login rate limiting: too many failed attempts for one username from one address lock that
pair out for a while, on the login form, the admin and the API token endpoint alike.

Failures are counted in the cache (Redis when ``REDIS_URL`` is set, so every web process shares
the count). While locked out no password is even checked, so guessing gains nothing.
"""

from __future__ import annotations

import hashlib
import logging

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.dispatch import receiver
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.response import Response

logger = logging.getLogger(__name__)


def client_address(request) -> str:
    if request is None:
        return "?"
    return request.META.get("REMOTE_ADDR", "?")


def _key(username: str, address: str) -> str:
    digest = hashlib.sha256(f"{username.strip().lower()}|{address}".encode()).hexdigest()
    return f"login-failures:{digest}"


def locked_for(username: str, request) -> int:
    """Seconds the (username, address) pair stays locked out; 0 when it may try.

    If the cache (Redis) is down, logins are not blocked: a restart of Redis must not lock
    everyone out. The failure is logged.
    """
    if not username:
        return 0
    try:
        failures = cache.get(_key(username, client_address(request)), 0)
    except Exception:
        logger.warning("login limits: cache unavailable; not limiting", exc_info=True)
        return 0
    return settings.LOGIN_LOCKOUT_SECONDS if failures >= settings.LOGIN_MAX_FAILURES else 0


@receiver(user_login_failed)
def _count_failure(sender, credentials, request=None, **kwargs) -> None:
    username = credentials.get("username") or ""
    if not username:
        return
    key = _key(username, client_address(request))
    try:
        cache.add(key, 0, timeout=settings.LOGIN_LOCKOUT_SECONDS)
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=settings.LOGIN_LOCKOUT_SECONDS)
    except Exception:
        logger.warning("login limits: cache unavailable; failure not counted", exc_info=True)


@receiver(user_logged_in)
def _clear_failures(sender, request, user, **kwargs) -> None:
    try:
        cache.delete(_key(user.get_username(), client_address(request)))
    except Exception:
        logger.warning("login limits: cache unavailable; count not cleared", exc_info=True)


class RateLimitedModelBackend(ModelBackend):
    """ModelBackend that refuses to check passwords for a locked-out (username, address)."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if username and locked_for(username, request):
            raise PermissionDenied("too many failed login attempts")
        return super().authenticate(request, username=username, password=password, **kwargs)


def _lockout_message(seconds: int) -> str:
    minutes = max(1, round(seconds / 60))
    return f"Too many failed attempts. Try again in {minutes} minute{'s' * (minutes != 1)}."


class RateLimitedAuthenticationForm(AuthenticationForm):
    def clean(self):
        username = self.cleaned_data.get("username") or ""
        seconds = locked_for(username, self.request)
        if seconds:
            raise ValidationError(_lockout_message(seconds), code="locked_out")
        return super().clean()


class RateLimitedObtainAuthToken(ObtainAuthToken):
    """POST username/password → token; 429 with Retry-After while locked out."""

    @extend_schema(
        request=AuthTokenSerializer,
        responses={200: inline_serializer("Token", {"token": serializers.CharField()})},
    )
    def post(self, request, *args, **kwargs):
        data = request.data if hasattr(request.data, "get") else {}
        seconds = locked_for(str(data.get("username", "")), request)
        if seconds:
            return Response(
                {"detail": _lockout_message(seconds), "code": "locked_out"},
                status=status.HTTP_429_TOO_MANY_REQUESTS,
                headers={"Retry-After": str(seconds)},
            )
        return super().post(request, *args, **kwargs)
