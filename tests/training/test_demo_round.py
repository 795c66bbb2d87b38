"""The demo, as a newcomer runs it: ``load_demo --labels`` (the demo campaign, labelled by its two
labellers, is round 0 of the loop), then "Run the whole round" from the campaign's page, the form
submitted exactly as rendered (its defaults: what the tiny model recommends, the config's
defaults elsewhere), the job run in-process as a worker runs it. The round must succeed, not be
held for review (enough held-out pairs for the demo's threshold, the reward did not fall), and
open a draft campaign whose tasks meet the import's rules: no empty completion, none twice in a
task. About 45 s of CPU on the tiny model.
"""

from __future__ import annotations

import html
import io
import re

import pytest
from django.core.management import call_command
from django.test import Client

from annotation.management.commands.load_demo import CAMPAIGN_NAME
from annotation.models import Campaign, Ranking
from tests.helpers.html_forms import form_fields
from training import services
from training.jobs import lifecycle
from training.management.commands.demo_round import DEMO_EVAL_SETTINGS
from training.models import Round, TrainingJob

pytestmark = pytest.mark.django_db


@pytest.mark.slow
def test_the_demos_first_round_succeeds_from_the_dashboard_with_its_defaults(
    tiny_model_dir, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.MODEL_STORE_DIR = tmp_path / "models"
    settings.DEFAULT_BASE_MODEL = str(tiny_model_dir)
    settings.TRAINING_HEARTBEAT_SECONDS = 3600  # no heartbeat thread racing SQLite's lock
    # what `make demo` does: build and register the default base model, then load the demo
    services.model_version_register(kind="base", name="tiny-base", path=str(tiny_model_dir))
    call_command("load_demo", labels=True, stdout=io.StringIO())
    call_command("demo_round", stdout=io.StringIO())
    demo = Campaign.objects.get(name=CAMPAIGN_NAME)
    assert Ranking.objects.filter(campaign=demo).count() == 2 * demo.tasks.count() == 54
    rnd = Round.objects.get(campaign=demo)
    assert rnd.eval_settings["min_held_out_pairs"] == DEMO_EVAL_SETTINGS["min_held_out_pairs"]

    client = Client()
    client.force_login(demo.created_by)
    page = client.get(f"/dashboard/campaigns/{demo.pk}/").content.decode()
    url = html.unescape(re.search(r'href="([^"]+)"[^>]*>Run the whole round<', page)[1])
    form_page = client.get(url).content.decode()
    assert 'class="warning-box"' not in form_page  # nothing says it would be held
    assert "fewer than 18 held-out pairs" in form_page and "tiny-base</b>" in form_page
    with django_capture_on_commit_callbacks(execute=False):  # run here, below, not queued
        response = client.post(url, form_fields(form_page, "job-form"))
    assert response.status_code == 302, response.content.decode()
    job = TrainingJob.objects.get(kind=TrainingJob.Kind.ROUND)
    job = lifecycle.job_run(job_id=job.pk, worker="in-process")

    assert job.status == TrainingJob.Status.SUCCEEDED, job.error
    rnd.refresh_from_db()
    assert "held_for_review" not in job.summary
    assert rnd.status == Round.Status.COMPLETED, rnd.evaluation.get("warnings")
    assert rnd.evaluation["warnings"] == [] and rnd.evaluation["delta"]["reward"] >= 0
    assert rnd.evaluation["reward_model"]["held_out_pairs"] >= 18
    new = rnd.next_campaign
    assert new.status == Campaign.Status.DRAFT and new.tasks.count() > 0
    for task in new.tasks.all():
        texts = [c.text for c in task.completions.all()]
        assert len(texts) == demo.completions_per_task
        assert all(text.strip() for text in texts), texts
        assert len(set(texts)) == len(texts), texts
    models = client.get("/dashboard/training/models/").content.decode()
    assert "Next round opened" in models


def test_demo_round_starts_once_the_default_base_model_is_registered(settings, tmp_path):
    settings.DEFAULT_BASE_MODEL = str(tmp_path / "tiny-base")
    out = io.StringIO()
    call_command("load_demo", stdout=out)
    call_command("demo_round", stdout=out)
    demo = Campaign.objects.get(name=CAMPAIGN_NAME)
    assert not Round.objects.exists() and "no default base model" in out.getvalue()
    assert not Ranking.objects.exists()  # labelled by hand unless asked

    base = services.model_version_register(
        kind="base", name="tiny-base", path=settings.DEFAULT_BASE_MODEL
    )
    for _ in range(2):  # again: nothing more
        call_command("load_demo", labels=True, stdout=out)
        call_command("demo_round", stdout=out)
    rnd = Round.objects.get()
    assert rnd.campaign == demo and rnd.policy_before == base and rnd.number == 0
    assert rnd.eval_settings["min_held_out_pairs"] == 18 and rnd.eval_settings["seed"] == 1234
    assert Ranking.objects.filter(campaign=demo).count() == 54
    # the labellers agree on the author's judgements and differ on near-equal completions
    alice, bob = (
        {
            tuple(sorted((i.completion_id, i.rank, i.failed) for i in r.items.all()))
            for r in Ranking.objects.filter(campaign=demo, labeller__username=name)
        }
        for name in ("alice", "bob")
    )
    assert 0 < len(alice & bob) < 27
