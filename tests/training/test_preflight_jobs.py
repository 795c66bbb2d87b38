"""The preflight through the API and the job form: an 8B PPO job on 8 x 80 GB is accepted with
its memory plan; the same job on 1 GPU without LoRA is refused with a 400 saying the memory per
GPU it needs and what would make it fit. Only config.json files: no weights, no torch."""

from __future__ import annotations

import json

import pytest

from tests.conftest import client_for
from training import services
from training.models import TrainingJob

pytestmark = pytest.mark.django_db

LLAMA_3_8B = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


@pytest.fixture
def eight_b(tmp_path, settings, campaign):
    settings.TRAINING_GPUS_PER_WORKER = 8
    settings.TRAINING_GPU_MEMORY_GB = 80
    models = {}
    for name, kind in (("policy", "base"), ("rm", "reward")):
        directory = tmp_path / name
        directory.mkdir()
        (directory / "config.json").write_text(json.dumps(LLAMA_3_8B))
        models[name] = services.model_version_register(kind=kind, name=name, path=str(directory))
    return {"campaign": campaign, **models}


def _ppo(eight_b, config):
    return {
        "kind": "ppo",
        "campaign_ids": [eight_b["campaign"].pk],
        "base_model_version": eight_b["policy"].pk,
        "reward_model_version": eight_b["rm"].pk,
        "config": config,
    }


def test_an_8b_ppo_job_on_8_gpus_of_80_gb_is_accepted_with_its_plan(
    eight_b, admin_user, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        response = client_for(admin_user).post(
            "/api/training-jobs/", _ppo(eight_b, {"gpus": 8}), format="json"
        )
    assert response.status_code == 201, response.content
    plan = response.json()["preflight"]
    assert plan["fits"] is True and plan["gpus"] == 8 and plan["peak_gb"] < 80
    assert any(line["what"].startswith("policy: weights") for line in plan["lines"])
    assert any("adaptive KL horizon: 160 episodes" in note for note in plan["notes"])
    job = TrainingJob.objects.get()
    assert job.params["preflight"] == plan  # stored with the parameters it was checked with


def test_the_same_job_on_1_gpu_without_lora_is_refused_with_the_reason(eight_b, admin_user):
    response = client_for(admin_user).post(
        "/api/training-jobs/", _ppo(eight_b, {"gpus": 1}), format="json"
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "does_not_fit"
    (message,) = body["errors"]["config"]
    assert message.startswith("does not fit: needs ")
    assert "GB per GPU on 1 GPU(s) of 80 GB" in message
    assert "gpus=8" in message  # what would make it fit
    assert body["preflight"]["fits"] is False
    assert not TrainingJob.objects.exists()


def test_the_plan_endpoint_answers_whether_it_fits_without_queueing(eight_b, admin_user):
    client = client_for(admin_user)
    refused = client.post("/api/training-jobs/plan/", _ppo(eight_b, {"gpus": 1}), format="json")
    assert refused.status_code == 200 and refused.json()["fits"] is False
    assert "gpus=8" in refused.json()["reason"]
    lora = client.post(
        "/api/training-jobs/plan/",
        _ppo(eight_b, {"gpus": 1, "use_lora": True, "gradient_checkpointing": True}),
        format="json",
    )
    assert lora.json()["fits"] is True, lora.json()
    assert not TrainingJob.objects.exists()


def test_asking_for_more_gpus_than_a_worker_has_is_refused(eight_b, admin_user):
    response = client_for(admin_user).post(
        "/api/training-jobs/", _ppo(eight_b, {"gpus": 16}), format="json"
    )
    assert response.status_code == 400
    assert "a worker has 8" in response.json()["errors"]["config"][0]


def test_the_job_form_shows_the_plan(eight_b, admin_user, settings, client):
    settings.DEFAULT_BASE_MODEL = eight_b["policy"].path
    client.force_login(admin_user)
    response = client.get("/dashboard/training/new/dpo/")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="memory-plan"' in page
    assert "GB per GPU on 8 \u00d7 80 GB: fits" in page


def test_a_job_over_ray_nodes_is_planned_on_all_their_gpus(eight_b, admin_user):
    client = client_for(admin_user)
    batches = {"rollout_batch_size": 16, "mini_batch_size": 16}  # a share for each of 16 ranks
    plan = client.post(
        "/api/training-jobs/plan/", _ppo(eight_b, {**batches, "gpus": 8, "nodes": 2}), format="json"
    ).json()
    assert plan.get("fits") is True, plan
    assert plan["preflight"]["gpus"] == 16  # sharded 16 ways
    single = client.post(
        "/api/training-jobs/plan/", _ppo(eight_b, {**batches, "gpus": 8}), format="json"
    )
    assert plan["preflight"]["peak_gb"] < single.json()["preflight"]["peak_gb"]
    refused = client.post(
        "/api/training-jobs/", _ppo(eight_b, {"gpus": 16, "nodes": 2}), format="json"
    )
    assert "a node has 8" in refused.json()["errors"]["config"][0]
