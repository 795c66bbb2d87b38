"""The training dashboard's pages say what a job and a round are doing: a job the broker did not
take is "waiting for the queue" (the create message, the job list, the job page); a round's badge
follows its jobs step by step; a job's parameters are read through its kind's Spec; a round's job
form is prefilled with what its model recommends (``training_defaults.json``)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
from django.test import Client

from tests.factories import AdminFactory, CampaignFactory, PromptFactory
from tests.helpers.html_forms import form_fields
from tests.helpers.training import labelled_marker_campaign
from training import rounds, services
from training.jobs import KINDS, generate, lifecycle
from training.jobs import reward_model as reward_model_kind
from training.ml.config import RECOMMENDED_FILE, recommended_overrides
from training.ml.tiny import RECOMMENDED
from training.models import Round, TrainingJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin():
    return AdminFactory(username="boss")


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def text(response) -> str:
    """The page's text, tags and repeated white space removed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode()))


class BrokerDown:
    """A Celery app whose broker does not answer (what leaves the project, mocked)."""

    conf = SimpleNamespace(task_always_eager=False)

    def send_task(self, *args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")


# --- Waiting for the queue ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the job commits, then the broker is asked
def test_a_job_the_broker_did_not_take_is_shown_waiting_for_the_queue(admin, monkeypatch):
    campaign = labelled_marker_campaign(tasks=4)
    monkeypatch.setattr(lifecycle, "celery_app", BrokerDown())
    client = client_for(admin)
    url = f"/dashboard/training/new/reward_model/?campaign={campaign.pk}"
    form = form_fields(client.get(url).content.decode(), "job-form")
    response = client.post(url, form, follow=True)
    job = TrainingJob.objects.get()
    assert job.waiting_for_queue and "Connection refused" in job.enqueue_error
    page = text(response)  # the job's page, after the redirect
    assert f"Train reward model #{job.pk} is stored but waiting for the queue" in page
    assert "queued." not in page
    status = re.search(r'id="job-status"[^>]*>([^<]*)<', response.content.decode())[1]
    assert status == "Waiting for the queue"
    waiting = re.search(r'<div id="job-waiting"[^>]*>', response.content.decode())[0]
    assert "hidden" not in waiting and "Connection refused" in page

    listed = text(client.get("/dashboard/training/"))
    assert "Waiting for the queue" in listed

    # the sweep enqueued it (test_job_fencing.py tests the sweep itself)
    TrainingJob.objects.filter(pk=job.pk).update(celery_task_id="abc", enqueue_error="")
    assert "Waiting for the queue" not in text(client.get("/dashboard/training/"))
    job_page = client.get(f"/dashboard/training/jobs/{job.pk}/").content.decode()
    assert re.search(r'<div id="job-waiting"[^>]*hidden', job_page)


def test_a_job_the_broker_took_is_announced_queued(admin, django_capture_on_commit_callbacks):
    campaign = labelled_marker_campaign(tasks=4)
    client = client_for(admin)
    url = f"/dashboard/training/new/reward_model/?campaign={campaign.pk}"
    form = form_fields(client.get(url).content.decode(), "job-form")
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(url, form, follow=True)
    job = TrainingJob.objects.get()
    assert f"Train reward model #{job.pk} queued." in text(response)


# --- A round's state, step by step --------------------------------------------------------------


@pytest.fixture
def rnd(admin) -> Round:
    base = services.model_version_register(kind="base", name="tiny", path="/models/tiny")
    return rounds.round_start(campaign=CampaignFactory(), policy=base, created_by=admin)


def job(rnd: Round, kind: str, status: str, **fields) -> TrainingJob:
    return TrainingJob.objects.create(kind=kind, status=status, round=rnd, **fields)


def badge(client: Client, rnd: Round) -> str:
    page = client.get("/dashboard/training/models/").content.decode()
    card = page[page.index(f'id="round-{rnd.pk}"') :]
    return re.search(r'<span class="badge [^"]*round-state"[^>]*>([^<]*)<', card)[1]


def test_a_rounds_badge_follows_its_whole_round_job_step_by_step(admin, rnd):
    client = client_for(admin)
    made = rnd.policy_before  # what a succeeded step produced (a stand-in)
    assert (rounds.round_state(rnd).key, badge(client, rnd)) == ("collecting", "Collecting labels")

    whole = job(rnd, "round", "queued", enqueue_error="broker down")
    assert (rounds.round_state(rnd).key, badge(client, rnd)) == ("waiting", "Waiting for the queue")
    TrainingJob.objects.filter(pk=whole.pk).update(enqueue_error="", celery_task_id="t")
    assert (rounds.round_state(rnd).key, badge(client, rnd)) == ("queued", "Queued")

    TrainingJob.objects.filter(pk=whole.pk).update(status="running")
    assert badge(client, rnd) == "Training"  # started, no step yet: the reward model is next
    rm = job(rnd, "reward_model", "running", parent=whole)
    assert (rounds.round_state(rnd).key, badge(client, rnd)) == ("training", "Training")
    TrainingJob.objects.filter(pk=rm.pk).update(status="succeeded", result_version=made)
    assert badge(client, rnd) == "Training"  # between steps: the update is next
    ppo = job(rnd, "ppo", "running", parent=whole)
    assert badge(client, rnd) == "Training"
    TrainingJob.objects.filter(pk=ppo.pk).update(status="succeeded", result_version=made)
    Round.objects.filter(pk=rnd.pk).update(status=Round.Status.TRAINED)
    rnd.refresh_from_db()
    assert badge(client, rnd) == "Generating"  # between steps: generation is next
    generating = job(rnd, "generate", "running", parent=whole)
    assert (rounds.round_state(rnd).key, badge(client, rnd)) == ("generating", "Generating")

    TrainingJob.objects.filter(pk=generating.pk).update(status="failed")
    TrainingJob.objects.filter(pk=whole.pk).update(status="failed")
    state = rounds.round_state(rnd)
    assert (state.key, state.job, badge(client, rnd)) == ("failed", whole, "Failed")

    again = job(rnd, "round", "running", celery_task_id="u")
    job(rnd, "reward_model", "running", parent=again)
    assert badge(client, rnd) == "Training"  # the failure was the last attempt's
    TrainingJob.objects.filter(round=rnd, status="running").update(
        status="succeeded", result_version=made
    )
    Round.objects.filter(pk=rnd.pk).update(status=Round.Status.NEEDS_REVIEW)
    rnd.refresh_from_db()
    assert (rounds.round_state(rnd).key, badge(client, rnd)) == ("needs_review", "Needs review")
    Round.objects.filter(pk=rnd.pk).update(status=Round.Status.COMPLETED)
    rnd.refresh_from_db()
    assert (rounds.round_state(rnd).key, badge(client, rnd)) == ("completed", "Next round opened")


def test_a_rounds_badge_follows_its_standalone_jobs(admin, rnd):
    client = client_for(admin)
    update = job(rnd, "dpo", "running", celery_task_id="t")
    assert badge(client, rnd) == "Training"
    TrainingJob.objects.filter(pk=update.pk).update(status="cancelled")
    assert (rounds.round_state(rnd).key, badge(client, rnd)) == ("cancelled", "Cancelled")
    Round.objects.filter(pk=rnd.pk).update(status=Round.Status.TRAINED)
    rnd.refresh_from_db()
    job(rnd, "generate", "running", celery_task_id="u")
    assert badge(client, rnd) == "Generating"


# --- Parameters through the Spec ----------------------------------------------------------------


def test_job_pages_read_the_parameters_through_the_kinds_spec(
    admin, django_capture_on_commit_callbacks
):
    campaign = CampaignFactory(completions_per_task=2)
    PromptFactory(campaign=campaign)
    with django_capture_on_commit_callbacks(execute=False):
        generating = lifecycle.job_create(
            "generate",
            generate.Request(
                created_by=admin, campaign_ids=[campaign.pk], base_model_path="/models/mine"
            ),
        )
    client = client_for(admin)
    page = text(client.get(f"/dashboard/training/jobs/{generating.pk}/"))
    # A generate job stores where its policy comes from in its sources, not base_model_path
    assert "Started from /models/mine" in page

    first, second = labelled_marker_campaign(tasks=2), labelled_marker_campaign(tasks=2)
    with django_capture_on_commit_callbacks(execute=False):
        both = lifecycle.job_create(
            "reward_model",
            reward_model_kind.Request(created_by=admin, campaign_ids=[first.pk, second.pk]),
        )
    assert both.campaign is None
    listed = text(client.get("/dashboard/training/"))
    assert f"Train reward model #{both.pk}" in listed and f"{first.pk}, {second.pk}" in listed
    page = text(client.get(f"/dashboard/training/jobs/{both.pk}/"))
    assert f"Campaign {first.pk}, {second.pk}" in page
    assert "Started from the default base model" in page


# --- What a round's model recommends ------------------------------------------------------------


def test_a_rounds_job_form_is_prefilled_with_what_its_model_recommends(
    admin, tmp_path, django_capture_on_commit_callbacks
):
    model = tmp_path / "small-model"
    model.mkdir()
    recommended = {
        "PPOConfig": {"learning_rate": 1e-4, "missing_eos_penalty": None},
        "RewardModelConfig": {"num_epochs": 3},
        "DPOConfig": {"beta": "high"},  # refused by its class: ignored
    }
    (model / RECOMMENDED_FILE).write_text(json.dumps(recommended))
    base = services.model_version_register(kind="base", name="small", path=str(model))
    campaign = labelled_marker_campaign(tasks=4)
    rnd = rounds.round_start(campaign=campaign, policy=base, created_by=admin)
    client = client_for(admin)
    url = f"/dashboard/training/new/round/?round={rnd.pk}"
    page = client.get(url).content.decode()
    form = form_fields(page, "job-form")
    assert form["config__ppo__learning_rate"] == ["0.0001"]
    assert form["config__ppo__missing_eos_penalty"] == [""]  # shown: the section has not got it
    assert form["config__reward_model__num_epochs"] == ["3"]
    assert form["config__dpo__beta"] == ["0.1"] and form["config__ppo__kl_coef"] == ["0.05"]
    assert "small recommends 0.0001; the default is 1e-05." in page
    assert 'id="recommended-note"' in page

    with django_capture_on_commit_callbacks(execute=False):
        assert client.post(url, form).status_code == 302
    config = KINDS["round"].spec(TrainingJob.objects.get()).config
    assert (config.ppo.learning_rate, config.ppo.missing_eos_penalty) == (1e-4, None)
    assert config.reward_model.num_epochs == 3 and config.dpo.beta == 0.1

    # a job without a round keeps the config classes' defaults (so does the API)
    standalone = client.get("/dashboard/training/new/ppo/").content.decode()
    standalone = form_fields(standalone, "job-form")
    assert standalone["config__learning_rate"] == ["1e-05"]
    assert standalone["config__missing_eos_penalty"] == ["1.0"]  # the class's default


def test_a_model_directory_recommends_only_what_its_config_classes_accept(tmp_path):
    assert recommended_overrides(tmp_path) == {} == recommended_overrides("org/hub-model")
    (tmp_path / RECOMMENDED_FILE).write_text("{not json")
    assert recommended_overrides(tmp_path) == {}
    (tmp_path / RECOMMENDED_FILE).write_text(
        json.dumps({"PPOConfig": {"kl_coef": 0.1}, "NoSuchConfig": {}, "SamplingConfig": [1]})
    )
    assert recommended_overrides(tmp_path) == {"PPOConfig": {"kl_coef": 0.1}}


def test_the_tiny_model_recommends_what_trains_it(tiny_model_dir):
    assert recommended_overrides(tiny_model_dir) == {
        name: dict(values) for name, values in RECOMMENDED.items()
    }
