"""Token authentication with its lookup written in SQL (``annotation.sql.TOKEN``).

Every labeller request from a script or integration carries a token; DRF's own class builds
and compiles the same ``Token`` + ``User`` query on each of them. Same answers, same errors.
``Authorization: Token <key>`` (DRF's spelling) and ``Authorization: Bearer <key>`` (what
clients generated from the OpenAPI schema send) both work.
"""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions

from annotation import sql


class TokenAuthentication(authentication.TokenAuthentication):
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
        token = sql.TOKEN.first(key=key)
        if token is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return (token.user, token)
