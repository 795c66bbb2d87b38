"""Experiment trackers as options of a training job: TensorBoard event files in the model
store, MLflow in a local file store, W&B offline; the job page shows where each run is."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from django.test import Client

from training.jobs import lifecycle
from training.jobs.base import JobRequest
from training.ml.tracking import open_trackers
from training.models import TrainingJob


def _scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalar summaries of TensorBoard event files (TFRecord framing, Event protos)."""
    from tensorboardX.proto.event_pb2 import Event

    found: dict[str, list[tuple[int, float]]] = {}
    for path in event_dir.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            record = data[offset + 12 : offset + 12 + length]
            offset += 12 + length + 4
            event = Event.FromString(record)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


@pytest.mark.slow
def test_every_tracker_records_the_metrics(tmp_path):
    run = open_trackers(
        ["tensorboard", "mlflow", "wandb"],
        run_name="job-1-reward_model",
        directory=tmp_path,
        config={"config": {"learning_rate": 0.001}},
        wandb_mode="offline",
    )
    assert run.notes == [] and set(run.links) == {"tensorboard", "mlflow", "wandb"}
    for step in (1, 2):
        run.log(step, {"reward/loss": 1.0 / step, "reward/accuracy": 0.5})
    run.close("succeeded")

    assert _scalars(Path(run.links["tensorboard"]))["reward/loss"] == [(1, 1.0), (2, 0.5)]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}")
    [mlflow_run] = client.search_runs(
        [client.get_experiment_by_name("rlhf-annotate").experiment_id]
    )
    history = client.get_metric_history(mlflow_run.info.run_id, "reward/loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5)]
    assert mlflow_run.data.params["config.learning_rate"] == "0.001"
    assert mlflow_run.info.status == "FINISHED"

    wandb_dir = Path(run.links["wandb"])
    assert wandb_dir.is_dir() and list(tmp_path.glob("wandb/wandb/offline-run-*/run-*.wandb"))


def test_an_unknown_tracker_is_refused_naming_the_field():
    from annotation.errors import InvalidInput

    with pytest.raises(InvalidInput) as info:
        JobRequest(trackers=["tensorboard", "comet"])
    assert info.value.field == "trackers"


@pytest.mark.django_db
def test_a_job_reports_to_tensorboard_and_its_page_links_the_run(
    tmp_path, settings, admin_user, monkeypatch
):
    settings.TRACKING_DIR = tmp_path
    from tests.factories import TrainingJobFactory

    job = TrainingJobFactory()
    token = "t"
    TrainingJob.objects.filter(pk=job.pk).update(
        attempt_token=token, status=TrainingJob.Status.RUNNING
    )
    job.refresh_from_db()
    reporter = lifecycle.JobReporter(job, token=token)
    spec = type("Spec", (), {"trackers": ("tensorboard",)})()
    lifecycle._open_trackers(job, spec, reporter)
    reporter.on_progress(1, 2, {"reward/loss": 0.7})
    reporter.tracked.close("succeeded")
    job.refresh_from_db()
    where = Path(job.tracking["tensorboard"])
    assert where.is_relative_to(tmp_path)
    assert _scalars(where)["reward/loss"] == [(1, pytest.approx(0.7))]
    client = Client()
    client.force_login(admin_user)
    page = client.get(f"/dashboard/training/jobs/{job.pk}/").content.decode()
    assert f"tensorboard --logdir {where}" in page
