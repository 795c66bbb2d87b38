"""Requests that come through a reverse proxy: which forwarded headers to believe, and cookies
that follow the request's scheme.

``DJANGO_TRUSTED_PROXIES`` lists the addresses or networks of the proxies in front of the app
(docker-compose.yml: the Caddy service). From a trusted peer, ``X-Forwarded-Proto`` gives the
scheme (Django's ``SECURE_PROXY_SSL_HEADER``) and ``X-Forwarded-For`` the client: REMOTE_ADDR
becomes the right-most address in it that is not itself a trusted proxy, so the login limits
count the real client. From any other peer every forwarded header is removed before Django or
the views read it: a client that talks to gunicorn directly can claim neither HTTPS nor another
address.

Session and CSRF cookies are marked ``Secure`` when the request came over TLS (directly, or
through a trusted proxy), and not otherwise, so one deployment serves HTTPS with secure cookies
and still lets a labeller log in over plain HTTP on a private network (the login page then says
that the connection is not encrypted). ``DJANGO_HTTPS=required`` instead makes Django redirect
plain HTTP to HTTPS and mark the cookies Secure always. HSTS is sent on secure requests only
(Django's SecurityMiddleware).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.http.request import split_domain_port

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Every header a proxy may use to describe the client; only a trusted proxy's are believed.
FORWARDED_HEADERS = (
    "HTTP_FORWARDED",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PORT",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_REAL_IP",
)


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """``["10.0.0.5", "172.28.0.0/24", "::1"]`` as networks; a bad entry is a config error."""
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"DJANGO_TRUSTED_PROXIES: {item!r} is not an IP address or network"
            ) from exc
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def is_trusted(address: str, networks: tuple[Network, ...]) -> bool:
    ip = _address(address)
    return ip is not None and any(ip in network for network in networks)


def client_from_forwarded_for(header: str, networks: tuple[Network, ...]) -> str | None:
    """The client a chain of trusted proxies saw: walking ``X-Forwarded-For`` from the right
    (the hop nearest to us), the first address that is not a trusted proxy. ``None`` when the
    header is empty or holds something that is not an address (then the peer's address stays)."""
    hops = [hop.strip() for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        ip = _address(hop)
        if ip is None:
            return None
        if not any(ip in network for network in networks):
            return str(ip)
    return str(_address(hops[0])) if hops else None


class ProxyMiddleware:
    """First in MIDDLEWARE: it must clean the request before anything reads ``is_secure()`` or
    REMOTE_ADDR, and it sees the response after the session and CSRF middleware set cookies."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.trusted = parse_networks(settings.TRUSTED_PROXIES)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        meta = request.META
        if is_trusted(meta.get("REMOTE_ADDR", ""), self.trusted):
            client = client_from_forwarded_for(meta.get("HTTP_X_FORWARDED_FOR", ""), self.trusted)
            if client is not None:
                meta["REMOTE_ADDR"] = client
        else:
            for header in FORWARDED_HEADERS:
                meta.pop(header, None)
        response = self.get_response(request)
        if request.is_secure():
            for name in (settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME):
                if name in response.cookies:
                    response.cookies[name]["secure"] = True
        return response


def transport(request: HttpRequest) -> dict:
    """Template context: ``plain_http_warning`` when the page was reached over plain HTTP on an
    address other than loopback (passwords and session cookies then cross the network in
    clear text; the login page says so)."""
    if request.is_secure():
        return {"plain_http_warning": False}
    domain, _port = split_domain_port(request.get_host())
    ip = _address(domain)
    loopback = domain == "localhost" or (ip is not None and ip.is_loopback)
    return {"plain_http_warning": not loopback}
