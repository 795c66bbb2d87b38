"""The review pages without a browser: the queue with its filters, the three decisions posted
from the task's review page (CSRF-checked), its refusals on the page, and the reward model's
scores added by the training app's panel."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from annotation import services
from annotation.models import Adjudication, Membership, Ranking
from tests.factories import UserFactory
from tests.helpers.campaigns import ranked_campaign
from training.models import ModelVersion

pytestmark = pytest.mark.django_db

PLANS = [
    {"alice": [1, 2, 3], "bob": [1, 2, 3]},  # agreed
    {"alice": [1, 2, 3], "bob": [3, 2, 1]},  # disputed
]


@pytest.fixture
def world(admin_user):
    campaign, ids, users = ranked_campaign(PLANS, completions=3, admin=admin_user)
    reviewer = UserFactory(username="rita")
    services.campaign_add_members(
        campaign=campaign, users=[reviewer], role=Membership.Role.REVIEWER
    )
    agreed, disputed = (Ranking.objects.filter(items__completion_id=i[0])[0].task for i in ids)
    client = Client(enforce_csrf_checks=True)
    client.force_login(reviewer)
    return {
        "campaign": campaign,
        "ids": ids,
        "users": users,
        "agreed": agreed,
        "disputed": disputed,
        "reviewer": reviewer,
        "client": client,
    }


def csrf(client, url) -> str:
    page = client.get(url).content.decode()
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1]


def test_the_queue_lists_the_disputed_task_first(world):
    page = world["client"].get(f"/dashboard/campaigns/{world['campaign'].pk}/review/")
    text = page.content.decode()
    assert page.status_code == 200
    first = text.index(f"#{world['disputed'].pk}<")
    assert first < text.index(f"#{world['agreed'].pk}<")
    assert "unresolved" in text and "unanimous" in text
    filtered = (
        world["client"]
        .get(f"/dashboard/campaigns/{world['campaign'].pk}/review/?below=0.5")
        .content.decode()
    )
    assert f"#{world['disputed'].pk}<" in filtered and f"#{world['agreed'].pk}<" not in filtered


def test_a_reviewer_picks_a_ranking_on_the_page(world):
    url = f"/dashboard/campaigns/{world['campaign'].pk}/review/{world['disputed'].pk}/"
    page = world["client"].get(url).content.decode()
    assert "Pick bob's ranking" in page and "Accept the consensus" in page
    bob = Ranking.objects.get(task=world["disputed"], labeller=world["users"]["bob"])
    response = world["client"].post(
        url,
        {
            "decision": "labeller",
            "ranking": bob.pk,
            "csrfmiddlewaretoken": csrf(world["client"], url),
        },
    )
    assert response.status_code == 302
    assert Adjudication.objects.get(task=world["disputed"]).source_ranking == bob
    again = world["client"].get(url).content.decode()
    assert 'id="provenance">adjudicated' in again and "Adjudicated by <b>rita</b>" in again


def test_a_written_ranking_with_a_bad_rank_shows_the_error(world):
    url = f"/dashboard/campaigns/{world['campaign'].pk}/review/{world['disputed'].pk}/"
    a, b, c = world["ids"][1]
    token = csrf(world["client"], url)
    form = {
        "decision": "written",
        f"rank-{a}": "1",
        f"rank-{b}": "9",
        f"rank-{c}": "2",
        "note": "b",
        "csrfmiddlewaretoken": token,
    }
    response = world["client"].post(url, form)
    assert response.status_code == 400
    assert "rank of B: must be between 1 and 3." in response.content.decode()
    form[f"rank-{b}"] = "F"
    assert world["client"].post(url, form).status_code == 302
    assert Adjudication.objects.get().items == {str(a): 1, str(b): "F", str(c): 2}


def test_a_reviewer_who_ranked_the_task_is_told_so(world):
    alice = world["users"]["alice"]
    Membership.objects.filter(user=alice).update(role="reviewer")
    client = Client()
    client.force_login(alice)
    url = f"/dashboard/campaigns/{world['campaign'].pk}/review/{world['disputed'].pk}/"
    page = client.get(url).content.decode()
    assert "You ranked this task yourself" in page and "Accept the consensus" not in page
    assert client.post(url, {"decision": "consensus"}).status_code == 403
    assert not Adjudication.objects.exists()


def test_the_reward_models_scores_show_when_the_team_has_one(world, tiny_model_dir, tmp_path):
    url = f"/dashboard/campaigns/{world['campaign'].pk}/review/{world['disputed'].pk}/"
    assert 'id="reward-scores"' not in world["client"].get(url).content.decode()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path / "rm"  # the tiny model with a fresh one-output head: a reward model
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=1)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(path)
    ModelVersion.objects.create(
        kind=ModelVersion.Kind.REWARD, name="rm-1", path=str(path), team=world["campaign"].team
    )
    page = world["client"].get(url).content.decode()
    panel = page[page.index('id="reward-scores"') :]
    assert "rm-1" in panel
    scores = re.findall(r'<td class="num">(-?\d+\.\d\d)</td>', panel)
    assert len(scores) == 3
