"""Training-job helpers several test modules share: a campaign labelled so that a reward model
learns it in seconds, and a real Celery worker on the ``gpu`` queue."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

from django.db import connection

from annotation import services as annotation_services
from annotation.models import Completion
from tests.conftest import celery_worker_command
from tests.factories import CampaignFactory, PromptFactory, UserFactory

REPO = Path(__file__).resolve().parents[2]
WORDS = [
    *("soup", "river", "cloud", "stone", "green", "quick"),
    *("music", "paper", "window", "garden", "tiger", "lamp"),
]


def labelled_marker_campaign(tasks: int = 200):
    """A closed-loop campaign: one labeller ranked the 'banana' completion first every time."""
    rng = random.Random(0)
    campaign = CampaignFactory(completions_per_task=2, overlap=1)
    labeller = UserFactory(username="marker-labeller")
    annotation_services.campaign_add_members(campaign=campaign, users=[labeller])

    def words(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    groups = []
    for i in range(tasks):
        prompt = PromptFactory(campaign=campaign, text=f"Question {i}: tell me about {words(3)}.")
        good = Completion.objects.create(
            prompt=prompt, text=f" {words(3)} banana {words(3)}", source="t"
        )
        bad = Completion.objects.create(
            prompt=prompt, text=f" {words(rng.randint(4, 7))}", source="t"
        )
        groups.append((prompt, [bad, good] if i % 2 else [good, bad]))
        groups[-1] = (prompt, groups[-1][1], good.pk)
    annotation_services.tasks_create(campaign=campaign, groups=[(p, c) for p, c, _ in groups])
    good_ids = {good for _, _, good in groups}
    while assignment := annotation_services.task_assign_next(labeller=labeller, campaign=campaign):
        items = [
            {"completion": c, "rank": 1 if c in good_ids else 2} for c in assignment.display_order
        ]
        annotation_services.ranking_submit(
            labeller=labeller, assignment=assignment, items=items, time_spent_ms=1000
        )
    return campaign


def start_gpu_worker(
    tmp_path: Path, name: str, *, pool: str = "solo", threads: int = 1, **extra_env: str
) -> subprocess.Popen:
    """A real Celery worker on the ``gpu`` queue, sharing the test database and a model store
    under ``tmp_path``; in its own process group so a test can kill it outright."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "MODEL_STORE_DIR": str(tmp_path / "models"),
        "OMP_NUM_THREADS": str(threads),
        **extra_env,
    }
    command = celery_worker_command(queues="gpu", name=name, pool=pool)
    return subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)
