"""Large imports run on a worker: the upload is kept in an ImportJob, the web request answers
at once (202 with the job), the worker imports all or nothing, and the API and the import page
follow its stage and show what was stored or the line-numbered errors."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client

from annotation import services
from annotation.importing import parse_import
from annotation.models import ImportJob, Prompt, Task
from annotation.services.imports import interleave_gold
from tests.conftest import celery_worker_command, client_for

REPO = Path(__file__).resolve().parents[2]


def jsonl(prompts: int, *, bad_line: int | None = None) -> bytes:
    lines = []
    for i in range(prompts):
        completions = [f"answer {i}.{k}" for k in range(4)]
        if i + 1 == bad_line:
            completions = completions[:3]
        lines.append(
            json.dumps({"id": f"p{i}", "prompt": f"prompt {i}", "completions": completions})
        )
    return "\n".join(lines).encode()


def upload(client, campaign, data: bytes, name: str = "big.jsonl"):
    return client.post(
        f"/api/campaigns/{campaign.pk}/import/",
        {"file": SimpleUploadedFile(name, data)},
        format="multipart",
    )


@pytest.mark.django_db
def test_a_large_upload_answers_at_once_and_a_worker_imports_it(
    campaign, admin_user, settings, django_capture_on_commit_callbacks
):
    settings.IMPORT_BACKGROUND_BYTES = 1000
    client = client_for(admin_user)
    before = Task.objects.filter(campaign=campaign).count()
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = upload(client, campaign, jsonl(40))
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued" and body["stage"] == "waiting" and body["result"] is None
    assert response["Location"] == f"/api/campaigns/{campaign.pk}/imports/{body['id']}/"
    assert len(queued) == 1 and Task.objects.filter(campaign=campaign).count() == before
    job = services.import_job_run(job_id=body["id"])
    assert job.status == ImportJob.Status.SUCCEEDED and job.data == b""
    assert services.import_job_run(job_id=body["id"]) is None  # runs once
    done = client.get(response["Location"]).json()
    result = done["result"]
    assert (result["prompts"], result["tasks"], result["completions"]) == (40, 40, 160)
    assert len(result["created"]) == 40 and result["warnings"]["empty_completions"] == 0
    assert Task.objects.filter(campaign=campaign).count() == before + 40


@pytest.mark.django_db
def test_a_refused_large_file_stores_nothing_and_shows_its_lines(
    campaign, admin_user, settings, django_capture_on_commit_callbacks
):
    settings.IMPORT_BACKGROUND_BYTES = 1000
    page = Client()
    page.force_login(admin_user)
    url = f"/dashboard/campaigns/{campaign.pk}/import/"
    prompts = Prompt.objects.count()
    with django_capture_on_commit_callbacks(execute=False):
        response = page.post(url, {"file": SimpleUploadedFile("big.jsonl", jsonl(40, bad_line=17))})
    assert response.status_code == 302 and "?job=" in response["Location"]
    job = ImportJob.objects.get()
    running = page.get(response["Location"]).content.decode()
    assert 'http-equiv="refresh"' in running and "Waiting for a worker" in running
    services.import_job_run(job_id=job.pk)
    finished = page.get(response["Location"]).content.decode()
    assert 'http-equiv="refresh"' not in finished and 'id="import-errors"' in finished
    assert '<td class="num">17</td>' in finished
    assert Prompt.objects.count() == prompts  # all or nothing
    api = client_for(admin_user).get(f"/api/campaigns/{campaign.pk}/imports/{job.pk}/").json()
    assert api["status"] == "failed" and api["errors"][0]["line"] == 17


@pytest.mark.django_db
def test_only_those_who_change_the_campaign_see_its_import_jobs(
    campaign, admin_user, labeller, settings, django_capture_on_commit_callbacks
):
    settings.IMPORT_BACKGROUND_BYTES = 1000
    with django_capture_on_commit_callbacks(execute=False):
        job_id = upload(client_for(admin_user), campaign, jsonl(40)).json()["id"]
    url = f"/api/campaigns/{campaign.pk}/imports/{job_id}/"
    assert client_for(labeller).get(url).status_code == 403
    assert client_for(None).get(url).status_code == 403
    assert (
        client_for(admin_user).get(f"/api/campaigns/{campaign.pk}/imports/999999/").status_code
        == 404
    )


def test_gold_lines_are_spread_among_the_others_which_keep_their_order():
    lines = [
        json.dumps(
            {"prompt": f"p{i}", "completions": ["a", "b"], **({"gold": [1, 2]} if i >= 30 else {})}
        )
        for i in range(40)
    ]
    records = parse_import(
        "\n".join(lines).encode(), fmt="jsonl", completions_per_task=2, max_text_chars=100,
        max_bytes=10**6, default_source="x", allow_ties=True, allow_fail=True,
    )  # fmt: skip
    mixed = interleave_gold(records, seed=7)
    assert sorted(r.text for r in mixed) == sorted(r.text for r in records)
    real = [r.text for r in mixed if r.gold is None]
    assert real == [f"p{i}" for i in range(30)]
    gold_places = [i for i, r in enumerate(mixed) if r.gold is not None]
    assert gold_places != list(range(30, 40))  # not all at the end any more
    assert min(gold_places) < 20


@pytest.mark.celery_worker
@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL")
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_imports_a_large_upload(campaign, admin_user, settings, tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("the worker needs a shared database")
    settings.IMPORT_BACKGROUND_BYTES = 1000
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "IMPORT_BACKGROUND_BYTES": "1000",
    }
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            celery_worker_command(queues="default", name="import-worker"),
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        response = upload(client_for(admin_user), campaign, jsonl(60))
        assert response.status_code == 202
        deadline = time.monotonic() + 90
        job = ImportJob.objects.get(pk=response.json()["id"])
        while not job.finished and time.monotonic() < deadline:
            time.sleep(0.3)
            job.refresh_from_db()
        assert job.status == ImportJob.Status.SUCCEEDED, (job.error, log.read_text()[-2000:])
        assert job.result["tasks"] == 60
    finally:
        worker.terminate()
        worker.wait(timeout=30)
