"""Production settings, security headers and login rate limiting."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.core.cache import cache
from django.test import Client
from rest_framework.test import APIClient

from tests.factories import UserFactory

REPO = Path(__file__).resolve().parent.parent
PRODUCTION_ENV = {
    "DJANGO_ENV": "production",
    "DJANGO_SECRET_KEY": "x7#Kq2!vLp9@Zr4$Tn8^Wb3&Hy6*Jm1(Fd5)Gs0_Ce-Ua+Io=Ql;Xw:Rk,Vt.Ez",
    "DJANGO_ALLOWED_HOSTS": "rlhf.example.org",
}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_deploy_check_passes_with_production_environment():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key():
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != "DJANGO_SECRET_KEY"}
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


@pytest.mark.parametrize(
    "key",
    ["development-only-insecure-key-do-not-use-in-production", "change-me-to-50-random-characters"],
)
def test_production_refuses_a_secret_key_published_in_the_repository(key):
    result = manage("check", env={**PRODUCTION_ENV, "DJANGO_SECRET_KEY": key})
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is a key published in this repository" in result.stderr


@pytest.mark.parametrize(
    ("extra", "header"),
    [
        ({}, "max-age=2592000"),
        ({"DJANGO_HSTS_INCLUDE_SUBDOMAINS": "true"}, "max-age=2592000; includeSubDomains"),
        (
            {"DJANGO_HSTS_INCLUDE_SUBDOMAINS": "1", "DJANGO_HSTS_PRELOAD": "1"},
            "max-age=2592000; includeSubDomains; preload",
        ),
    ],
)
def test_hsts_binds_only_this_site_unless_the_domain_owner_says_otherwise(extra, header):
    code = (
        "from django.test import Client; "
        "r = Client().get('/healthz', secure=True, HTTP_HOST='rlhf.example.org'); "
        "print(r.headers.get('Strict-Transport-Security'))"
    )
    result = manage("shell", "-c", code, env={**PRODUCTION_ENV, **extra})
    assert result.stdout.strip().splitlines()[-1] == header, result.stderr


def test_production_turns_debug_off_and_cookies_follow_the_scheme():
    code = (
        "from django.conf import settings as s; "
        "print(s.DEBUG, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.X_FRAME_OPTIONS)"
    )
    result = manage("shell", "-c", code, env=PRODUCTION_ENV)
    # Secure per request (config/proxy.py), not globally: plain HTTP logins still work.
    assert result.stdout.split()[-4:] == ["False", "False", "False", "DENY"], result.stderr


def test_https_required_redirects_and_makes_cookies_always_secure():
    code = (
        "from django.conf import settings as s; "
        "print(s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE)"
    )
    result = manage("shell", "-c", code, env={**PRODUCTION_ENV, "DJANGO_HTTPS": "required"})
    assert result.stdout.split()[-3:] == ["True", "True", "True"], result.stderr
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env={**PRODUCTION_ENV, "DJANGO_HTTPS": "required"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_https_setting_refuses_an_unknown_value():
    result = manage("check", env={**PRODUCTION_ENV, "DJANGO_HTTPS": "yes"})
    assert result.returncode != 0
    assert "DJANGO_HTTPS='yes': use auto or required" in result.stderr


@pytest.mark.django_db
def test_security_headers_are_sent(client):
    response = client.get("/accounts/login/")
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"


@pytest.fixture
def victim(db):
    cache.clear()
    yield UserFactory(username="victim")
    cache.clear()


def test_login_form_locks_out_after_repeated_failures(client, victim, settings):
    settings.LOGIN_MAX_FAILURES = 3
    for _ in range(3):
        response = client.post("/accounts/login/", {"username": "victim", "password": "wrong"})
        assert response.status_code == 200 and not response.wsgi_request.user.is_authenticated
    # Locked out: even the right password is refused, with a message that says why.
    response = client.post(
        "/accounts/login/", {"username": "victim", "password": "correct horse battery"}
    )
    assert response.status_code == 200
    assert "Too many failed attempts" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_token_endpoint_answers_429_with_retry_after_when_locked_out(victim, settings):
    settings.LOGIN_MAX_FAILURES = 2
    api = APIClient()
    for _ in range(2):
        bad = api.post(
            "/api/auth/token/", {"username": "victim", "password": "nope"}, format="json"
        )
        assert bad.status_code == 400
    locked = api.post(
        "/api/auth/token/",
        {"username": "victim", "password": "correct horse battery"},
        format="json",
    )
    assert locked.status_code == 429 and int(locked["Retry-After"]) > 0
    assert locked.json()["code"] == "locked_out"


def test_successful_login_clears_the_failure_count(client, victim, settings):
    settings.LOGIN_MAX_FAILURES = 3
    for _ in range(2):
        client.post("/accounts/login/", {"username": "victim", "password": "wrong"})
    client.post("/accounts/login/", {"username": "victim", "password": "correct horse battery"})
    client.logout()
    for _ in range(2):
        client.post("/accounts/login/", {"username": "victim", "password": "wrong"})
    response = client.post(
        "/accounts/login/", {"username": "victim", "password": "correct horse battery"}
    )
    assert response.status_code == 302


# --- login limits per address (config/login_limits.py) --------------------------------------

PROXY = "10.9.0.2"


def form_login(client, username: str, password: str = "wrong", **meta):
    return client.post("/accounts/login/", {"username": username, "password": password}, **meta)


def test_spraying_many_usernames_from_one_address_locks_that_address_out(victim, settings):
    settings.LOGIN_MAX_FAILURES_PER_ADDRESS = 6
    sprayer = APIClient(REMOTE_ADDR="203.0.113.66")
    for i in range(6):  # one guess per username: never 5 for any one of them
        bad = sprayer.post("/api/auth/token/", {"username": f"user{i}", "password": "Summer2024"})
        assert bad.status_code == 400
    # Now every username is refused from that address, even with the right password...
    locked = sprayer.post(
        "/api/auth/token/", {"username": "victim", "password": "correct horse battery"}
    )
    assert locked.status_code == 429 and 0 < int(locked["Retry-After"]) <= 900
    response = form_login(Client(REMOTE_ADDR="203.0.113.66"), "victim", "correct horse battery")
    assert "Too many failed attempts. Try again in 15 minutes." in response.content.decode()
    # ...and from anywhere else the owner still logs in.
    elsewhere = APIClient(REMOTE_ADDR="198.51.100.20")
    ok = elsewhere.post(
        "/api/auth/token/", {"username": "victim", "password": "correct horse battery"}
    )
    assert ok.status_code == 200


def test_a_successful_login_does_not_reset_the_address_count(victim, settings):
    settings.LOGIN_MAX_FAILURES_PER_ADDRESS = 4
    client = Client(REMOTE_ADDR="203.0.113.67")
    for name in ("a1", "a2", "a3"):
        form_login(client, name)
    assert form_login(client, "victim", "correct horse battery").status_code == 302
    client.logout()
    form_login(client, "a4")  # the fourth failure from this address
    response = form_login(client, "victim", "correct horse battery")
    assert response.status_code == 200 and "Too many failed attempts" in response.content.decode()


def test_strangers_behind_the_proxy_are_counted_apart_from_the_owner(victim, settings):
    """Behind the trusted proxy every request comes from its address: the limits count the
    client it forwards (config/proxy.py), so a stranger's failures never lock the owner out."""
    settings.TRUSTED_PROXIES = [PROXY]
    settings.LOGIN_MAX_FAILURES = 3
    settings.LOGIN_MAX_FAILURES_PER_ADDRESS = 5
    stranger = Client(REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="203.0.113.9")
    for i in range(8):  # the owner's name until locked, then others: the address is locked
        form_login(stranger, "victim" if i < 3 else f"other{i}")
    response = form_login(stranger, "victim", "correct horse battery")
    assert "Too many failed attempts" in response.content.decode()
    owner = Client(REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="198.51.100.7")
    assert form_login(owner, "victim", "correct horse battery").status_code == 302


