"""Every URL the project serves is in a permission matrix.

The matrices (tests/helpers/url_matrices.py for the labelling API and the labeller pages, called
by tests/annotation/test_permissions.py and test_pages.py; tests/training/test_training_api.py
for the training API; tests/dashboard/test_pages.py for the dashboard) each call their URLs as
anonymous, labeller and admin (and more). This test resolves every URL they list to its route
and fails, naming the route, when the project serves one that no matrix calls: a new endpoint
cannot ship without its permission test.
"""

from __future__ import annotations

from types import SimpleNamespace

from django.urls import URLPattern, URLResolver, get_resolver, resolve

from tests.dashboard import test_pages as dashboard_pages
from tests.helpers import url_matrices as api_matrix
from tests.training import test_training_api as training_matrix

# Served by Django or libraries and tested there or elsewhere: the admin site (staff only, its
# own login), the auth views (login lockout: tests/test_security.py), the schema and its docs
# (public by design: tests/annotation/test_permissions.py), the health check, and the token
# endpoint (a login: its lockout is in tests/test_security.py).
NOT_IN_A_MATRIX = ("admin/", "accounts/", "api/schema/", "api/docs/", "healthz", "api/auth/token/")


def _routes(patterns, prefix: str = ""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern.url_patterns, prefix + _part(pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + _part(pattern)


def _part(pattern) -> str:
    """The pattern's piece of the route, as ``ResolverMatch.route`` writes it (no ``^``)."""
    return str(pattern.pattern).removeprefix("^")


def served_routes() -> set[str]:
    return {
        route
        for route in _routes(get_resolver().url_patterns)
        if not route.startswith(NOT_IN_A_MATRIX)
        # DRF's format-suffix twins (campaigns/1.json) reach the same view as their route.
        and "(?P<format>" not in route
        and "<drf_format_suffix:format>" not in route
    }


def matrix_urls() -> list[str]:
    ids = {"a": 1, "c": 1, "d": 1, "f": 1, "j": 1, "r": 1, "t": 1, "v": 1, "u": 1}
    urls = [
        template.format(**ids)
        for _, template, _, _ in (
            api_matrix.ADMIN_ONLY
            + api_matrix.READS
            + api_matrix.LABELLER_WRITES
            + api_matrix.ADMIN_READS
        )
    ]
    urls += [template.format(**ids) for _, template, _, _ in training_matrix.ENDPOINTS]
    one = SimpleNamespace(pk=1, tasks=SimpleNamespace(first=lambda: SimpleNamespace(pk=1)))
    urls += dashboard_pages.dashboard_urls(one, one, one) + dashboard_pages.post_urls(one, one)
    urls += [template.format(**ids) for template in api_matrix.PAGES]
    return urls


def test_every_served_url_is_in_a_permission_matrix():
    covered = {resolve(url.split("?")[0]).route for url in matrix_urls()}
    missing = sorted(served_routes() - covered)
    assert not missing, f"routes no permission matrix calls: {missing}"
