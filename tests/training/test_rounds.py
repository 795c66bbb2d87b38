"""RLHF rounds: the round services, the ppo / dpo / generate / round job runners (in-process, on
the tiny untrained model with a handful of steps: structure, not quality; the quality test is
test_loop_e2e.py), the chained job's steps, cancellation and failures."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from django.db import connection

from annotation import services as annotation_services
from annotation.errors import Conflict, InvalidInput
from annotation.models import Campaign, Completion, Prompt
from tests.conftest import client_for
from tests.helpers.rounds import EVAL, PROMPTS
from training import exports, rounds, selectors, services
from training.jobs import KINDS, generate, lifecycle
from training.jobs.base import config_from_dict
from training.jobs.round import RoundConfig
from training.ml.config import PPOConfig, SamplingConfig
from training.ml.generation import Completion as Sampled
from training.models import ModelVersion, Round, TrainingJob
from training.rounds import GeneratedCompletion

pytestmark = pytest.mark.django_db

TINY_PPO = {
    "total_steps": 2,
    "rollout_batch_size": 4,
    "mini_batch_size": 2,
    "ppo_epochs": 1,
    "max_new_tokens": 6,
    "temperature": 1.0,
    "learning_rate": 1e-3,
    "missing_eos_penalty": None,
    "device": "cpu",
}
TINY_RM = {"num_epochs": 1, "learning_rate": 1e-3, "batch_size": 8, "max_length": 48}
TINY_DPO = {"batch_size": 4, "learning_rate": 1e-4, "max_completion_tokens": 16, "device": "cpu"}
TINY_SAMPLING = {"max_new_tokens": 6, "temperature": 1.0, "device": "cpu"}


@pytest.fixture
def reward_version(loop, tmp_path) -> ModelVersion:
    """A stand-in reward model: the tiny backbone with a fresh scalar head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "rm"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(
        loop.base.path, num_labels=1
    ).save_pretrained(out)
    AutoTokenizer.from_pretrained(loop.base.path).save_pretrained(out)
    return services.model_version_register(kind="reward", name="rm", path=str(out))


def create(loop, capture, *, kind: str, **form) -> TrainingJob:
    with capture(execute=False):
        request = KINDS[kind].Request(created_by=loop.admin, **form)
        return lifecycle.job_create(kind, request, from_form=True)


def run(job: TrainingJob) -> TrainingJob:
    job = lifecycle.job_run(job_id=job.pk, worker="in-process")
    assert job.status == TrainingJob.Status.SUCCEEDED, job.error
    return job


# --- Services ------------------------------------------------------------------------------------


def test_round_start_numbers_the_round_after_its_campaign_and_refuses_a_second(loop):
    rnd = loop.round
    assert rnd.number == 0 and rnd.status == Round.Status.COLLECTING
    assert rnd.policy_before == rnd.reference == loop.base
    assert rnd.eval_settings["samples_per_prompt"] == 2 and rnd.eval_settings["seed"] == 1234
    with pytest.raises(Conflict) as exc:
        rounds.round_start(campaign=loop.campaign, policy=loop.base, created_by=None)
    assert exc.value.field == "campaign"
    with pytest.raises(InvalidInput) as exc:
        rounds.round_start(
            campaign=Campaign.objects.create(name="x", team=loop.campaign.team),
            policy=loop.base,
            eval_settings={"temperature": 0},
            created_by=None,
        )
    assert exc.value.field == "eval_settings"


def test_round_status_only_moves_forward(loop):
    with pytest.raises(Conflict):  # collecting → completed skips the update
        rounds.round_open_next(
            round_id=loop.round.pk, policy=None, prompt_ids=[], completions=[], created_by=None
        )
    rounds.round_record_policy_update(round_id=loop.round.pk, version=loop.base, evaluation={})
    rounds.round_record_policy_update(round_id=loop.round.pk, version=loop.base, evaluation={})
    Round.objects.filter(pk=loop.round.pk).update(status=Round.Status.COMPLETED)
    with pytest.raises(Conflict):
        rounds.round_record_policy_update(round_id=loop.round.pk, version=loop.base, evaluation={})
    with pytest.raises(Conflict):
        rounds.round_record_reward_model(round_id=loop.round.pk, version=loop.base)


