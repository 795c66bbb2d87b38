"""Roles: every role against the endpoints and pages each permission guards.

The campaign belongs to the default team; ``other-trainer`` trains in another team and must see
nothing of it. ``staff`` has ``is_staff`` and no permission: it opens Django's admin site and
gives nothing else. ``global-viewer`` holds Django's ``annotation.view_campaign`` through a
group: it sees every campaign and changes none.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client

from annotation import permissions, services
from annotation.models import Membership, Ranking, TeamMembership
from tests.conftest import client_for
from tests.factories import TeamFactory, TrainingJobFactory, UserFactory

pytestmark = pytest.mark.django_db

ROLES = (
    "anonymous",
    "outsider",
    "labeller",
    "reviewer",
    "campaign_manager",
    "team_manager",
    "team_trainer",
    "other_trainer",
    "staff",
    "global_viewer",
    "superuser",
)


@pytest.fixture
def world(campaign, labeller, other_labeller):
    """The campaign of the default team with a ranking by bob (not alice), a queued job, and one
    user per role."""
    assignment = services.task_assign_next(labeller=other_labeller, campaign=campaign)
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(assignment.display_order)]
    ranking = services.ranking_submit(
        labeller=other_labeller, assignment=assignment, items=items, time_spent_ms=10
    ).ranking
    users = {"anonymous": None, "outsider": UserFactory(username="mallory"), "labeller": labeller}
    for role, name in ((Membership.Role.REVIEWER, "reviewer"), ("manager", "campaign_manager")):
        users[name] = UserFactory(username=name.replace("_", "-"))
        services.campaign_add_members(campaign=campaign, users=[users[name]], role=role)
    for role, name in (("manager", "team_manager"), ("trainer", "team_trainer")):
        users[name] = UserFactory(username=name.replace("_", "-"))
        TeamMembership.objects.create(team=campaign.team, user=users[name], role=role)
    users["other_trainer"] = UserFactory(username="other-trainer")
    TeamMembership.objects.create(
        team=TeamFactory(name="Other lab"), user=users["other_trainer"], role="trainer"
    )
    users["staff"] = UserFactory(username="staff", is_staff=True)
    viewers = Group.objects.create(name="viewers")
    viewers.permissions.add(Permission.objects.get(codename="view_campaign"))
    users["global_viewer"] = UserFactory(username="global-viewer")
    users["global_viewer"].groups.add(viewers)
    users["superuser"] = UserFactory(username="root", is_staff=True, is_superuser=True)
    job = TrainingJobFactory(campaign=campaign)
    return {"campaign": campaign, "ranking": ranking, "job": job, "users": users}


def _url(template: str, world) -> str:
    return template.format(
        c=world["campaign"].pk,
        r=world["ranking"].pk,
        j=world["job"].pk,
        t=world["ranking"].task_id,
    )


# (method, url, body, expected status per role in ROLES order)
API = [
    ("get", "/api/campaigns/{c}/", None, (403, 404, 200, 200, 200, 200, 200, 404, 404, 200, 200)),
    (
        "patch",
        "/api/campaigns/{c}/",
        {"name": "Renamed"},
        (403, 404, 403, 403, 200, 200, 200, 404, 404, 403, 200),
    ),
    (
        "post",
        "/api/campaigns/{c}/status/",
        {"status": "paused"},
        (403, 404, 403, 403, 200, 200, 200, 404, 404, 403, 200),
    ),
    (
        "post",
        "/api/campaigns/{c}/members/",
        {"usernames": ["mallory"]},
        (403, 404, 403, 403, 200, 200, 200, 404, 404, 403, 200),
    ),
    (
        "get",
        "/api/campaigns/{c}/agreement/",
        None,
        (403, 404, 403, 200, 200, 200, 200, 404, 404, 200, 200),
    ),
    (
        "get",
        "/api/campaigns/{c}/pairs/",
        None,
        (403, 404, 403, 403, 200, 200, 200, 404, 404, 403, 200),
    ),
    (
        "get",
        "/api/campaigns/{c}/rankings/export/",
        None,
        (403, 404, 403, 403, 200, 200, 200, 404, 404, 403, 200),
    ),
    # bob's ranking: alice (a labeller too) never sees it; those who review the campaign do.
    ("get", "/api/rankings/{r}/", None, (403, 404, 404, 200, 200, 200, 200, 404, 404, 200, 200)),
    # Creating a campaign: in the one team one manages (the superuser manages both: say which).
    (
        "post",
        "/api/campaigns/",
        {"name": "New"},
        (403, 403, 403, 403, 403, 201, 201, 201, 403, 403, 400),
    ),
    ("get", "/api/training-jobs/", None, (403, 403, 403, 403, 403, 200, 200, 200, 403, 403, 200)),
    (
        "get",
        "/api/training-jobs/{j}/",
        None,
        (403, 403, 403, 403, 403, 200, 200, 404, 403, 403, 200),
    ),
    (
        "post",
        "/api/training-jobs/{j}/cancel/",
        None,
        (403, 403, 403, 403, 403, 403, 200, 404, 403, 403, 200),
    ),
    # Valid up to its config: only those who may train there get as far as the 400.
    (
        "post",
        "/api/training-jobs/",
        {"kind": "reward_model", "campaign_ids": ["{c}"], "config": {"epochs": -1}},
        (403, 403, 403, 403, 403, 403, 400, 400, 403, 403, 400),
    ),
    # The memory plan of a job body (nothing queued): the same people as creating one.
    (
        "post",
        "/api/training-jobs/plan/",
        {"kind": "reward_model", "campaign_ids": ["{c}"], "config": {"epochs": -1}},
        (403, 403, 403, 403, 403, 403, 400, 400, 403, 403, 400),
    ),
    ("get", "/api/model-versions/", None, (403, 403, 403, 403, 403, 200, 200, 200, 403, 403, 200)),
    (
        "get",
        "/api/campaigns/{c}/kappa/",
        None,
        (403, 404, 403, 200, 200, 200, 200, 404, 404, 200, 200),
    ),
    # Review: those who hold *review* on the campaign (viewing it is not enough).
    (
        "get",
        "/api/campaigns/{c}/review/",
        None,
        (403, 404, 403, 200, 200, 200, 200, 404, 404, 403, 200),
    ),
    (
        "get",
        "/api/campaigns/{c}/review/{t}/",
        None,
        (403, 404, 403, 200, 200, 200, 200, 404, 404, 403, 200),
    ),
    # bob's task has one ranking of its two: reviewers are told it is not done yet.
    (
        "post",
        "/api/campaigns/{c}/review/{t}/",
        {"decision": "consensus"},
        (403, 404, 403, 409, 409, 409, 409, 404, 404, 403, 409),
    ),
    # Everyone who sees the campaign gets their own feedback (empty when they ranked nothing).
    (
        "get",
        "/api/campaigns/{c}/feedback/",
        None,
        (403, 404, 200, 200, 200, 200, 200, 404, 404, 200, 200),
    ),
]
PAGES = [
    ("/dashboard/", (302, 403, 403, 200, 200, 200, 200, 200, 403, 200, 200)),
    ("/dashboard/campaigns/{c}/", (302, 403, 403, 200, 200, 200, 200, 404, 403, 200, 200)),
    ("/dashboard/campaigns/{c}/quality/", (302, 403, 403, 200, 200, 200, 200, 404, 403, 200, 200)),
    ("/dashboard/campaigns/{c}/edit/", (302, 403, 403, 403, 200, 200, 200, 404, 403, 403, 200)),
    ("/dashboard/campaigns/{c}/import/", (302, 403, 403, 403, 200, 200, 200, 404, 403, 403, 200)),
    ("/dashboard/campaigns/new/", (302, 403, 403, 403, 403, 200, 200, 200, 403, 403, 200)),
    ("/dashboard/training/", (302, 403, 403, 403, 403, 200, 200, 200, 403, 403, 200)),
    ("/dashboard/training/jobs/{j}/", (302, 403, 403, 403, 403, 200, 200, 404, 403, 403, 200)),
    ("/dashboard/training/new/round/", (302, 403, 403, 403, 403, 403, 200, 200, 403, 403, 200)),
    ("/dashboard/campaigns/{c}/review/", (302, 403, 403, 200, 200, 200, 200, 404, 403, 403, 200)),
    (
        "/dashboard/campaigns/{c}/review/{t}/",
        (302, 403, 403, 200, 200, 200, 200, 404, 403, 403, 200),
    ),
    ("/history/", (302, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200)),
    # Django's admin: staff only, and then Django's model permissions.
    ("/admin/annotation/campaign/", (302, 302, 302, 302, 302, 302, 302, 302, 403, 302, 200)),
]


def _body(body, world):
    if body is None:
        return None
    return {
        key: ([int(_url(v, world)) for v in value] if isinstance(value, list) else value)
        if key == "campaign_ids"
        else value
        for key, value in body.items()
    }


@pytest.mark.parametrize(("method", "template", "body", "expected"), API)
@pytest.mark.parametrize("role", range(len(ROLES)), ids=ROLES)
def test_api_answers_each_role_as_its_permissions_say(
    world, method, template, body, expected, role, django_capture_on_commit_callbacks
):
    client = client_for(world["users"][ROLES[role]])
    url = _url(template, world)
    data = _body(body, world)
    with django_capture_on_commit_callbacks(execute=False):  # nothing reaches the broker
        response = getattr(client, method)(url, data, format="json")
    assert response.status_code == expected[role], (ROLES[role], url, response.content[:300])


@pytest.mark.parametrize(("template", "expected"), PAGES)
@pytest.mark.parametrize("role", range(len(ROLES)), ids=ROLES)
def test_pages_answer_each_role_as_its_permissions_say(world, template, expected, role):
    client = Client()
    user = world["users"][ROLES[role]]
    if user is not None:
        client.force_login(user)
    url = _url(template, world)
    response = client.get(url)
    assert response.status_code == expected[role], (ROLES[role], url)


def test_a_team_manager_sees_only_their_teams_campaigns_jobs_and_rankings(world):
    other = world["users"]["other_trainer"]
    mine = services.campaign_create(
        created_by=other, name="Theirs", team=other.team_memberships.get().team
    )
    seen = client_for(other).get("/api/campaigns/").json()
    assert [c["id"] for c in seen] == [mine.pk]
    assert client_for(other).get("/api/rankings/").json()["count"] == 0
    assert client_for(other).get("/api/training-jobs/").json()["count"] == 0
    dashboard = Client()
    dashboard.force_login(other)
    page = dashboard.get("/dashboard/").content.decode()
    assert "Theirs" in page and world["campaign"].name not in page


def test_is_staff_alone_changes_nothing(world):
    staff = world["users"]["staff"]
    response = client_for(staff).patch(
        f"/api/campaigns/{world['campaign'].pk}/", {"name": "Hijacked"}, format="json"
    )
    assert response.status_code == 404
    world["campaign"].refresh_from_db()
    assert world["campaign"].name != "Hijacked"


def test_campaign_roles_reach_only_their_campaign(world, admin_user):
    manager = world["users"]["campaign_manager"]
    elsewhere = services.campaign_create(created_by=admin_user, name="Elsewhere")
    assert permissions.can(manager, permissions.CHANGE, world["campaign"])
    assert not permissions.can(manager, permissions.CHANGE, elsewhere)
    assert not permissions.can(manager, permissions.TRAIN, world["campaign"].team)
    assert client_for(manager).get(f"/api/campaigns/{elsewhere.pk}/").status_code == 404


def test_a_reviewer_reads_every_ranking_of_the_campaign_but_exports_nothing(world):
    reviewer = world["users"]["reviewer"]
    listed = client_for(reviewer).get(f"/api/rankings/?campaign={world['campaign'].pk}").json()
    assert listed["count"] == Ranking.objects.filter(campaign=world["campaign"]).count() == 1
    assert (
        client_for(reviewer).get(f"/api/campaigns/{world['campaign'].pk}/pairs/").status_code == 403
    )


def test_a_manager_gives_roles_and_a_labeller_cannot(world):
    manager = client_for(world["users"]["campaign_manager"])
    url = f"/api/campaigns/{world['campaign'].pk}/members/"
    response = manager.post(url, {"usernames": ["mallory"], "role": "reviewer"}, format="json")
    assert response.status_code == 200
    assert Membership.objects.get(campaign=world["campaign"], user__username="mallory").role == (
        "reviewer"
    )
    bad = manager.post(url, {"usernames": ["mallory"], "role": "owner"}, format="json")
    assert bad.status_code == 400 and "role" in bad.json()["errors"]
    denied = client_for(world["users"]["labeller"]).post(
        url, {"usernames": ["mallory"], "role": "manager"}, format="json"
    )
    assert denied.status_code == 403


def test_campaigns_of_two_teams_never_train_together(world, admin_user):
    other = world["users"]["other_trainer"]
    theirs = services.campaign_create(
        created_by=other, name="Theirs", team=other.team_memberships.get().team
    )
    superuser = client_for(world["users"]["superuser"])
    response = superuser.post(
        "/api/training-jobs/",
        {"kind": "reward_model", "campaign_ids": [world["campaign"].pk, theirs.pk]},
        format="json",
    )
    assert response.status_code == 400 and "campaign_ids" in response.json()["errors"]


def test_training_buttons_show_only_to_those_who_may_train(world):
    campaign = world["campaign"]
    for name, shown in (("team_manager", False), ("team_trainer", True)):
        client = Client()
        client.force_login(world["users"][name])
        for url in (
            "/dashboard/training/",
            "/dashboard/training/models/",
            f"/dashboard/campaigns/{campaign.pk}/",
        ):
            page = client.get(url).content.decode()
            assert ("/dashboard/training/new/" in page) is shown, (name, url)
