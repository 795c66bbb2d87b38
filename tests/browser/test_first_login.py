"""An invited labeller's first login in Chromium: the one-time password from the invitation,
then the password change the site insists on, then their campaign."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from annotation import services
from tests.factories import AdminFactory, CampaignFactory, make_tasks

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_invited_labeller_chooses_a_password_then_reaches_their_campaign(page, output_dir):
    admin = AdminFactory(username="admin")
    campaign = CampaignFactory(name="Helpfulness round 1", overlap=2, created_by=admin)
    services.guideline_publish(campaign=campaign, text="# Rank by helpfulness", created_by=admin)
    make_tasks(campaign, 2)
    _, one_time = services.labeller_invite(campaign=campaign, username="newbie")

    page.goto("/")
    page.get_by_label("Username").fill("newbie")
    page.get_by_label("Password").fill(one_time)
    page.get_by_role("button", name="Log in").click()

    expect(page).to_have_url(re.compile(r"/accounts/password_change/\?next=%2F$"))
    expect(page.get_by_role("heading", name="Choose your own password")).to_be_visible()
    # Nothing else opens until then.
    page.goto(f"/campaigns/{campaign.pk}/label/")
    expect(page).to_have_url(re.compile(r"/accounts/password_change/\?next="))
    page.get_by_label("Old password").fill(one_time)
    page.get_by_label("New password", exact=True).fill("my own long passphrase 7")
    page.get_by_label("New password confirmation").fill("my own long passphrase 7")
    page.screenshot(path=str(output_dir / "first-login-password-change.png"))
    page.get_by_role("button", name="Change password").click()

    expect(page).to_have_url(re.compile(rf"/campaigns/{campaign.pk}/"))
    page.goto("/")
    expect(page.get_by_role("heading", name="Your campaigns")).to_be_visible()
    expect(page.get_by_text("Helpfulness round 1")).to_be_visible()
