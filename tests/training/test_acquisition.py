"""Acquisition: the uncertainty score (pure), its determinism for a fixed reward model, the
acquisition job end to end, the task orders (sequential, seeded random, uncertainty) and the
API that queues the job."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from annotation import services as annotation_services
from annotation.errors import Conflict, InvalidInput
from annotation.models import Campaign, Completion, Task
from tests.conftest import client_for
from tests.factories import CampaignFactory, PromptFactory, UserFactory, make_tasks
from training import services
from training.jobs import KINDS, lifecycle
from training.jobs import acquisition as job_module
from training.jobs.base import RunContext
from training.ml import acquisition
from training.ml.config import RewardModelConfig
from training.ml.records import PreferencePair
from training.ml.reward_model import load_reward_model, train_reward_model
from training.models import ModelVersion, TrainingJob

WORDS = ("soup", "river", "cloud", "stone", "green", "quick", "music", "paper", "window")

# --- The score (pure) ---------------------------------------------------------------------------


def test_pair_entropy_by_hand():
    assert acquisition.pair_entropy(0.0) == 1.0
    p = 1 / (1 + math.exp(-2.0))
    expected = -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    assert acquisition.pair_entropy(2.0) == pytest.approx(expected)
    assert acquisition.pair_entropy(-2.0) == acquisition.pair_entropy(2.0)
    assert acquisition.pair_entropy(1e6) == 0.0


def test_task_uncertainty_by_hand():
    assert acquisition.task_uncertainty([0.5, 0.5, 0.5]) == 1.0
    # Pairs (0, 2), (0, 40), (2, 40): entropies H(2), ~0, ~0.
    assert acquisition.task_uncertainty([0.0, 2.0, 40.0]) == pytest.approx(
        acquisition.pair_entropy(2.0) / 3, abs=1e-12
    )
    with pytest.raises(ValueError):
        acquisition.task_uncertainty([1.0])
    with pytest.raises(ValueError):
        acquisition.task_uncertainty([1.0, math.nan])


scores = st.lists(st.floats(-50, 50, allow_nan=False), min_size=2, max_size=9)


@given(scores, st.floats(-100, 100, allow_nan=False), st.randoms())
def test_uncertainty_is_in_0_1_and_ignores_shift_and_order(values, shift, rng):
    value = acquisition.task_uncertainty(values)
    assert 0.0 <= value <= 1.0
    shuffled = [v + shift for v in values]
    rng.shuffle(shuffled)
    assert acquisition.task_uncertainty(shuffled) == pytest.approx(value, abs=1e-9)


@given(st.floats(0, 30, allow_nan=False), st.floats(0, 30, allow_nan=False))
def test_a_smaller_gap_is_more_uncertain(a, b):
    small, large = sorted((a, b))
    assert acquisition.task_uncertainty([0, small]) >= acquisition.task_uncertainty([0, large])


def test_order_is_priority_then_id():
    priorities = {5: 0.2, 3: 0.9, 9: 0.2, 1: 0.5}
    assert acquisition.acquisition_order(priorities) == [3, 1, 5, 9]
    assert acquisition.select_next(priorities, k=2) == [3, 1]
    assert acquisition.summary(priorities)["acquisition/top_tasks"] == [3, 1, 5, 9]


class FakeModel:
    """Scores a completion by its length; records the batches it was given."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def raw_scores(self, pairs, batch_size):
        self.calls.append(len(pairs))
        return [float(len(completion)) for _, completion in pairs]


def test_score_tasks_keeps_each_tasks_completion_order_and_reports_progress():
    tasks = [
        acquisition.TaskTexts(task_id=7, prompt="p", completions=("aa", "a", "aaaa")),
        acquisition.TaskTexts(
            task_id=2, prompt=[{"role": "user", "content": "q"}], completions=("a", "aaa")
        ),
    ]
    progress = []
    model = FakeModel()
    result = acquisition.score_tasks(
        model, tasks, chunk=2, on_progress=lambda *args: progress.append(args[:2])
    )
    assert result == {7: [2.0, 1.0, 4.0], 2: [1.0, 3.0]}
    assert model.calls == [2, 2, 1] and progress == [(2, 5), (4, 5), (5, 5)]
    with pytest.raises(acquisition.AcquisitionCancelled):
        acquisition.score_tasks(model, tasks, should_stop=lambda: True)


# --- A fixed reward model -----------------------------------------------------------------------


