"""annotation.sql: each hot-path statement gives what the queryset it stands for gives, on either
database (the suite runs on SQLite by default and on PostgreSQL in CI)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import OperationalError, connection, connections, models, transaction
from django.db.models import signals

from accounts.models import ApiToken
from accounts.services import hash_key, token_create
from annotation import services, sql
from annotation.models import Assignment, Campaign, Membership, Ranking, RankingItem, Task
from annotation.services import assignment as assignment_module
from tests.factories import CampaignFactory, UserFactory, make_tasks
from tests.helpers.threads import run_all

pytestmark = pytest.mark.django_db


def fields(obj) -> dict:
    return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields}


def same(got, expected) -> None:
    """The same stored row, with equal values of the same Python types."""
    assert type(got) is type(expected) and not got._state.adding
    assert got._state.db == expected._state.db
    for name, value in fields(expected).items():
        assert getattr(got, name) == value, name
        assert type(getattr(got, name)) is type(value), name


def labelled_campaign(*, tasks: int = 3, users: int = 2, **settings):
    campaign = CampaignFactory(**settings)
    make_tasks(campaign, tasks)
    people = [UserFactory() for _ in range(users)]
    services.campaign_add_members(campaign=campaign, users=people)
    return campaign, people


def test_membership_lock_matches_the_orm_with_its_campaign(django_assert_num_queries):
    campaigns = [CampaignFactory(gold_rate=0.25), CampaignFactory()]
    users = [UserFactory(), UserFactory()]
    for campaign in campaigns:
        services.campaign_add_members(campaign=campaign, users=users)
    for campaign in campaigns:
        for user in users:
            expected = Membership.objects.select_related("campaign").get(
                campaign=campaign, user=user
            )
            with transaction.atomic(), django_assert_num_queries(1):
                got = sql.MEMBERSHIP_LOCK.first(campaign_id=campaign.pk, user_id=user.pk)
                same(got.campaign, expected.campaign)  # read in the same statement
            same(got, expected)
    with transaction.atomic():
        assert sql.MEMBERSHIP_LOCK.first(campaign_id=10**6, user_id=10**6) is None


def test_held_lease_converts_json_datetimes_and_booleans_as_the_orm_does():
    campaign, (user, _) = labelled_campaign()
    assigned = services.task_assign_next(labeller=user, campaign=campaign)
    ids = list(assigned.task.task_completions.values_list("completion_id", flat=True))
    reference = {str(c): 1 for c in ids}
    Task.objects.filter(pk=assigned.task_id).update(is_gold=True, gold_ranking=reference)
    expected = Assignment.objects.select_related("task__prompt").get(pk=assigned.pk)
    with transaction.atomic():
        got = sql.HELD_LEASE_LOCK.first(campaign_id=campaign.pk, labeller_id=user.pk)
    same(got, expected)
    same(got.task, expected.task)
    same(got.task.prompt, expected.task.prompt)
    assert isinstance(got.display_order, list)  # JSON decoded
    assert got.assigned_at.tzinfo is not None  # aware, as the ORM gives it
    assert got.task.is_gold is True and got.task.gold_ranking == reference
    assert isinstance(got.task.prompt.metadata, dict)


@pytest.mark.parametrize("gold", [False, True])
def test_first_free_task_matches_the_open_task_queryset(gold):
    campaign, (first, second) = labelled_campaign(tasks=5)
    for task in campaign.tasks.order_by("pk")[:2]:
        ids = task.task_completions.values_list("completion_id", flat=True)
        services.task_mark_gold(task=task, items=[{"completion": c, "rank": 1} for c in ids])
    Task.objects.filter(campaign=campaign).update(priority=models.F("id") % 3)
    services.task_assign_next(labeller=second, campaign=campaign)  # started: comes first
    statement, candidates = (
        (sql.FIRST_FREE_GOLD, assignment_module._gold_open_tasks)
        if gold
        else (sql.FIRST_FREE_REAL, assignment_module._real_open_tasks)
    )
    for user in (first, second):
        mine = {"campaign_id": campaign.pk, "labeller_id": user.pk}
        expected = candidates(**mine).first()
        with transaction.atomic():
            got = statement.first(**mine)
        same(got, expected)
        same(got.prompt, expected.prompt)
        assert got.expired_assignment_id == expected.expired_assignment_id


def test_first_free_task_skips_ranked_and_skipped_tasks_and_reuses_an_expired_lease():
    campaign, (user, _) = labelled_campaign(tasks=3, overlap=2)
    mine = {"campaign_id": campaign.pk, "labeller_id": user.pk}
    first = services.task_assign_next(labeller=user, campaign=campaign)
    services.assignment_skip(labeller=user, assignment=first, reason="unreadable")
    second = services.task_assign_next(labeller=user, campaign=campaign)
    Assignment.objects.filter(pk=second.pk).update(status="expired")
    Task.objects.filter(pk=second.task_id).update(active_count=0)
    with transaction.atomic():
        got = sql.FIRST_FREE_REAL.first(**mine)
    expected = assignment_module._real_open_tasks(**mine).first()
    assert got.pk == expected.pk and got.pk != first.task_id
    assert got.expired_assignment_id == expected.expired_assignment_id
    on_expired = {t.pk: t.expired_assignment_id for t in assignment_module._real_open_tasks(**mine)}
    assert on_expired[second.task_id] == second.pk


def test_submit_lock_matches_the_orm_with_and_without_a_guideline():
    campaign, (user, other) = labelled_campaign()
    without = services.task_assign_next(labeller=user, campaign=campaign)
    services.guideline_publish(campaign=campaign, text="Be kind.", created_by=None)
    guideline = campaign.guidelines.get()
    services.guideline_acknowledge(user=other, guideline=guideline)
    with_guideline = services.task_assign_next(labeller=other, campaign=campaign)
    for assignment, labeller in ((without, user), (with_guideline, other)):
        expected = Assignment.objects.select_related("campaign", "guideline", "task").get(
            pk=assignment.pk
        )
        with transaction.atomic():
            got = sql.SUBMIT_LOCK.first(assignment_id=assignment.pk, labeller_id=labeller.pk)
        same(got, expected)
        same(got.task, expected.task)
        same(got.campaign, expected.campaign)
        if expected.guideline is None:
            assert got.guideline is None and got.guideline_id is None
        else:
            same(got.guideline, expected.guideline)
    with transaction.atomic():  # another labeller's assignment: not found
        assert sql.SUBMIT_LOCK.first(assignment_id=without.pk, labeller_id=other.pk) is None


def test_task_completions_in_the_tasks_order():
    campaign, _ = labelled_campaign(tasks=1)
    task = campaign.tasks.get()
    expected = [
        (tc.completion_id, tc.completion.text, tc.completion.source)
        for tc in task.task_completions.select_related("completion").order_by("position")
    ]
    assert sql.task_completions(task.pk) == expected
    assert sql.task_completions(10**6) == []


def test_token_with_its_user():
    user = UserFactory()
    token, key = token_create(user=user)
    expected = ApiToken.objects.select_related("user").get(key_hash=hash_key(key))
    got = sql.TOKEN.first(key_hash=hash_key(key))
    same(got, expected)
    same(got.user, expected.user)
    assert got.user.is_active is True and got.pk == token.pk
    assert sql.TOKEN.first(key_hash=key) is None  # by the hash only, never the key
    assert sql.TOKEN.first(key_hash=hash_key("not-a-token")) is None


@pytest.mark.django_db(transaction=True)
def test_a_lock_outside_a_transaction_is_refused():
    campaign, (user, _) = labelled_campaign(tasks=1)
    with pytest.raises(RuntimeError, match="inside a transaction"):
        sql.MEMBERSHIP_LOCK.first(campaign_id=campaign.pk, user_id=user.pk)
    assert sql.TOKEN.first(key_hash=hash_key("no-lock-no-transaction-needed")) is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks need PostgreSQL")
def test_the_locks_are_taken_and_skip_locked_passes_over_a_held_task():
    campaign, (user, other) = labelled_campaign(tasks=2)
    held, release = threading.Event(), threading.Event()
    found = {}

    def hold():
        try:
            with transaction.atomic():
                sql.MEMBERSHIP_LOCK.first(campaign_id=campaign.pk, user_id=user.pk)
                found["held"] = sql.FIRST_FREE_REAL.first(
                    campaign_id=campaign.pk, labeller_id=user.pk
                )
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
        with transaction.atomic():
            free = sql.FIRST_FREE_REAL.first(campaign_id=campaign.pk, labeller_id=other.pk)
        assert free is not None and free.pk != found["held"].pk  # passed over, not waited for
    finally:
        release.set()
        holder.join(10)


@pytest.mark.django_db(transaction=True)
def test_every_thread_runs_on_its_own_connection():
    users = [UserFactory() for _ in range(4)]
    tokens = {user.pk: hash_key(token_create(user=user)[1]) for user in users}
    found: dict[int, str] = {}

    def look(user):  # all at once, each thread on its own connection
        found[user.pk] = sql.TOKEN.first(key_hash=tokens[user.pk]).user.username

    run_all(look, users)
    assert found == {u.pk: u.username for u in users}


def test_a_field_type_the_module_does_not_convert_is_refused():
    with pytest.raises(TypeError, match="no conversion for DecimalField"):
        sql._converter(models.DecimalField(max_digits=4, decimal_places=2))


def test_the_sql_names_each_models_columns():
    text = sql.MEMBERSHIP_LOCK.sql()
    for field in Membership._meta.concrete_fields:
        assert f'm."{field.column}"' in text
    assert ("FOR UPDATE OF m" in text) == connection.features.has_select_for_update


def test_update_row_prepares_values_as_the_orm_does():
    campaign, (user, _) = labelled_campaign(tasks=1)
    assignment = services.task_assign_next(labeller=user, campaign=campaign)
    later = assignment.assigned_at + timedelta(minutes=3)
    sql.update_row(Assignment, assignment.pk, status="submitted", finished_at=later)
    sql.update_row(Assignment, assignment.pk, display_order=[3, 1, 2])  # JSON
    stored = Assignment.objects.get(pk=assignment.pk)
    assert (stored.status, stored.finished_at, stored.display_order) == (
        "submitted",
        later,
        [3, 1, 2],
    )
    assert stored.task_id == assignment.task_id  # other columns untouched
    sql.update_row(Assignment, assignment.pk, finished_at=None)
    assert Assignment.objects.get(pk=assignment.pk).finished_at is None


def test_insert_rows_writes_every_row_with_foreign_keys_and_nulls():
    campaign, (user, _) = labelled_campaign(tasks=1)
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
    sql.insert_rows(RankingItem, ("ranking", "completion", "rank", "failed"), rows)
    sql.insert_rows(RankingItem, ("ranking", "completion", "rank", "failed"), [])  # nothing
    stored = set(ranking.items.values_list("ranking_id", "completion_id", "rank", "failed"))
    assert stored == set(rows)


def test_plain_writes_refuse_a_model_whose_save_would_do_more(monkeypatch):
    monkeypatch.setattr(sql, "_WRITES", {})  # the check runs when a statement is first built
    campaign = CampaignFactory()
    with pytest.raises(TypeError, match=r"Campaign .* updated_at \(auto_now\)"):
        sql.update_row(Campaign, campaign.pk, name="renamed")
    assert Campaign.objects.get(pk=campaign.pk).name == campaign.name  # nothing written
    with pytest.raises(TypeError, match=r"created_at \(auto_now_add\)"):
        sql.check_plain_writes(Ranking, names=("assignment", "task", "campaign", "labeller"))
    sql.check_plain_writes(Ranking)  # an UPDATE leaves auto_now_add alone

    def receiver(**kwargs) -> None:
        """Connected only to be found."""

    task = make_tasks(campaign, 1)[0]
    for name, signal in (("pre_save", signals.pre_save), ("post_save", signals.post_save)):
        signal.connect(receiver, sender=Task, dispatch_uid="test_sql")
        try:
            with pytest.raises(TypeError, match=rf"Task .* {name} receivers"):
                sql.update_row(Task, task.pk, active_count=1)
            with pytest.raises(TypeError, match="receivers"):
                sql.insert_rows(Task, ("campaign", "prompt"), [(campaign.pk, task.prompt_id)])
        finally:
            signal.disconnect(sender=Task, dispatch_uid="test_sql")
    sql.update_row(Task, task.pk, active_count=1)  # and again once the receiver is gone
    assert Task.objects.get(pk=task.pk).active_count == 1


def test_every_model_the_hot_path_writes_plainly_has_nothing_save_would_add():
    """After a whole next + submit with every app's receivers connected, each model written by
    update_row or insert_rows still passes the check its first write made."""
    campaign, (user, _) = labelled_campaign(tasks=1)
    assignment = services.task_assign_next(labeller=user, campaign=campaign)
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(assignment.display_order)]
    services.ranking_submit(labeller=user, assignment=assignment, items=items, time_spent_ms=1)
    written = {}
    for kind, _vendor, model, *rest in sql._WRITES:
        written.setdefault(model, set()).add(rest[0] if kind == "insert" else None)
    assert {Task, Assignment, RankingItem} <= written.keys()
    for model, name_sets in written.items():
        for names in name_sets:
            sql.check_plain_writes(model, names=names)
