"""Accounts: API tokens (hashed, expiring, revocable, rotated with the password and on
deactivation; DRF's old keys migrated), password reset only with email, and the password an
invited labeller must change at first login."""

from __future__ import annotations

import hashlib
import importlib
import json

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from tests.factories import AdminFactory, CampaignFactory, UserFactory

pytestmark = pytest.mark.django_db
PASSWORD = "correct horse battery"
NEW_PASSWORD = "a fresh and long passphrase 42"


def obtain(client: APIClient, username: str, password: str = PASSWORD):
    return client.post("/api/auth/token/", {"username": username, "password": password})


def key_for(username: str, password: str = PASSWORD) -> str:
    response = obtain(APIClient(), username, password)
    assert response.status_code == 200, response.content
    return response.json()["token"]


def with_key(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def works(key: str) -> bool:
    response = with_key(key).get("/api/campaigns/")
    assert response.status_code in (200, 403), response.content
    return response.status_code == 200


# --- tokens: stored hashed, expire, revoked by owner and admins -------------------------------


def test_a_key_is_shown_once_and_stored_only_as_its_hash():
    from accounts.models import ApiToken

    UserFactory(username="carol")
    body = obtain(APIClient(), "carol").json()
    key = body["token"]
    assert set(body) == {"token", "prefix", "expires"} and key.startswith(body["prefix"])
    token = ApiToken.objects.get(user__username="carol")
    assert token.key_hash == hashlib.sha256(key.encode()).hexdigest()
    stored = json.dumps(list(ApiToken.objects.values()), default=str)
    assert key not in stored
    assert works(key)
    # Every login makes a new token; the earlier one still works until it ends.
    second = key_for("carol")
    assert second != key and works(key) and works(second)


def test_a_token_expires_after_the_configured_time(settings):
    UserFactory(username="carol")
    settings.API_TOKEN_TTL_SECONDS = 0
    key = key_for("carol")
    response = with_key(key).get("/api/campaigns/")
    assert response.status_code == 403 and response.json()["detail"] == "Token has expired."
    settings.API_TOKEN_TTL_SECONDS = 3600
    assert works(key_for("carol"))


def test_the_owner_revokes_the_token_in_use_and_only_that_one():
    UserFactory(username="carol")
    script, laptop = key_for("carol"), key_for("carol")
    assert with_key(script).delete("/api/auth/token/").status_code == 204
    refused = with_key(script).get("/api/campaigns/")
    assert refused.status_code == 403 and refused.json()["detail"] == "Invalid token."
    assert works(laptop)


def test_the_owner_revokes_all_their_tokens():
    UserFactory(username="carol")
    UserFactory(username="dave")
    keys = [key_for("carol") for _ in range(3)]
    daves = key_for("dave")
    answer = with_key(keys[0]).delete("/api/auth/token/all/")
    assert answer.status_code == 200 and answer.json() == {"revoked": 3}
    assert not any(works(key) for key in keys)
    assert works(daves)


def test_revoking_needs_a_token(client):
    carol = UserFactory(username="carol")
    assert APIClient().delete("/api/auth/token/").status_code == 403
    assert APIClient().delete("/api/auth/token/all/").status_code == 403
    session = APIClient()
    session.force_login(carol)
    no_token = session.delete("/api/auth/token/")
    assert no_token.status_code == 400 and "Authorization" in no_token.json()["errors"]


def test_last_use_is_recorded_at_most_once_a_minute():
    from accounts.models import ApiToken

    UserFactory(username="carol")
    key = key_for("carol")
    assert ApiToken.objects.get().last_used_at is None
    assert works(key)
    first = ApiToken.objects.get().last_used_at
    assert first is not None
    assert works(key)
    assert ApiToken.objects.get().last_used_at == first


def test_admins_list_tokens_by_prefix_never_the_key_and_revoke_them():
    from accounts.models import ApiToken

    UserFactory(username="carol")
    key = key_for("carol")
    token = ApiToken.objects.get()
    admin = Client()
    admin.force_login(AdminFactory(username="root", is_superuser=True))
    listing = admin.get("/admin/accounts/apitoken/")
    assert listing.status_code == 200
    page = listing.content.decode()
    assert f"{token.prefix}…" in page and key not in page and token.key_hash not in page
    detail = admin.get(f"/admin/accounts/apitoken/{token.pk}/change/").content.decode()
    assert key not in detail and token.key_hash not in detail
    admin.post(
        "/admin/accounts/apitoken/",
        {"action": "revoke", "_selected_action": [token.pk]},
    )
    token.refresh_from_db()
    assert token.revoked_reason == ApiToken.RevokedReason.ADMIN and not works(key)
    # Nobody, admins included, adds keys by hand or deletes the record of one.
    assert admin.get("/admin/accounts/apitoken/add/").status_code == 403
    assert admin.get(f"/admin/accounts/apitoken/{token.pk}/delete/").status_code == 403


def test_the_token_endpoint_reads_json_within_the_apis_limits():
    UserFactory(username="carol")
    api = APIClient()
    nul = api.post("/api/auth/token/", {"username": "carol\u0000", "password": PASSWORD})
    assert nul.status_code == 400 and nul.json()["code"] == "invalid"
    big = api.post(
        "/api/auth/token/",
        {"username": "carol", "password": PASSWORD, "pad": "x" * (3 * 1024 * 1024)},
    )
    assert big.status_code == 400 and big.json()["code"] == "too_large"


# --- rotation: password change and deactivation revoke every token ----------------------------


def test_changing_the_password_on_the_site_revokes_every_token():
    carol = UserFactory(username="carol")
    keys = [key_for("carol"), key_for("carol")]
    browser = Client()
    browser.force_login(carol)
    changed = browser.post(
        "/accounts/password_change/",
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert changed.status_code == 302
    assert not any(works(key) for key in keys)
    assert works(key_for("carol", NEW_PASSWORD))


def test_an_admin_setting_the_password_revokes_every_token():
    carol = UserFactory(username="carol")
    key = key_for("carol")
    admin = Client()
    admin.force_login(AdminFactory(username="root", is_superuser=True))
    response = admin.post(
        f"/admin/auth/user/{carol.pk}/password/",
        {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"},
    )
    assert response.status_code == 302, response.content
    assert not works(key)


def test_set_password_anywhere_revokes_every_token():
    carol = UserFactory(username="carol")
    key = key_for("carol")
    carol.first_name = "Carol"
    carol.save()  # other changes leave the tokens alone
    assert works(key)
    carol.set_password(NEW_PASSWORD)
    carol.save()
    assert not works(key)


def test_deactivating_an_account_revokes_its_tokens():
    from accounts.models import ApiToken
    from annotation.services.integrity import user_deactivate

    carol = UserFactory(username="carol")
    key = key_for("carol")
    user_deactivate(user=carol)
    carol.is_active = True
    carol.save(update_fields=["is_active"])  # reactivated: the old token stays revoked
    assert not works(key)
    assert ApiToken.objects.get().revoked_reason == ApiToken.RevokedReason.DEACTIVATED


# --- DRF's tokens, migrated -----------------------------------------------------------------


def test_drf_tokens_are_migrated_hashed_and_the_plain_keys_deleted(settings):
    from django.apps import apps

    from accounts.models import ApiToken

    migration = importlib.import_module("accounts.migrations.0002_hash_drf_tokens")
    carol = UserFactory(username="carol")
    old_key = "0123456789abcdef0123456789abcdef01234567"
    with connection.cursor() as cursor:
        cursor.execute(
            'CREATE TABLE "authtoken_token" ("key" varchar(40) PRIMARY KEY, '
            '"created" timestamp with time zone NOT NULL, "user_id" integer NOT NULL)'
            if connection.vendor == "postgresql"
            else 'CREATE TABLE "authtoken_token" ("key" varchar(40) PRIMARY KEY, '
            '"created" datetime NOT NULL, "user_id" integer NOT NULL)'
        )
        cursor.execute(
            'INSERT INTO "authtoken_token" ("key", "created", "user_id") VALUES (%s, %s, %s)',
            [old_key, "2024-01-02 03:04:05", carol.pk],
        )
    migration.hash_drf_tokens(apps, connection.schema_editor())
    token = ApiToken.objects.get(user=carol)
    assert token.key_hash == hashlib.sha256(old_key.encode()).hexdigest()
    assert token.prefix == old_key[:8] and token.created_at.year == 2024
    assert works(old_key)  # the script using it keeps working, until it expires
    with connection.cursor() as cursor:
        cursor.execute('SELECT COUNT(*) FROM "authtoken_token"')
        assert cursor.fetchone()[0] == 0


# --- password reset: only with an email backend ---------------------------------------------


def test_password_reset_is_absent_without_email(client, settings):
    settings.EMAIL_HOST = ""
    assert "password_reset" not in client.get("/accounts/login/").content.decode()
    for url in ("/accounts/password_reset/", "/accounts/password_reset/done/"):
        assert client.get(url).status_code == 404
    sent = client.post("/accounts/password_reset/", {"email": "carol@example.org"})
    assert sent.status_code == 404


def test_password_reset_sends_a_link_when_email_is_configured(client, settings, mailoutbox):
    settings.EMAIL_HOST = "smtp.example.org"
    carol = UserFactory(username="carol", email="carol@example.org")
    key = key_for("carol")
    login_page = client.get("/accounts/login/").content.decode()
    assert 'href="/accounts/password_reset/"' in login_page
    sent = client.post("/accounts/password_reset/", {"email": "carol@example.org"})
    assert sent.status_code == 302 and len(mailoutbox) == 1
    link = next(w for w in mailoutbox[0].body.split() if "/accounts/reset/" in w)
    form = client.get(link.split("testserver", 1)[1], follow=True)
    assert form.status_code == 200
    done = client.post(
        form.redirect_chain[-1][0],
        {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert done.status_code == 302
    carol.refresh_from_db()
    assert carol.check_password(NEW_PASSWORD) and not works(key)


# --- invited accounts choose their own password first ---------------------------------------


@pytest.fixture
def invited(db):
    from annotation import services

    campaign = CampaignFactory(name="Helpfulness")
    user, password = services.labeller_invite(campaign=campaign, username="newbie")
    return user, password, campaign


def test_an_invited_labeller_is_sent_to_the_password_change_until_they_choose_one(invited):
    _, password, campaign = invited
    client = Client()
    login = client.post("/accounts/login/", {"username": "newbie", "password": password})
    assert login.status_code == 302
    for url in ("/", f"/campaigns/{campaign.pk}/label/", "/dashboard/"):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/password_change/?next=")
    api = client.get("/api/campaigns/")
    assert api.status_code == 403 and api.json()["code"] == "password_change_required"
    page = client.get("/accounts/password_change/?next=/")
    assert "Choose your own password" in page.content.decode()
    changed = client.post(
        "/accounts/password_change/",
        {
            "old_password": password,
            "new_password1": NEW_PASSWORD,
            "new_password2": NEW_PASSWORD,
            "next": "/",
        },
    )
    assert (changed.status_code, changed["Location"]) == (302, "/")
    assert client.get("/").status_code == 200
    assert [c["id"] for c in client.get("/api/campaigns/").json()] == [campaign.pk]
    # Logging in again does not bring the rule back.
    client.logout()
    client.post("/accounts/login/", {"username": "newbie", "password": NEW_PASSWORD})
    assert client.get("/").status_code == 200


def test_an_invited_labeller_gets_no_token_before_choosing_a_password(invited):
    user, password, _ = invited
    refused = obtain(APIClient(), "newbie", password)
    assert refused.status_code == 403 and refused.json()["code"] == "password_change_required"
    user.set_password(NEW_PASSWORD)  # set by an admin: still not their own choice
    user.save()
    assert obtain(APIClient(), "newbie", NEW_PASSWORD).json()["code"] == (
        "password_change_required"
    )


def test_the_password_change_goes_on_only_to_a_page_of_this_site(invited):
    _, password, _ = invited
    client = Client()
    client.post("/accounts/login/", {"username": "newbie", "password": password})
    changed = client.post(
        "/accounts/password_change/",
        {
            "old_password": password,
            "new_password1": NEW_PASSWORD,
            "new_password2": NEW_PASSWORD,
            "next": "https://evil.example.org/",
        },
    )
    assert changed["Location"] == "/accounts/password_change/done/"


def test_accounts_made_otherwise_are_not_asked_to_change_their_password():
    get_user_model().objects.create_user(username="plain", password=PASSWORD)
    client = Client()
    client.post("/accounts/login/", {"username": "plain", "password": PASSWORD})
    assert client.get("/").status_code == 200
    assert obtain(APIClient(), "plain").status_code == 200
