"""Adaptive overlap: tasks start at k_min labellers and are reopened, one labeller at a time up
to k_max, only while their labellers disagree; never beyond k_max, even under concurrency."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest
from django.db import connection
from django.db.models import Count, F

from annotation import agreement_figures, services
from annotation.models import Ranking, Task
from tests.conftest import client_for
from tests.factories import CampaignFactory, UserFactory, make_tasks
from tests.helpers.threads import run_all

K_MIN, K_MAX = 2, 4


def adaptive_campaign(*, tasks: int, users: int, **settings):
    campaign = CampaignFactory(overlap=K_MAX, overlap_min=K_MIN, completions_per_task=4, **settings)
    make_tasks(campaign, tasks)
    labellers = [UserFactory() for _ in range(users)]
    services.campaign_add_members(campaign=campaign, users=labellers)
    return campaign, labellers


def rank(user, campaign, *, reverse: bool = False) -> Task | None:
    """Hand the user a task and rank it by completion id (ascending, or reversed)."""
    assignment = services.task_assign_next(labeller=user, campaign=campaign)
    if assignment is None:
        return None
    ids = sorted(assignment.display_order, reverse=reverse)
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(ids)]
    services.ranking_submit(labeller=user, assignment=assignment, items=items, time_spent_ms=5)
    return Task.objects.get(pk=assignment.task_id)


@pytest.mark.django_db
def test_new_tasks_start_at_k_min():
    campaign, _ = adaptive_campaign(tasks=3, users=0)
    assert set(campaign.tasks.values_list("target_overlap", flat=True)) == {K_MIN}
    assert campaign.adaptive_overlap


@pytest.mark.django_db
def test_agreeing_labellers_stop_at_k_min():
    campaign, users = adaptive_campaign(tasks=3, users=6)
    for user in users:
        while rank(user, campaign) is not None:
            pass
    for task in Task.objects.filter(campaign=campaign):
        assert task.target_overlap == task.submitted_count == K_MIN
    assert Ranking.objects.filter(campaign=campaign).count() == 3 * K_MIN


@pytest.mark.django_db
def test_disagreement_reopens_one_labeller_at_a_time_up_to_k_max():
    campaign, users = adaptive_campaign(tasks=1, users=6)
    task = rank(users[0], campaign)
    assert task.target_overlap == K_MIN  # one ranking: nothing to compare yet
    task = rank(users[1], campaign, reverse=True)  # agreement 0 < 0.5: reopened
    assert (task.submitted_count, task.target_overlap) == (2, 3)
    # Third ranking agrees with the first: pairs agree 1 of 3 labeller pairs -> 1/3 < 0.5.
    task = rank(users[2], campaign)
    assert agreement_figures.task_strict_agreement([{1: 1, 2: 2}, {1: 2, 2: 1}, {1: 1, 2: 2}]) == (
        1 / 3,
        3,
    )
    assert (task.submitted_count, task.target_overlap) == (3, 4)
    task = rank(users[3], campaign)
    assert (task.submitted_count, task.target_overlap) == (4, K_MAX)  # never beyond k_max
    assert rank(users[4], campaign) is None


@pytest.mark.django_db
def test_a_majority_that_agrees_closes_the_task():
    campaign, users = adaptive_campaign(tasks=1, users=5, reopen_below=0.4)
    rank(users[0], campaign)
    task = rank(users[1], campaign, reverse=True)
    assert task.target_overlap == 3
    task = rank(users[2], campaign)  # agreement 1/3 < 0.4: reopened once more
    assert task.target_overlap == 4
    task = rank(users[3], campaign)  # 3 of 6 labeller pairs agree: 0.5 >= 0.4, closed at 4
    assert task.target_overlap == 4 and task.submitted_count == 4


@pytest.mark.django_db
def test_agreement_exactly_at_the_threshold_does_not_reopen():
    """Reopened only *below* ``reopen_below``: with N = 4, two labellers whose orders share
    exactly 3 of the 6 pairs agree 0.5, the default threshold, and the task closes at k_min."""
    campaign, users = adaptive_campaign(tasks=1, users=3)
    assert campaign.reopen_below == 0.5
    rank(users[0], campaign)  # a < b < c < d
    second = services.task_assign_next(labeller=users[1], campaign=campaign)
    a, b, c, d = sorted(second.display_order)
    order = [b, d, a, c]  # inverts (a, b), (a, d), (c, d): 3 of 6 pairs agree
    services.ranking_submit(
        labeller=users[1],
        assignment=second,
        items=[{"completion": x, "rank": i + 1} for i, x in enumerate(order)],
        time_spent_ms=5,
    )
    first = {a: 1, b: 2, c: 3, d: 4}
    second_labels = {x: i + 1 for i, x in enumerate(order)}
    assert agreement_figures.task_strict_agreement([first, second_labels]) == (
        0.5,
        6,
    )  # (value, pairs)
    task = Task.objects.get(pk=second.task_id)
    assert (task.submitted_count, task.target_overlap) == (K_MIN, K_MIN)
    assert services.task_assign_next(labeller=users[2], campaign=campaign) is None


@pytest.mark.django_db
def test_undefined_agreement_does_not_reopen():
    campaign, users = adaptive_campaign(tasks=1, users=3)
    first = services.task_assign_next(labeller=users[0], campaign=campaign)
    ids = sorted(first.display_order)
    # Everything tied: no completion pair that both labellers order strictly.
    services.ranking_submit(
        labeller=users[0],
        assignment=first,
        items=[{"completion": c, "rank": 1} for c in ids],
        time_spent_ms=5,
    )
    task = rank(users[1], campaign, reverse=True)
    assert agreement_figures.task_strict_agreement([{1: 1, 2: 1}, {1: 2, 2: 1}]) == (None, 0)
    assert task.target_overlap == K_MIN


@pytest.mark.django_db
def test_fixed_overlap_campaigns_never_reopen():
    campaign = CampaignFactory(overlap=2, completions_per_task=4)
    make_tasks(campaign, 1)
    users = [UserFactory() for _ in range(3)]
    services.campaign_add_members(campaign=campaign, users=users)
    rank(users[0], campaign)
    task = rank(users[1], campaign, reverse=True)
    assert task.target_overlap == 2 and rank(users[2], campaign) is None


@pytest.mark.django_db
def test_changing_the_overlap_settings_moves_targets_within_bounds():
    campaign, users = adaptive_campaign(tasks=3, users=4)
    rank(users[0], campaign)
    rank(users[1], campaign, reverse=True)  # task 1 reopened to 3
    first = campaign.tasks.order_by("id").first()
    assert first.target_overlap == 3
    services.campaign_update(campaign=campaign, overlap=5)  # k_max up: targets keep their place
    targets = dict(campaign.tasks.values_list("pk", "target_overlap"))
    assert targets[first.pk] == 3 and sorted(targets.values()) == [2, 2, 3]
    services.campaign_update(campaign=campaign, overlap_min=3)  # k_min up: no task below it
    assert sorted(campaign.tasks.values_list("target_overlap", flat=True)) == [3, 3, 3]
    services.campaign_update(campaign=campaign, overlap_min=None, overlap=2)  # fixed overlap
    # Back to a fixed overlap of 2: never below the slots taken (task 1 has 2 rankings).
    assert sorted(campaign.tasks.values_list("target_overlap", flat=True)) == [2, 2, 2]
    assert not Task.objects.filter(active_count__gt=2).exists()


@pytest.mark.django_db
def test_overlap_min_above_the_overlap_is_refused_naming_the_field(admin_client):
    response = admin_client.post(
        "/api/campaigns/", {"name": "x", "overlap": 2, "overlap_min": 3}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["errors"] == {"overlap_min": ["must be between 1 and the overlap (2)"]}
    response = admin_client.post(
        "/api/campaigns/",
        {"name": "x", "overlap": 4, "overlap_min": 2, "reopen_below": 2},
        format="json",
    )
    assert response.status_code == 400 and "reopen_below" in response.json()["errors"]
    response = admin_client.post(
        "/api/campaigns/", {"name": "x", "overlap": 4, "overlap_min": 2}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["overlap_min"] == 2 and response.json()["reopen_below"] == 0.5


@pytest.mark.django_db
def test_labellers_cannot_change_the_overlap_settings(labeller_client, campaign):
    response = labeller_client.patch(
        f"/api/campaigns/{campaign.pk}/", {"overlap_min": 1}, format="json"
    )
    assert response.status_code == 403
    assert labeller_client.post("/api/campaigns/", {"name": "x"}, format="json").status_code == 403


def replay_targets(rankings: list[dict[int, int]], *, threshold: float = 0.5) -> int:
    """The target the rule gives after these rankings, submitted in this order."""
    target = K_MIN
    for count in range(1, len(rankings) + 1):
        if count >= target and target < K_MAX:
            value, _ = agreement_figures.task_strict_agreement(rankings[:count])
            if value is not None and value < threshold:
                target += 1
    return target


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="row-lock concurrency needs PostgreSQL"
)
def test_adaptive_overlap_never_exceeds_k_max_under_concurrency():
    campaign, users = adaptive_campaign(tasks=20, users=64)
    submitted: list[int] = []
    lock = threading.Lock()

    def waiting_for_others(user) -> bool:
        """Whether a task this labeller has not ranked is still short of its target: others
        hold its leases now, and a disagreeing ranking from them may yet reopen it."""
        return (
            Task.objects.filter(campaign=campaign, submitted_count__lt=F("target_overlap"))
            .exclude(rankings__labeller=user)
            .exists()
        )

    def label(user):
        client = client_for(user)
        reverse = int(user.username.removeprefix("labeller")) % 2 == 1
        ranked, deadline = 0, time.monotonic() + 60
        while ranked < 10:
            response = client.post(f"/api/campaigns/{campaign.pk}/next-task/")
            if response.status_code == 204:
                # 204 means nothing for this labeller *now*; leaving at once would strand a
                # task reopened a moment later with nobody left to rank it.
                if not waiting_for_others(user):
                    return
                assert time.monotonic() < deadline, "a task stayed short of its target"
                time.sleep(0.01)
                continue
            assert response.status_code == 200, response.content
            body = response.json()
            ids = sorted((c["id"] for c in body["completions"]), reverse=reverse)
            items = [{"completion": c, "rank": i + 1} for i, c in enumerate(ids)]
            result = client.post(
                f"/api/assignments/{body['id']}/ranking/",
                {"items": items, "time_spent_ms": 5},
                format="json",
            )
            assert result.status_code == 201, result.content
            ranked += 1
            with lock:
                submitted.append(result.json()["id"])

    run_all(label, users)
    assert len(submitted) == len(set(submitted)) == Ranking.objects.count()
    over = Task.objects.annotate(n=Count("rankings")).filter(n__gt=K_MAX)
    assert not over.exists()
    labels: dict[int, list[dict[int, int]]] = defaultdict(list)
    for ranking in Ranking.objects.prefetch_related("items").order_by("id"):
        labels[ranking.task_id].append({i.completion_id: i.rank for i in ranking.items.all()})
    reopened = 0
    for task in Task.objects.all():
        assert K_MIN <= task.target_overlap <= K_MAX
        assert task.submitted_count == task.active_count == task.target_overlap
        # The target is what the rule gives for the rankings in the order they were stored.
        assert task.target_overlap == replay_targets(labels[task.pk]), task.pk
        reopened += task.target_overlap > K_MIN
    assert reopened  # half the labellers rank in reverse: some tasks were reopened
    assert len(submitted) < 20 * K_MAX  # ... and some were not


def test_task_strict_agreement_by_hand():
    assert agreement_figures.task_strict_agreement([{1: 1, 2: 2, 3: 3}]) == (None, 0)
    assert agreement_figures.task_strict_agreement([{1: 1, 2: 2, 3: 3}, {1: 1, 2: 3, 3: 2}]) == (
        2 / 3,
        3,
    )
    # F is a bottom tier: c F below a and b for both; only (a, b) disagrees.
    value, n = agreement_figures.task_strict_agreement([{1: 1, 2: 2, 3: "F"}, {1: 2, 2: 1, 3: "F"}])
    assert (value, n) == (2 / 3, 3)
