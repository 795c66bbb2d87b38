"""Every training endpoint: who may call it (anonymous and labellers 403, admins 2xx) and what
bad input answers (400 naming the field, 404 for ids that cannot exist, 409 for a state that
does not allow it). No job runs here: creating one only queues it."""

from __future__ import annotations

import pytest

from annotation import services as annotation_services
from tests.conftest import client_for
from training import rounds, services
from training.jobs import lifecycle, reward_model
from training.models import ModelVersion, Round, TrainingJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(campaign, labeller, admin_user, django_capture_on_commit_callbacks):
    assignment = annotation_services.task_assign_next(labeller=labeller, campaign=campaign)
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(assignment.display_order)]
    annotation_services.ranking_submit(
        labeller=labeller, assignment=assignment, items=items, time_spent_ms=10
    )
    base = services.model_version_register(kind="base", name="base", path="/models/base")
    reward = services.model_version_register(kind="reward", name="rm", path="/models/rm")
    policy = services.model_version_register(
        kind="policy", name="policy", path="/models/policy", parent=base
    )
    rnd = rounds.round_start(campaign=campaign, policy=base, created_by=admin_user)
    with django_capture_on_commit_callbacks(execute=False):
        job, failed = (
            lifecycle.job_create(
                "reward_model",
                reward_model.Request(created_by=admin_user, campaign_ids=[campaign.pk]),
                from_form=True,
            )
            for _ in range(2)
        )
    TrainingJob.objects.filter(pk=failed.pk).update(status="failed")
    return {
        "campaign": campaign,
        "base": base,
        "reward": reward,
        "policy": policy,
        "round": rnd,
        "job": job,
        "failed": failed,
        "users": {"anonymous": None, "labeller": labeller, "admin": admin_user},
    }


def call(user, method, url, body=None):
    client = client_for(user)
    if body is None:
        return getattr(client, method)(url)
    return getattr(client, method)(url, body, format="json")


def _trained(world) -> Round:
    return rounds.round_record_policy_update(
        round_id=world["round"].pk, version=world["policy"], evaluation={}
    )


# (method, url template, body, admin's status). Templates: {c} campaign, {j} queued job,
# {f} failed job, {v} base version, {r} round, {b} base version id again for bodies.
ENDPOINTS = [
    ("get", "/api/training-jobs/", None, 200),
    ("get", "/api/training-jobs/{j}/", None, 200),
    ("get", "/api/training-jobs/{j}/metrics/", None, 200),
    ("post", "/api/training-jobs/", {"kind": "reward_model", "campaign_ids": ["{c}"]}, 201),
    ("post", "/api/training-jobs/plan/", {"kind": "reward_model", "campaign_ids": ["{c}"]}, 200),
    ("post", "/api/training-jobs/{j}/cancel/", None, 200),
    ("post", "/api/training-jobs/{f}/retry/", None, 201),
    ("get", "/api/model-versions/", None, 200),
    ("get", "/api/model-versions/{v}/", None, 200),
    ("post", "/api/model-versions/", {"kind": "base", "name": "b2", "path": "/m/b2"}, 201),
    ("get", "/api/rounds/", None, 200),
    ("get", "/api/rounds/{r}/", None, 200),
    ("post", "/api/rounds/{r}/run/", {}, 201),
    ("post", "/api/rounds/{r}/next/", {}, 409),  # nothing trained yet: see the test below
]


def _fill(value, world):
    ids = {
        "c": world["campaign"].pk,
        "j": world["job"].pk,
        "f": world["failed"].pk,
        "v": world["base"].pk,
        "r": world["round"].pk,
    }
    if isinstance(value, str):
        for key, pk in ids.items():
            if value == "{" + key + "}":
                return pk
            value = value.replace("{" + key + "}", str(pk))
        return value
    if isinstance(value, list):
        return [_fill(v, world) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, world) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("method", "template", "body", "admin_status"), ENDPOINTS)
