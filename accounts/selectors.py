"""Reads on accounts."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser as User

from accounts.models import AccountState


def account_must_change_password(user: User) -> bool:
    """Whether ``user`` must choose their own password before anything else."""
    return AccountState.objects.filter(user=user, must_change_password=True).exists()
