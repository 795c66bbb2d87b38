"""Labeller accounts created and invited in bulk: one-time credentials answered once, the
password change required at the first login, all or nothing."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from accounts.models import AccountState
from annotation import services
from annotation.models import Membership
from tests.conftest import client_for
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db


def test_invites_accounts_into_several_campaigns_with_one_time_passwords(
    campaign, admin_client, admin_user
):
    other = CampaignFactory(created_by=admin_user)
    response = admin_client.post(
        "/api/labellers/invite/",
        {
            "accounts": [{"username": "carol", "email": "carol@example.org"}, {"username": "dan"}],
            "campaigns": [campaign.pk, other.pk],
            "role": "reviewer",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response["Cache-Control"] == "no-store"
    accounts = response.json()["accounts"]
    assert [a["username"] for a in accounts] == ["carol", "dan"]
    for account in accounts:
        user = get_user_model().objects.get(username=account["username"])
        assert user.check_password(account["password"]) and user.is_active
        assert AccountState.objects.get(user=user).must_change_password
        roles = set(Membership.objects.filter(user=user).values_list("campaign_id", "role"))
        assert roles == {(campaign.pk, "reviewer"), (other.pk, "reviewer")}
    # The first login leads to the password change: the API refuses until then.
    token = client_for(None).post(
        "/api/auth/token/", {"username": "dan", "password": accounts[1]["password"]}
    )
    assert token.status_code == 403 and token.json()["code"] == "password_change_required"


def test_one_bad_account_creates_none_and_names_it(campaign, admin_client, labeller):
    response = admin_client.post(
        "/api/labellers/invite/",
        {
            "accounts": [{"username": "erin"}, {"username": labeller.username}],
            "campaigns": [campaign.pk],
        },
        format="json",
    )
    assert response.status_code == 409 and "accounts[1].username" in response.json()["errors"]
    assert not get_user_model().objects.filter(username="erin").exists()
    repeated = admin_client.post(
        "/api/labellers/invite/",
        {"accounts": [{"username": "x"}, {"username": "X"}], "campaigns": [campaign.pk]},
        format="json",
    )
    assert repeated.status_code == 400 and "accounts[1].username" in repeated.json()["errors"]


def test_only_those_who_change_every_campaign_named_invite(campaign, labeller, admin_user):
    elsewhere = services.campaign_create(created_by=admin_user, name="Elsewhere")
    manager = get_user_model().objects.create_user("manager-of-one")
    services.campaign_add_members(campaign=campaign, users=[manager], role="manager")
    body = {"accounts": [{"username": "fay"}], "campaigns": [campaign.pk, elsewhere.pk]}
    denied = client_for(manager).post("/api/labellers/invite/", body, format="json")
    assert denied.status_code == 400  # an id in the body the manager cannot see: the body is wrong
    assert denied.json()["errors"]["campaigns"] == [f"no campaign {elsewhere.pk} (or not yours)"]
    missing = {**body, "campaigns": [campaign.pk, 842721]}
    assert client_for(manager).post("/api/labellers/invite/", missing, format="json").json()[
        "errors"
    ] == {"campaigns": ["no campaign 842721 (or not yours)"]}  # the same answer: nothing leaks
    assert (
        client_for(labeller).post("/api/labellers/invite/", body, format="json").status_code == 403
    )
    ok = client_for(manager).post(
        "/api/labellers/invite/", {**body, "campaigns": [campaign.pk]}, format="json"
    )
    assert ok.status_code == 201
