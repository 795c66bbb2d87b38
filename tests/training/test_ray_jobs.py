"""Jobs over several nodes on a local Ray cluster: 2 "nodes" of 1 CPU process each, gloo; the
model published to an object store that every node reaches (fsspec's memory filesystem).

The job is created through the API and run by the lifecycle the Celery task calls. The two
torchruns are started by Ray actors in a placement group and meet at node 0's rendezvous port:
the path a 4 x 8 GPU cluster takes, with NCCL instead of gloo.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import ray
from transformers import AutoModelForSequenceClassification

from tests.conftest import client_for
from tests.helpers.training import labelled_marker_campaign
from training import services
from training.jobs import lifecycle
from training.ml.launch import DistributedTrainingError
from training.ml.ray_launch import RayBackend, connect
from training.models import JobMetric, ModelVersion, TrainingJob

TWO_NODES = {"nodes": 2, "gpus": 1, "device": "cpu"}
FAST = {
    "num_epochs": 2,
    "learning_rate": 1e-3,
    "batch_size": 16,
    "max_length": 48,
    "eval_fraction": 0.2,
    "seed": 0,
}


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs, this process its driver as a gpu worker is (a worker joins
    an existing cluster through ``RAY_ADDRESS`` instead: ``training.ml.ray_launch.connect``)."""
    ray.init(
        address="local",  # a new cluster, whatever else runs on this machine
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


def create_job(admin_user, campaign, base, **config) -> TrainingJob:
    """A 2-node reward-model job, created through the API as the dashboard creates it."""
    response = client_for(admin_user).post(
        "/api/training-jobs/",
        {
            "kind": "reward_model",
            "campaign_ids": [campaign.pk],
            "base_model_path": str(base),
            "config": {**FAST, **TWO_NODES, **config},
            "name": "rm-on-ray",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    return TrainingJob.objects.get(pk=response.json()["id"])


def _placement_groups_left() -> list[str]:
    return [
        group["placement_group_id"]
        for group in ray.util.placement_group_table().values()
        if group["state"] != "REMOVED"
    ]


def test_a_job_over_nodes_without_a_cluster_says_to_set_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(DistributedTrainingError, match="set RAY_ADDRESS"):
        connect()


@pytest.mark.django_db
def test_reward_model_job_on_two_ray_nodes_registers_a_version(
    ray_cluster, admin_user, tiny_model_dir, tmp_path, settings, django_capture_on_commit_callbacks
):
    settings.MODEL_STORE_DIR = tmp_path / "models"
    settings.MODEL_STORE_URL = f"memory://models-{tmp_path.name}"  # an object store, as S3
    campaign = labelled_marker_campaign()
    with django_capture_on_commit_callbacks(execute=False):  # no broker: run in this process
        job = create_job(admin_user, campaign, tiny_model_dir)
    job = lifecycle.job_run(job_id=job.pk, worker="in-process")

    assert job.status == TrainingJob.Status.SUCCEEDED, job.error
    assert job.params["config"]["nodes"] == 2
    assert job.progress_step == job.progress_total > 0
    steps = list(JobMetric.objects.filter(job=job).values_list("step", flat=True))
    assert steps == sorted(steps) and len(steps) >= job.progress_total  # progress rows
    assert job.summary["metrics"]["eval/accuracy"] > 0.9
    version = job.result_version
    assert version.kind == ModelVersion.Kind.REWARD and version.created_by_job_id == job.pk
    # registered by its URL in the object store; any worker loads it through its cache
    assert version.path == f"{settings.MODEL_STORE_URL}/reward_model-{job.pk:06d}"
    local = services.model_path(version.path)
    assert local.startswith(str(tmp_path / "models" / "cache"))
    model = AutoModelForSequenceClassification.from_pretrained(local)
    assert model.config.num_labels == 1
    store = tmp_path / "models"
    assert not [p for p in store.iterdir() if p.name.startswith(".")]  # no staging left
    assert "uploading the model to memory://" in job.log_tail
    assert _placement_groups_left() == []


@pytest.mark.django_db
def test_cancelling_the_job_stops_every_node_and_writes_nothing(
    ray_cluster, admin_user, tiny_model_dir, tmp_path, settings, django_capture_on_commit_callbacks
):
    settings.MODEL_STORE_DIR = tmp_path / "models"
    campaign = labelled_marker_campaign()
    with django_capture_on_commit_callbacks(execute=False):
        job = create_job(admin_user, campaign, tiny_model_dir, num_epochs=50)

    def cancel_once_training(step: int, total: int) -> None:  # as an admin would, mid-run
        if step == 1:
            lifecycle.job_cancel(job=TrainingJob.objects.get(pk=job.pk))

    job = lifecycle.job_run(job_id=job.pk, worker="in-process", follow=cancel_once_training)

    assert job.status == TrainingJob.Status.CANCELLED
    assert 0 < job.progress_step < job.progress_total  # stopped while training
    assert job.result_version is None
    store = tmp_path / "models"
    assert not store.exists() or not [p for p in store.iterdir() if "reward_model" in p.name]
    assert _placement_groups_left() == []
    leftovers = subprocess.run(
        ["pgrep", "-f", f"training.ml train-reward .*{tmp_path}"], capture_output=True, text=True
    )
    assert leftovers.stdout == ""  # every node's torchrun and ranks stopped


@pytest.mark.django_db
def test_a_failing_rank_fails_the_job_with_its_traceback(
    ray_cluster, admin_user, tiny_model_dir, tmp_path, settings, django_capture_on_commit_callbacks
):
    settings.MODEL_STORE_DIR = tmp_path / "models"
    broken = tmp_path / "base"
    shutil.copytree(tiny_model_dir, broken)
    campaign = labelled_marker_campaign()
    with django_capture_on_commit_callbacks(execute=False):
        job = create_job(admin_user, campaign, broken)
    for weights in broken.glob("*.safetensors"):
        weights.unlink()  # the ranks cannot load the model: every node's rank raises

    with pytest.raises(DistributedTrainingError):  # stored on the job, then raised to Celery
        lifecycle.job_run(job_id=job.pk, worker="in-process")

    job.refresh_from_db()
    assert job.status == TrainingJob.Status.FAILED
    assert "2 nodes x 1 processes (Ray) failed" in job.error
    assert "OSError: Error no file named model.safetensors" in job.error  # the rank's exception
    assert "[node 1]" in job.error  # and the tail of every node's stderr
    assert job.result_version is None
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("*.json"))
    assert _placement_groups_left() == []


def test_a_cluster_without_room_is_refused_with_what_it_has(ray_cluster):
    backend = RayBackend(nodes=3, device="cpu", placement_timeout=1)  # 3 x 1 CPU on 2 CPUs
    with pytest.raises(DistributedTrainingError, match="no room for 3 nodes"):
        backend.start(["-m", "training.ml", "--help"], nproc=1, env={})
    assert _placement_groups_left() == []
