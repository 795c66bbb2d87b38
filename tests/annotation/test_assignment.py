"""Handing out tasks: overlap, breadth first, same task back, skip, lease expiry."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.test import override_settings
from django.utils import timezone

from annotation import services, sql
from annotation.errors import Busy, Conflict, PermissionDenied
from annotation.models import Assignment, Campaign, Task
from annotation.services import assignment as assignment_module
from annotation.tasks import expire_leases
from tests.factories import CampaignFactory, UserFactory, make_tasks, task_completion_ids

pytestmark = pytest.mark.django_db


def strict_items(assignment):
    return [{"completion": c, "rank": i + 1} for i, c in enumerate(assignment.display_order)]


def members(campaign, count):
    users = [UserFactory() for _ in range(count)]
    services.campaign_add_members(campaign=campaign, users=users)
    return users


def test_next_task_via_api_shows_shuffled_completions_without_sources(campaign, labeller_client):
    response = labeller_client.post(f"/api/campaigns/{campaign.pk}/next-task/")
    assert response.status_code == 200
    body = response.json()
    assignment = Assignment.objects.get(pk=body["id"])
    assert [c["id"] for c in body["completions"]] == assignment.display_order
    assert sorted(assignment.display_order) == sorted(task_completion_ids(assignment.task))
    assert {"id", "text", "source"} <= set(body["completions"][0])
    assert {c["source"] for c in body["completions"]} == {""}  # provenance off: no source
    assert body["prompt"]["text"] == assignment.task.prompt.text
    assert body["lease_expires_at"] and body["status"] == "assigned"


def test_asking_again_while_holding_a_lease_gives_the_same_task(campaign, labeller):
    first = services.task_assign_next(labeller=labeller, campaign=campaign)
    again = services.task_assign_next(labeller=labeller, campaign=campaign)
    assert again.pk == first.pk
    assert Task.objects.get(pk=first.task_id).active_count == 1


def test_display_order_is_shuffled_per_assignment():
    campaign = CampaignFactory(completions_per_task=9, overlap=40)
    make_tasks(campaign, 1)
    orders = set()
    for user in members(campaign, 12):
        orders.add(tuple(services.task_assign_next(labeller=user, campaign=campaign).display_order))
    assert len(orders) > 1


def test_breadth_first_fills_started_tasks_before_new_ones():
    campaign = CampaignFactory(overlap=3)
    tasks = make_tasks(campaign, 4)
    users = members(campaign, 3)
    picked = [services.task_assign_next(labeller=u, campaign=campaign).task_id for u in users]
    assert picked == [tasks[0].pk] * 3


def test_overlap_is_never_exceeded_and_nothing_left_gives_none():
    campaign = CampaignFactory(overlap=2)
    make_tasks(campaign, 2)
    users = members(campaign, 5)
    handed = [services.task_assign_next(labeller=u, campaign=campaign) for u in users]
    assert [a is None for a in handed] == [False, False, False, False, True]
    assert all(t.active_count <= 2 for t in Task.objects.all())


def test_labeller_never_gets_a_task_they_ranked_or_skipped(campaign, labeller):
    first = services.task_assign_next(labeller=labeller, campaign=campaign)
    services.ranking_submit(
        labeller=labeller, assignment=first, items=strict_items(first), time_spent_ms=1000
    )
    second = services.task_assign_next(labeller=labeller, campaign=campaign)
    services.assignment_skip(labeller=labeller, assignment=second, reason="I cannot read code")
    seen = {first.task_id, second.task_id}
    for _ in range(3):
        nxt = services.task_assign_next(labeller=labeller, campaign=campaign)
        assert nxt.task_id not in seen
        seen.add(nxt.task_id)
        services.assignment_skip(labeller=labeller, assignment=nxt, reason="tired")
    assert services.task_assign_next(labeller=labeller, campaign=campaign) is None


def test_skip_frees_the_slot_and_records_the_reason(campaign, labeller):
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)
    services.assignment_skip(labeller=labeller, assignment=assignment, reason=" offensive ")
    assignment.refresh_from_db()
    assert assignment.status == "skipped" and assignment.skip_reason == "offensive"
    assert Task.objects.get(pk=assignment.task_id).active_count == 0


def test_skip_api_needs_a_reason(campaign, labeller_client):
    assignment = labeller_client.post(f"/api/campaigns/{campaign.pk}/next-task/").json()
    response = labeller_client.post(f"/api/assignments/{assignment['id']}/skip/", {"reason": ""})
    assert response.status_code == 400
    assert "reason" in response.json()["errors"]


def test_guidelines_must_be_acknowledged_before_tasks(campaign, labeller, admin_user):
    services.guideline_publish(campaign=campaign, text="v2: new rules", created_by=admin_user)
    with pytest.raises(PermissionDenied) as info:
        services.task_assign_next(labeller=labeller, campaign=campaign)
    assert info.value.code == "guidelines_not_acknowledged"
    assert info.value.extra == {"guideline_version": 2}


def test_acknowledge_api_accepts_only_the_current_version(campaign, labeller_client, admin_user):
    services.guideline_publish(campaign=campaign, text="v2", created_by=admin_user)
    url = f"/api/campaigns/{campaign.pk}/guidelines/acknowledge/"
    stale = labeller_client.post(url, {"version": 1})
    assert stale.status_code == 400 and stale.json()["errors"] == {
        "version": ["version 1 is not the current guidelines (version 2 is)"]
    }
    assert labeller_client.post(url, {"version": 2}).status_code == 200
    assert labeller_client.post(f"/api/campaigns/{campaign.pk}/next-task/").status_code == 200


def test_ranking_records_the_guideline_version_acknowledged(campaign, labeller):
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)
    result = services.ranking_submit(
        labeller=labeller, assignment=assignment, items=strict_items(assignment), time_spent_ms=5
    )
    assert result.ranking.guideline.version == 1


def test_paused_campaign_hands_out_nothing_but_accepts_held_work(campaign, labeller):
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)
    services.campaign_set_status(campaign=campaign, status=Campaign.Status.PAUSED)
    campaign.refresh_from_db()
    with pytest.raises(Conflict):
        services.task_assign_next(labeller=labeller, campaign=campaign)
    result = services.ranking_submit(
        labeller=labeller, assignment=assignment, items=strict_items(assignment), time_spent_ms=5
    )
    assert result.created


def test_illegal_status_transition_is_refused(campaign):
    services.campaign_set_status(campaign=campaign, status="closed")
    with pytest.raises(Conflict) as info:
        services.campaign_set_status(campaign=campaign, status="active")
    assert info.value.code == "illegal_transition"


@override_settings(ASSIGNMENT_LEASE_SECONDS=60)
def test_expired_leases_are_swept_back_to_the_pool(campaign, labeller, other_labeller):
    campaign.overlap = 1
    campaign.save()
    Task.objects.update(target_overlap=1)
    held = services.task_assign_next(labeller=labeller, campaign=campaign)
    Assignment.objects.filter(pk=held.pk).update(
        assigned_at=timezone.now() - timedelta(minutes=5),
        lease_expires_at=timezone.now() - timedelta(minutes=4),
    )
    assert expire_leases.apply().get() == 1
    held.refresh_from_db()
    assert held.status == "expired" and Task.objects.get(pk=held.task_id).active_count == 0
    other = services.task_assign_next(labeller=other_labeller, campaign=campaign)
    assert other.task_id == held.task_id


def test_two_leases_of_one_task_expiring_in_one_sweep_free_both_slots(campaign):
    """The sweep returns every expired lease of a task to it, not one per task: two labellers
    on one task (overlap 2) who both let their leases lapse leave it with no open lease."""
    campaign.overlap = 2
    campaign.save()
    Task.objects.update(target_overlap=2)
    first, second, third, fourth = members(campaign, 4)
    held = [services.task_assign_next(labeller=user, campaign=campaign) for user in (first, second)]
    assert held[0].task_id == held[1].task_id  # breadth first: the started task
    task_id = held[0].task_id
    for assignment in held:
        _expire(assignment)
    assert services.assignments_expire() == 2
    assert Task.objects.get(pk=task_id).active_count == 0
    again = [
        services.task_assign_next(labeller=user, campaign=campaign) for user in (third, fourth)
    ]
    assert [a.task_id for a in again] == [task_id, task_id]  # both slots were given back


def _expire(assignment):
    Assignment.objects.filter(pk=assignment.pk).update(
        assigned_at=timezone.now() - timedelta(hours=2),
        lease_expires_at=timezone.now() - timedelta(hours=1),
    )


def test_own_expired_lease_is_renewed_on_next_request(campaign, labeller):
    held = services.task_assign_next(labeller=labeller, campaign=campaign)
    _expire(held)
    again = services.task_assign_next(labeller=labeller, campaign=campaign)
    assert again.status == "assigned" and again.lease_expires_at > timezone.now()
    assert Task.objects.get(pk=held.task_id).active_count == 1


def test_late_submit_is_accepted_while_the_slot_is_free(campaign, labeller):
    held = services.task_assign_next(labeller=labeller, campaign=campaign)
    _expire(held)
    services.assignments_expire()
    result = services.ranking_submit(
        labeller=labeller, assignment=held, items=strict_items(held), time_spent_ms=5
    )
    assert result.created
    task = Task.objects.get(pk=held.task_id)
    assert (task.active_count, task.submitted_count) == (1, 1)


def test_late_submit_is_refused_when_the_slot_was_given_away(campaign, labeller):
    campaign.overlap = 1
    campaign.save()
    Task.objects.update(target_overlap=1)
    held = services.task_assign_next(labeller=labeller, campaign=campaign)
    _expire(held)
    services.assignments_expire()
    newcomer = UserFactory()
    services.campaign_add_members(campaign=campaign, users=[newcomer])
    services.guideline_acknowledge(user=newcomer, guideline=campaign.guidelines.get())
    taken = services.task_assign_next(labeller=newcomer, campaign=campaign)
    assert taken.task_id == held.task_id
    with pytest.raises(Conflict) as info:
        services.ranking_submit(
            labeller=labeller, assignment=held, items=strict_items(held), time_spent_ms=5
        )
    assert info.value.code == "lease_expired"
    assert Task.objects.get(pk=held.task_id).active_count == 1


def test_next_task_returns_204_when_nothing_is_left(labeller_client, labeller, admin_user):
    campaign = CampaignFactory()
    services.campaign_add_members(campaign=campaign, users=[labeller])
    assert labeller_client.post(f"/api/campaigns/{campaign.pk}/next-task/").status_code == 204


def test_progress_for_labeller_and_admin(campaign, labeller, labeller_client, admin_client):
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)
    services.ranking_submit(
        labeller=labeller, assignment=assignment, items=strict_items(assignment), time_spent_ms=5
    )
    mine = labeller_client.get(f"/api/campaigns/{campaign.pk}/progress/").json()
    assert mine["labellers"] == [
        {
            "user_id": labeller.pk,
            "username": "alice",
            "submitted": 1,
            "skipped": 0,
            "open": 0,
            "remaining": 4,
            "submitted_today": 1,
        }
    ]
    assert "campaign" not in mine
    full = admin_client.get(f"/api/campaigns/{campaign.pk}/progress/").json()
    assert full["campaign"]["tasks"] == 5 and full["campaign"]["rankings"] == 1
    assert full["campaign"]["target_rankings"] == 10
    assert {row["username"] for row in full["labellers"]} == {"alice", "bob"}


class Boom(Exception):
    pass


@pytest.mark.django_db(transaction=True)
def test_handing_out_a_task_is_one_transaction(monkeypatch):
    # the last write fails: the new lease must not stay behind without its task's count
    campaign = CampaignFactory(overlap=2)
    make_tasks(campaign, 1)
    (user,) = members(campaign, 1)

    def boom(*args, **kwargs):
        raise Boom

    monkeypatch.setattr(sql, "update_row", boom)
    with pytest.raises(Boom):
        services.task_assign_next(labeller=user, campaign=campaign)
    assert not Assignment.objects.exists()
    assert Task.objects.get().active_count == 0


def _hold_the_only_task(task_id: int, held: threading.Event, seconds: float) -> threading.Thread:
    """A thread that locks the task row (as a request assigning it would) for ``seconds``."""

    def hold():
        try:
            with transaction.atomic():
                list(Task.objects.select_for_update().filter(pk=task_id))
                held.set()
                time.sleep(seconds)
        finally:
            connections.close_all()

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(10)
    return thread


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="SKIP LOCKED needs PostgreSQL")
def test_when_every_open_task_is_being_assigned_the_request_waits_its_patience_then_is_busy():
    campaign = CampaignFactory(overlap=2)
    (task,) = make_tasks(campaign, 1)
    (user,) = members(campaign, 1)

    def first_free(patience: float):
        with transaction.atomic():
            return assignment_module._lock_first_free(
                assignment_module._real_open_tasks,
                campaign_id=campaign.pk,
                labeller_id=user.pk,
                patience_seconds=patience,
            )

    holder = _hold_the_only_task(task.pk, threading.Event(), seconds=3.0)
    started = time.monotonic()
    try:
        with pytest.raises(Busy):
            first_free(patience=0.3)  # the holder outlasts the patience
        assert 0.3 <= time.monotonic() - started < 2.5
    finally:
        holder.join(10)
    holder = _hold_the_only_task(task.pk, threading.Event(), seconds=0.3)
    try:
        assert first_free(patience=5.0).pk == task.pk  # the holder let go within the patience
    finally:
        holder.join(10)
