"""API tokens in Django's admin: listed by prefix (the key itself is never stored), with who,
when created, until when, last used and how each one ended; "Revoke" ends the selected ones.
Tokens are made by their owners (``POST /api/auth/token/``), never here."""

from __future__ import annotations

from django.contrib import admin, messages
from django.utils import timezone

from accounts import services
from accounts.models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = (
        "key_prefix",
        "user",
        "state",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
        "revoked_reason",
    )
    list_filter = ("revoked_reason",)
    search_fields = ("user__username", "prefix")
    list_select_related = ("user",)
    fields = list_display
    readonly_fields = list_display
    actions = ["revoke"]
    ordering = ("-created_at", "-id")

    @admin.display(description="key")
    def key_prefix(self, token: ApiToken) -> str:
        return f"{token.prefix}…"

    @admin.display(description="state")
    def state(self, token: ApiToken) -> str:
        if token.revoked_at is not None:
            return "revoked"
        return "live" if token.is_live(timezone.now()) else "expired"

    @admin.action(description="Revoke the selected tokens", permissions=["change"])
    def revoke(self, request, queryset):
        count = services.tokens_revoke(tokens=queryset, reason=ApiToken.RevokedReason.ADMIN)
        self.message_user(request, f"{count} token(s) revoked.", messages.SUCCESS)

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # revoke instead: the row says when and why a token ended
