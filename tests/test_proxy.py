"""Behind a reverse proxy: forwarded headers only from trusted proxies, cookies Secure exactly on
TLS requests, the plain-HTTP warning on the login page (config/proxy.py)."""

from __future__ import annotations

import ipaddress

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.test import RequestFactory

from config.proxy import ProxyMiddleware, client_from_forwarded_for, parse_networks

PROXIES = parse_networks(["10.0.0.0/8", "fd00::1"])


@pytest.mark.parametrize(
    ("header", "client"),
    [
        ("198.51.100.7", "198.51.100.7"),
        # Right to left, skipping our own proxies: the first address we did not add ourselves.
        ("198.51.100.7, 10.0.0.3", "198.51.100.7"),
        # A client may prepend anything: only the hop our proxy appended counts.
        ("1.1.1.1, 198.51.100.7, 10.0.0.3", "198.51.100.7"),
        ("2001:db8::5, fd00::1", "2001:db8::5"),
        # Every hop is a proxy of ours: the left-most is as close to the client as we know.
        ("10.0.0.9, 10.0.0.3", "10.0.0.9"),
        ("not-an-address, 10.0.0.3", None),
        ("", None),
    ],
)
def test_client_is_the_right_most_address_that_is_not_a_trusted_proxy(header, client):
    assert client_from_forwarded_for(header, PROXIES) == client


def test_a_trusted_proxy_setting_that_is_not_an_address_is_a_configuration_error():
    with pytest.raises(ImproperlyConfigured, match=r"'proxy\.local' is not an IP address"):
        parse_networks(["10.0.0.1", "proxy.local"])
    assert parse_networks([" 172.28.0.10 "]) == (ipaddress.ip_network("172.28.0.10/32"),)


def _through_middleware(settings, *, peer: str, **headers):
    """(what the view saw, the response) for a GET from ``peer`` with ``headers``."""
    settings.TRUSTED_PROXIES = ["10.0.0.5"]
    seen = {}

    def view(request):
        seen.update(addr=request.META["REMOTE_ADDR"], secure=request.is_secure())
        seen.update({key: value for key, value in request.META.items() if "FORWARDED" in key})
        response = HttpResponse("ok")
        response.set_cookie(settings.SESSION_COOKIE_NAME, "s")
        response.set_cookie(settings.CSRF_COOKIE_NAME, "c")
        response.set_cookie("other", "o")
        return response

    request = RequestFactory().get("/", REMOTE_ADDR=peer, **headers)
    return seen, ProxyMiddleware(view)(request)


def test_forwarded_headers_from_a_stranger_are_removed(settings):
    seen, response = _through_middleware(
        settings,
        peer="203.0.113.20",
        HTTP_X_FORWARDED_PROTO="https",
        HTTP_X_FORWARDED_FOR="198.51.100.7",
        HTTP_FORWARDED="for=198.51.100.7;proto=https",
    )
    assert seen == {"addr": "203.0.113.20", "secure": False}
    assert not response.cookies[settings.SESSION_COOKIE_NAME]["secure"]


def test_the_trusted_proxy_sets_the_client_address_and_the_scheme(settings):
    seen, response = _through_middleware(
        settings,
        peer="10.0.0.5",
        HTTP_X_FORWARDED_PROTO="https",
        HTTP_X_FORWARDED_FOR="198.51.100.7",
    )
    assert seen["addr"] == "198.51.100.7" and seen["secure"] is True
    assert response.cookies[settings.SESSION_COOKIE_NAME]["secure"] is True
    assert response.cookies[settings.CSRF_COOKIE_NAME]["secure"] is True
    assert not response.cookies["other"]["secure"]  # only the two cookies Django sets


def test_plain_http_through_the_proxy_keeps_cookies_usable(settings):
    seen, response = _through_middleware(
        settings, peer="10.0.0.5", HTTP_X_FORWARDED_PROTO="http", HTTP_X_FORWARDED_FOR="10.1.2.3"
    )
    assert seen["secure"] is False
    assert not response.cookies[settings.SESSION_COOKIE_NAME]["secure"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("host", "warned"),
    [
        ("192.0.2.2:8000", True),
        ("annotate.example.org", True),
        ("localhost:8000", False),
        ("127.0.0.5", False),
        ("[::1]:8000", False),
    ],
)
def test_login_page_warns_on_plain_http_except_on_loopback(client, settings, host, warned):
    settings.ALLOWED_HOSTS = ["*"]
    page = client.get("/accounts/login/", HTTP_HOST=host).content.decode()
    assert ('id="plain-http-warning"' in page) is warned


@pytest.mark.django_db
def test_login_page_does_not_warn_over_https(client, settings):
    settings.ALLOWED_HOSTS = ["*"]
    page = client.get("/accounts/login/", HTTP_HOST="192.0.2.2", secure=True).content.decode()
    assert 'id="plain-http-warning"' not in page
