"""The labeller's pages without a browser: who sees what, the guidelines gate, sanitising, and
the CSRF-checked API calls the task page makes."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client
from rest_framework.test import APIClient

from annotation import services
from annotation.models import Assignment, Campaign, Completion, GuidelineAcknowledgement
from annotation.rendering import render_markdown
from tests.factories import CampaignFactory, PromptFactory, UserFactory
from tests.helpers.url_matrices import PAGE_MATRIX, PAGES, ROLES

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def page_config(response) -> dict:
    match = re.search(
        r'<script id="label-config" type="application/json">(.*?)</script>',
        response.content.decode(),
        re.S,
    )
    assert match, "the task page embeds its data"
    return json.loads(match.group(1))


# --- who may open which page --------------------------------------------------------------------
# The matrix (each page, the status of each role) is tests/helpers/url_matrices.py, which
# tests/test_url_coverage.py also reads.


@pytest.mark.parametrize("template", PAGES)
@pytest.mark.parametrize("role_index", range(len(ROLES)), ids=ROLES)
def test_page_permissions(campaign, labeller, other_labeller, outsider, admin_user, template,
                          role_index):  # fmt: skip
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)
    users = (None, outsider, labeller, other_labeller, admin_user)
    client = client_for(users[role_index]) if users[role_index] else Client()
    url = template.format(c=campaign.pk, a=assignment.pk)
    response = client.get(url)
    assert response.status_code == PAGE_MATRIX[template][role_index], (ROLES[role_index], url)
    if role_index == 0:
        assert response["Location"].startswith("/accounts/login/")
    if ROLES[role_index] == "labeller" and template == "/campaigns/{c}/label/":
        assert response["Location"] == f"/assignments/{assignment.pk}/"
    for method in ("post", "put", "delete"):
        if template != "/campaigns/{c}/guidelines/":  # the one page with a form
            assert getattr(client, method)(url).status_code in (302, 404, 405)


# --- home --------------------------------------------------------------------------------------


def test_home_requires_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_home_lists_own_campaigns_with_progress_and_start_link(campaign, labeller):
    elsewhere = CampaignFactory(name="Not mine")
    response = client_for(labeller).get("/")
    body = response.content.decode()
    assert response.status_code == 200
    assert campaign.name in body
    assert elsewhere.name not in body
    assert f'href="/campaigns/{campaign.pk}/label/"' in body
    assert "Start labelling" in body
    assert "v1" in body


# --- guidelines gate ---------------------------------------------------------------------------


def test_label_redirects_to_the_guidelines_until_acknowledged(campaign):
    newcomer = UserFactory(username="newcomer")
    services.campaign_add_members(campaign=campaign, users=[newcomer])
    client = client_for(newcomer)

    response = client.get(f"/campaigns/{campaign.pk}/label/")
    assert response.status_code == 302
    assert response["Location"] == (
        f"/campaigns/{campaign.pk}/guidelines/?next=%2Fcampaigns%2F{campaign.pk}%2Flabel%2F"
    )
    assert not Assignment.objects.filter(labeller=newcomer).exists()

    page = client.get(response["Location"])
    assert "<h1>Rank by correctness</h1>" in page.content.decode()

    ack = client.post(
        f"/campaigns/{campaign.pk}/guidelines/",
        {"version": 1, "next": f"/campaigns/{campaign.pk}/label/"},
    )
    assert ack.status_code == 302
    assert ack["Location"] == f"/campaigns/{campaign.pk}/label/"
    assert GuidelineAcknowledgement.objects.filter(user=newcomer).count() == 1
    assert client.get(ack["Location"])["Location"].startswith("/assignments/")


def test_acknowledging_a_stale_version_shows_the_new_one(campaign, labeller, admin_user):
    services.guideline_publish(campaign=campaign, text="# Second", created_by=admin_user)
    response = client_for(labeller).post(f"/campaigns/{campaign.pk}/guidelines/", {"version": 1})
    assert response.status_code == 200
    assert "The guidelines changed while you were reading" in response.content.decode()
    assert not GuidelineAcknowledgement.objects.filter(user=labeller, guideline__version=2).exists()


def test_acknowledge_never_redirects_off_site(campaign):
    newcomer = UserFactory(username="newcomer")
    services.campaign_add_members(campaign=campaign, users=[newcomer])
    response = client_for(newcomer).post(
        f"/campaigns/{campaign.pk}/guidelines/", {"version": 1, "next": "https://evil.example/"}
    )
    assert response["Location"] == f"/campaigns/{campaign.pk}/label/"


def test_open_task_page_goes_back_to_the_gate_when_guidelines_change(
    campaign, labeller, admin_user
):
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)
    services.guideline_publish(campaign=campaign, text="# Second", created_by=admin_user)
    response = client_for(labeller).get(f"/assignments/{assignment.pk}/")
    assert response.status_code == 302
    assert response["Location"].startswith(f"/campaigns/{campaign.pk}/guidelines/?next=")


# --- task pages and who may open them ----------------------------------------------------------


def test_label_continues_the_open_task(campaign, labeller):
    client = client_for(labeller)
    first = client.get(f"/campaigns/{campaign.pk}/label/")
    again = client.get(f"/campaigns/{campaign.pk}/label/")
    assignment = Assignment.objects.get(labeller=labeller)
    assert first["Location"] == again["Location"] == f"/assignments/{assignment.pk}/"


def test_owner_sees_the_task_page_with_its_data(campaign, labeller):
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)
    response = client_for(labeller).get(f"/assignments/{assignment.pk}/")
    assert response.status_code == 200
    config = page_config(response)
    assert config["assignment"]["id"] == assignment.pk
    assert [c["id"] for c in config["assignment"]["completions"]] == assignment.display_order
    assert config["urls"]["ranking"] == "/api/assignments/{id}/ranking/"
    assert config["today"] == {"count": 0, "avg_ms": 0}
    assert 'name="csrfmiddlewaretoken"' in response.content.decode()


@pytest.mark.parametrize("who", ["other", "outsider", "admin"])
def test_nobody_else_can_open_a_labellers_assignment(
    campaign, labeller, other_labeller, outsider, admin_user, who
):
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)
    user = {"other": other_labeller, "outsider": outsider, "admin": admin_user}[who]
    assert client_for(user).get(f"/assignments/{assignment.pk}/").status_code == 404


def test_anonymous_is_sent_to_log_in_and_unknown_ids_are_404(campaign, labeller, client):
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)
    response = client.get(f"/assignments/{assignment.pk}/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    mine = client_for(labeller)
    assert mine.get("/assignments/999999/").status_code == 404
    assert mine.get(f"/assignments/{2**63}/").status_code == 404
    assert mine.get(f"/campaigns/{2**63}/label/").status_code == 404


def test_outsider_cannot_label_or_read_a_campaigns_guidelines(campaign, outsider):
    client = client_for(outsider)
    assert client.get(f"/campaigns/{campaign.pk}/label/").status_code == 404
    assert client.get(f"/campaigns/{campaign.pk}/guidelines/").status_code == 404


def test_finished_assignment_page_says_so(campaign, labeller):
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)
    services.assignment_skip(labeller=labeller, assignment=assignment, reason="broken")
    response = client_for(labeller).get(f"/assignments/{assignment.pk}/")
    assert response.status_code == 200
    assert "This task is skipped" in response.content.decode()
    assert 'id="label-config"' not in response.content.decode()


def test_paused_campaign_and_nothing_left_are_plain_messages(campaign, labeller):
    client = client_for(labeller)
    services.campaign_set_status(campaign=campaign, status=Campaign.Status.PAUSED)
    paused = client.get(f"/campaigns/{campaign.pk}/label/")
    assert paused.status_code == 200
    assert "The campaign is paused" in paused.content.decode()

    services.campaign_set_status(campaign=campaign, status=Campaign.Status.ACTIVE)
    for task in campaign.tasks.all():
        assignment = services.task_assign_next(labeller=labeller, campaign=campaign)
        assert assignment.task_id == task.pk
        services.assignment_skip(labeller=labeller, assignment=assignment, reason="test")
    done = client.get(f"/campaigns/{campaign.pk}/label/")
    assert "You have ranked every task available to you" in done.content.decode()


def test_admin_who_is_not_a_member_is_told_so(campaign, admin_user):
    response = client_for(admin_user).get(f"/campaigns/{campaign.pk}/label/")
    assert response.status_code == 403
    assert "not a member" in response.content.decode()


# --- sanitising --------------------------------------------------------------------------------


def test_completion_and_prompt_html_is_never_markup_on_the_page(labeller, admin_user):
    campaign = CampaignFactory(completions_per_task=2, overlap=1)
    services.campaign_add_members(campaign=campaign, users=[labeller])
    prompt = PromptFactory(campaign=campaign, text="</script><script>alert(1)</script>")
    completions = [
        Completion.objects.create(prompt=prompt, text="<img src=x onerror=alert(2)>", source="t"),
        Completion.objects.create(prompt=prompt, text="</script><b>bold</b>", source="t"),
    ]
    services.tasks_create(campaign=campaign, groups=[(prompt, completions)])
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)

    response = client_for(labeller).get(f"/assignments/{assignment.pk}/")
    body = response.content.decode()
    assert "<img src=x" not in body
    assert "</script><script>alert(1)" not in body
    assert "<b>bold</b>" not in body
    texts = {c["text"] for c in page_config(response)["assignment"]["completions"]}
    assert texts == {"<img src=x onerror=alert(2)>", "</script><b>bold</b>"}


@pytest.mark.parametrize(
    "markdown",
    [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        '<a href="#" onclick="alert(1)">x</a>',
        "[x](javascript:alert(1))",
        "![x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
        '<iframe src="https://evil.example"></iframe>',
        "<style>body{display:none}</style>",
        "<svg onload=alert(1)>",
    ],
)
def test_render_markdown_leaves_no_script(markdown):
    html = render_markdown(markdown)
    tags = re.findall(r"<[a-z][^>]*>", html)
    assert all(not re.search(r"\son\w+\s*=", tag) for tag in tags), tags
    assert all(
        tag.split()[0].strip("<>") not in {"script", "img", "iframe", "style", "svg"}
        for tag in tags
    ), tags
    assert not re.search(r'(href|src)="\s*(javascript|data):', html, re.I), html


def test_render_markdown_keeps_ordinary_formatting():
    html = render_markdown(
        "# Title\n\n**bold** and `code`\n\n| key | action |\n|---|---|\n| F | fail |\n\n"
        "[docs](https://example.org)"
    )
    assert "<h1>Title</h1>" in html
    assert "<strong>bold</strong>" in html
    assert "<code>code</code>" in html
    assert "<td>F</td>" in html
    assert 'href="https://example.org"' in html


# --- the API calls the task page makes, with CSRF enforced ------------------------------------


def csrf_client(user) -> tuple[APIClient, str]:
    """A session-authenticated client that enforces CSRF, and the token the page would read."""
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/")  # sets the CSRF cookie, as loading a page does
    return client, client.cookies["csrftoken"].value


def test_ranking_submit_with_next_needs_the_csrf_token(campaign, labeller):
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)
    client, token = csrf_client(labeller)
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(assignment.display_order)]
    url = f"/api/assignments/{assignment.pk}/ranking/?next=1"
    body = {"items": items, "time_spent_ms": 1200}

    assert client.post(url, body, format="json").status_code == 403
    response = client.post(url, body, format="json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 201
    assert response.json()["next"]["assignment"]["id"] != assignment.pk
    again = client.post(url, body, format="json", HTTP_X_CSRFTOKEN=token)
    assert again.status_code == 200
    assert again.json()["id"] == response.json()["id"]


def test_skip_and_next_task_need_the_csrf_token(campaign, labeller):
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)
    client, token = csrf_client(labeller)
    skip = f"/api/assignments/{assignment.pk}/skip/"
    assert client.post(skip, {"reason": "broken"}, format="json").status_code == 403
    assert (
        client.post(skip, {"reason": "broken"}, format="json", HTTP_X_CSRFTOKEN=token).status_code
        == 200
    )
    next_task = f"/api/campaigns/{campaign.pk}/next-task/"
    assert client.post(next_task, {}, format="json").status_code == 403
    assert client.post(next_task, {}, format="json", HTTP_X_CSRFTOKEN=token).status_code == 200


def test_guideline_acknowledge_form_needs_the_csrf_token(campaign):
    newcomer = UserFactory(username="newcomer")
    services.campaign_add_members(campaign=campaign, users=[newcomer])
    client = Client(enforce_csrf_checks=True)
    client.force_login(newcomer)
    url = f"/campaigns/{campaign.pk}/guidelines/"
    assert client.post(url, {"version": 1}).status_code == 403
    page = client.get(url)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())[1]
    assert client.post(url, {"version": 1, "csrfmiddlewaretoken": token}).status_code == 302
