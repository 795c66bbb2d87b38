"""``/healthz`` means ready to serve; ``manage.py bootstrap`` creates the first admin once."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from config import health


@pytest.mark.django_db
def test_healthz_is_ok_when_database_migrations_and_static_files_are_ready(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_healthz_is_unavailable_while_migrations_are_pending(client, monkeypatch):
    monkeypatch.setattr(health, "_migrated", False)
    monkeypatch.setattr(
        health.MigrationExecutor,
        "migration_plan",
        lambda self, targets: [("annotation.0099_future", False)],
    )
    response = client.get("/healthz")
    assert response.status_code == 503
    # Which check failed, and nothing about the database's host, name or user.
    assert response.json() == {"status": "unavailable", "failed": "migrations"}


@pytest.mark.django_db
def test_healthz_is_unavailable_in_production_before_collectstatic(client, settings, tmp_path):
    settings.STATIC_ROOT = tmp_path  # empty: no manifest
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": "config.static.Storage"}}
    from django.contrib.staticfiles.storage import staticfiles_storage

    staticfiles_storage._wrapped = None  # re-created from the settings above
    try:
        response = client.get("/healthz")
    finally:
        staticfiles_storage._wrapped = None
    assert response.status_code == 503 and response.json()["failed"] == "static"


@pytest.fixture
def admin_env(monkeypatch):
    for name in ("DJANGO_ADMIN_PASSWORD_FILE", "DJANGO_ADMIN_EMAIL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DJANGO_ADMIN_USERNAME", "root")
    monkeypatch.setenv("DJANGO_ADMIN_PASSWORD", "a long and unusual passphrase")
    return monkeypatch


@pytest.mark.django_db
def test_bootstrap_creates_the_first_admin_from_the_environment(admin_env, capsys):
    call_command("bootstrap")
    user = get_user_model().objects.get(username="root")
    assert user.is_staff and user.is_superuser
    assert user.check_password("a long and unusual passphrase")
    assert "admin 'root' created" in capsys.readouterr().out


@pytest.mark.django_db
def test_bootstrap_never_resets_an_existing_admins_password(admin_env, capsys):
    call_command("bootstrap")
    admin_env.setenv("DJANGO_ADMIN_PASSWORD", "another long passphrase here")
    call_command("bootstrap")
    assert (
        get_user_model()
        .objects.get(username="root")
        .check_password("a long and unusual passphrase")
    )
    assert "exists: left as it is" in capsys.readouterr().out


@pytest.mark.django_db
def test_bootstrap_reads_the_password_from_a_secret_file(admin_env, tmp_path):
    secret = tmp_path / "admin-password"
    secret.write_text("passphrase from a docker secret\n")
    admin_env.delenv("DJANGO_ADMIN_PASSWORD")
    admin_env.setenv("DJANGO_ADMIN_PASSWORD_FILE", str(secret))
    call_command("bootstrap")
    assert (
        get_user_model()
        .objects.get(username="root")
        .check_password("passphrase from a docker secret")
    )


@pytest.mark.django_db
def test_bootstrap_refuses_a_weak_or_missing_password_and_creates_nobody(admin_env, settings):
    settings.AUTH_PASSWORD_VALIDATORS = [
        {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"}
    ]
    admin_env.setenv("DJANGO_ADMIN_PASSWORD", "short")
    with pytest.raises(CommandError, match="DJANGO_ADMIN_PASSWORD: This password is too short"):
        call_command("bootstrap")
    admin_env.delenv("DJANGO_ADMIN_PASSWORD")
    with pytest.raises(CommandError, match="needs DJANGO_ADMIN_PASSWORD"):
        call_command("bootstrap")
    assert not get_user_model().objects.filter(username="root").exists()


@pytest.mark.django_db
def test_bootstrap_without_a_username_creates_nobody(monkeypatch, capsys):
    monkeypatch.delenv("DJANGO_ADMIN_USERNAME", raising=False)
    call_command("bootstrap")
    assert get_user_model().objects.count() == 0
    assert "no admin created" in capsys.readouterr().out
