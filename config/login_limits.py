"""Login rate limiting on the login form, the admin and the API token endpoint alike.

Two limits, both per client address (``REMOTE_ADDR``, which config.proxy.ProxyMiddleware has
already made the real client's when the request came through a trusted proxy; IPv6 addresses
count by their /64, the block one subscriber holds):

* ``LOGIN_MAX_FAILURES`` (5) failures for one username from one address lock that pair out:
  guessing one account's password is slow, and a stranger guessing from elsewhere never locks
  the owner out at their own address (a lockout is never per username alone);
* ``LOGIN_MAX_FAILURES_PER_ADDRESS`` (20) failures from one address, whatever the usernames,
  lock that address out for every username: spraying one password over many accounts is
  limited too. A successful login does not reset this count (a sprayer holding one valid
  account could otherwise reset it between guesses).

Failures are counted in a window of ``LOGIN_LOCKOUT_SECONDS`` from the first one, and a lockout
lasts ``LOGIN_LOCKOUT_SECONDS`` from the failure that triggered it; its end is stored, so the
form and the API's ``Retry-After`` say exactly when to try again. While locked out no password
is even checked (so guessing gains nothing) and attempts are not counted (so the lockout does
not grow). Counts live in the cache (Redis when ``REDIS_URL`` is set, so every web process
shares them); when the cache is down logins are not limited rather than all refused.

Why not django-axes: it has one failure limit (``AXES_FAILURE_LIMIT``) for all its lockout
parameters, so "5 per username and address, 20 per address" is not expressible without
replacing its handler, and it brings its own middleware, backend, tables and DRF glue for
what is here some forty lines over the cache.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import time

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.dispatch import receiver

logger = logging.getLogger(__name__)


def client_address(request) -> str:
    """The address the limits count: REMOTE_ADDR, an IPv6 one as its /64 network."""
    if request is None:
        return "?"
    address = request.META.get("REMOTE_ADDR", "?")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _scopes(username: str, request) -> list[tuple[str, int]]:
    """``(key, limit)`` per limit that applies to this attempt."""
    address = client_address(request)
    scopes = [(f"address:{_digest(address)}", settings.LOGIN_MAX_FAILURES_PER_ADDRESS)]
    if username:
        pair = _digest(f"{username.strip().lower()}|{address}")
        scopes.append((f"pair:{pair}", settings.LOGIN_MAX_FAILURES))
    return scopes


def _remaining(locks: dict) -> int:
    until = max((float(value) for value in locks.values()), default=0.0)
    return max(0, math.ceil(until - time.time()))


def locked_for(username: str, request) -> int:
    """Seconds this username, or any username, stays locked out from the request's address;
    0 when it may try.

    If the cache (Redis) is down, logins are not blocked: a restart of Redis must not lock
    everyone out. The failure is logged.
    """
    keys = [f"login-lock:{key}" for key, _ in _scopes(username, request)]
    try:
        return _remaining(cache.get_many(keys))
    except Exception:
        logger.warning("login limits: cache unavailable; not limiting", exc_info=True)
        return 0


def _count(key: str, limit: int, now: float) -> None:
    counter = f"login-failures:{key}"
    cache.add(counter, 0, timeout=settings.LOGIN_LOCKOUT_SECONDS)
    try:
        failures = cache.incr(counter)
    except ValueError:  # expired between add and incr
        cache.set(counter, 1, timeout=settings.LOGIN_LOCKOUT_SECONDS)
        failures = 1
    if failures >= limit:
        cache.set(
            f"login-lock:{key}",
            now + settings.LOGIN_LOCKOUT_SECONDS,
            timeout=settings.LOGIN_LOCKOUT_SECONDS,
        )
        cache.delete(counter)


@receiver(user_login_failed)
def _count_failure(sender, credentials, request=None, **kwargs) -> None:
    username = credentials.get("username") or ""
    scopes = _scopes(username, request)
    try:
        if _remaining(cache.get_many([f"login-lock:{key}" for key, _ in scopes])):
            return  # refused unchecked: not a guess
        now = time.time()
        for key, limit in scopes:
            _count(key, limit, now)
    except Exception:
        logger.warning("login limits: cache unavailable; failure not counted", exc_info=True)


@receiver(user_logged_in)
def _clear_failures(sender, request, user, **kwargs) -> None:
    """A successful login clears its own username's count from that address (not the
    address's count across usernames)."""
    pair = _digest(f"{user.get_username().strip().lower()}|{client_address(request)}")
    try:
        cache.delete(f"login-failures:pair:{pair}")
    except Exception:
        logger.warning("login limits: cache unavailable; count not cleared", exc_info=True)


class RateLimitedModelBackend(ModelBackend):
    """ModelBackend that refuses to check passwords for a locked-out username or address."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if locked_for(username or "", request):
            raise PermissionDenied("too many failed login attempts")
        return super().authenticate(request, username=username, password=password, **kwargs)


def lockout_message(seconds: int) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    return f"Too many failed attempts. Try again in {minutes} minute{'s' * (minutes != 1)}."


class RateLimitedAuthenticationForm(AuthenticationForm):
    def clean(self):
        username = self.cleaned_data.get("username") or ""
        seconds = locked_for(username, self.request)
        if seconds:
            raise ValidationError(lockout_message(seconds), code="locked_out")
        return super().clean()