def marker_pairs(n: int = 120) -> list[PreferencePair]:
    rng = random.Random(0)

    def words(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return [
        PreferencePair(
            prompt=f"Question {i}: {words(3)}?",
            chosen=f" {words(2)} banana {words(2)}",
            rejected=f" {words(rng.randint(3, 6))}",
            prompt_id=i,
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_model_dir: Path) -> Path:
    """A tiny reward model trained for a few seconds to like the word 'banana'."""
    out = tmp_path_factory.mktemp("rm") / "reward"
    config = RewardModelConfig(
        num_epochs=2, learning_rate=1e-3, batch_size=16, max_length=32, eval_fraction=0.1, seed=0
    )
    train_reward_model(marker_pairs(), base_model=tiny_model_dir, output_dir=out, config=config)
    return out


def pool(n: int = 12) -> list[acquisition.TaskTexts]:
    rng = random.Random(1)
    return [
        acquisition.TaskTexts(
            task_id=100 + i,
            prompt=f"Question {i}: tell me?",
            completions=tuple(
                " ".join(rng.choice((*WORDS, "banana")) for _ in range(rng.randint(2, 6)))
                for _ in range(4)
            ),
        )
        for i in range(n)
    ]


def test_uncertainty_order_is_deterministic_for_a_fixed_model(reward_model_dir):
    tasks = pool()
    first = acquisition.uncertainty_priorities(
        acquisition.score_tasks(load_reward_model(reward_model_dir, device="cpu"), tasks)
    )
    again = acquisition.uncertainty_priorities(
        acquisition.score_tasks(
            load_reward_model(reward_model_dir, device="cpu"), list(reversed(tasks)), chunk=5
        )
    )
    assert first == pytest.approx(again, abs=1e-6)
    assert acquisition.acquisition_order(first) == acquisition.acquisition_order(again)
    assert len(set(first.values())) > 1  # the model tells the tasks apart


# --- The job, through the database --------------------------------------------------------------


def uncertainty_campaign(tasks: int = 6) -> Campaign:
    rng = random.Random(2)
    campaign = CampaignFactory(completions_per_task=3, overlap=1, task_order="uncertainty")
    groups = []
    for i in range(tasks):
        prompt = PromptFactory(campaign=campaign, text=f"Question {i}: tell me?")
        texts = {" ".join(rng.choice(WORDS) for _ in range(3)) + f" {i} {k}" for k in range(3)}
        completions = [Completion(prompt=prompt, text=t, source="t") for t in sorted(texts)]
        groups.append((prompt, Completion.objects.bulk_create(completions)))
    annotation_services.tasks_create(campaign=campaign, groups=groups)
    return campaign


def acquisition_job_create(**fields) -> TrainingJob:
    return lifecycle.job_create("acquisition", job_module.Request(created_by=None, **fields))


def reward_version(path: Path) -> ModelVersion:
    return services.model_version_register(kind="reward", name="rm", path=str(path))


@pytest.mark.django_db
def test_acquisition_job_stores_the_priorities_and_the_most_uncertain_task_is_served_first(
    reward_model_dir, django_capture_on_commit_callbacks
):
    campaign = uncertainty_campaign()
    gold = make_tasks(campaign, 1)[0]
    Task.objects.filter(pk=gold.pk).update(is_gold=True, gold_ranking={"1": 1})
    gold_priority = Task.objects.get(pk=gold.pk).priority
    version = reward_version(reward_model_dir)
    with django_capture_on_commit_callbacks(execute=False):
        job = acquisition_job_create(campaign=campaign)
    assert job.kind == "acquisition" and job.base_model == version
    lifecycle.job_run(job_id=job.pk, worker="in-process")
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.summary["applied"] and job.summary["tasks_updated"] == 6
    assert job.progress_step == job.progress_total == 18

    expected = acquisition.uncertainty_priorities(
        acquisition.score_tasks(
            load_reward_model(reward_model_dir), job_module.open_task_texts(campaign)
        )
    )
    stored = dict(campaign.tasks.filter(is_gold=False).values_list("pk", "priority"))
    assert stored == pytest.approx(expected, abs=1e-6)
    assert Task.objects.get(pk=gold.pk).priority == gold_priority  # gold tasks are not scored
    top = acquisition.acquisition_order(stored)[0]
    assert job.summary["acquisition/top_tasks"][0] == top

    user = UserFactory()
    annotation_services.campaign_add_members(campaign=campaign, users=[user])
    assert annotation_services.task_assign_next(labeller=user, campaign=campaign).task_id == top


@pytest.mark.django_db
def test_acquisition_jobs_are_queued_after_a_reward_model_for_uncertainty_campaigns(
    reward_model_dir, django_capture_on_commit_callbacks
):
    wanted = uncertainty_campaign(2)
    plain = CampaignFactory(task_order="random")
    closed = CampaignFactory(task_order="uncertainty", status="closed")
    version = reward_version(reward_model_dir)
    rm_job = TrainingJob.objects.create(
        kind="reward_model", params={"campaign_ids": [wanted.pk, plain.pk, closed.pk]}
    )
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        ctx = RunContext(
            job=rm_job, reporter=None, queue=lifecycle.job_create, run_step=lifecycle._run_step
        )
        jobs = job_module.after_reward_model(
            ctx, campaign_ids=rm_job.params["campaign_ids"], version=version
        )
    assert [j.campaign_id for j in jobs] == [wanted.pk]
    spec = KINDS["acquisition"].spec(jobs[0])
    assert spec.reward_model_version == version.pk and len(callbacks) == 1


@pytest.mark.django_db
def test_acquisition_job_is_refused_where_it_cannot_work(reward_model_dir):
    with pytest.raises(Conflict) as info:
        acquisition_job_create(campaign=CampaignFactory())
    assert info.value.field == "task_order"
    campaign = CampaignFactory(task_order="uncertainty")
    with pytest.raises(InvalidInput) as info:
        acquisition_job_create(campaign=campaign)
    assert info.value.field == "reward_model_version"  # no reward model yet
    policy = services.model_version_register(kind="policy", name="p", path="x")
    with pytest.raises(InvalidInput):
        acquisition_job_create(campaign=campaign, reward_model_version=policy)


@pytest.mark.django_db
def test_acquisition_api_is_admin_only_and_validates_its_input(
    admin_user, labeller, reward_model_dir, django_capture_on_commit_callbacks
):
    campaign = uncertainty_campaign(2)
    annotation_services.campaign_add_members(campaign=campaign, users=[labeller])
    url = f"/api/campaigns/{campaign.pk}/acquisition/"
    assert client_for(labeller).post(url, {}, format="json").status_code == 403
    admin = client_for(admin_user)
    response = admin.post(url, {"reward_model_version": "latest"}, format="json")
    assert response.status_code == 400 and "reward_model_version" in response.json()["errors"]
    response = admin.post(url, {"reward_model_version": 999_999}, format="json")
    assert response.status_code == 400 and "reward_model_version" in response.json()["errors"]
    version = reward_version(reward_model_dir)
    with django_capture_on_commit_callbacks(execute=False):
        response = admin.post(url, {"reward_model_version": version.pk}, format="json")
    assert response.status_code == 202, response.content
    assert TrainingJob.objects.get(pk=response.json()["job"]).kind == "acquisition"
    annotation_services.campaign_update(campaign=campaign, task_order="sequential")
    response = admin.post(url, {}, format="json")
    assert response.status_code == 409 and "task_order" in response.json()["errors"]


# --- Task orders --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_random_order_is_seeded_per_campaign_and_stable():
    campaign = CampaignFactory(task_order="random", overlap=1)
    tasks = make_tasks(campaign, 8)
    first = dict(campaign.tasks.values_list("pk", "priority"))
    assert len(set(first.values())) == 8 and all(0 <= p < 1 for p in first.values())
    assert first == {
        t.pk: annotation_services.random_priority(campaign_id=campaign.pk, seed=0, task_id=t.pk)
        for t in tasks
    }
    annotation_services.campaign_update(campaign=campaign, name="renamed")  # no reshuffle
    assert dict(campaign.tasks.values_list("pk", "priority")) == first
    annotation_services.campaign_update(campaign=campaign, order_seed=7)  # reshuffled
    second = dict(campaign.tasks.values_list("pk", "priority"))
    assert second != first
    annotation_services.campaign_update(campaign=campaign, order_seed=0)
    assert dict(campaign.tasks.values_list("pk", "priority")) == first

    user = UserFactory()
    annotation_services.campaign_add_members(campaign=campaign, users=[user])
    served = []
    while (a := annotation_services.task_assign_next(labeller=user, campaign=campaign)) is not None:
        served.append(a.task_id)
        annotation_services.assignment_skip(labeller=user, assignment=a, reason="order test")
    assert served == sorted(first, key=lambda pk: -first[pk])

    annotation_services.campaign_update(campaign=campaign, task_order="sequential")
    assert set(campaign.tasks.values_list("priority", flat=True)) == {0.0}


@pytest.mark.django_db
def test_started_tasks_still_come_before_priority():
    campaign = CampaignFactory(task_order="random", overlap=2)
    make_tasks(campaign, 5)
    users = [UserFactory() for _ in range(2)]
    annotation_services.campaign_add_members(campaign=campaign, users=users)
    first = annotation_services.task_assign_next(labeller=users[0], campaign=campaign)
    second = annotation_services.task_assign_next(labeller=users[1], campaign=campaign)
    assert first.task_id == second.task_id  # breadth first beats priority
    top = max(campaign.tasks.all(), key=lambda t: t.priority)
    assert first.task_id == top.pk
