"""The embedded default (no REDIS_URL): a real Celery worker on the filesystem transport runs a
task, and every file the broker writes stays under the var directory, not wherever the process
was started (kombu's default control folder is ./control)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import celery_worker_command

REPO = Path(__file__).resolve().parent.parent

SEND = (
    "from config.celery import app; "
    "print(app.send_task('annotation.tasks.ping', args=['hello'], queue='default')"
    ".get(timeout=60)['value'])"
)


@pytest.mark.celery_worker
def test_a_task_round_trips_through_the_filesystem_broker(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(
        RLHF_VAR_DIR=str(tmp_path / "var"),
        PYTHONPATH=str(REPO),
        DJANGO_SETTINGS_MODULE="config.settings",
        OMP_NUM_THREADS="1",
    )
    worker = subprocess.Popen(
        celery_worker_command(queues="default", name="embedded"),
        cwd=tmp_path,
        env=env,
    )
    try:
        client = subprocess.run(
            [sys.executable, "-c", SEND],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert client.returncode == 0, client.stderr[-2000:]
        assert client.stdout.strip() == "hello"
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert not (tmp_path / "control").exists()
    assert (tmp_path / "var" / "celery" / "control" / "default.exchange").is_file()
