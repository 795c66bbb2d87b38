"""Reading settings from the environment: the only place that parses URLs and flags."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


class ImproperlyConfiguredEnv(RuntimeError):
    """An environment variable is missing or malformed."""


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfiguredEnv(f"{name}={raw!r} is not a boolean (use true/false)")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfiguredEnv(f"{name}={raw!r} is not an integer") from exc


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def _option(value: str) -> str | int | bool | None:
    """A connection option from the URL's query: ``true``/``false`` and integers typed (psycopg
    and Django want ``server_side_binding=True``, ``prepare_threshold=5``), the rest as is."""
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value.lower() == "none":
        return None
    return int(value) if value.isdigit() else value


def database_from_url(url: str | None, *, sqlite_path: Path) -> dict:
    """Django DATABASES['default'] from ``DATABASE_URL``; SQLite file when unset.

    ``postgres://user:pass@host:port/name?sslmode=require`` maps to the psycopg 3 backend.
    """
    if not url:
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(sqlite_path),
            # IMMEDIATE takes the write lock at BEGIN, so concurrent writers queue instead of
            # failing half-way with "database is locked".
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
        }
    parsed = urlparse(url)
    if parsed.scheme in {"postgres", "postgresql", "pgsql"}:
        # Server-side binding with statements prepared after 5 uses: the hot labelling queries
        # are planned once per connection instead of on every request (bench/README.md). Put
        # ``?prepare_threshold=none`` in the URL behind a transaction-pooling PgBouncer.
        options = {
            "server_side_binding": True,
            "prepare_threshold": 5,
            **{key: _option(values[-1]) for key, values in parse_qs(parsed.query).items()},
        }
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parsed.path.lstrip("/")) or "postgres",
            "USER": unquote(parsed.username or ""),
            "PASSWORD": unquote(parsed.password or ""),
            "HOST": parsed.hostname or "",
            "PORT": str(parsed.port or ""),
            "OPTIONS": options,
            "CONN_MAX_AGE": env_int("DATABASE_CONN_MAX_AGE", 60),
            "CONN_HEALTH_CHECKS": True,
        }
    if parsed.scheme == "sqlite":
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": unquote(parsed.path) or str(sqlite_path),
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
        }
    raise ImproperlyConfiguredEnv(
        f"DATABASE_URL scheme {parsed.scheme!r} is not supported (use postgres:// or sqlite://)"
    )
