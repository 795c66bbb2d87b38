"""The admin dashboard without a browser: who may see it, forms that show the services' errors
next to their fields, the figures on the quality pages, and CSRF-checked posts."""

from __future__ import annotations

import html
import json
import re

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import AnonymousUser
from django.test import Client
from rest_framework.test import APIClient

from annotation import agreement_figures, services
from annotation.models import Campaign, Guideline, Membership, Prompt, Ranking, Task
from tests.factories import AdminFactory, CampaignFactory, UserFactory, make_tasks
from tests.helpers.campaigns import jsonl, rank_every_task
from training.ml.evaluation import EvalSettings
from training.models import ModelVersion, TrainingJob

pytestmark = pytest.mark.django_db

User = get_user_model()


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def body(response) -> str:
    return response.content.decode()


def field_error(response, field: str) -> str:
    """The error text shown under a form field ("" when none)."""
    match = re.search(rf'<p class="field-error" id="id_{field}_error">([^<]*)</p>', body(response))
    return html.unescape(match[1]) if match else ""


@pytest.fixture
def ranked(campaign, labeller, other_labeller):
    """The conftest campaign (N=4, k=2, 5 tasks) ranked by both labellers, nearly alike."""
    rank_every_task(campaign, labeller, lambda ids: {c: i + 1 for i, c in enumerate(ids)})
    rank_every_task(
        campaign,
        other_labeller,
        lambda ids: {ids[0]: 1, ids[1]: 3, ids[2]: 2, ids[3]: "F"},
    )
    return campaign


# --- who may see the dashboard ------------------------------------------------------------------


def dashboard_urls(campaign, job, labeller) -> list[str]:
    task = campaign.tasks.first()
    return [
        "/dashboard/",
        "/dashboard/campaigns/new/",
        f"/dashboard/campaigns/{campaign.pk}/",
        f"/dashboard/campaigns/{campaign.pk}/edit/",
        f"/dashboard/campaigns/{campaign.pk}/guidelines/",
        f"/dashboard/campaigns/{campaign.pk}/import/",
        f"/dashboard/campaigns/{campaign.pk}/quality/",
        f"/dashboard/campaigns/{campaign.pk}/tasks/",
        f"/dashboard/campaigns/{campaign.pk}/tasks/{task.pk}/",
        f"/dashboard/campaigns/{campaign.pk}/labellers/{labeller.pk}/",
        f"/dashboard/campaigns/{campaign.pk}/review/",
        f"/dashboard/campaigns/{campaign.pk}/review/{task.pk}/",
        "/dashboard/training/",
        "/dashboard/training/new/reward_model/",
        "/dashboard/training/new/ppo/",
        "/dashboard/training/new/dpo/",
        "/dashboard/training/new/generate/",
        "/dashboard/training/new/round/",
        f"/dashboard/training/jobs/{job.pk}/",
        "/dashboard/training/models/",
    ]


def post_urls(campaign, job) -> list[str]:
    task = campaign.tasks.first()
    return [
        f"/dashboard/campaigns/{campaign.pk}/tasks/{task.pk}/gold/",
        f"/dashboard/campaigns/{campaign.pk}/status/",
        f"/dashboard/campaigns/{campaign.pk}/members/",
        f"/dashboard/campaigns/{campaign.pk}/members/remove/",
        f"/dashboard/campaigns/{campaign.pk}/invite/",
        "/dashboard/guidelines/preview/",
        f"/dashboard/training/jobs/{job.pk}/cancel/",
        f"/dashboard/training/jobs/{job.pk}/retry/",
        "/dashboard/training/models/register/",
        "/dashboard/training/rounds/new/",
    ]


@pytest.fixture
def job(admin_user, campaign):
    return TrainingJob.objects.create(
        kind="reward_model",
        team=campaign.team,
        params={"campaign_ids": [campaign.pk]},
        created_by=admin_user,
    )


