"""The online RLHF loop end to end, on the tiny model and the CPU.

A campaign's completions come from the base policy (a generate job); a synthetic labeller ranks
them through the real HTTP API (token login, guidelines, next-task, ranking); a ``round`` job
trains the reward model on the labels, runs PPO against it and opens the next campaign with the
new policy's completions; the labeller ranks those, and so on. The synthetic labeller's hidden
gold score prefers common words such as "the", "and", "you": the reward model can learn that
from a few hundred pairs and PPO can raise it, so the gold score of the policy's completions on
held-out prompts must rise round after round while the KL to the reference stays bounded.

The model is the tiny local one, pretrained briefly on the bundled corpus (so it writes
English-like text in which gold words occur), cached in pytest's cache directory.
"""

from __future__ import annotations

import itertools
import json

import httpx
import pytest
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections

from annotation import services as annotation_services
from annotation.models import Prompt
from tests.conftest import client_for
from tests.factories import AdminFactory, UserFactory
from training import services
from training.jobs import lifecycle
from training.ml.synthetic import SyntheticLabeller, synthetic_prompts
from training.ml.tiny import build_tiny_model, bundled_corpus_files
from training.models import Round, TrainingJob
from training.synthetic_client import label_campaign, login, main

PASSWORD = "correct horse battery"  # tests.factories.UserFactory's
PROMPTS = synthetic_prompts(64, topics=28, forms=3)

SAMPLING = {"temperature": 1.0, "max_new_tokens": 16, "seed": 0}
EVAL_SETTINGS = {
    "eval_fraction": 0.2,
    "samples_per_prompt": 4,
    "temperature": 1.0,
    "max_new_tokens": 16,
    "seed": 1234,
    "gold_score": True,
}
ROUND_CONFIG = {
    "reward_model": {
        "num_epochs": 3,
        "learning_rate": 1e-3,
        "lr_schedule": "cosine",
        "batch_size": 16,
        "max_length": 64,
        "eval_fraction": 0.2,
        "seed": 0,
    },
    "ppo": {
        "total_steps": 20,
        "rollout_batch_size": 16,
        "mini_batch_size": 8,
        "ppo_epochs": 4,
        "max_new_tokens": 16,
        "temperature": 1.0,
        "learning_rate": 3e-3,
        "anneal_lr": False,
        "kl_coef": 0.05,
        "adaptive_kl": False,
        # the tiny model almost never emits EOS within 16 tokens: no penalty for that
        "missing_eos_penalty": None,
        "seed": 0,
    },
    "sampling": SAMPLING,
}
PRETRAIN_STEPS = 200


@pytest.fixture(scope="session")
def pretrained_tiny_model(request, tmp_path_factory):
    """The tiny model after a short pretraining on the bundled corpus (cached across runs)."""
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("rlhf-loop-tiny") if cache is not None else tmp_path_factory.mktemp("tiny")
    return build_tiny_model(
        root / f"pretrained-{PRETRAIN_STEPS}",
        seed=0,
        pretrain_files=bundled_corpus_files(),
        pretrain_steps=PRETRAIN_STEPS,
    )


@pytest.fixture
def http(db):
    """An httpx client served in-process by Django's WSGI application: the full request path
    (middleware, token auth, routing, serializers) within the test's transaction. Like Django's
    test client, it keeps the request signals from closing the test's database connection."""
    wsgi = get_wsgi_application()

    def app(environ, start_response):
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            response = wsgi(environ, start_response)
            try:
                return [b"".join(response)]
            finally:
                response.close()  # sends request_finished
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)

    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://testserver") as c:
        yield c


def _create_job(admin, url: str, body: dict) -> TrainingJob:
    response = client_for(admin).post(url, body, format="json")
    assert response.status_code == 201, response.content
    return TrainingJob.objects.get(pk=response.json()["id"])


def _run(job: TrainingJob) -> TrainingJob:
    job = lifecycle.job_run(job_id=job.pk, worker="in-process")
    assert job.status == TrainingJob.Status.SUCCEEDED, job.error
    return job


def _labelled_campaign(admin, labeller, prompts):
    campaign = annotation_services.campaign_create(
        created_by=admin,
        name="Loop",
        completions_per_task=4,
        overlap=1,
        allow_ties=False,
        allow_fail=False,
    )
    annotation_services.campaign_add_members(campaign=campaign, users=[labeller])
    annotation_services.guideline_publish(
        campaign=campaign, text="Rank the replies, best first.", created_by=admin
    )
    annotation_services.campaign_set_status(campaign=campaign, status="active")
    Prompt.objects.bulk_create(  # prompts without completions, as an import of them makes
        [Prompt(campaign=campaign, external_id=f"p{i}", text=p) for i, p in enumerate(prompts)]
    )
    return campaign


