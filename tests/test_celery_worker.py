"""A real Celery worker against Redis: a trivial task runs on each queue.

Needs ``REDIS_URL`` (CI sets it to the local Redis); skipped on the embedded default, whose
filesystem transport is exercised by test_embedded_broker.py.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from config.celery import app
from tests.conftest import celery_worker_command

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.celery_worker,
    pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL (a real Redis)"),
]


@pytest.fixture(scope="module")
def worker():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        celery_worker_command(queues="default,gpu", name="test-worker"),
        cwd=REPO,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            replies = app.control.ping(timeout=1.0)
            if any(name.startswith("test-worker@") for reply in replies for name in reply):
                break
            assert process.poll() is None, "the worker exited at start"
        else:
            pytest.fail("the worker did not answer a ping within 60 s")
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_trivial_task_runs_on_default_queue(worker):
    result = app.send_task("annotation.tasks.ping", args=["hello"], queue="default")
    assert result.get(timeout=30)["value"] == "hello"


def test_trivial_task_runs_on_gpu_queue(worker):
    result = app.send_task("training.tasks.worker_info", queue="gpu")
    info = result.get(timeout=60)
    assert info["torch"].startswith("2.") and info["device"]


def test_training_tasks_route_to_gpu_queue():
    route = app.amqp.router.route({}, "training.tasks.worker_info")
    assert route["queue"].name == "gpu"
    assert app.amqp.router.route({}, "annotation.tasks.ping")["queue"].name == "default"
