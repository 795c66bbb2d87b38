"""annotation.compiled: statements written once give what the ORM gives, on either database."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import OperationalError, connection, connections, transaction
from django.db.models import Count
from rest_framework.authtoken.models import Token

from annotation import services
from annotation.compiled import CompiledQuery, insert_rows, update_row
from annotation.models import Assignment, Membership, Ranking, RankingItem, Task
from tests.annotation.test_concurrency import _run_all
from tests.factories import CampaignFactory, UserFactory, make_tasks

pytestmark = pytest.mark.django_db

MEMBER = CompiledQuery(
    lambda campaign_id, user_id: Membership.objects.select_related("campaign").filter(
        campaign_id=campaign_id, user_id=user_id
    ),
    campaign_id=int,
    user_id=int,
)
MEMBER_LOCK = CompiledQuery(
    lambda campaign_id, user_id: Membership.objects.select_for_update().filter(
        campaign_id=campaign_id, user_id=user_id
    ),
    campaign_id=int,
    user_id=int,
)


def _fields(obj) -> dict:
    return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields}


def test_binds_each_call_its_own_values_and_matches_the_orm(django_assert_num_queries):
    campaigns = [CampaignFactory(), CampaignFactory()]
    users = [UserFactory(), UserFactory()]
    for campaign in campaigns:
        services.campaign_add_members(campaign=campaign, users=users)
    for campaign in campaigns:
        for user in users:
            expected = Membership.objects.get(campaign=campaign, user=user)
            with django_assert_num_queries(1):  # the campaign came in the same statement
                got = MEMBER.first(campaign_id=campaign.pk, user_id=user.pk)
                assert got.campaign.name == campaign.name
            assert _fields(got) == _fields(expected)
            assert _fields(got.campaign) == _fields(expected.campaign)
            assert not got._state.adding  # a stored row, as the ORM returns it


def test_no_row_is_none():
    assert MEMBER.first(campaign_id=10**6, user_id=10**6) is None


def test_converts_values_and_sets_annotations_and_nested_relations(django_assert_num_queries):
    campaign = CampaignFactory()
    user = UserFactory()
    services.campaign_add_members(campaign=campaign, users=[user])
    make_tasks(campaign, 2)
    assigned = services.task_assign_next(labeller=user, campaign=campaign)
    query = CompiledQuery(
        lambda labeller_id: (
            Assignment.objects.select_related("task__prompt")
            .annotate(rankings=Count("task__rankings"))
            .filter(labeller_id=labeller_id)
        ),
        labeller_id=int,
    )
    with django_assert_num_queries(1):
        got = query.first(labeller_id=user.pk)
        assert got.task.prompt.text == assigned.task.prompt.text
    assert got.display_order == assigned.display_order  # JSON: a list again, not text
    assert isinstance(got.display_order, list)
    assert got.assigned_at == assigned.assigned_at  # an aware datetime
    assert got.rankings == 0


def test_string_parameters():
    user = UserFactory()
    token = Token.objects.create(user=user)
    query = CompiledQuery(lambda key: Token.objects.select_related("user").filter(key=key), key=str)
    assert query.first(key=token.key).user == user
    assert query.first(key="not-a-token") is None


def test_a_parameter_the_sql_does_not_use_is_refused():
    unused = CompiledQuery(lambda campaign_id: Task.objects.all(), campaign_id=int)
    with pytest.raises(ValueError, match="campaign_id"):
        unused.first(campaign_id=1)


def test_only_int_and_str_parameters():
    query = CompiledQuery(lambda when: Task.objects.filter(created_at__lt=when), when=float)
    with pytest.raises(TypeError, match="int or str"):
        query.first(when=1.0)


@pytest.mark.django_db(transaction=True)
def test_a_lock_outside_a_transaction_is_refused():
    campaign, user = CampaignFactory(), UserFactory()
    services.campaign_add_members(campaign=campaign, users=[user])
    with transaction.atomic():  # compiled here, inside a transaction
        assert MEMBER_LOCK.first(campaign_id=campaign.pk, user_id=user.pk) is not None
    with pytest.raises(RuntimeError, match="inside a transaction"):
        MEMBER_LOCK.first(campaign_id=campaign.pk, user_id=user.pk)


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks need PostgreSQL")
def test_the_lock_is_taken():
    campaign, user = CampaignFactory(), UserFactory()
    services.campaign_add_members(campaign=campaign, users=[user])
    held, release = threading.Event(), threading.Event()

    def hold():
        try:
            with transaction.atomic():
                MEMBER_LOCK.first(campaign_id=campaign.pk, user_id=user.pk)
                held.set()
                release.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    try:
        with transaction.atomic():
            membership = Membership.objects.get(campaign=campaign, user=user)
            locked = Membership.objects.select_for_update(nowait=True).filter(pk=membership.pk)
            with pytest.raises(OperationalError, match="could not obtain lock"):
                list(locked)
    finally:
        release.set()
        holder.join(10)


@pytest.mark.django_db(transaction=True)
def test_every_thread_compiles_for_its_own_connection():
    campaign = CampaignFactory()
    users = [UserFactory() for _ in range(4)]
    services.campaign_add_members(campaign=campaign, users=users)
    query = CompiledQuery(
        lambda user_id: Membership.objects.select_related("user").filter(user_id=user_id),
        user_id=int,
    )
    found: dict[int, str] = {}

    def look(user):  # all at once, each thread on its own connection
        found[user.pk] = query.first(user_id=user.pk).user.username

    _run_all(look, users)
    assert found == {u.pk: u.username for u in users}


def test_update_row_prepares_values_as_the_orm_does():
    campaign, user = CampaignFactory(), UserFactory()
    services.campaign_add_members(campaign=campaign, users=[user])
    make_tasks(campaign, 1)
    assignment = services.task_assign_next(labeller=user, campaign=campaign)
    later = assignment.assigned_at + timedelta(minutes=3)
    update_row(Assignment, assignment.pk, status="submitted", finished_at=later)
    update_row(Assignment, assignment.pk, display_order=[3, 1, 2])  # JSON
    stored = Assignment.objects.get(pk=assignment.pk)
    assert (stored.status, stored.finished_at, stored.display_order) == (
        "submitted",
        later,
        [3, 1, 2],
    )
    assert stored.task_id == assignment.task_id  # other columns untouched
    update_row(Assignment, assignment.pk, finished_at=None)
    assert Assignment.objects.get(pk=assignment.pk).finished_at is None


def test_insert_rows_writes_every_row_with_foreign_keys_and_nulls():
    campaign, user = CampaignFactory(), UserFactory()
    services.campaign_add_members(campaign=campaign, users=[user])
    make_tasks(campaign, 1)
    assignment = services.task_assign_next(labeller=user, campaign=campaign)
    ranking = Ranking.objects.create(
        assignment=assignment,
        task_id=assignment.task_id,
        campaign=campaign,
        labeller=user,
        time_spent_ms=1,
    )
    first, *others = assignment.display_order
    rows = [(ranking.pk, first, None, True)] + [
        (ranking.pk, c, i + 1, False) for i, c in enumerate(others)
    ]
    insert_rows(RankingItem, ("ranking", "completion", "rank", "failed"), rows)
    insert_rows(RankingItem, ("ranking", "completion", "rank", "failed"), [])  # nothing
    stored = set(ranking.items.values_list("ranking_id", "completion_id", "rank", "failed"))
    assert stored == set(rows)


def test_all_returns_every_row_in_order_and_first_only_one(django_assert_num_queries):
    campaign = CampaignFactory()
    users = [UserFactory() for _ in range(3)]
    services.campaign_add_members(campaign=campaign, users=users)
    query = CompiledQuery(
        lambda campaign_id: (
            Membership.objects.filter(campaign_id=campaign_id)
            .select_related("user")
            .order_by("-user_id")
        ),
        campaign_id=int,
    )
    with django_assert_num_queries(1):
        names = [m.user.username for m in query.all(campaign_id=campaign.pk)]
    assert names == [u.username for u in sorted(users, key=lambda u: -u.pk)]
    assert query.first(campaign_id=campaign.pk).user_id == max(u.pk for u in users)
    assert query.all(campaign_id=10**6) == []
