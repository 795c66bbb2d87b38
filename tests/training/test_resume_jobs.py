"""Where a job keeps its checkpoints: one directory per job, shared by its attempts (a job
delivered again after its worker died resumes there) and by its retries."""

from __future__ import annotations

import pytest

from training import services
from training.models import TrainingJob

pytestmark = pytest.mark.django_db


def test_attempts_and_retries_of_a_job_share_its_checkpoint_directory(settings, tmp_path):
    settings.MODEL_STORE_DIR = tmp_path
    first = TrainingJob.objects.create(kind="ppo", params={})
    first.attempts = 2  # delivered again: a new model directory, the same checkpoints
    assert services.model_store_dir(first).name == f"ppo-{first.pk:06d}-2"
    assert services.checkpoint_dir(first) == tmp_path / "checkpoints" / f"ppo-{first.pk:06d}"
    retry = TrainingJob.objects.create(kind="ppo", params={"retry_of": first.pk})
    again = TrainingJob.objects.create(kind="ppo", params={"retry_of": retry.pk})
    assert services.checkpoint_dir(retry) == services.checkpoint_dir(first)
    assert services.checkpoint_dir(again) == services.checkpoint_dir(first)
    other = TrainingJob.objects.create(kind="dpo", params={})
    assert services.checkpoint_dir(other) != services.checkpoint_dir(first)
