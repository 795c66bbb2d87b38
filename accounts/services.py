"""Every write on accounts: API tokens (create, revoke) and the first-login password rule.

Tokens: the key is ``secrets.token_urlsafe(32)`` (256 random bits); the database keeps its
SHA-256 (no salt or slow hash is needed for a key nobody chose: guessing 256 bits is hopeless
either way, and a fast hash keeps authentication at one indexed lookup,
``annotation.sql.TOKEN``) and its first eight characters, to tell tokens apart in lists. The key
is returned once, by :func:`token_create`, and cannot be read back.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser as User
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import AccountState, ApiToken

KEY_BYTES = 32
PREFIX_CHARS = 8
LAST_USED_RESOLUTION = timedelta(minutes=1)
"""``last_used_at`` is written at most this often per token, so authenticating stays one read."""

SESSION_PASSWORD_CHANGE_KEY = "accounts.must_change_password"
"""Set in the session at login for an account that must choose its own password (read by
accounts.middleware without a query)."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def token_create(*, user: User) -> tuple[ApiToken, str]:
    """A new token for ``user``, live for ``API_TOKEN_TTL_SECONDS``. Returns ``(token, key)``:
    the key is shown to its owner now and never again (only its hash is stored)."""
    key = secrets.token_urlsafe(KEY_BYTES)
    now = timezone.now()
    token = ApiToken.objects.create(
        user=user,
        key_hash=hash_key(key),
        prefix=key[:PREFIX_CHARS],
        created_at=now,
        expires_at=now + timedelta(seconds=settings.API_TOKEN_TTL_SECONDS),
    )
    return token, key


def tokens_revoke(*, tokens: QuerySet[ApiToken], reason: str) -> int:
    """Revoke the live tokens among ``tokens`` (one UPDATE); returns how many. Expired and
    already revoked ones keep their state."""
    now = timezone.now()
    return tokens.filter(revoked_at__isnull=True, expires_at__gt=now).update(
        revoked_at=now, revoked_reason=reason
    )


def token_revoke(*, token: ApiToken, reason: str) -> bool:
    """Revoke one token; False when it was no longer live."""
    return bool(tokens_revoke(tokens=ApiToken.objects.filter(pk=token.pk), reason=reason))


def user_tokens_revoke(*, user: User, reason: str) -> int:
    """Revoke every live token of ``user`` (password changed, account deactivated, or the
    owner's "revoke all")."""
    return tokens_revoke(tokens=ApiToken.objects.filter(user=user), reason=reason)


def token_record_use(*, token: ApiToken, now: datetime) -> None:
    """Note that ``token`` was used ``now``, unless that was noted less than a minute ago."""
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now


@transaction.atomic
def account_require_password_change(*, user: User) -> None:
    """Until ``user`` sets a password of their own, every page sends them to the password
    change and the API answers 403 ``password_change_required``. Their tokens are revoked,
    so no token outlives the rule (authentication then never needs to look at it)."""
    AccountState.objects.update_or_create(user=user, defaults={"must_change_password": True})
    user_tokens_revoke(user=user, reason=ApiToken.RevokedReason.PASSWORD_CHANGE_REQUIRED)


def account_password_chosen(*, user: User) -> None:
    """``user`` set their own password (the password change or reset form): the rule is lifted."""
    AccountState.objects.filter(user=user, must_change_password=True).update(
        must_change_password=False
    )
