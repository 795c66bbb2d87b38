"""The web process and the ``default`` queue's worker never import torch.

The web image has no torch at all (tests/test_deployment.py runs it); this cheaper check runs
everywhere: in a fresh interpreter it loads every view, form and serializer the web side has,
builds every training job kind's form and API serializer, and loads the Celery tasks the default
worker registers, then looks for torch and transformers in ``sys.modules``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
import django
django.setup()
from django.urls import get_resolver
def walk(patterns):
    for pattern in patterns:
        if hasattr(pattern, "url_patterns"):
            walk(pattern.url_patterns)
        else:
            pattern.callback
walk(get_resolver().url_patterns)
from training.api import serializers
from training.dashboard import forms
from training.jobs import KINDS, lifecycle
for name in KINDS:
    serializers.job_create_serializer(name)().fields
serializers.job_create_schema()
from django.contrib.auth.models import AnonymousUser
for kind in forms.KINDS:
    forms.TrainingJobForm(kind=kind, user=AnonymousUser())
from config.celery import app
app.loader.import_default_modules()
heavy = sorted(name for name in ("torch", "transformers", "peft") if name in sys.modules)
print("HEAVY", heavy)
"""


def test_web_side_and_default_worker_import_no_torch():
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "HEAVY []"
