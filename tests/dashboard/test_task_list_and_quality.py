"""The dashboard's task list filtered, sorted and paged, and the quality page's additions:
Dawid-Skene competence beside the agreement, Cohen's kappa per labeller pair, the time flag,
and F handled by default as the pair export handles it."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from annotation import services
from annotation.models import Ranking
from tests.helpers.campaigns import ranked_campaign

pytestmark = pytest.mark.django_db

ORDERS = ([1, 2, 3], [3, 2, 1], [2, 1, 3], [1, 3, 2])


@pytest.fixture
def world(admin_user):
    plans = [
        {"alice": o, "bob": o if t % 2 else list(reversed(o)), "carol": o}
        for t, o in enumerate(ORDERS * 3)
    ]
    plans.append({"alice": [1, 2, 3]})  # a task that never reaches its overlap
    campaign, _ids, users = ranked_campaign(
        plans, completions=3, admin=admin_user, seconds={"carol": 500}
    )
    client = Client()
    client.force_login(admin_user)
    return {"campaign": campaign, "users": users, "client": client, "admin": admin_user}


def task_ids(page: str) -> list[int]:
    return [
        int(x)
        for x in re.findall(
            r'<th scope="row"><a href="/dashboard/campaigns/\d+/tasks/(\d+)/"', page
        )
    ]


def test_the_task_list_filters_sorts_and_pages(world, monkeypatch):
    client, campaign = world["client"], world["campaign"]
    url = f"/dashboard/campaigns/{campaign.pk}/tasks/"
    every = task_ids(client.get(url).content.decode())
    assert len(every) == 13 and every == sorted(every)
    open_ = task_ids(client.get(url + "?status=open").content.decode())
    assert len(open_) == 1
    complete = task_ids(client.get(url + "?status=complete").content.decode())
    assert len(complete) == 12 and not set(open_) & set(complete)
    lowest = task_ids(client.get(url + "?sort=agreement&status=complete").content.decode())
    disputed = {r.task_id for r in Ranking.objects.filter(labeller=world["users"]["bob"])}
    bob_dissents = [t for t in lowest if t in disputed][:1]
    assert lowest[0] in disputed and bob_dissents
    bob = world["users"]["bob"].pk
    assert len(task_ids(client.get(url + f"?labeller={bob}").content.decode())) == 12
    assert task_ids(client.get(url + "?gold=1").content.decode()) == []
    reviewed_task = Ranking.objects.filter(task_id=complete[0]).first().task
    services.task_adjudicate(reviewer=world["admin"], task=reviewed_task, decision="consensus")
    assert task_ids(client.get(url + "?status=reviewed").content.decode()) == [reviewed_task.pk]
    monkeypatch.setattr("annotation.dashboard.views.PAGE_SIZE", 5)
    first = client.get(url + "?sort=-agreement&status=complete").content.decode()
    assert len(task_ids(first)) == 5 and "Page 1 of 3" in first
    assert "page=2&amp;status=complete&amp;sort=-agreement" in first


def test_the_quality_page_shows_competence_kappa_and_drops_f_by_default(world):
    page = world["client"].get(f"/dashboard/campaigns/{world['campaign'].pk}/quality/")
    text = page.content.decode()
    assert '<option value="drop" selected>' in text
    assert "Competence" in text and 'id="kappa-matrix"' in text
    matrix = text[text.index('id="kappa-matrix"') :]
    assert matrix.count("<tr>") == 4  # the header and one row per labeller
    assert re.search(r"1\.00 <span class=\"muted small\">n=36</span>", matrix)  # alice/carol
