"""Tokens follow the account: a password change or a deactivation revokes every token of the
user, whichever way it happens (the password change form, a reset by email, Django's admin,
``manage.py changepassword``, ``user_deactivate``, a script calling ``set_password``).

Django has no "password changed" signal, so :func:`_note_changes` compares the row being saved
with the stored one (one read, only when a saved user may have changed its password or active
flag: a login's ``save(update_fields=["last_login"])`` costs nothing) and :func:`_revoke`
acts after the save. Services stay the place for writes; these receivers only call
``user_tokens_revoke``, because no service of ours sits on those paths.

At login, an account that must choose its own password gets a mark in its session, which
accounts.middleware reads without a query.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in
from django.db.models.signals import post_save, pre_save

from accounts import services
from accounts.models import ApiToken
from accounts.selectors import account_must_change_password

_REASON = "_accounts_token_revocation"
_WATCHED = {"password", "is_active"}


def _note_changes(sender, instance, raw=False, update_fields=None, **kwargs) -> None:
    setattr(instance, _REASON, None)
    if raw or instance.pk is None:
        return
    if update_fields is not None and not _WATCHED & set(update_fields):
        return
    stored = sender._default_manager.filter(pk=instance.pk).values("password", "is_active").first()
    if stored is None:
        return
    if stored["is_active"] and not instance.is_active:
        setattr(instance, _REASON, ApiToken.RevokedReason.DEACTIVATED)
    elif stored["password"] != instance.password:
        setattr(instance, _REASON, ApiToken.RevokedReason.PASSWORD_CHANGED)


def _revoke(sender, instance, created=False, raw=False, **kwargs) -> None:
    reason = getattr(instance, _REASON, None)
    if reason and not created and not raw:
        setattr(instance, _REASON, None)
        services.user_tokens_revoke(user=instance, reason=reason)


def _mark_session(sender, request, user, **kwargs) -> None:
    if request is not None and hasattr(request, "session") and account_must_change_password(user):
        request.session[services.SESSION_PASSWORD_CHANGE_KEY] = True


def connect() -> None:
    user_model = get_user_model()
    pre_save.connect(_note_changes, sender=user_model, dispatch_uid="accounts-note-changes")
    post_save.connect(_revoke, sender=user_model, dispatch_uid="accounts-revoke-tokens")
    user_logged_in.connect(_mark_session, dispatch_uid="accounts-password-change-mark")
