"""Every endpoint for anonymous, outsider (member of nothing), labeller, other labeller, admin.

A labeller never sees another labeller's assignments or rankings (404, not 403 with data) and
never reaches an admin action (403).
"""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from annotation import services
from annotation.models import Campaign
from tests.conftest import client_for
from tests.factories import CampaignFactory
from tests.helpers.url_matrices import ADMIN_ONLY, ADMIN_READS, LABELLER_WRITES, READS, ROLES

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(campaign, labeller, other_labeller, outsider, admin_user):
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(assignment.display_order)]
    ranking = services.ranking_submit(
        labeller=labeller, assignment=assignment, items=items, time_spent_ms=10
    ).ranking
    draft = CampaignFactory(status=Campaign.Status.DRAFT)
    services.campaign_add_members(campaign=draft, users=[labeller])
    return {
        "campaign": campaign,
        "draft": draft,
        "assignment": assignment,
        "ranking": ranking,
        "users": {
            "anonymous": None,
            "outsider": outsider,
            "labeller": labeller,
            "other": other_labeller,
            "admin": admin_user,
        },
    }


def call(user, method, url, data=None, fmt="json"):
    client = client_for(user)
    return (
        getattr(client, method)(url, data, format=fmt)
        if data is not None
        else getattr(client, method)(url)
    )


# The matrix (method, URL, body, the status of each role) is tests/helpers/url_matrices.py, which
# tests/test_url_coverage.py also reads.
@pytest.mark.parametrize(
    ("method", "template", "body", "expected"),
    ADMIN_ONLY + READS + LABELLER_WRITES + ADMIN_READS,
)
@pytest.mark.parametrize("role_index", range(len(ROLES)), ids=ROLES)
def test_endpoint_permissions(world, method, template, body, expected, role_index):
    url = template.format(
        c=world["campaign"].pk,
        d=world["draft"].pk,
        a=world["assignment"].pk,
        r=world["ranking"].pk,
        t=world["assignment"].task_id,
    )
    user = world["users"][ROLES[role_index]]
    response = call(user, method, url, body)
    assert response.status_code == expected[role_index], (
        ROLES[role_index],
        url,
        response.content[:300],
    )


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("agreement/?fail_policy=worst", "fail_policy"),
        ("agreement/?tasks=1&page=0", "page"),
        ("agreement/?resamples=-1", "resamples"),
        ("labellers/?fail_policy=last", "fail_policy"),
        ("pairs/?fail_policy=keep", "fail_policy"),
        ("pairs/?aggregate=borda", "aggregate"),
        ("pairs/?ties=maybe", "ties"),
        ("rankings/export/?format=xlsx", "format"),
    ],
)
def test_bad_export_and_agreement_options_answer_400_naming_the_field(world, path, field):
    response = call(world["users"]["admin"], "get", f"/api/campaigns/{world['campaign'].pk}/{path}")
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "invalid"
    assert list(body["errors"]) == [field]
    assert body["detail"].startswith(f"{field}:")


def test_admin_acting_as_labeller_needs_membership(world):
    """Admins see every campaign, but get tasks only where they are members."""
    response = call(
        world["users"]["admin"], "post", f"/api/campaigns/{world['campaign'].pk}/next-task/"
    )
    assert response.status_code == 403 and response.json()["code"] == "not_a_member"


def test_import_is_admin_only(world):
    url = f"/api/campaigns/{world['campaign'].pk}/import/"
    for role, expected in (
        ("anonymous", 403),
        ("outsider", 404),
        ("labeller", 403),
        ("admin", 201),
    ):
        upload = SimpleUploadedFile(
            "batch.jsonl", b'{"prompt": "p", "completions": ["a", "b", "c", "d"]}\n'
        )
        response = call(world["users"][role], "post", url, {"file": upload}, fmt="multipart")
        assert response.status_code == expected, (role, response.content)


def test_import_errors_come_back_with_line_numbers(world):
    url = f"/api/campaigns/{world['campaign'].pk}/import/"
    upload = SimpleUploadedFile(
        "batch.jsonl", b'{"prompt": "p", "completions": ["a"]}\n{"prompt": ""}\n'
    )
    response = call(world["users"]["admin"], "post", url, {"file": upload}, fmt="multipart")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "import_failed"
    assert [(e["line"], e["field"]) for e in body["lines"]] == [(1, "completions"), (2, "prompt")]


def test_campaign_list_shows_labellers_only_their_campaigns(world):
    names = {c["id"] for c in call(world["users"]["labeller"], "get", "/api/campaigns/").json()}
    assert names == {world["campaign"].pk}
    assert call(world["users"]["outsider"], "get", "/api/campaigns/").json() == []
    assert len(call(world["users"]["admin"], "get", "/api/campaigns/").json()) == 2


def test_ranking_and_assignment_lists_are_scoped(world):
    other = world["users"]["other"]
    assert call(other, "get", "/api/rankings/").json()["count"] == 0
    assert call(other, "get", "/api/assignments/").json()["count"] == 0
    labeller_view = call(world["users"]["labeller"], "get", "/api/rankings/").json()
    assert [r["id"] for r in labeller_view["results"]] == [world["ranking"].pk]
    admin_view = call(
        world["users"]["admin"], "get", f"/api/rankings/?campaign={world['campaign'].pk}"
    )
    assert admin_view.json()["count"] == 1


def test_token_auth_for_scripts(world):
    from rest_framework.test import APIClient

    client = APIClient()
    bad = client.post("/api/auth/token/", {"username": "alice", "password": "wrong"}, format="json")
    assert bad.status_code == 400
    token = client.post(
        "/api/auth/token/",
        {"username": "alice", "password": "correct horse battery"},
        format="json",
    ).json()["token"]
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get(f"/api/assignments/{world['assignment'].pk}/").status_code == 200
    # What clients generated from the schema send (its scheme is HTTP bearer).
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get(f"/api/assignments/{world['assignment'].pk}/").status_code == 200
    client.credentials(HTTP_AUTHORIZATION="Basic YWxpY2U6eA==")
    assert client.get(f"/api/assignments/{world['assignment'].pk}/").status_code == 403


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        ("Token not-a-token", "Invalid token."),
        ("Token", "Invalid token header. No credentials provided."),
        ("Token a b", "Invalid token header. Token string should not contain spaces."),
        ("Bearer not-a-token", "Invalid token."),
        ("inactive", "User inactive or deleted."),
    ],
)
def test_a_bad_or_revoked_token_is_refused_at_once(world, header, detail):
    from rest_framework.test import APIClient

    from accounts.models import ApiToken
    from accounts.services import token_create, token_revoke

    alice = world["users"]["labeller"]
    token, key = token_create(user=alice)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/campaigns/").status_code == 200  # looked up: now compiled
    if header == "inactive":
        alice.is_active = False
        alice.save(update_fields=["is_active"])
        header = f"Token {key}"
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/campaigns/")
    # 403, not 401: session authentication comes first, and DRF answers with its scheme.
    assert (response.status_code, response.json()["detail"]) == (403, detail)
    alice.is_active = True
    alice.save(update_fields=["is_active"])
    token_revoke(token=token, reason=ApiToken.RevokedReason.OWNER)
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")  # revoked: refused, nothing cached
    assert client.get("/api/campaigns/").json()["detail"] == "Invalid token."


def test_openapi_schema_is_served(api_client, db):
    response = api_client.get("/api/schema/")
    assert response.status_code == 200
    assert b"/api/campaigns/{id}/next-task/" in response.content


def test_home_page_needs_login(client, db):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