def test_job_parameters_default_to_the_rounds(
    loop, reward_version, django_capture_on_commit_callbacks
):
    with pytest.raises(InvalidInput) as exc:  # no reward model on the round yet
        create(loop, django_capture_on_commit_callbacks, kind="ppo", round=loop.round)
    assert exc.value.field == "reward_model_version"
    rounds.round_record_reward_model(round_id=loop.round.pk, version=reward_version)
    loop.round.refresh_from_db()

    job = create(loop, django_capture_on_commit_callbacks, kind="ppo", round=loop.round)
    assert job.round == loop.round and job.base_model == loop.base
    spec = KINDS["ppo"].spec(job)
    assert spec.campaign_ids == [loop.campaign.pk]
    assert spec.reward_model_version == reward_version.pk
    assert spec.reference_model_version == loop.base.pk
    assert dataclasses.asdict(spec.evaluation) == loop.round.eval_settings

    rm = create(loop, django_capture_on_commit_callbacks, kind="reward_model", round=loop.round)
    rm_spec = KINDS["reward_model"].spec(rm)
    assert rm.base_model == loop.base and rm_spec.campaign_ids == [loop.campaign.pk]
    assert rm_spec.reference_model_version == loop.base.pk and rm_spec.round == loop.round.pk

    chained = create(loop, django_capture_on_commit_callbacks, kind="round", round=loop.round)
    chained_spec = KINDS["round"].spec(chained)
    assert chained_spec.num_completions == 3 and chained_spec.mix == {"policy": 3}
    assert set(chained.params["config"]) == {"reward_model", "ppo", "dpo", "sampling"}
    assert chained_spec.config == RoundConfig(sampling=SamplingConfig(num_completions=3))
    lifecycle.job_cancel(job=chained)  # one whole round at a time
    flat = create(
        loop,
        django_capture_on_commit_callbacks,
        kind="round",
        campaign_ids=[loop.campaign.pk],
        config={"total_steps": 3},
    )
    flat_config = KINDS["round"].spec(flat).config
    assert flat.round == loop.round and flat_config.ppo == PPOConfig(total_steps=3)
    assert flat_config == RoundConfig(
        ppo=PPOConfig(total_steps=3), sampling=SamplingConfig(num_completions=3)
    )


def test_config_from_dict_refuses_unknown_fields_and_wrong_types():
    assert config_from_dict(PPOConfig, {"kl_coef": 1, "device": None}).kl_coef == 1
    assert config_from_dict(PPOConfig, {"lora_target_modules": ["q_proj"]})
    for bad in (
        {"kl_coeff": 0.1},
        {"kl_coef": "0.1"},
        {"total_steps": 2.5},
        {"adaptive_kl": 1},
        {"value_init": "random"},
        {"total_steps": 0},
        {"lora_target_modules": [1]},
    ):
        with pytest.raises(ValueError):
            config_from_dict(PPOConfig, bad)


def test_preference_pairs_are_keyed_by_prompt_content(loop):
    pairs = exports.preference_pairs(campaign_ids=[loop.campaign.pk])
    assert len(pairs) == 3 * len(PROMPTS)  # 3 pairs per ranking of 3, no ties
    assert {p.prompt_id for p in pairs} == {exports.prompt_key(p) for p in PROMPTS}


