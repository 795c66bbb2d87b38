"""Token authentication: one indexed lookup per request, written in SQL (``annotation.sql.TOKEN``).

A key is looked up by its SHA-256 (only the hash is stored: accounts/models.py ``ApiToken``),
with its user, in one statement; revoked, expired and unknown keys are refused (403, DRF's
messages), and so is an inactive user's. When the token was last used is written at most once
a minute (``accounts.services.token_record_use``), so a script's requests are reads.
``Authorization: Token <key>`` (DRF's spelling) and ``Authorization: Bearer <key>`` (what
clients generated from the OpenAPI schema send) both work.
"""

from __future__ import annotations

from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions

from accounts.services import hash_key, token_record_use
from annotation import sql


class TokenAuthentication(authentication.BaseAuthentication):
    keywords = (b"token", b"bearer")

    def authenticate(self, request):
        parts = authentication.get_authorization_header(request).split()
        if not parts or parts[0].lower() not in self.keywords:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed(
                _("Invalid token header. Token string should not contain spaces.")
                if len(parts) > 2
                else _("Invalid token header. No credentials provided.")
            )
        try:
            key = parts[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed(
                _("Invalid token header. Token string should not contain invalid characters.")
            ) from None
        return self.authenticate_credentials(key)

    def authenticate_credentials(self, key: str):
        token = sql.TOKEN.first(key_hash=hash_key(key))
        if token is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not token.user.is_active:  # (its tokens were revoked too)
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        if token.revoked_at is not None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        now = timezone.now()
        if token.expires_at <= now:
            raise exceptions.AuthenticationFailed(_("Token has expired."))
        token_record_use(token=token, now=now)
        return (token.user, token)