@pytest.mark.slow
@pytest.mark.django_db
def test_online_rlhf_loop_raises_the_gold_score_with_bounded_kl(
    pretrained_tiny_model, http, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.MODEL_STORE_DIR = tmp_path / "models"
    # One connection per thread on SQLite: a heartbeat thread would wait on the test's lock.
    settings.TRAINING_HEARTBEAT_SECONDS = 3600
    admin = AdminFactory(username="loop-admin")
    labeller = UserFactory(username="synthetic-labeller")
    base = services.model_version_register(
        kind="base", name="tiny-pretrained", path=str(pretrained_tiny_model)
    )
    campaign = _labelled_campaign(admin, labeller, PROMPTS)

    with django_capture_on_commit_callbacks(execute=False):  # no broker: jobs run in-process
        # Round 0's completions: the base policy, K = N = 4 per prompt, into the campaign.
        _run(
            _create_job(
                admin,
                "/api/training-jobs/",
                {
                    "kind": "generate",
                    "campaign_ids": [campaign.pk],
                    "base_model_version": base.pk,
                    "config": SAMPLING,
                },
            )
        )
        response = client_for(admin).post(
            "/api/rounds/",
            {"campaign": campaign.pk, "policy": base.pk, "eval_settings": EVAL_SETTINGS},
            format="json",
        )
        assert response.status_code == 201, response.content
        rnd = Round.objects.get(pk=response.json()["id"])

        login(http, username=labeller.username, password=PASSWORD)
        synthetic = SyntheticLabeller(noise=0.1, seed=0)
        evaluations = []
        for number in range(2):
            stats = label_campaign(http, campaign_id=rnd.campaign_id, labeller=synthetic)
            assert stats.rankings == len(PROMPTS) and stats.acknowledged == 1

            job = _run(_create_job(admin, f"/api/rounds/{rnd.pk}/run/", {"config": ROUND_CONFIG}))
            steps = list(job.steps.order_by("id"))
            assert [s.kind for s in steps] == ["reward_model", "ppo", "generate"]
            assert all(s.status == "succeeded" and s.round_id == rnd.pk for s in steps)
            assert all(s.progress_step == s.progress_total > 0 for s in steps)

            rnd.refresh_from_db()
            assert rnd.number == number and rnd.status == Round.Status.COMPLETED
            assert rnd.reward_model == steps[0].result_version
            assert rnd.policy_after == steps[1].result_version
            assert rnd.policy_after.parent == rnd.policy_before
            following = rnd.next_round
            assert following.campaign == rnd.next_campaign
            assert following.campaign.round_number == number + 1
            assert following.policy_before == rnd.policy_after
            assert following.campaign.tasks.count() == len(PROMPTS)
            assert following.campaign.guidelines.get().version == 1
            sources = set(
                following.campaign.tasks.values_list("completions__model_version", flat=True)
            )
            assert sources == {rnd.policy_after.pk}
            evaluations.append(rnd.evaluation)
            # the next campaign opens as a draft: the admin reads the report, then activates it
            assert following.campaign.status == "draft"
            response = client_for(admin).post(
                f"/api/campaigns/{following.campaign_id}/status/",
                {"status": "active"},
                format="json",
            )
            assert response.status_code == 200, response.content
            rnd = following

    gold = [evaluations[0]["policy_before"]["gold_score"]] + [
        e["policy_after"]["gold_score"] for e in evaluations
    ]
    kl = [e["policy_after"]["kl_ref"] for e in evaluations]
    print(f"gold score per round: {gold}; KL to the reference: {kl}")
    # Over seeds 0-7 (labeller, sampling and PPO; 1 and 2 threads) the gold score went from
    # 0.19 to 0.65-1.19 after round 0 and to 1.15-2.06 after round 1 (round 1 adds +0.09 to
    # +0.86: the score saturates within 16 tokens); KL to the reference 26-56 nats.
    base, *after = gold
    assert after[0] > base + 0.2, gold  # the first update helps
    assert after[-1] > base + 0.5, gold  # and the loop keeps climbing: a clear rise overall
    assert all(b > a - 0.15 for a, b in itertools.pairwise(after)), gold  # no undoing
    assert all(0 <= k < 80 for k in kl), kl  # bounded: 5 nats per token at most
    for evaluation in evaluations:
        assert evaluation["policy_after"]["reward"] > evaluation["policy_before"]["reward"]
        assert evaluation["held_out_prompts"] >= 5


@pytest.mark.django_db(transaction=True)
def test_synthetic_client_labels_a_campaign_over_a_real_socket(live_server, capsys):
    from tests.factories import make_tasks

    admin = AdminFactory(username="client-admin")
    labeller = UserFactory(username="client-labeller")
    campaign = annotation_services.campaign_create(
        created_by=admin, name="Client", completions_per_task=3, overlap=1
    )
    annotation_services.campaign_add_members(campaign=campaign, users=[labeller])
    annotation_services.guideline_publish(campaign=campaign, text="Rank.", created_by=admin)
    annotation_services.campaign_set_status(campaign=campaign, status="active")
    make_tasks(campaign, 4)

    code = main(
        [
            "--base-url",
            live_server.url,
            "--username",
            labeller.username,
            "--password",
            PASSWORD,
            "--campaign",
            str(campaign.pk),
            "--noise",
            "0.1",
        ]
    )

    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rankings"] == 4 and report["acknowledged"] == 1
    assert campaign.rankings.count() == 4
    assert set(campaign.rankings.values_list("labeller__username", flat=True)) == {
        labeller.username
    }


@pytest.mark.django_db(transaction=True)
def test_synthetic_client_reports_a_bad_login(live_server, capsys):
    code = main(
        [
            "--base-url",
            live_server.url,
            "--username",
            "nobody",
            "--password",
            "wrong",
            "--campaign",
            "1",
        ]
    )
    assert code == 1
    assert "login as 'nobody'" in capsys.readouterr().err