def test_held_out_prompts_are_stable_and_both_sides_are_kept(loop):
    records = exports.campaign_prompts(campaign_ids=[loop.campaign.pk])
    train, held = exports.held_out_split(records, fraction=0.25)
    assert held and train and len(train) + len(held) == len(PROMPTS)
    _, again_held = exports.held_out_split(list(reversed(records)), fraction=0.25)
    assert {r.key for r in again_held} == {r.key for r in held}
    assert exports.held_out_split(records, fraction=0.0) == (records, [])
    one = records[:1]
    assert exports.held_out_split(one, fraction=0.9) == (one, [])


def test_generated_tasks_copy_foreign_prompts_and_keep_their_root(loop, admin_user):
    target = annotation_services.campaign_create(
        created_by=admin_user, name="Next", completions_per_task=3
    )
    source = loop.campaign.prompts.order_by("id")[:2]
    completions = [
        [GeneratedCompletion(f"reply {i}{j}", "policy:tiny", loop.base.pk) for j in range(3)]
        for i in range(2)
    ]
    tasks = rounds.generated_tasks_store(
        campaign=target, prompt_ids=[p.pk for p in source], completions=completions
    )
    assert len(tasks) == 2 and target.prompts.count() == 2
    copy = target.prompts.order_by("id").first()
    assert copy.text == source[0].text and copy.metadata["root_prompt"] == source[0].pk
    assert exports.prompt_key(copy.text) == exports.prompt_key(source[0].text)
    with pytest.raises(InvalidInput):  # N = 3 completions per task
        rounds.generated_tasks_store(
            campaign=target, prompt_ids=[source[0].pk], completions=[completions[0][:2]]
        )


# --- Runners -------------------------------------------------------------------------------------


def test_generate_job_fills_the_prompts_without_tasks_and_records_sources(
    loop, admin_user, django_capture_on_commit_callbacks
):
    campaign = annotation_services.campaign_create(
        created_by=admin_user, name="Fresh", completions_per_task=3, overlap=1
    )
    Prompt.objects.bulk_create([Prompt(campaign=campaign, text=p) for p in PROMPTS[:4]])
    job = create(
        loop,
        django_capture_on_commit_callbacks,
        kind="generate",
        campaign_ids=[campaign.pk],
        base_model_version=loop.base,
        reference_model_version=loop.base,
        mix={"policy": 2, "reference": 1},
        config=TINY_SAMPLING,
    )
    job = run(job)
    assert campaign.tasks.count() == 4 and job.summary["campaign"] == campaign.pk
    assert job.progress_step == job.progress_total == 2
    completions = Completion.objects.filter(prompt__campaign=campaign)
    assert completions.count() == 12
    assert sorted(set(completions.values_list("source", flat=True))) == [
        "policy:tiny",
        "reference:tiny",
    ]
    assert set(completions.values_list("model_version", flat=True)) == {loop.base.pk}
    assert all(t.completions.count() == 3 for t in campaign.tasks.all())
    with pytest.raises(InvalidInput) as exc:  # nothing left without a task
        create(
            loop, django_capture_on_commit_callbacks, kind="generate", campaign_ids=[campaign.pk]
        )
    assert exc.value.field == "campaign_ids"


def test_empty_samples_are_drawn_again_then_marked(monkeypatch):
    from training.ml import generation

    calls = []

    def fake(path, prompts, config, *, should_stop=None):
        calls.append(config.seed)
        text = "" if len(calls) < 3 else "late"
        return [[Sampled(i, text if i == 0 else "ok", (1,), True)] for i in range(len(prompts))]

    monkeypatch.setattr(generation, "generate_completions", fake)
    rows, empty = generate.sample(
        "model", ["a", "b"], SamplingConfig(num_completions=1), should_stop=lambda: False
    )
    assert [c.text for row in rows for c in row] == ["late", "ok"] and empty == 0
    assert len(set(calls)) == 3  # each retry with another seed

    calls.clear()
    monkeypatch.setattr(
        generation,
        "generate_completions",
        lambda path, prompts, config, should_stop=None: [[Sampled(0, "", (), False)]],
    )
    rows, empty = generate.sample(
        "model", ["a"], SamplingConfig(num_completions=1), should_stop=lambda: False
    )
    assert empty == 1


