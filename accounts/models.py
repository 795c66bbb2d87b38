"""What an account holds beside Django's User: API tokens (stored as hashes) and whether the
account must choose its own password before anything else."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class ApiToken(models.Model):
    """A key for scripts (``Authorization: Bearer <key>``). Only the SHA-256 of the key is
    stored: the key itself is shown once, when the token is created (accounts/tokens.py).

    A token is live until ``expires_at`` (``API_TOKEN_TTL_SECONDS`` after creation) unless it
    is revoked first: by its owner, by an admin, or because the owner's password changed or
    the account was deactivated (``revoked_reason`` says which). Revoked tokens stay listed,
    so the admin shows when and why each one ended.
    """

    class RevokedReason(models.TextChoices):
        OWNER = "owner", "revoked by its owner"
        ADMIN = "admin", "revoked by an admin"
        PASSWORD_CHANGED = "password_changed", "the password changed"
        DEACTIVATED = "deactivated", "the account was deactivated"
        PASSWORD_CHANGE_REQUIRED = "password_change_required", "a password change was required"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    key_hash = models.CharField(
        max_length=64, unique=True, editable=False, help_text="SHA-256 of the key, hex"
    )
    prefix = models.CharField(
        max_length=8, editable=False, help_text="the key's first characters, to tell tokens apart"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(
        null=True, blank=True, help_text="to the minute: recorded at most once a minute"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.CharField(max_length=32, choices=RevokedReason.choices, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user_id})"

    def is_live(self, now=None) -> bool:
        return self.revoked_at is None and self.expires_at > (now or timezone.now())


class AccountState(models.Model):
    """Per-account security state. ``must_change_password``: the account was created with a
    password someone else chose (an invitation's one-time password); until its owner sets
    their own, every page sends them to the password change and the API refuses them."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="account_state",
    )
    must_change_password = models.BooleanField(default=False)
    external_id = models.CharField(
        max_length=200,
        blank=True,
        help_text="The labeller's id in another tool (rankings imported from it name them so).",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["external_id"],
                condition=~models.Q(external_id=""),
                name="account_external_id_unique",
            )
        ]

    def __str__(self) -> str:
        return f"account state of {self.user_id}"