def test_every_dashboard_page_redirects_anonymous_users_to_login(client, ranked, job, labeller):
    for url in dashboard_urls(ranked, job, labeller) + post_urls(ranked, job):
        response = client.get(url) if url not in post_urls(ranked, job) else client.post(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/login/?next=/dashboard/"), url


def test_labellers_get_403_on_every_dashboard_page_and_training_api(ranked, job, labeller):
    client = client_for(labeller)
    for url in dashboard_urls(ranked, job, labeller):
        assert client.get(url).status_code == 403, url
    for url in post_urls(ranked, job):
        assert client.post(url, {"status": "closed", "text": "x"}).status_code == 403, url
    api = APIClient()
    api.force_authenticate(labeller)
    for url in (
        "/api/training-jobs/",
        f"/api/training-jobs/{job.pk}/",
        f"/api/training-jobs/{job.pk}/metrics/",
        "/api/model-versions/",
        f"/api/campaigns/{ranked.pk}/agreement/",
        f"/api/campaigns/{ranked.pk}/labellers/",
        f"/api/campaigns/{ranked.pk}/pairs/",
        f"/api/campaigns/{ranked.pk}/rankings/export/",
    ):
        assert api.get(url).status_code == 403, url
    assert api.post(f"/api/training-jobs/{job.pk}/cancel/").status_code == 403
    ranked.refresh_from_db()
    assert ranked.status == Campaign.Status.ACTIVE
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.QUEUED


def test_admins_see_every_dashboard_page(ranked, job, labeller, admin_user):
    client = client_for(admin_user)
    for url in dashboard_urls(ranked, job, labeller):
        response = client.get(url)
        assert response.status_code == 200, (url, body(response)[:500])
    for url in post_urls(ranked, job):
        assert client.get(url).status_code == 405, url


def test_dashboard_link_is_shown_to_staff_only(campaign, labeller, admin_user):
    assert 'href="/dashboard/"' in body(client_for(admin_user).get("/"))
    assert 'href="/dashboard/"' not in body(client_for(labeller).get("/"))


def test_unknown_ids_answer_404(admin_user, campaign):
    client = client_for(admin_user)
    assert client.get("/dashboard/campaigns/999999/").status_code == 404
    assert client.get(f"/dashboard/campaigns/{2**63}/").status_code == 404
    assert client.get(f"/dashboard/campaigns/{campaign.pk}/tasks/999999/").status_code == 404
    assert client.get("/dashboard/training/jobs/999999/").status_code == 404
    assert client.get("/dashboard/training/new/nonsense/").status_code == 404


# --- campaign list ------------------------------------------------------------------------------


def test_campaign_list_shows_progress_today_active_labellers_and_agreement(ranked, admin_user):
    CampaignFactory(name="Empty one", status=Campaign.Status.DRAFT)
    page = body(client_for(admin_user).get("/dashboard/"))
    row = re.search(
        rf"<tr>\s*<th scope=\"row\"><a href=\"/dashboard/campaigns/{ranked.pk}/\">.*?</tr>",
        page,
        re.S,
    )[0]
    assert "5 / 5 tasks" in row  # every task has its k=2 rankings
    assert '<progress class="bar" max="5" value="5"' in row
    assert re.search(r'<td class="num">10</td>\s*<td class="num">2</td>', row)  # today, active
    assert re.search(r"<b>\d+%</b>", row)  # strict agreement
    assert "Empty one" in page


# --- create and edit ----------------------------------------------------------------------------


def test_create_campaign_shows_the_service_errors_next_to_the_fields(admin_user):
    client = client_for(admin_user)
    bad = {"name": "Bad", "completions_per_task": 12, "overlap": 0, "round_number": 0}
    response = client.post("/dashboard/campaigns/new/", bad)
    assert response.status_code == 400
    assert field_error(response, "completions_per_task") == "must be between 2 and 9"
    assert not Campaign.objects.filter(name="Bad").exists()

    response = client.post("/dashboard/campaigns/new/", {"name": ""})
    assert field_error(response, "name") == "This field is required."
    assert field_error(response, "overlap") == "This field is required."

    good = {"name": "Good", "completions_per_task": 3, "overlap": 2, "allow_ties": "on",
            "round_number": 1}  # fmt: skip
    response = client.post("/dashboard/campaigns/new/", good)
    campaign = Campaign.objects.get(name="Good")
    assert response.status_code == 302
    assert response["Location"] == f"/dashboard/campaigns/{campaign.pk}/"
    assert (campaign.completions_per_task, campaign.overlap, campaign.round_number) == (3, 2, 1)
    assert campaign.allow_ties and not campaign.allow_fail
    assert campaign.status == Campaign.Status.DRAFT and campaign.created_by == admin_user


def test_quality_controls_are_set_through_the_same_service(campaign, admin_user):
    client = client_for(admin_user)
    create = {"name": "Adaptive", "completions_per_task": 4, "overlap": 3, "round_number": 0,
              "overlap_min": 5}  # fmt: skip
    response = client.post("/dashboard/campaigns/new/", create)
    assert field_error(response, "overlap_min") == "must be between 1 and the overlap (3)"
    assert '<details class="advanced" open>' in body(response)
    create.update(overlap_min=2, gold_rate=0.1, task_order="random")
    assert client.post("/dashboard/campaigns/new/", create).status_code == 302
    adaptive = Campaign.objects.get(name="Adaptive")
    assert (adaptive.overlap_min, adaptive.gold_rate, adaptive.task_order) == (2, 0.1, "random")
    assert adaptive.onboarding_threshold == 0.7  # left empty: the default

    url = f"/dashboard/campaigns/{campaign.pk}/edit/"
    page = body(client.get(url))
    assert 'name="reopen_below" value="0.5"' in page and 'name="gold_rate" value="0.0"' in page
    edit = {"name": campaign.name, "completions_per_task": 4, "overlap": 3, "gold_rate": 1.5}
    response = client.post(url, edit)
    assert field_error(response, "gold_rate") == "must be a number between 0 and 1"
    edit.update(gold_rate=0.2, onboarding_gold_tasks=5)
    assert client.post(url, edit).status_code == 302
    campaign.refresh_from_db()
    assert (campaign.gold_rate, campaign.onboarding_gold_tasks) == (0.2, 5)


def test_edit_refuses_changing_n_once_tasks_exist(campaign, admin_user):
    client = client_for(admin_user)
    url = f"/dashboard/campaigns/{campaign.pk}/edit/"
    assert 'value="4"' in body(client.get(url))
    response = client.post(url, {"name": campaign.name, "completions_per_task": 5, "overlap": 3})
    assert response.status_code == 400
    assert "cannot change the number of completions" in field_error(
        response, "completions_per_task"
    )
    response = client.post(url, {"name": "Renamed", "completions_per_task": 4, "overlap": 3})
    assert response.status_code == 302
    campaign.refresh_from_db()
    assert (campaign.name, campaign.overlap) == ("Renamed", 3)
    assert set(campaign.tasks.values_list("target_overlap", flat=True)) == {3}


def test_pause_resume_close_and_illegal_moves(campaign, admin_user):
    client = client_for(admin_user)
    url = f"/dashboard/campaigns/{campaign.pk}/status/"
    page = body(client.get(f"/dashboard/campaigns/{campaign.pk}/"))
    assert ">Pause</button>" in page and ">Close</button>" in page
    assert ">Resume</button>" not in page
    client.post(url, {"status": "paused"})
    campaign.refresh_from_db()
    assert campaign.status == "paused"
    assert ">Resume</button>" in body(client.get(f"/dashboard/campaigns/{campaign.pk}/"))
    client.post(url, {"status": "active"})
    client.post(url, {"status": "closed"})
    campaign.refresh_from_db()
    assert campaign.status == "closed"
    response = client.post(url, {"status": "active"}, follow=True)
    assert "A closed campaign cannot become active." in body(response)
    campaign.refresh_from_db()
    assert campaign.status == "closed"


def test_campaign_page_links_the_exports_with_their_options(campaign, admin_user):
    page = body(client_for(admin_user).get(f"/dashboard/campaigns/{campaign.pk}/"))
    assert f'action="/api/campaigns/{campaign.pk}/pairs/"' in page
    assert 'name="fail_policy"' in page and 'name="ties"' in page and 'name="aggregate"' in page
    assert f'href="/api/campaigns/{campaign.pk}/rankings/export/?format=jsonl"' in page
    assert f'href="/api/campaigns/{campaign.pk}/rankings/export/?format=csv"' in page


# --- members and invitations --------------------------------------------------------------------


def test_add_members_names_unknown_usernames(campaign, admin_user):
    UserFactory(username="carol")
    client = client_for(admin_user)
    url = f"/dashboard/campaigns/{campaign.pk}/members/"
    response = client.post(url, {"usernames": "carol, nobody"})
    assert response.status_code == 400
    assert "No account called nobody" in field_error(response, "usernames")
    assert not Membership.objects.filter(campaign=campaign, user__username="carol").exists()
    assert client.post(url, {"usernames": "carol alice"}).status_code == 302
    assert Membership.objects.filter(campaign=campaign, user__username="carol").exists()


def test_remove_member_keeps_their_rankings(ranked, labeller, admin_user):
    url = f"/dashboard/campaigns/{ranked.pk}/members/remove/"
    assert client_for(admin_user).post(url, {"user": labeller.pk}).status_code == 302
    assert not Membership.objects.filter(campaign=ranked, user=labeller).exists()
    assert ranked.rankings.filter(labeller=labeller).count() == 5


def test_invite_creates_a_member_with_a_one_time_password_shown_once(campaign, admin_user):
    client = client_for(admin_user)
    url = f"/dashboard/campaigns/{campaign.pk}/invite/"
    response = client.post(url, {"username": "dora", "email": "dora@example.org"})
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    password = re.search(r'<code id="one-time-password">([^<]+)</code>', body(response))[1]
    dora = User.objects.get(username="dora")
    assert dora.email == "dora@example.org" and not dora.is_staff
    assert authenticate(username="dora", password=password) == dora
    assert Membership.objects.filter(campaign=campaign, user=dora).exists()
    assert password not in body(client.get(f"/dashboard/campaigns/{campaign.pk}/"))

    taken = client.post(url, {"username": "Dora"})
    assert taken.status_code == 400
    assert field_error(taken, "username") == "the username 'Dora' is taken"
    bad = client.post(url, {"username": "no spaces please", "email": "not-an-email"})
    assert "Enter a valid username" in field_error(bad, "username")


def test_labeller_invite_service_validates_and_hashes(campaign):
    from annotation.errors import Conflict, InvalidInput

    user, password = services.labeller_invite(campaign=campaign, username="erin")
    assert len(password) >= 16 and user.password != password and user.check_password(password)
    _, other = services.labeller_invite(campaign=campaign, username="frank")
    assert other != password
    with pytest.raises(Conflict):
        services.labeller_invite(campaign=campaign, username="ERIN")
    with pytest.raises(InvalidInput) as error:
        services.labeller_invite(campaign=campaign, username="gina", email="gina@")
    assert error.value.field == "email"
    with pytest.raises(InvalidInput):
        services.labeller_invite(campaign=campaign, username="  ")
    assert not User.objects.filter(username="gina").exists()


# --- guidelines ---------------------------------------------------------------------------------


def test_publish_guidelines_makes_labellers_acknowledge_again(campaign, labeller, admin_user):
    client = client_for(admin_user)
    url = f"/dashboard/campaigns/{campaign.pk}/guidelines/"
    page = body(client.get(url))
    assert "# Rank by correctness</textarea>" in page  # the editor starts from the current text
    assert "<h1>Rank by correctness</h1>" in page  # server-rendered preview
    assert "Publish as version 2" in page

    empty = client.post(url, {"text": "   "})
    assert empty.status_code == 400
    assert field_error(empty, "text") == "the guidelines are empty"

    assert client.post(url, {"text": "# Rank by helpfulness\n\nTies are fine."}).status_code == 302
    current = Guideline.objects.filter(campaign=campaign).order_by("-version").first()
    assert current.version == 2 and current.created_by == admin_user
    membership = Membership.objects.get(campaign=campaign, user=labeller)
    assert membership.acknowledged_guideline_id != current.pk
    labeller_page = client_for(labeller).get(f"/campaigns/{campaign.pk}/label/")
    assert labeller_page.status_code == 302 and "/guidelines/" in labeller_page["Location"]
    history = body(client.get(url))
    assert "Version 2" in history and "Version 1" in history and "acknowledged by 0" in history


def test_preview_renders_sanitised_html(admin_user):
    client = client_for(admin_user)
    text = "# Title\n\n<script>alert(1)</script>\n\n[x](javascript:alert(1)) **bold**"
    response = client.post("/dashboard/guidelines/preview/", {"text": text})
    html = response.json()["html"]
    assert "<h1>Title</h1>" in html and "<strong>bold</strong>" in html
    assert "<script" not in html and "&lt;script&gt;" in html
    assert "href=" not in html  # the javascript: link stays text


# --- import -------------------------------------------------------------------------------------


def upload(name: str, data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="application/octet-stream")


def test_import_shows_line_numbered_errors_and_stores_nothing(admin_user):
    campaign = CampaignFactory(completions_per_task=2, status=Campaign.Status.DRAFT)
    client = client_for(admin_user)
    url = f"/dashboard/campaigns/{campaign.pk}/import/"
    bad = jsonl(
        [
            {"prompt": "fine", "completions": ["a", "b"]},
            {"prompt": "three", "completions": ["a", "b", "c"]},
            {"completions": ["a", "b"]},
        ]
    )
    response = client.post(url, {"file": upload("bad.jsonl", bad)})
    assert response.status_code == 400
    rows = re.findall(
        r'<tr><td class="num">(\d+)</td><td><code>([^<]+)</code></td><td>', body(response)
    )
    assert ("2", "completions") in rows and ("3", "prompt") in rows
    assert "nothing stored" in field_error(response, "file")
    assert not Prompt.objects.filter(campaign=campaign).exists()

    good = jsonl({"prompt": f"p{i}", "completions": [f"a{i}", f"b{i}"]} for i in range(3))
    response = client.post(url, {"file": upload("good.jsonl", good)}, follow=True)
    assert "Imported 3 prompts, 6 completions and 3 tasks from good.jsonl." in body(response)
    assert Task.objects.filter(campaign=campaign).count() == 3


def test_import_page_generates_completions_for_its_prompts_from_a_policy(
    admin_user, django_capture_on_commit_callbacks
):
    campaign = CampaignFactory(completions_per_task=2, status=Campaign.Status.DRAFT)
    services.campaign_import(
        campaign=campaign, data=jsonl([{"prompt": f"q{i}"} for i in range(3)]), filename="p.jsonl"
    )
    policy = ModelVersion.objects.create(kind="base", name="sft", path="/m/sft")
    client = client_for(admin_user)
    page = body(client.get(f"/dashboard/campaigns/{campaign.pk}/import/"))
    generate = re.search(
        r'<form method="post" action="([^"]+)" id="generate-form"(.*?)</form>', page, re.S
    )
    assert generate[1] == "/dashboard/training/new/generate/"
    assert f'type="hidden" name="campaign_ids" value="{campaign.pk}"' in generate[2]
    assert f'type="hidden" name="target_campaign" value="{campaign.pk}"' in generate[2]
    assert 'name="round"' not in generate[2]
    data = form_data(
        "generate", campaign_ids=[campaign.pk], target_campaign=campaign.pk,
        base_model_version=policy.pk,
    )  # fmt: skip
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post("/dashboard/training/new/generate/", data)
    job = TrainingJob.objects.get()
    assert response.status_code == 302 and job.kind == "generate"
    assert job.params["target_campaign"] == campaign.pk and job.params["num_completions"] == 2
    assert job.base_model == policy


def test_import_page_without_a_file_says_so(campaign, admin_user):
    response = client_for(admin_user).post(f"/dashboard/campaigns/{campaign.pk}/import/", {})
    assert response.status_code == 400
    assert field_error(response, "file") == "This field is required."


# --- quality ------------------------------------------------------------------------------------


@pytest.fixture
def outlier_campaign(admin_user):
    """Four labellers rank 12 tasks (N=3, k=4); three agree, 'contrarian' reverses them."""
    campaign = CampaignFactory(completions_per_task=3, overlap=4, name="Outliers")
    people = [UserFactory(username=name) for name in ("ann", "ben", "cat", "contrarian")]
    services.campaign_add_members(campaign=campaign, users=people)
    make_tasks(campaign, 12)
    for person in people[:3]:
        rank_every_task(campaign, person, lambda ids: {c: i + 1 for i, c in enumerate(ids)})
    rank_every_task(campaign, people[3], lambda ids: {c: 3 - i for i, c in enumerate(ids)})
    return campaign, people


def test_quality_page_shows_figures_with_form_chance_n_and_interval(outlier_campaign, admin_user):
    campaign, _ = outlier_campaign
    page = body(client_for(admin_user).get(f"/dashboard/campaigns/{campaign.pk}/quality/"))
    strict = re.search(r'data-key="pairwise_agreement.strict">(.*?)</div>', page, re.S)[1]
    assert "Pairwise agreement, strict" in strict and "chance 50%" in strict
    assert re.search(r"\d+% <span class=\"ci\">\[\d+\u2013\d+%\]</span>", strict)
    assert "n = " in strict
    three_way = re.search(r'data-key="pairwise_agreement.three_way">(.*?)</div>', page, re.S)[1]
    assert "chance 33%" in three_way
    assert 'data-key="alpha.ranks"' in page and 'data-key="kendall_w"' in page
    # The contrarian is flagged, listed first, highlighted, with the reason.
    table = re.search(
        r'<table class="table dash-table" id="labeller-quality">(.*?)</table>', page, re.S
    )[1]
    first_row = re.search(
        r"<tr class=\"([^\"]*)\">\s*<th scope=\"row\"><a [^>]*>([^<]+)</a>", table
    )
    assert first_row.groups() == ("is-flagged", "contrarian")
    assert "robust SDs below the median" in table
    # The trend: one point (every ranking was made today), computed by the quality functions.
    trend = json.loads(
        re.search(r'<script id="trend-data" type="application/json">(.*?)</script>', page, re.S)[1]
    )
    assert len(trend["points"]) == 1 and trend["points"][0]["rankings"] == 48
    point = trend["points"][0]["figures"]["pairwise_agreement.strict"]
    assert 0 < point["value"] < 1 and point["n"] > 0 and point["ci_low"] <= point["value"]


def test_quality_page_adds_gold_agreement_when_the_campaign_has_gold_tasks(admin_user, monkeypatch):
    monkeypatch.setattr(
        services.assignment, "_gold_draw", lambda: 0.0
    )  # gold first, while any is left
    campaign = CampaignFactory(completions_per_task=2, overlap=2, gold_rate=0.5)
    lines = [{"prompt": f"g{i}", "completions": [f"good {i}", f"bad {i}"], "gold": [1, 2]}
             for i in range(4)]  # fmt: skip
    lines += [{"prompt": f"p{i}", "completions": [f"a {i}", f"b {i}"]} for i in range(6)]
    services.campaign_import(campaign=campaign, data=jsonl(lines), filename="gold.jsonl")
    ann, ben = UserFactory(username="ann"), UserFactory(username="ben")
    services.campaign_add_members(campaign=campaign, users=[ann, ben])
    rank_every_task(campaign, ann, lambda ids: {ids[0]: 1, ids[1]: 2})  # as the references
    rank_every_task(campaign, ben, lambda ids: {ids[0]: 2, ids[1]: 1})  # against them
    page = body(client_for(admin_user).get(f"/dashboard/campaigns/{campaign.pk}/quality/"))
    assert Ranking.objects.filter(campaign=campaign, task__is_gold=True).count() == 8
    assert "Gold: 4 gold tasks with reference rankings, 8 gold rankings" in page
    rows = dict(
        re.findall(
            r'>(ann|ben)</a></th>.*?<td class="num">.*?</td>\s*<td>.*?</td>\s*<td>(.*?)</td>',
            page,
            re.S,
        )
    )
    assert rows["ann"].startswith("100%") and "4 gold tasks" in rows["ann"]
    assert rows["ben"].startswith("0%")
    # Over time: one block of 4 gold tasks each, from the gold table's drift series.
    drift = json.loads(
        re.search(r'<script id="gold-drift-data" type="application/json">(.*?)</script>', page)[1]
    )
    assert drift["labels"] == ["gold tasks 1-4"] and drift["threshold"] == 0.7
    values = {row["username"]: [p["value"] for p in row["points"]] for row in drift["series"]}
    assert values == {"ann": [1.0], "ben": [0.0]}


def test_quality_page_has_no_gold_chart_without_gold_tasks(outlier_campaign, admin_user):
    campaign, _ = outlier_campaign
    page = body(client_for(admin_user).get(f"/dashboard/campaigns/{campaign.pk}/quality/"))
    assert "gold-drift-data" not in page and "Gold agreement over time" not in page


def test_trend_counts_rankings_up_to_each_day(outlier_campaign):
    from datetime import timedelta

    from django.utils import timezone

    from annotation.models import Ranking

    campaign, _ = outlier_campaign
    ids = list(
        Ranking.objects.filter(campaign=campaign).order_by("id").values_list("id", flat=True)
    )
    Ranking.objects.filter(pk__in=ids[:24]).update(created_at=timezone.now() - timedelta(days=2))
    points = agreement_figures.agreement_trend(campaign=campaign)
    assert [p.rankings for p in points] == [24, 48]
    assert points[0].date < points[1].date
    assert set(points[-1].figures) == set(agreement_figures.TREND_KEYS)
    # the last point is the whole campaign: the headline figure, with fewer resamples
    whole = agreement_figures.campaign_agreement(campaign=campaign)
    strict = next(f for f in whole.figures if f.key == "pairwise_agreement.strict")
    assert points[-1].figures["pairwise_agreement.strict"].value == strict.value


def test_labeller_page_shows_their_rankings_next_to_the_others_consensus(
    outlier_campaign, admin_user
):
    campaign, people = outlier_campaign
    contrarian = people[3]
    page = body(
        client_for(admin_user).get(f"/dashboard/campaigns/{campaign.pk}/labellers/{contrarian.pk}/")
    )
    assert "Flagged:" in page
    assert page.count('class="card task-compare"') == 12
    assert "agreement with the others' consensus <b>0%</b> over 3 pairs" in page
    first = re.search(r'<tbody>\s*<tr class="differs">.*?</tr>', page, re.S)[0]
    labels = re.findall(r'<span class="rank rank-[^"]+">([^<]+)</span>', first)
    assert labels == ["3", "1"]  # theirs, the others' consensus


def test_task_page_shows_every_ranking_side_by_side_and_the_consensus(ranked, admin_user):
    task = ranked.tasks.order_by("id").first()
    page = body(client_for(admin_user).get(f"/dashboard/campaigns/{ranked.pk}/tasks/{task.pk}/"))
    table = re.search(
        r'<table class="table side-by-side" id="task-rankings">(.*?)</table>', page, re.S
    )[1]
    assert ">alice</a>" in table and ">bob</a>" in table and "Consensus" in table
    rows = re.findall(r"<tr>\s*<td class=\"num\">\d</td>(.*?)</tr>", table, re.S)
    labels = [re.findall(r'<span class="rank rank-[^"]+">([^<]+)</span>', row) for row in rows]
    assert labels[0] == ["1", "1", "1"]  # alice, bob, consensus
    assert labels[3][:2] == ["4", "F"]
    tasks = body(client_for(admin_user).get(f"/dashboard/campaigns/{ranked.pk}/tasks/"))
    assert len(re.findall(rf'href="/dashboard/campaigns/{ranked.pk}/tasks/\d+/"', tasks)) == 5


def test_task_page_figure_reads_only_the_task_and_matches_the_campaign_wide_one(ranked, admin_user):
    task = ranked.tasks.order_by("id").first()
    _, figures = agreement_figures.task_figures(agreement_figures.agreement_inputs(campaign=ranked))
    expected = next(f for f in figures if f.task_id == task.pk)
    response = client_for(admin_user).get(f"/dashboard/campaigns/{ranked.pk}/tasks/{task.pk}/")
    assert response.context["figure"] == expected


# --- training -----------------------------------------------------------------------------------


def test_job_form_is_prefilled_with_the_config_defaults(admin_user, campaign):
    ModelVersion.objects.create(kind="base", name="tiny-base", path="/models/tiny")
    page = body(
        client_for(admin_user).get(f"/dashboard/training/new/reward_model/?campaign={campaign.pk}")
    )
    assert re.search(r'name="config__learning_rate" value="5e-05"', page)
    assert re.search(r'name="config__num_epochs" value="1"', page)
    assert "peak learning rate of Adam" in page  # the config field's docstring as help
    assert f'<option value="{campaign.pk}" selected>' in page
    assert "tiny-base" in page
    ppo = body(client_for(admin_user).get("/dashboard/training/new/ppo/"))
    assert (
        'name="config__kl_coef" value="0.05"' in ppo
        and 'name="config__clip_range" value="0.2"' in ppo
    )
    dpo = body(client_for(admin_user).get("/dashboard/training/new/dpo/"))
    assert 'name="config__beta" value="0.1"' in dpo
    generate = body(client_for(admin_user).get("/dashboard/training/new/generate/"))
    assert 'name="config__temperature" value="0.7"' in generate
    assert 'name="num_completions"' in generate and 'name="mix_previous"' in generate
    whole = body(client_for(admin_user).get("/dashboard/training/new/round/"))
    for name in ("reward_model__learning_rate", "ppo__kl_coef", "dpo__beta", "sampling__top_p"):
        assert f'name="config__{name}"' in whole
    assert 'name="update"' in whole


def test_round_form_sends_config_by_section_and_places_errors_by_section(campaign, admin_user):
    from annotation.errors import InvalidInput
    from training.dashboard.forms import TrainingJobForm

    page = TrainingJobForm(kind="round", user=admin_user)
    data = {name: field.initial for name, field in page.fields.items() if field.initial is not None}
    data.update(
        {
            "campaign_ids": [campaign.pk],
            "update": "dpo",
            "mix_policy": 3,
            "mix_reference": 1,
            "config__dpo__beta": 0.2,
            "ties": "",
        }
    )
    form = TrainingJobForm(data, kind="round", user=admin_user)
    assert form.is_valid(), form.errors
    arguments = form.request_fields()
    assert arguments["campaign_ids"] == [campaign.pk] and arguments["update"] == "dpo"
    assert arguments["mix"] == {"policy": 3, "reference": 1}
    assert set(arguments["config"]) == {"reward_model", "ppo", "dpo", "sampling"}
    assert arguments["config"]["dpo"]["beta"] == 0.2
    assert arguments["config"]["ppo"]["kl_coef"] == 0.05
    form.add_service_error(InvalidInput("ppo: total_steps must be >= 1", field="config"))
    form.add_service_error(InvalidInput("the counts add up to 3, not K = 4", field="mix"))
    form.add_service_error(InvalidInput("round 0 is completed", field="round"))
    assert form.errors["config__ppo__total_steps"] == ["ppo: total_steps must be >= 1"]
    assert form.errors["mix_policy"] == ["the counts add up to 3, not K = 4"]
    assert form.errors["round"] == ["round 0 is completed"]


def job_post(campaign, **changes) -> dict:
    data = {
        "campaign_ids": [campaign.pk],
        "base_model_path": "/models/tiny",
        "fail_policy": "drop",
        "config__num_epochs": 1,
        "config__learning_rate": 0.001,
        "config__lr_schedule": "linear",
        "config__batch_size": 8,
        "config__max_length": 64,
        "config__tie_loss": "soft_label",
        "config__eval_fraction": 0.1,
        "config__seed": 0,
        "config__gpus": 0,
        "config__nodes": 1,
        "config__shard": "fsdp",
        "config__checkpoint_every": 0,
    }
    data.update(changes)
    return data


def test_job_form_shows_the_services_errors_next_to_the_fields(
    admin_user, campaign, ranked, django_capture_on_commit_callbacks
):
    client = client_for(admin_user)
    url = "/dashboard/training/new/reward_model/"
    empty = CampaignFactory(name="No rankings")
    response = client.post(url, job_post(empty))
    assert response.status_code == 400
    assert field_error(response, "campaign_ids") == "these campaigns have no rankings yet"
    response = client.post(url, job_post(ranked, config__max_length=4))
    assert field_error(response, "config__max_length") == "max_length must be >= 8"
    response = client.post(url, job_post(ranked, config__learning_rate="fast"))
    assert field_error(response, "config__learning_rate") == "Enter a number."
    version = ModelVersion.objects.create(kind="base", name="tiny", path="/models/tiny")
    response = client.post(url, job_post(ranked, base_model_version=version.pk))
    assert "not both" in field_error(response, "base_model_path")
    assert not TrainingJob.objects.exists()

    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(url, job_post(ranked, name="rm-1"))
    job = TrainingJob.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/dashboard/training/jobs/{job.pk}/"
    assert job.kind == "reward_model" and job.created_by == admin_user
    assert job.params["config"]["learning_rate"] == 0.001
    assert job.params["base_model_path"] == "/models/tiny" and job.params["name"] == "rm-1"
    assert job.params["campaign_ids"] == [ranked.pk]


def test_job_page_embeds_the_api_urls_and_charts(admin_user, job):
    page = body(client_for(admin_user).get(f"/dashboard/training/jobs/{job.pk}/"))
    config = json.loads(
        re.search(r'<script id="job-config" type="application/json">(.*?)</script>', page, re.S)[1]
    )
    assert config["urls"] == {
        "job": f"/api/training-jobs/{job.pk}/",
        "metrics": f"/api/training-jobs/{job.pk}/metrics/",
        "cancel": f"/api/training-jobs/{job.pk}/cancel/",
        "step": "/dashboard/training/jobs/0/",  # job.js puts each step's id in
    }
    assert config["charts"][0]["keys"] == ["reward/loss"]
    assert config["job"]["status"] == "queued"
    assert "chart-4.6.1.umd.min.js" in page


def test_cancel_form_cancels_a_queued_job(admin_user, job):
    client = client_for(admin_user)
    response = client.post(f"/dashboard/training/jobs/{job.pk}/cancel/", follow=True)
    job.refresh_from_db()
    assert job.status == "cancelled"
    again = client.post(f"/dashboard/training/jobs/{job.pk}/cancel/", follow=True)
    assert "The job already cancelled." in body(again)
    assert "Cancellation requested." in body(response)


def test_models_page_shows_the_lineage(admin_user):
    base = ModelVersion.objects.create(kind="base", name="base-0", path="/m/base")
    rm = ModelVersion.objects.create(
        kind="reward", name="rm-1", path="/m/rm", parent=base, metrics={"eval/accuracy": 0.91}
    )
    ModelVersion.objects.create(kind="policy", name="policy-1", path="/m/p", parent=base)
    page = body(client_for(admin_user).get("/dashboard/training/models/"))
    order = [m for m in re.findall(r'id="version-(\d+)" data-depth="(\d)"', page)]
    assert order[0] == (str(base.pk), "0")
    assert (str(rm.pk), "1") in order
    assert "eval/accuracy" in page and "0.91" in page


def test_models_page_shows_each_round_with_its_chain_and_evaluation(admin_user, campaign):
    from training import rounds
    from training.models import Round

    base = ModelVersion.objects.create(kind="base", name="sft-0", path="/m/sft")
    rnd = rounds.round_start(campaign=campaign, policy=base, created_by=admin_user)
    rm = ModelVersion.objects.create(kind="reward", name="rm-0", path="/m/rm", parent=base)
    after = ModelVersion.objects.create(kind="policy", name="ppo-0", path="/m/ppo", parent=base)
    evaluation = {
        "policy_before": {"reward": 0.1, "kl": 0.0},
        "policy_after": {"reward": 0.6, "kl": 1.5},
    }
    Round.objects.filter(pk=rnd.pk).update(
        reward_model=rm, policy_after=after, status="trained", evaluation=evaluation
    )
    page = body(client_for(admin_user).get("/dashboard/training/models/"))
    chain = re.search(rf'id="round-{rnd.pk}">(.*?)</li>\s*</ol>', page, re.S)
    assert chain, "the round is listed"
    card = re.search(
        rf'id="round-{rnd.pk}">.*?(?=<li class="round|</ol>\s*</section>)', page, re.S
    )[0]
    assert f'href="/dashboard/campaigns/{campaign.pk}/"' in card
    for name in ("sft-0", "rm-0", "ppo-0"):
        assert name in card
    assert '<th scope="col" class="num">policy_before</th>' in card
    assert re.search(
        r"<code>reward</code></th><td class=\"num\">0.1</td><td class=\"num\">0.6</td>", card
    )
    assert f"/dashboard/training/new/round/?round={rnd.pk}" in card
    assert f"/dashboard/training/new/generate/?round={rnd.pk}" in card
    form = body(client_for(admin_user).get(f"/dashboard/training/new/ppo/?round={rnd.pk}"))
    assert f'<option value="{rnd.pk}" selected>Round 0: {campaign.name}' in form


def test_models_page_draws_gold_and_proxy_against_sqrt_kl_from_the_rounds_evaluations(
    admin_user,
):
    from training.models import Round

    base = ModelVersion.objects.create(kind="base", name="sft-0", path="/m/sft")
    first = ModelVersion.objects.create(kind="policy", name="ppo-0", path="/m/p0", parent=base)
    second = ModelVersion.objects.create(kind="policy", name="ppo-1", path="/m/p1", parent=first)
    # what evaluate_update stores for a synthetic labeller with a gold (eval setting gold_score)
    round0 = Round.objects.create(
        number=0, campaign=CampaignFactory(), reference=base, policy_before=base,
        policy_after=first, status="completed", eval_settings={"gold_score": True},
        evaluation={"policy_before": {"gold_score": 0.25, "kl_ref": 0.0, "reward": 0.0},
                    "policy_after": {"gold_score": 0.75, "kl_ref": 4.0, "reward": 1.25}},
    )  # fmt: skip
    round1 = Round.objects.create(
        number=1, campaign=CampaignFactory(), previous=round0, reference=base,
        policy_before=first, policy_after=second, status="trained",
        evaluation={"policy_before": {"gold_score": 0.75, "kl_ref": 4.0, "reward": -0.5},
                    "policy_after": {"gold_score": 0.5, "kl_ref": 9.0, "reward": 0.5}},
    )  # fmt: skip
    other = Round.objects.create(  # a chain labelled by people: no gold, no curve
        number=0, campaign=CampaignFactory(), reference=base, policy_before=base,
        policy_after=first, status="trained",
        evaluation={"policy_before": {"reward": 0.0, "kl_ref": 0.0},
                    "policy_after": {"reward": 1.0, "kl_ref": 2.0}},
    )  # fmt: skip
    page = body(client_for(admin_user).get("/dashboard/training/models/"))

    def card(rnd: Round) -> str:
        return re.search(
            rf'id="round-{rnd.pk}">.*?(?=<li class="round|</ol>\s*</section>)', page, re.S
        )[0]

    assert page.count('class="overoptimisation"') == 1
    curve = card(round1)  # the chain's latest round
    assert "Gold and proxy reward against √KL" in curve
    rows = re.findall(
        r'<tr><th scope="row">([^<]+)</th>((?:<td class="num">[^<]*</td>)+)</tr>', curve
    )
    figures = {label: re.findall(r">([^<]*)</td>", cells) for label, cells in rows}
    #                     KL      √KL     gold     gold gain  proxy gain (summed within-round gains)
    assert figures["start"] == ["0.00", "0.00", "0.250", "0.000", "0.000"]
    assert figures["round 0"] == ["4.00", "2.00", "0.750", "0.500", "1.250"]
    assert figures["round 1"] == ["9.00", "3.00", "0.500", "0.250", "2.250"]
    gold = re.search(r'class="curve-gold" points="([^"]+)"', curve)[1].split()
    proxy = re.search(r'class="curve-proxy" points="([^"]+)"', curve)[1].split()
    assert len(gold) == len(proxy) == 3
    assert gold[0] == proxy[0]  # both start at the origin
    assert float(proxy[2].split(",")[1]) < float(gold[2].split(",")[1])  # proxy drawn higher
    assert "overoptimisation" not in card(round0) and "overoptimisation" not in card(other)


def test_register_a_model_and_start_a_round_from_the_models_page(admin_user, ranked):
    client = client_for(admin_user)
    register = "/dashboard/training/models/register/"
    response = client.post(register, {"kind": "base", "name": "sft", "path": "   "})
    assert response.status_code == 400
    assert field_error(response, "path") == "This field is required."
    response = client.post(register, {"kind": "reward", "name": "rm", "path": "/m/rm"})
    assert "Select a valid choice" in field_error(response, "kind")
    response = client.post(register, {"kind": "base", "name": "sft", "path": "/models/sft"})
    version = ModelVersion.objects.get(name="sft")
    assert response.status_code == 302 and response["Location"].endswith(f"#version-{version.pk}")

    start = "/dashboard/training/rounds/new/"
    response = client.post(start, {"campaign": ranked.pk, "reward_scope": "all"})
    assert field_error(response, "policy") == "This field is required."
    shown = {"campaign": ranked.pk, "policy": version.pk, "reward_scope": "all",
             "config__eval__reward_must_not_fall": "on"}  # fmt: skip
    response = client.post(start, {**shown, "config__eval__eval_fraction": "1.5"})
    assert response.status_code == 400
    assert field_error(response, "config__eval__eval_fraction") == (
        "eval_fraction must be in [0, 1)"
    )
    from training.models import Round

    assert not Round.objects.exists()
    response = client.post(start, {**shown, "config__eval__min_held_out_pairs": "20"})
    rnd = Round.objects.get(campaign=ranked)
    assert response.status_code == 302 and response["Location"].endswith(f"#round-{rnd.pk}")
    assert (
        rnd.policy_before == version and rnd.reference == version and rnd.created_by == admin_user
    )
    # what was set is stored; what was left empty keeps its default
    assert rnd.eval_settings["min_held_out_pairs"] == 20
    assert rnd.eval_settings["reward_must_not_fall"] is True
    assert rnd.eval_settings["eval_fraction"] == EvalSettings().eval_fraction
    page = body(client.get("/dashboard/training/models/"))
    campaigns = re.search(r'<select name="campaign"[^>]*>(.*?)</select>', page, re.S)[1]
    assert f'<option value="{ranked.pk}"' not in campaigns  # it has its round now


def form_data(kind: str, **changes) -> dict:
    """What the job form posts when submitted as shown (defaults), with ``changes``."""
    from training.dashboard.forms import TrainingJobForm

    data = {}
    for name, field in TrainingJobForm(kind=kind, user=AnonymousUser()).fields.items():
        if field.initial is True:
            data[name] = "on"
        elif field.initial is not None and field.initial is not False:
            data[name] = field.initial
    data.update(changes)
    return data


def test_round_and_ppo_forms_show_the_services_errors(admin_user, ranked):
    client = client_for(admin_user)
    response = client.post(
        "/dashboard/training/new/round/", form_data("round", campaign_ids=[ranked.pk])
    )
    assert response.status_code == 400
    assert "has no round yet: name the policy" in field_error(response, "base_model_version")
    ppo = form_data("ppo", campaign_ids=[ranked.pk])
    response = client.post("/dashboard/training/new/ppo/", ppo)
    assert field_error(response, "reward_model_version") == "no reward model yet: train one first"
    ModelVersion.objects.create(kind="reward", name="rm", path="/m/rm")
    response = client.post("/dashboard/training/new/ppo/", {**ppo, "config__total_steps": 0})
    assert field_error(response, "config__total_steps") == "total_steps must be >= 1"
    assert not TrainingJob.objects.exists()


# --- CSRF ---------------------------------------------------------------------------------------


def csrf_client(user) -> tuple[Client, str]:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    page = client.get("/dashboard/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body(page))
    client.get("/dashboard/campaigns/new/")
    return client, client.cookies["csrftoken"].value if token is None else token[1]


def test_dashboard_posts_need_the_csrf_token(campaign, admin_user, job):
    client, token = csrf_client(admin_user)
    status_url = f"/dashboard/campaigns/{campaign.pk}/status/"
    assert client.post(status_url, {"status": "paused"}).status_code == 403
    campaign.refresh_from_db()
    assert campaign.status == "active"
    assert (
        client.post(status_url, {"status": "paused", "csrfmiddlewaretoken": token}).status_code
        == 302
    )
    campaign.refresh_from_db()
    assert campaign.status == "paused"

    preview = "/dashboard/guidelines/preview/"
    assert client.post(preview, {"text": "# hi"}).status_code == 403
    answer = client.post(preview, {"text": "# hi"}, HTTP_X_CSRFTOKEN=token)
    assert answer.json()["html"].strip() == "<h1>hi</h1>"

    create = "/dashboard/campaigns/new/"
    data = {"name": "X", "completions_per_task": 2, "overlap": 1, "round_number": 0}
    assert client.post(create, data).status_code == 403
    assert not Campaign.objects.filter(name="X").exists()


def test_job_page_cancel_through_the_api_needs_the_csrf_token(admin_user, job):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(admin_user)
    page = client.get(f"/dashboard/training/jobs/{job.pk}/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body(page))[1]
    url = f"/api/training-jobs/{job.pk}/cancel/"
    assert client.post(url).status_code == 403
    response = client.post(url, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"


def test_other_admins_see_the_same_dashboard(ranked):
    """Two admins get the same campaign page, but for who they are and their CSRF token."""
    pages = []
    for user in (AdminFactory(username="first-admin"), AdminFactory(username="second-admin")):
        response = client_for(user).get(f"/dashboard/campaigns/{ranked.pk}/")
        assert response.status_code == 200
        main = re.search(r"<main\b.*?</main>", body(response), re.S)[0]
        main = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "csrf", main)
        pages.append(main.replace(user.username, "<me>"))
    assert pages[0] == pages[1]
    assert ranked.name in pages[0] and "rankings" in pages[0].lower()


def test_vendored_chart_js_is_the_recorded_version():
    from pathlib import Path

    vendor = Path(__file__).resolve().parents[2] / "static" / "vendor"
    (script,) = vendor.glob("chart-*.umd.min.js")
    version = re.fullmatch(r"chart-(\d+\.\d+\.\d+)\.umd\.min\.js", script.name)[1]
    assert script.read_text()[:200].count(f"Chart.js v{version}") == 1
    assert "sourceMappingURL" not in script.read_text()[-200:]
    assert f"| {version} |" in (vendor / "README.md").read_text()
    assert "MIT" in (vendor / "chart-LICENSE.md").read_text()
    for template in ("quality.html", "job.html"):
        text = (vendor.parents[1] / "templates" / "dashboard" / template).read_text()
        assert f"vendor/{script.name}" in text


# --- gold tasks from the task page --------------------------------------------------------------


def test_admin_makes_a_task_gold_from_its_page_and_back(ranked, admin_user):
    client, token = csrf_client(admin_user)
    task = Task.objects.filter(campaign=ranked, rankings__isnull=False).first()
    ids = list(task.task_completions.order_by("position").values_list("completion_id", flat=True))
    page = body(client.get(f"/dashboard/campaigns/{ranked.pk}/tasks/{task.pk}/"))
    assert "Use as a gold task" in page and f'name="rank-{ids[0]}"' in page
    posted = {f"rank-{c}": str(i + 1) for i, c in enumerate(ids)} | {f"rank-{ids[3]}": "F"}
    url = f"/dashboard/campaigns/{ranked.pk}/tasks/{task.pk}/gold/"
    response = client.post(url, posted | {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    task.refresh_from_db()
    assert task.is_gold
    assert task.gold_ranking == {str(ids[0]): 1, str(ids[1]): 2, str(ids[2]): 3, str(ids[3]): "F"}
    page = body(client.get(response["Location"]))
    assert "Gold reference" in page and "Save the reference" in page
    response = client.post(url, {"action": "unmark", "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    task.refresh_from_db()
    assert not task.is_gold and task.gold_ranking is None


def test_a_bad_gold_reference_is_refused_with_the_reason_and_nothing_changes(ranked, admin_user):
    client, token = csrf_client(admin_user)
    task = ranked.tasks.first()
    ids = list(task.task_completions.order_by("position").values_list("completion_id", flat=True))
    url = f"/dashboard/campaigns/{ranked.pk}/tasks/{task.pk}/gold/"
    missing = {f"rank-{c}": "1" for c in ids[:3]} | {"csrfmiddlewaretoken": token}
    response = client.post(url, missing)  # the fourth has no rank; three share rank 1
    assert response.status_code == 400
    assert 'id="gold-error"' in body(response)
    task.refresh_from_db()
    assert not task.is_gold
    posted = {f"rank-{c}": str(i + 1) for i, c in enumerate(ids)} | {f"rank-{ids[0]}": "9"}
    response = client.post(url, posted | {"csrfmiddlewaretoken": token})
    assert response.status_code == 400 and "between 1 and 4" in body(response)
    task.refresh_from_db()
    assert not task.is_gold
    # Without the CSRF token the post is refused before anything is looked at.
    assert client.post(url, {"action": "unmark"}).status_code == 403


# --- the campaign list's agreement, cached -------------------------------------------------------


def test_campaign_list_agreement_is_cached_until_the_rankings_or_gold_change(
    outlier_campaign, admin_user, monkeypatch
):
    from annotation import agreement_figures

    campaign, _ = outlier_campaign
    computed = []
    real = agreement_figures.campaign_figures
    monkeypatch.setattr(
        agreement_figures,
        "campaign_figures",
        lambda *args, **kw: computed.append(1) or real(*args, **kw),
    )
    client = client_for(admin_user)
    pages = [body(client.get("/dashboard/")) for _ in range(2)]
    assert len(computed) == 1
    shown = [re.search(r"Outliers.*?(\d+)%", page, re.S)[1] for page in pages]
    assert shown[0] == shown[1]
    # A new ranking: recomputed.
    services.campaign_update(campaign=campaign, overlap=5)  # room for a fifth labeller
    newcomer = UserFactory(username="dan")
    services.campaign_add_members(campaign=campaign, users=[newcomer])
    assignment = services.task_assign_next(labeller=newcomer, campaign=campaign)
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(assignment.display_order)]
    services.ranking_submit(labeller=newcomer, assignment=assignment, items=items, time_spent_ms=10)
    client.get("/dashboard/")
    assert len(computed) == 2
    # A task made gold leaves the agreement: recomputed.
    task = campaign.tasks.first()
    ids = list(task.task_completions.order_by("position").values_list("completion_id", flat=True))
    services.task_mark_gold(task=task, items=[{"completion": c, "rank": 1} for c in ids])
    client.get("/dashboard/")
    assert len(computed) == 3


def test_campaign_list_still_answers_when_the_cache_fails(
    outlier_campaign, admin_user, monkeypatch
):
    from annotation import agreement_figures

    class Broken:
        def get(self, *args, **kwargs):
            raise ConnectionError("redis is down")

        set = get

    monkeypatch.setattr(agreement_figures, "cache", Broken())
    page = body(client_for(admin_user).get("/dashboard/"))
    assert "Outliers" in page


def test_quality_page_and_agreement_api_compute_once_until_a_new_ranking(
    outlier_campaign, admin_user, monkeypatch
):
    """The figures behind the quality page (headline, labeller table, trend) and the
    agreement endpoints cost seconds at 100k rankings: each set is computed once per version of
    the rankings and served from the cache until a ranking is added."""
    from annotation import agreement

    campaign, _ = outlier_campaign
    calls = {"campaign": 0, "labellers": 0}
    real_figures, real_quality = agreement_figures.campaign_figures, agreement.labeller_quality

    def figures(*args, **kwargs):
        calls["campaign"] += 1
        return real_figures(*args, **kwargs)

    def quality(*args, **kwargs):
        calls["labellers"] += 1
        return real_quality(*args, **kwargs)

    monkeypatch.setattr(agreement_figures, "campaign_figures", figures)
    monkeypatch.setattr(agreement, "labeller_quality", quality)
    client = client_for(admin_user)
    urls = [  # the page's default F handling is the pair export's: drop
        f"/dashboard/campaigns/{campaign.pk}/quality/",
        f"/api/campaigns/{campaign.pk}/agreement/?fail_policy=drop",
        f"/api/campaigns/{campaign.pk}/labellers/?fail_policy=drop",
    ]
    first = [client.get(url) for url in urls]
    assert [r.status_code for r in first] == [200, 200, 200]
    counted = dict(calls)
    assert counted["campaign"] >= 2 and counted["labellers"] == 1  # headline + trend points
    again = [client.get(url) for url in urls]
    assert calls == counted  # nothing recomputed
    assert again[1].json() == first[1].json() and again[2].json() == first[2].json()

    services.campaign_update(campaign=campaign, overlap=5)
    newcomer = UserFactory(username="dan")
    services.campaign_add_members(campaign=campaign, users=[newcomer])
    assignment = services.task_assign_next(labeller=newcomer, campaign=campaign)
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(assignment.display_order)]
    services.ranking_submit(labeller=newcomer, assignment=assignment, items=items, time_spent_ms=10)
    after = client.get(urls[2]).json()
    assert calls["labellers"] == 2
    assert "dan" in {row["username"] for row in after["labellers"]}