def test_reward_model_job_for_a_round_records_its_reward_model(
    loop, django_capture_on_commit_callbacks
):
    job = run(
        create(
            loop,
            django_capture_on_commit_callbacks,
            kind="reward_model",
            round=loop.round,
            config=TINY_RM,
        )
    )
    loop.round.refresh_from_db()
    assert loop.round.reward_model == job.result_version
    assert job.result_version.kind == ModelVersion.Kind.REWARD


def test_ppo_job_registers_an_evaluated_policy_on_the_round(
    loop, reward_version, django_capture_on_commit_callbacks
):
    job = run(
        create(
            loop,
            django_capture_on_commit_callbacks,
            kind="ppo",
            round=loop.round,
            reward_model_version=reward_version,
            config=TINY_PPO,
        )
    )
    version = job.result_version
    assert version.kind == ModelVersion.Kind.POLICY and version.parent == loop.base
    assert Path(version.path, "ppo_run.json").is_file()
    assert job.progress_step == job.progress_total == 2
    loop.round.refresh_from_db()
    assert loop.round.status == Round.Status.TRAINED and loop.round.policy_after == version
    evaluation = loop.round.evaluation
    records = exports.campaign_prompts(campaign_ids=[loop.campaign.pk])
    train, held_out = exports.held_out_split(records, fraction=EVAL["eval_fraction"])
    assert evaluation["algorithm"] == "ppo" and evaluation["held_out_prompts"] == len(held_out)
    assert job.summary["prompts"] == len(train)  # the held-out ones are not trained on
    before, after = evaluation["policy_before"], evaluation["policy_after"]
    assert before["kl_ref"] == pytest.approx(0.0, abs=1e-5)  # the reference is the base
    assert after["kl_ref"] != 0 and "kl_previous" in after
    for result in (before, after):
        assert result["samples"] == 2 * len(held_out) and isinstance(result["reward"], float)
        assert isinstance(result["gold_score"], float)
        # one sample per held-out prompt, the same prompts for both policies
        assert len(result["examples"]) == min(4, len(held_out))
        assert [e["prompt"] for e in result["examples"]] == [r.prompt for r in held_out][:4]
    assert set(evaluation["delta"]) == {"reward", "gold_score", "kl_ref"}
    assert "eval/gold_score" in version.metrics


def test_dpo_job_updates_the_round_from_its_pairs(
    loop, reward_version, django_capture_on_commit_callbacks
):
    rounds.round_record_reward_model(round_id=loop.round.pk, version=reward_version)
    loop.round.refresh_from_db()
    job = run(
        create(
            loop, django_capture_on_commit_callbacks, kind="dpo", round=loop.round, config=TINY_DPO
        )
    )
    loop.round.refresh_from_db()
    assert loop.round.policy_after == job.result_version
    assert job.result_version.parent == loop.base
    assert job.summary["counts"]["pairs"] > 0
    assert loop.round.evaluation["algorithm"] == "dpo"
    assert isinstance(loop.round.evaluation["policy_after"]["reward"], float)


