"""Shared fixtures for the training tests. ``tiny_model_dir`` comes from tests/conftest.py."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from annotation import services as annotation_services
from annotation.models import Prompt
from tests.helpers.rounds import EVAL, PROMPTS, label
from training import rounds, services
from training.rounds import GeneratedCompletion


@pytest.fixture
def loop(admin_user, labeller, tiny_model_dir, settings, tmp_path):
    """Round 0 of a labelled campaign (N = 3, 8 prompts) whose completions 'came from' the
    tiny base model, ranked by a synthetic labeller through the services."""
    settings.MODEL_STORE_DIR = tmp_path / "models"
    settings.TRAINING_HEARTBEAT_SECONDS = 3600  # no heartbeat thread racing SQLite's lock
    base = services.model_version_register(kind="base", name="tiny", path=str(tiny_model_dir))
    campaign = annotation_services.campaign_create(
        created_by=admin_user,
        name="Round zero",
        description="kettles",
        completions_per_task=3,
        overlap=1,
        allow_ties=False,
        allow_fail=False,
    )
    annotation_services.campaign_add_members(campaign=campaign, users=[labeller])
    guideline = annotation_services.guideline_publish(
        campaign=campaign, text="# Prefer kind, clear answers", created_by=admin_user
    )
    annotation_services.guideline_acknowledge(user=labeller, guideline=guideline)
    annotation_services.campaign_set_status(campaign=campaign, status="active")
    prompts = Prompt.objects.bulk_create(
        [Prompt(campaign=campaign, text=p, external_id=f"p{i}") for i, p in enumerate(PROMPTS)]
    )
    rng = random.Random(0)
    words = ["the", "and", "good", "water", "thank", "you", "stone", "cloud", "quick", "lamp"]
    rounds.generated_tasks_store(
        campaign=campaign,
        prompt_ids=[p.pk for p in prompts],
        completions=[
            [
                GeneratedCompletion(
                    text=" ".join(rng.choice(words) for _ in range(6)) + f" {i}{j}",
                    source="policy:tiny",
                    model_version_id=base.pk,
                )
                for j in range(3)
            ]
            for i in range(len(prompts))
        ],
    )
    label(campaign, labeller)
    rnd = rounds.round_start(
        campaign=campaign, policy=base, eval_settings=EVAL, created_by=admin_user
    )
    return SimpleNamespace(base=base, campaign=campaign, round=rnd, admin=admin_user)