def test_a_forged_forwarded_for_from_an_untrusted_peer_is_ignored(victim, settings):
    settings.TRUSTED_PROXIES = [PROXY]
    settings.LOGIN_MAX_FAILURES = 3
    for i in range(3):  # a new claimed address each time: still one peer
        forged = Client(REMOTE_ADDR="203.0.113.10", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}")
        form_login(forged, "victim")
    again = Client(REMOTE_ADDR="203.0.113.10", HTTP_X_FORWARDED_FOR="192.0.2.200")
    response = form_login(again, "victim", "correct horse battery")
    assert "Too many failed attempts" in response.content.decode()


def test_ipv6_clients_are_counted_by_their_64_block(victim, settings):
    settings.LOGIN_MAX_FAILURES = 3
    for i in range(3):
        form_login(Client(REMOTE_ADDR=f"2001:db8:1:2::{i + 1:x}"), "victim")
    blocked = form_login(
        Client(REMOTE_ADDR="2001:db8:1:2::ffff"), "victim", "correct horse battery"
    )
    assert "Too many failed attempts" in blocked.content.decode()
    other_block = form_login(
        Client(REMOTE_ADDR="2001:db8:1:3::1"), "victim", "correct horse battery"
    )
    assert other_block.status_code == 302


def test_retry_after_says_when_the_lockout_ends(victim, settings, monkeypatch):
    from config import login_limits

    settings.LOGIN_MAX_FAILURES = 2
    api = APIClient()
    for _ in range(2):
        api.post("/api/auth/token/", {"username": "victim", "password": "nope"})
    real = time.time
    monkeypatch.setattr(login_limits, "time", SimpleNamespace(time=lambda: real() + 600))
    locked = api.post("/api/auth/token/", {"username": "victim", "password": "nope"})
    assert locked.status_code == 429 and 295 <= int(locked["Retry-After"]) <= 300
    assert locked.json()["detail"] == "Too many failed attempts. Try again in 5 minutes."
    # It ends when it said it would.
    monkeypatch.setattr(login_limits, "time", SimpleNamespace(time=lambda: real() + 901))
    ok = api.post("/api/auth/token/", {"username": "victim", "password": "correct horse battery"})
    assert ok.status_code == 200