def test_next_round_opens_a_campaign_like_the_last_one(
    loop, labeller, django_capture_on_commit_callbacks
):
    policy = services.model_version_register(
        kind="policy", name="tiny-ppo", path=loop.base.path, parent=loop.base
    )
    rounds.round_record_policy_update(round_id=loop.round.pk, version=policy, evaluation={})
    loop.round.refresh_from_db()
    job = create(
        loop,
        django_capture_on_commit_callbacks,
        kind="generate",
        round=loop.round,
        mix={"policy": 2, "previous": 1},
        config=TINY_SAMPLING,
    )
    stale = create(loop, django_capture_on_commit_callbacks, kind="generate", round=loop.round)
    job = run(job)

    loop.round.refresh_from_db()
    following = loop.round.next_round
    new = following.campaign
    assert loop.round.status == Round.Status.COMPLETED and loop.round.next_campaign == new
    assert job.summary["next_round"] == following.pk and job.summary["campaign"] == new.pk
    assert (following.number, new.round_number, new.name) == (1, 1, "Round zero · round 1")
    assert following.previous == loop.round and following.policy_before == policy
    assert following.reference == loop.base and following.eval_settings == loop.round.eval_settings
    old = loop.campaign
    for name in ("completions_per_task", "overlap", "allow_ties", "allow_fail", "description"):
        assert getattr(new, name) == getattr(old, name), name
    assert new.status == Campaign.Status.DRAFT  # the admin activates it after the report
    assert job.summary["tasks_dropped"] == 0 and job.summary["empty_completions"] == 0
    assert len(job.summary["samples"]) == min(generate.SAMPLE_PROMPTS, len(PROMPTS))
    assert list(new.guidelines.values_list("version", "text")) == [
        (1, "# Prefer kind, clear answers")
    ]
    assert list(new.memberships.values_list("user", flat=True)) == [labeller.pk]
    assert new.tasks.count() == len(PROMPTS) and new.prompts.count() == len(PROMPTS)
    sources = Completion.objects.filter(prompt__campaign=new)
    assert set(sources.values_list("source", flat=True)) == {"policy:tiny-ppo", "previous:tiny"}
    assert {(c.metadata["role"], c.model_version_id) for c in sources} == {
        ("policy", policy.pk),
        ("previous", loop.base.pk),
    }
    roots = {p.metadata["root_prompt"] for p in new.prompts.all()}
    assert roots == set(old.prompts.values_list("pk", flat=True))
    assert selectors.round_reward_campaign_ids(round=following) == [old.pk, new.pk]

    # the round is completed: a second "next" is refused, and a stale queued one fails cleanly
    with pytest.raises(Conflict):
        create(loop, django_capture_on_commit_callbacks, kind="generate", round=loop.round)
    with pytest.raises(Conflict):
        lifecycle.job_run(job_id=stale.pk, worker="in-process")
    stale.refresh_from_db()
    assert stale.status == TrainingJob.Status.FAILED and "completed" in stale.error
    assert Campaign.objects.filter(round_number=1).count() == 1


