"""The database itself refuses broken states, not only the services."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation.models import Assignment, Campaign, Ranking, RankingItem, Task
from tests.factories import CampaignFactory, UserFactory, make_tasks, task_completion_ids

pytestmark = pytest.mark.django_db


def _ranking(task, user):
    now = timezone.now()
    assignment = Assignment.objects.create(
        task=task,
        campaign=task.campaign,
        labeller=user,
        display_order=task_completion_ids(task),
        assigned_at=now,
        lease_expires_at=now + timedelta(minutes=5),
        status=Assignment.Status.SUBMITTED,
    )
    return Ranking.objects.create(
        assignment=assignment, task=task, campaign=task.campaign, labeller=user, time_spent_ms=1
    )


def test_campaign_refuses_completions_per_task_outside_2_to_9():
    for bad in (1, 10):
        with pytest.raises(IntegrityError), transaction.atomic():
            CampaignFactory(completions_per_task=bad)


def test_campaign_refuses_zero_overlap_and_unknown_status():
    with pytest.raises(IntegrityError), transaction.atomic():
        CampaignFactory(overlap=0)
    with pytest.raises(IntegrityError), transaction.atomic():
        CampaignFactory(status="deleted")


def test_task_refuses_more_active_assignments_than_overlap():
    task = make_tasks(CampaignFactory(overlap=2), 1)[0]
    with pytest.raises(IntegrityError), transaction.atomic():
        Task.objects.filter(pk=task.pk).update(active_count=3)


def test_task_refuses_more_submitted_than_active():
    task = make_tasks(CampaignFactory(overlap=2), 1)[0]
    with pytest.raises(IntegrityError), transaction.atomic():
        Task.objects.filter(pk=task.pk).update(submitted_count=1)


def test_one_ranking_per_task_and_labeller():
    task = make_tasks(CampaignFactory(), 1)[0]
    user = UserFactory()
    first = _ranking(task, user)
    with pytest.raises(IntegrityError), transaction.atomic():
        Ranking.objects.create(
            assignment=first.assignment,
            task=task,
            campaign=task.campaign,
            labeller=user,
            time_spent_ms=1,
        )


def test_one_assignment_per_task_and_labeller():
    task = make_tasks(CampaignFactory(), 1)[0]
    user = UserFactory()
    _ranking(task, user)
    now = timezone.now()
    with pytest.raises(IntegrityError), transaction.atomic():
        Assignment.objects.create(
            task=task,
            campaign=task.campaign,
            labeller=user,
            display_order=[],
            assigned_at=now,
            lease_expires_at=now + timedelta(minutes=1),
        )


def test_at_most_one_open_lease_per_labeller_and_campaign():
    campaign = CampaignFactory()
    first, second = make_tasks(campaign, 2)
    user = UserFactory()
    now = timezone.now()
    Assignment.objects.create(
        task=first,
        campaign=campaign,
        labeller=user,
        display_order=[],
        assigned_at=now,
        lease_expires_at=now + timedelta(minutes=1),
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        Assignment.objects.create(
            task=second,
            campaign=campaign,
            labeller=user,
            display_order=[],
            assigned_at=now,
            lease_expires_at=now + timedelta(minutes=1),
        )


def test_ranking_item_is_a_rank_in_1_to_9_or_fail():
    task = make_tasks(CampaignFactory(), 1)[0]
    ranking = _ranking(task, UserFactory())
    completion = task_completion_ids(task)[0]
    for bad in (
        {"rank": 0, "failed": False},
        {"rank": 10, "failed": False},
        {"rank": None, "failed": False},
        {"rank": 2, "failed": True},
    ):
        with pytest.raises(IntegrityError), transaction.atomic():
            RankingItem.objects.create(ranking=ranking, completion_id=completion, **bad)
    RankingItem.objects.create(ranking=ranking, completion_id=completion, rank=None, failed=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        RankingItem.objects.create(ranking=ranking, completion_id=completion, rank=1)


def test_empty_prompt_refused_and_empty_completion_stored():
    """An empty completion is real data where the campaign allows it (the import refuses it
    otherwise: allow_empty_completions); an empty prompt never is."""
    campaign = CampaignFactory()
    from annotation.models import Completion, Prompt

    with pytest.raises(IntegrityError), transaction.atomic():
        Prompt.objects.create(campaign=campaign, text="")
    prompt = Prompt.objects.create(campaign=campaign, text="hi")
    assert Completion.objects.create(prompt=prompt, text="", source="x").text == ""


@pytest.mark.parametrize("status", ["draft", "active", "paused", "closed"])
def test_campaign_status_constraint_takes_every_choice(status):
    campaign = CampaignFactory()
    Campaign.objects.filter(pk=campaign.pk).update(status=status)  # bypasses choices: the
    assert Campaign.objects.get(pk=campaign.pk).status == status  # database itself checks
    assert set(Campaign.Status.values) == {"draft", "active", "paused", "closed"}


def test_campaign_status_constraint_refuses_anything_else():
    campaign = CampaignFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        Campaign.objects.filter(pk=campaign.pk).update(status="archived")
    assert Campaign.objects.get(pk=campaign.pk).status == campaign.status