@pytest.mark.parametrize("role", ["anonymous", "labeller", "admin"])
def test_training_endpoints_are_admin_only(
    world, method, template, body, admin_status, role, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        response = call(world["users"][role], method, _fill(template, world), _fill(body, world))
    expected = admin_status if role == "admin" else 403
    assert response.status_code == expected, (role, template, response.content[:300])


def test_round_creation_and_next_are_admin_only(
    world, admin_user, labeller, django_capture_on_commit_callbacks
):
    other = annotation_services.campaign_create(created_by=admin_user, name="Other")
    body = {"campaign": other.pk, "policy": world["base"].pk}
    for user in (None, labeller):
        assert call(user, "post", "/api/rounds/", body).status_code == 403
    response = call(admin_user, "post", "/api/rounds/", body)
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["number"] == 0 and created["status"] == "collecting"
    assert created["reference"] == created["policy_before"] == world["base"].pk
    assert created["eval_settings"]["eval_fraction"] == 0.2

    _trained(world)
    url = f"/api/rounds/{world['round'].pk}/next/"
    for user in (None, labeller):
        assert call(user, "post", url, {}).status_code == 403
    with django_capture_on_commit_callbacks(execute=False):
        response = call(admin_user, "post", url, {"mix": {"policy": 3, "previous": 1}})
    assert response.status_code == 201, response.content
    job = response.json()
    assert job["kind"] == "generate" and job["round"] == world["round"].pk
    roles = [(s["role"], s["model_version"], s["count"]) for s in job["params"]["sources"]]
    assert roles == [("policy", world["policy"].pk, 3), ("previous", world["base"].pk, 1)]


def test_round_detail_lists_its_jobs_and_models(world, admin_user):
    _trained(world)
    body = call(admin_user, "get", f"/api/rounds/{world['round'].pk}/").json()
    assert body["status"] == "trained" and body["policy_after"] == world["policy"].pk
    assert body["campaign"] == world["campaign"].pk and body["next_round"] is None
    listing = call(admin_user, "get", f"/api/rounds/?campaign={world['campaign'].pk}").json()
    assert [r["id"] for r in listing["results"]] == [world["round"].pk]


def _error(response):
    return response.status_code, sorted(response.json().get("errors", {}))


BAD_JOBS = [
    ({"kind": "sft", "campaign_ids": ["{c}"]}, (400, ["kind"])),
    ({"kind": "reward_model"}, (400, ["campaign_ids"])),
    ({"kind": "reward_model", "campaign_ids": []}, (400, ["campaign_ids"])),
    ({"kind": "reward_model", "campaign_ids": [999999]}, (400, ["campaign_ids"])),
    ({"kind": "reward_model", "campaign_ids": ["x"]}, (400, ["campaign_ids[0]"])),
    (  # a field of another kind is refused, not ignored
        {"kind": "reward_model", "campaign_ids": ["{c}"], "mix": {"policy": 4}},
        (400, ["mix"]),
    ),
    (
        {"kind": "reward_model", "campaign_ids": ["{c}"], "config": {"learning_rat": 1}},
        (400, ["config.learning_rat"]),
    ),
    (
        {"kind": "reward_model", "campaign_ids": ["{c}"], "config": {"batch_size": "big"}},
        (400, ["config.batch_size"]),
    ),
    ({"kind": "ppo", "round": "{r}", "config": {"total_steps": 0}}, (400, ["config"])),
    ({"kind": "ppo", "round": "{r}", "config": {"kl_coef": "high"}}, (400, ["config.kl_coef"])),
    ({"kind": "ppo", "round": "{r}", "config": {"clip": 0.1}}, (400, ["config.clip"])),
    ({"kind": "ppo", "round": 999999}, (400, ["round"])),
    ({"kind": "ppo", "round": "{r}"}, (400, ["reward_model_version"])),
    (
        {"kind": "ppo", "round": "{r}", "reward_model_version": "{v}"},
        (400, ["reward_model_version"]),
    ),
    (
        {"kind": "ppo", "campaign_ids": ["{c}"], "evaluation": {"eval_fraction": 1.5}},
        (400, ["evaluation"]),
    ),
    ({"kind": "ppo", "round": "{r}", "evaluation": {"seed": 1}}, (400, ["evaluation"])),
    ({"kind": "dpo", "round": "{r}", "config": {"beta": "x"}}, (400, ["config.beta"])),
    ({"kind": "dpo", "campaign_ids": ["{c}"], "evaluation": {"bogus": 1}}, (400, ["evaluation"])),
    ({"kind": "generate", "round": "{r}"}, (409, ["round"])),
    ({"kind": "generate", "campaign_ids": ["{c}"]}, (400, ["campaign_ids"])),
    (
        {"kind": "generate", "campaign_ids": ["{c}"], "num_completions": 1},
        (400, ["num_completions"]),
    ),
    ({"kind": "generate", "campaign_ids": ["{c}"], "mix": {"policy": -1}}, (400, ["mix.policy"])),
    (
        {"kind": "generate", "campaign_ids": ["{c}"], "config": {"top_k": 5}},
        (400, ["config.top_k"]),
    ),
    ({"kind": "round", "campaign_ids": ["{c}"], "update": "sft"}, (400, ["update"])),
    # a flat config is the update's section: "rlhf" is an unknown PPO field
    ({"kind": "round", "round": "{r}", "config": {"rlhf": {}}}, (400, ["config.ppo.rlhf"])),
    (
        {"kind": "round", "round": "{r}", "config": {"ppo": {"bogus": 1}}},
        (400, ["config.ppo.bogus"]),
    ),
    ({"kind": "round", "round": "{r}", "num_completions": 3}, (400, ["num_completions"])),
    ({"kind": "round", "round": "{r}", "mix": {"policy": 4, "other": 0}}, (400, ["mix"])),
    (
        {"kind": "round", "round": "{r}", "base_model_version": 123456789},
        (400, ["base_model_version"]),
    ),
]


@pytest.mark.parametrize(("body", "expected"), BAD_JOBS)
def test_bad_training_job_input_names_the_field(world, admin_user, body, expected):
    response = call(admin_user, "post", "/api/training-jobs/", _fill(body, world))
    assert _error(response) == expected, response.content


def test_bad_generation_requests_name_the_field(world, admin_user):
    _trained(world)
    url = f"/api/rounds/{world['round'].pk}/next/"
    cases = [
        ({"num_completions": 3}, "num_completions"),
        ({"mix": {"policy": 2}}, "mix"),
        ({"mix": {"policy": 2, "teacher": 2}}, "mix"),
        ({"config": {"num_completions": 3}}, "num_completions"),
        ({"config": {"temperature": "hot"}}, "config.temperature"),
        ({"campaign_ids": [999999]}, "campaign_ids"),
    ]
    for body, field in cases:
        response = call(admin_user, "post", url, body)
        assert _error(response) == (400, [field]), (body, response.content)
    # without a round, "previous" has no policy to come from
    response = call(
        admin_user,
        "post",
        "/api/training-jobs/",
        {
            "kind": "generate",
            "campaign_ids": [world["campaign"].pk],
            "target_campaign": annotation_services.campaign_create(
                created_by=admin_user, name="T"
            ).pk,
            "mix": {"policy": 2, "previous": 2},
        },
    )
    assert _error(response) == (400, ["mix"]), response.content


def test_bad_round_requests(world, admin_user, django_capture_on_commit_callbacks):
    cases = [
        ({"campaign": world["campaign"].pk}, 400, ["policy"]),
        ({"campaign": 999999, "policy": world["base"].pk}, 400, ["campaign"]),
        ({"campaign": world["campaign"].pk, "policy": world["reward"].pk}, 400, ["policy"]),
        (
            {"campaign": world["campaign"].pk, "policy": world["base"].pk, "reward_scope": "x"},
            400,
            ["reward_scope"],
        ),
        (
            {
                "campaign": world["campaign"].pk,
                "policy": world["base"].pk,
                "eval_settings": {"samples": 3},
            },
            400,
            ["eval_settings"],
        ),
        ({"campaign": world["campaign"].pk, "policy": world["base"].pk}, 409, ["campaign"]),
    ]
    for body, status, fields in cases:
        response = call(admin_user, "post", "/api/rounds/", body)
        assert _error(response) == (status, fields), (body, response.content)
    run = f"/api/rounds/{world['round'].pk}/run/"
    assert _error(call(admin_user, "post", run, {"update": "sft"})) == (400, ["update"])
    assert _error(call(admin_user, "post", run, {"config": {"x": {}}})) == (400, ["config.ppo.x"])
    assert call(admin_user, "get", "/api/rounds/abc/").status_code == 404
    assert call(admin_user, "get", "/api/rounds/999999/").status_code == 404
    assert call(admin_user, "get", f"/api/rounds/{2**63}/").status_code == 404
    assert _error(call(admin_user, "get", "/api/rounds/?campaign=x")) == (400, ["campaign"])
    # a completed round takes no more jobs
    Round.objects.filter(pk=world["round"].pk).update(status=Round.Status.COMPLETED)
    with django_capture_on_commit_callbacks(execute=False):
        response = call(admin_user, "post", run, {})
    assert response.status_code == 409 and response.json()["code"] == "round_completed"


def test_bad_job_and_version_lookups(world, admin_user):
    job = world["job"].pk
    assert _error(call(admin_user, "get", f"/api/training-jobs/{job}/metrics/?after=x")) == (
        400,
        ["after"],
    )
    huge = call(admin_user, "get", f"/api/training-jobs/{job}/metrics/?after={10**30}")
    assert huge.status_code == 200 and huge.json() == []
    assert call(admin_user, "get", "/api/training-jobs/999999/").status_code == 404
    assert call(admin_user, "get", "/api/model-versions/999999/").status_code == 404
    assert (
        call(admin_user, "post", f"/api/training-jobs/{world['failed'].pk}/cancel/").status_code
        == 409
    )
    assert call(admin_user, "post", f"/api/training-jobs/{job}/retry/").status_code == 409
    reward = {"kind": "reward", "name": "r", "path": "/m/r"}
    assert _error(call(admin_user, "post", "/api/model-versions/", reward)) == (400, ["kind"])
    assert _error(call(admin_user, "post", "/api/model-versions/", {"kind": "base"})) == (
        400,
        ["name", "path"],
    )
    assert ModelVersion.objects.filter(name="r").count() == 0