def test_round_job_runs_reward_model_update_and_generation_as_steps(
    loop, django_capture_on_commit_callbacks, monkeypatch
):
    followed: list[tuple[int, int, int]] = []
    progress = lifecycle.JobReporter.progress

    def record(reporter, step: int, total: int) -> None:
        followed.append((reporter.job_id, step, total))
        progress(reporter, step, total)

    monkeypatch.setattr(lifecycle.JobReporter, "progress", record)
    chained = create(
        loop,
        django_capture_on_commit_callbacks,
        kind="round",
        round=loop.round,
        config={
            "reward_model": TINY_RM,
            "ppo": {**TINY_PPO, "total_steps": 1},
            "sampling": TINY_SAMPLING,
        },
    )
    chained = run(chained)
    steps = list(chained.steps.order_by("id"))
    assert [s.kind for s in steps] == ["reward_model", "ppo", "generate"]
    assert all(s.status == "succeeded" and s.round_id == loop.round.pk for s in steps)
    assert not any(s.celery_task_id for s in steps)  # run by the round job, never queued
    # each step is 100 units of the round job's progress, which follows the running step
    assert chained.progress_step == chained.progress_total == 300
    steps_done = chained.metric_rows.order_by("step").values_list("step", "values")
    assert [(s, v["round/steps_done"]) for s, v in steps_done] == [(100, 1), (200, 2), (300, 3)]
    # while a step ran, the round job's bar moved inside that step's 100 units
    mine = [(step, total) for job_id, step, total in followed if job_id == chained.pk]
    assert all(total == 300 for _, total in mine)
    assert 0 in {step // 100 for step, _ in mine if step % 100}  # inside the reward model's
    assert chained.summary["steps"] == {s.kind: s.pk for s in steps}
    loop.round.refresh_from_db()
    assert loop.round.reward_model == steps[0].result_version
    assert loop.round.policy_after == steps[1].result_version
    assert chained.summary["next_campaign"] == loop.round.next_campaign_id
    assert [s.name for s in (steps[0].result_version, steps[1].result_version)] == [
        "round-0-reward-model",
        "round-0-ppo",
    ]


def test_a_failing_step_fails_the_round_job(loop, monkeypatch, django_capture_on_commit_callbacks):
    def broken(spec, ctx):
        raise RuntimeError("the GPU caught fire")

    monkeypatch.setattr(KINDS[TrainingJob.Kind.PPO], "run", broken)
    chained = create(
        loop,
        django_capture_on_commit_callbacks,
        kind="round",
        round=loop.round,
        config={"reward_model": TINY_RM},
    )
    with pytest.raises(RuntimeError, match="caught fire"):
        lifecycle.job_run(job_id=chained.pk, worker="in-process")
    chained.refresh_from_db()
    rm, ppo = chained.steps.order_by("id")
    assert chained.status == ppo.status == "failed" and rm.status == "succeeded"
    assert "caught fire" in chained.error and "caught fire" in ppo.error
    loop.round.refresh_from_db()
    assert loop.round.status == Round.Status.COLLECTING and loop.round.reward_model is not None


def test_cancelling_a_round_job_reaches_its_running_step(loop, django_capture_on_commit_callbacks):
    chained = create(loop, django_capture_on_commit_callbacks, kind="round", round=loop.round)
    step = create(
        loop,
        django_capture_on_commit_callbacks,
        kind="reward_model",
        round=loop.round,
        parent=chained,
    )
    reporter = lifecycle.JobReporter(step, token=step.attempt_token)
    assert not reporter.should_stop()
    TrainingJob.objects.filter(pk=chained.pk).update(status="running")
    lifecycle.job_cancel(job=chained)
    reporter._checked_at = 0.0
    assert reporter.should_stop()


@pytest.mark.celery_worker
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL (a real Redis)")
@pytest.mark.skipif(connection.vendor != "postgresql", reason="the worker needs a shared database")
def test_round_job_through_a_real_gpu_queue_worker(loop, tmp_path):
    """The chained job on a real Celery worker: its steps are created and run in the worker."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "MODEL_STORE_DIR": str(tmp_path / "models"),
        "TRAINING_HEARTBEAT_SECONDS": "2",
        "OMP_NUM_THREADS": "2",
    }
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "gpu"),
            *("--concurrency", "1", "--prefetch-multiplier", "1", "--pool", "solo"),
            *("--without-gossip", "--without-mingle", "-n", "round-test@%h"),
            *("--loglevel", "WARNING"),
        ],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
    )
    try:
        body = {
            "config": {
                "reward_model": TINY_RM,
                "ppo": {**TINY_PPO, "total_steps": 1},
                "sampling": TINY_SAMPLING,
            }
        }
        response = client_for(loop.admin).post(
            f"/api/rounds/{loop.round.pk}/run/", body, format="json"
        )
        assert response.status_code == 201, response.content
        job = TrainingJob.objects.get(pk=response.json()["id"])
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            job.refresh_from_db()
            if job.finished:
                break
            assert worker.poll() is None, "the worker died"
            time.sleep(0.5)
        assert job.status == "succeeded", job.error
        assert job.worker.startswith("round-test@") and job.celery_task_id
        steps = list(job.steps.order_by("id"))
        assert [s.kind for s in steps] == ["reward_model", "ppo", "generate"]
        assert all(s.worker == job.worker and s.heartbeat_at for s in steps)
        loop.round.refresh_from_db()
        assert loop.round.status == Round.Status.COMPLETED
        assert loop.round.next_round.campaign.tasks.count() == len(PROMPTS)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
