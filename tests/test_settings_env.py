"""Settings from the environment: the database URL and its options."""

from __future__ import annotations

from pathlib import Path

from config.env import database_from_url


def test_no_url_is_the_embedded_sqlite_file(tmp_path: Path):
    db = database_from_url(None, sqlite_path=tmp_path / "db.sqlite3")
    assert db["ENGINE"] == "django.db.backends.sqlite3"
    assert db["NAME"] == str(tmp_path / "db.sqlite3")


def test_postgres_url_prepares_statements_by_default(tmp_path: Path):
    db = database_from_url("postgres://me:s%40cret@db:5433/rlhf", sqlite_path=tmp_path / "x")
    assert (db["USER"], db["PASSWORD"], db["HOST"], db["PORT"], db["NAME"]) == (
        "me",
        "s@cret",
        "db",
        "5433",
        "rlhf",
    )
    assert db["OPTIONS"] == {"server_side_binding": True, "prepare_threshold": 5}
    assert db["CONN_HEALTH_CHECKS"] is True


def test_url_options_are_typed_and_override_the_defaults(tmp_path: Path):
    url = "postgres://db/rlhf?prepare_threshold=none&server_side_binding=false&sslmode=require"
    options = database_from_url(url, sqlite_path=tmp_path / "x")["OPTIONS"]
    assert options == {
        "server_side_binding": False,
        "prepare_threshold": None,
        "sslmode": "require",
    }
