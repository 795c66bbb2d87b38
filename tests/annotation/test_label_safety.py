"""Labels are never destroyed by routine administration, and nobody works where they no longer
belong: users are deactivated (not deleted), label rows are PROTECTed and read-only in Django's
admin, counts can be checked and repaired from the rows, removal ends leases and submits."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db.models import ProtectedError
from django.test import Client

from annotation import services
from annotation.models import Assignment, Campaign, Completion, Prompt, Ranking, Task
from annotation.services.integrity import task_counts_repair
from tests.conftest import client_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _rank(labeller, campaign) -> Ranking:
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(assignment.display_order)]
    return services.ranking_submit(
        labeller=labeller, assignment=assignment, items=items, time_spent_ms=5
    ).ranking


@pytest.fixture
def root(db):
    return UserFactory(username="root", is_staff=True, is_superuser=True)


@pytest.fixture
def admin_site(root) -> Client:
    client = Client()
    client.force_login(root)
    return client


def test_deleting_a_labeller_with_rankings_is_refused_and_keeps_every_ranking(
    campaign, labeller, admin_site
):
    ranking = _rank(labeller, campaign)
    with pytest.raises(ProtectedError):
        labeller.delete()
    assert admin_site.get(f"/admin/auth/user/{labeller.pk}/delete/").status_code == 403
    assert Ranking.objects.get(pk=ranking.pk).labeller_id == labeller.pk


def test_deactivating_in_the_admin_keeps_rankings_attributed_and_frees_open_leases(
    campaign, labeller, other_labeller, admin_site
):
    ranking = _rank(labeller, campaign)
    lease = services.task_assign_next(labeller=labeller, campaign=campaign)
    held = Task.objects.get(pk=lease.task_id).active_count
    response = admin_site.post(
        "/admin/auth/user/",
        {"action": "deactivate", "_selected_action": [labeller.pk, other_labeller.pk]},
    )
    assert response.status_code == 302
    labeller.refresh_from_db()
    assert not labeller.is_active
    assert Ranking.objects.get(pk=ranking.pk).labeller == labeller
    lease.refresh_from_db()
    assert lease.status == Assignment.Status.EXPIRED
    assert Task.objects.get(pk=lease.task_id).active_count == held - 1
    assert task_counts_repair() == []  # the counts stayed true
    assert not Client().login(username=labeller.username, password="correct horse battery")


@pytest.mark.parametrize(
    "path",
    [
        "ranking/{r}/delete/",
        "rankingitem/{i}/delete/",
        "assignment/{a}/delete/",
        "task/{t}/delete/",
        "prompt/{p}/delete/",
        "completion/{k}/delete/",
        "campaign/{c}/delete/",
    ],
)
def test_the_admin_never_deletes_labels(campaign, labeller, admin_site, path):
    ranking = _rank(labeller, campaign)
    item = ranking.items.first()
    url = "/admin/annotation/" + path.format(
        r=ranking.pk,
        i=item.pk,
        a=ranking.assignment_id,
        t=ranking.task_id,
        p=ranking.task.prompt_id,
        k=item.completion_id,
        c=campaign.pk,
    )
    assert admin_site.post(url, {"post": "yes"}).status_code in (403, 404)
    assert Ranking.objects.filter(pk=ranking.pk).exists()
    assert ranking.items.count() == campaign.completions_per_task


def test_the_admin_shows_labels_read_only(campaign, labeller, admin_site):
    ranking = _rank(labeller, campaign)
    url = f"/admin/annotation/ranking/{ranking.pk}/change/"
    page = admin_site.get(url)
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert admin_site.post(url, {"time_spent_ms": 1}).status_code == 403
    assert Ranking.objects.get(pk=ranking.pk).time_spent_ms == 5


def test_deleting_anything_labels_hang_off_is_refused(campaign, labeller):
    ranking = _rank(labeller, campaign)
    task = ranking.task
    for row in (
        Campaign.objects.get(pk=campaign.pk),
        Prompt.objects.get(pk=task.prompt_id),
        Completion.objects.get(pk=ranking.items.first().completion_id),
        task,
        ranking.assignment,
    ):
        with pytest.raises(ProtectedError):
            row.delete()
    assert Ranking.objects.filter(pk=ranking.pk).exists()


def test_check_counts_reports_then_repairs_counts_and_orphaned_assignments(
    campaign, labeller, other_labeller, capsys
):
    first = _rank(labeller, campaign)
    second = _rank(other_labeller, campaign)
    Task.objects.filter(pk=first.task_id).update(active_count=0, submitted_count=0)
    orphan = second.assignment
    second.delete()  # outside the services: the assignment still says "submitted"
    with pytest.raises(SystemExit) as exit_:
        call_command("check_counts")
    assert exit_.value.code == 1
    report = capsys.readouterr().out
    assert f"task {first.task_id}: active_count 0 -> " in report
    assert f"assignment {orphan.pk} without ranking" in report
    call_command("check_counts", "--repair")
    assert "repaired" in capsys.readouterr().out
    orphan.refresh_from_db()
    assert orphan.status == Assignment.Status.EXPIRED
    for task in Task.objects.filter(campaign=campaign):
        assignments = task.assignments.all()
        assert task.submitted_count == sum(a.status == "submitted" for a in assignments)
        assert task.active_count == sum(a.status in ("submitted", "assigned") for a in assignments)
    call_command("check_counts")
    assert "every count agrees" in capsys.readouterr().out
    # the labeller whose ranking was lost gets the task back and ranks it again
    again = services.task_assign_next(labeller=other_labeller, campaign=campaign)
    assert again.pk == orphan.pk


def test_a_removed_labeller_cannot_submit_on_the_lease_they_held(campaign, labeller, admin_user):
    lease = services.task_assign_next(labeller=labeller, campaign=campaign)
    services.campaign_remove_member(campaign=campaign, user=labeller)
    lease.refresh_from_db()
    assert lease.status == Assignment.Status.EXPIRED
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(lease.display_order)]
    response = client_for(labeller).post(
        f"/api/assignments/{lease.pk}/ranking/",
        {"items": items, "time_spent_ms": 10},
        format="json",
    )
    assert response.status_code == 403 and response.json()["code"] == "not_a_member"
    assert not Ranking.objects.filter(assignment=lease).exists()
    assert Task.objects.get(pk=lease.task_id).active_count == 0


def test_a_deactivated_account_cannot_be_added_to_a_campaign(campaign, admin_user):
    gone = UserFactory(username="gone", is_active=False)
    response = client_for(admin_user).post(
        f"/api/campaigns/{campaign.pk}/members/", {"usernames": ["gone"]}, format="json"
    )
    assert response.status_code == 400 and "usernames" in response.json()["errors"]
    assert not campaign.memberships.filter(user=gone).exists()
