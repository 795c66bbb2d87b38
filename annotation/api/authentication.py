"""Token authentication with its lookup compiled once per connection.

Every labeller request from a script or integration carries a token; DRF's own class builds
and compiles the same ``Token`` + ``User`` query on each of them. Same answers, same errors.
"""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from annotation.compiled import CompiledQuery

_TOKEN = CompiledQuery(
    lambda key: Token.objects.select_related("user").filter(key=key),
    key=str,
)


class TokenAuthentication(authentication.TokenAuthentication):
    def authenticate_credentials(self, key: str):
        token = _TOKEN.first(key=key)
        if token is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return (token.user, token)
