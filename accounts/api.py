"""The token endpoint: ``POST /api/auth/token/`` logs in and creates a token, ``DELETE`` revokes
the token the request carries, ``DELETE /api/auth/token/all/`` every token of the caller.

Logging in here is limited like the login form (config/login_limits.py): while the username
or the address is locked out the answer is 429 with ``Retry-After`` and no password is
checked. An account that must still choose its own password gets no token (403
``password_change_required``). The body is read by the API's JSON parser with its limits
(annotation/api/parsers.py), not DRF's.
"""

from __future__ import annotations

from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import services
from accounts.models import ApiToken
from accounts.selectors import account_must_change_password
from annotation.api.parsers import LimitedJSONParser
from config.login_limits import locked_for, lockout_message

PASSWORD_CHANGE_REQUIRED = (
    "Choose your own password first: log in on the site and change it, then ask for a token."
)


class LoginSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, trim_whitespace=False)


TokenOut = inline_serializer(
    "Token",
    {
        "token": serializers.CharField(help_text="the key: shown now, never again"),
        "prefix": serializers.CharField(help_text="its first characters, as lists show it"),
        "expires": serializers.DateTimeField(),
    },
)
Revoked = inline_serializer("TokensRevoked", {"revoked": serializers.IntegerField()})


class TokenView(APIView):
    parser_classes = [LimitedJSONParser, FormParser, MultiPartParser]
    renderer_classes = [JSONRenderer]
    # The login itself is public; revoking needs the token (per method: get_permissions).
    permission_classes = [AllowAny]
    throttle_classes: list = []

    def get_permissions(self):
        if self.request.method == "DELETE":
            return [IsAuthenticated()]
        return super().get_permissions()

    @extend_schema(
        operation_id="auth_token_create",
        request=LoginSerializer,
        responses={200: TokenOut},
        description="Log in with username and password; the answer holds a new token's key "
        "(only its hash is stored: keep the key). It expires after `API_TOKEN_TTL_SECONDS`. "
        "429 with `Retry-After` while this name or this address is locked out.",
    )
    def post(self, request, *args, **kwargs):
        data = request.data if hasattr(request.data, "get") else {}
        username = data.get("username", "")
        seconds = locked_for(username if isinstance(username, str) else "", request)
        if seconds:
            return Response(
                {"detail": lockout_message(seconds), "code": "locked_out"},
                status=status.HTTP_429_TOO_MANY_REQUESTS,
                headers={"Retry-After": str(seconds)},
            )
        login = LoginSerializer(data=data)
        login.is_valid(raise_exception=True)
        user = authenticate(request=request, **login.validated_data)
        if user is None:
            raise ValidationError(
                {"non_field_errors": ["Unable to log in with provided credentials."]},
                code="authorization",
            )
        if account_must_change_password(user):
            raise PermissionDenied(PASSWORD_CHANGE_REQUIRED, code="password_change_required")
        token, key = services.token_create(user=user)
        return Response({"token": key, "prefix": token.prefix, "expires": token.expires_at})

    @extend_schema(
        operation_id="auth_token_destroy",
        request=None,
        responses={204: None},
        description="Revoke the token this request is authenticated with (400 without one).",
    )
    def delete(self, request, *args, **kwargs):
        if not isinstance(request.auth, ApiToken):
            raise ValidationError(
                {"Authorization": ["send the token to revoke: Authorization: Bearer <key>"]}
            )
        services.token_revoke(token=request.auth, reason=ApiToken.RevokedReason.OWNER)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenRevokeAllView(APIView):
    permission_classes = [IsAuthenticated]
    renderer_classes = [JSONRenderer]

    @extend_schema(
        operation_id="auth_token_all_destroy",
        request=None,
        responses={200: Revoked},
        description="Revoke every token of the caller (the one in use too).",
    )
    def delete(self, request, *args, **kwargs):
        revoked = services.user_tokens_revoke(
            user=request.user, reason=ApiToken.RevokedReason.OWNER
        )
        return Response({"revoked": revoked})
