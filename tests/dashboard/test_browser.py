"""The admin dashboard in a real Chromium: create a campaign, import (a refused file, then a good
one), publish guidelines with the live preview, follow a reward-model job to success with its
charts, cancel a running job, the quality page, and labellers kept out.

Jobs run for real on the tiny model. With PostgreSQL and REDIS_URL a Celery worker on the
``gpu`` queue runs them (as in tests/training/test_reward_model_job.py); otherwise the enqueue
step starts ``lifecycle.job_run`` in a background thread, so the page still follows a
live job through the API.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone
from playwright.sync_api import expect

from annotation import services as annotation_services
from annotation.models import Campaign, Prompt, Ranking
from tests.factories import AdminFactory, CampaignFactory, UserFactory, make_tasks
from tests.helpers.campaigns import jsonl as jsonl_bytes
from tests.helpers.campaigns import rank_every_task
from tests.helpers.training import REPO, labelled_marker_campaign
from training.jobs import lifecycle
from training.jobs import reward_model as reward_model_kind
from training.models import ModelVersion, Round, TrainingJob

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

USE_WORKER = bool(os.environ.get("REDIS_URL")) and connection.vendor == "postgresql"
JOB_TIMEOUT_MS = 120_000


@pytest.fixture
def admin(db):
    return AdminFactory(username="boss")


@pytest.fixture
def jobs_run(monkeypatch, settings, tmp_path, live_server):
    """Queued jobs run: a real Celery worker (PostgreSQL + Redis), else a thread per job."""
    settings.MODEL_STORE_DIR = tmp_path / "models"
    settings.TRAINING_HEARTBEAT_SECONDS = 3600  # no heartbeat thread writes during the test
    if USE_WORKER:
        db = connection.settings_dict
        env = {
            **os.environ,
            "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            "MODEL_STORE_DIR": str(tmp_path / "models"),
            "OMP_NUM_THREADS": "1",
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "gpu",
             "--concurrency", "1", "--prefetch-multiplier", "1", "--pool", "solo",
             "--without-gossip", "--without-mingle", "-n", "dashboard-test@%h",
             "--loglevel", "WARNING"],
            cwd=REPO,
            env=env,
        )  # fmt: skip
        yield "worker"
        worker.terminate()
        worker.wait(timeout=30)
        return

    # The job runs in a thread while the live server answers the page's polls. With SQLite in
    # memory, every thread must use the one connection that holds the database (the test's):
    # the live server's requests are pointed at it here, and the job's thread takes it too.
    # Threads then take turns: every statement, and every atomic block from start to end,
    # holds one re-entrant lock, so no thread sees another's transaction half done.
    shared = connections["default"]
    in_memory = shared.vendor == "sqlite" and shared.is_in_memory_db()
    httpd = live_server.thread.httpd
    before = httpd.connections_override
    if in_memory:
        shared.inc_thread_sharing()  # for good: the page may still poll after the test
        httpd.connections_override = {**(before or {}), "default": shared}
    _take_turns(monkeypatch, threading.RLock())
    threads: list[threading.Thread] = []

    def work(job_id: int) -> None:
        if in_memory:
            connections["default"] = shared
        try:
            lifecycle.job_run(job_id=job_id, worker="dashboard-thread")
        except BaseException:
            pass  # the service stored the failure (status, traceback) on the job
        finally:
            if not in_memory:
                connections.close_all()

    def enqueue(job_id: int) -> bool:
        thread = threading.Thread(target=work, args=(job_id,), name=f"job-{job_id}", daemon=True)
        threads.append(thread)
        thread.start()
        return True

    monkeypatch.setattr(lifecycle, "enqueue", enqueue)
    yield "thread"
    httpd.connections_override = before
    for thread in threads:
        thread.join(timeout=60)


@pytest.fixture
def gate(jobs_run, monkeypatch):
    """Jobs reach their runner (the worker, or the thread) only once the test opens the gate
    (``gate.set()``): until then a job is certainly still queued, however fast the machine, so a
    page can be checked in that state. Opened at the end in any case."""
    opened = threading.Event()
    enqueue = lifecycle.enqueue  # jobs_run's

    def held(job_id: int) -> bool:
        def release() -> None:
            opened.wait(JOB_TIMEOUT_MS / 1000)
            try:
                enqueue(job_id)
            finally:
                connections.close_all()

        threading.Thread(target=release, name=f"gate-{job_id}", daemon=True).start()
        return True

    monkeypatch.setattr(lifecycle, "enqueue", held)
    yield opened
    opened.set()


def _take_turns(monkeypatch, lock) -> None:
    """Every SQL statement with the reading of its rows, and every atomic block from start to
    end, holds ``lock``.

    A statement's rows are read under the lock too, at once: Django reads them after
    ``execute`` returns, and another thread committing on the shared connection while a
    SELECT's rows were still unread failed with "SQL statements in progress" (a 503 to the
    page's cancel when the machine was loaded enough for a thread switch to land there)."""
    from django.db.backends.utils import CursorWrapper
    from django.db.transaction import Atomic

    def locked(method):
        def call(self, *args, **kwargs):
            with lock:
                result = method(self, *args, **kwargs)
                self._rows = list(self.cursor.fetchall()) if self.cursor.description else None
                return result

        return call

    def fetchone(self):
        rows = self.__dict__.get("_rows")
        if rows is None:
            return self.cursor.fetchone()
        return rows.pop(0) if rows else None

    def fetchmany(self, size=None):
        rows = self.__dict__.get("_rows")
        if rows is None:
            return self.cursor.fetchmany(size) if size else self.cursor.fetchmany()
        size = size or self.cursor.arraysize
        taken, self._rows = rows[:size], rows[size:]
        return taken

    def fetchall(self):
        rows = self.__dict__.get("_rows")
        if rows is None:
            return self.cursor.fetchall()
        self._rows = []
        return rows

    def iterate(self):
        rows = self.__dict__.get("_rows")
        if rows is None:
            yield from self.cursor
            return
        while self._rows:
            yield self._rows.pop(0)

    readers = {"fetchone": fetchone, "fetchmany": fetchmany, "fetchall": fetchall}
    for name, method in {**readers, "__iter__": iterate}.items():
        monkeypatch.setattr(CursorWrapper, name, method, raising=False)

    def enter(self):
        lock.acquire()
        try:
            return atomic_enter(self)
        except BaseException:
            lock.release()
            raise

    def exit_(self, *exc_info):
        try:
            return atomic_exit(self, *exc_info)
        finally:
            lock.release()

    atomic_enter, atomic_exit = Atomic.__enter__, Atomic.__exit__
    monkeypatch.setattr(CursorWrapper, "execute", locked(CursorWrapper.execute))
    monkeypatch.setattr(CursorWrapper, "executemany", locked(CursorWrapper.executemany))
    monkeypatch.setattr(Atomic, "__enter__", enter)
    monkeypatch.setattr(Atomic, "__exit__", exit_)


def expect_job_to_end(page, status: str) -> None:
    """Wait until the job page shows a final status; fail at once (with the job's error) when
    it is not ``status``."""
    badge = page.locator("#job-status")
    expect(badge).to_have_text(re.compile("^(Succeeded|Failed|Cancelled)$"), timeout=JOB_TIMEOUT_MS)
    if badge.text_content() != status:
        job_id = int(re.search(r"/jobs/(\d+)/", page.url)[1])
        error = TrainingJob.objects.get(pk=job_id).error
        pytest.fail(f"the job ended {badge.text_content()}, not {status}: {error[-3000:]}")


def jsonl(records) -> dict:
    return {
        "name": "prompts.jsonl",
        "mimeType": "application/octet-stream",
        "buffer": "\n".join(json.dumps(r) for r in records).encode(),
    }


# --- 1. campaign: create, import, guidelines, members, status -----------------------------------


def test_create_campaign_import_publish_guidelines_and_activate(page, log_in, admin, output_dir):
    UserFactory(username="alice")
    log_in(page, admin)
    page.goto("/")
    page.get_by_role("link", name="Dashboard").click()
    expect(page.get_by_role("heading", name="Campaigns")).to_be_visible()
    page.get_by_role("link", name="New campaign").click()

    # The service's rule comes back next to the field; then a good campaign.
    page.get_by_label("Name").fill("Helpfulness round 1")
    page.get_by_label("Completions per task (N)").fill("12")
    page.get_by_label("Overlap (k)").fill("2")
    page.get_by_role("button", name="Create campaign").click()
    expect(page.locator("#id_completions_per_task_error")).to_have_text("must be between 2 and 9")
    page.get_by_label("Completions per task (N)").fill("2")
    page.get_by_role("button", name="Create campaign").click()
    expect(page).to_have_url(re.compile(r"/dashboard/campaigns/\d+/$"))
    campaign = Campaign.objects.get(name="Helpfulness round 1")
    expect(page.locator(".messages")).to_contain_text("created (draft)")

    # Import: a file with errors is refused with its line numbers and nothing is stored.
    page.locator(".tabs").get_by_role("link", name="Import").click()
    bad = [
        {"prompt": "Fine", "completions": ["a", "b"]},
        {"prompt": "Too many", "completions": ["a", "b", "c"]},
        {"prompt": "", "completions": ["a", "b"]},
    ]
    page.set_input_files("#id_file", files=[jsonl(bad)])
    page.get_by_role("button", name="Import", exact=True).click()
    errors = page.locator("#import-errors")
    expect(errors).to_contain_text("nothing was stored")
    expect(errors.locator("tbody tr")).to_have_count(2)
    expect(errors.locator("tbody tr").nth(0)).to_contain_text("2")
    expect(errors.locator("tbody tr").nth(0)).to_contain_text("completions")
    expect(errors.locator("tbody tr").nth(1)).to_contain_text("3")
    assert not Prompt.objects.filter(campaign=campaign).exists()
    good = [{"prompt": f"Question {i}?", "completions": [f"yes {i}", f"no {i}"]} for i in range(4)]
    page.set_input_files("#id_file", files=[jsonl(good)])
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page.locator(".messages")).to_contain_text(
        "Imported 4 prompts, 8 completions and 4 tasks"
    )
    assert campaign.tasks.count() == 4

    # Guidelines: the preview follows the markdown as it is typed (server-rendered).
    page.locator(".tabs").get_by_role("link", name="Guidelines").click()
    page.wait_for_load_state()
    editor = page.get_by_label("Guidelines (markdown)")
    editor.fill("# Be helpful\n\nRank the **most helpful** answer first.")
    expect(page.locator("#preview h1")).to_have_text("Be helpful")
    expect(page.locator("#preview strong")).to_have_text("most helpful")
    editor.press("End")
    editor.type("\n\n- <script>no</script>")
    expect(page.locator("#preview li")).to_have_text("<script>no</script>")
    page.get_by_role("button", name="Publish as version 1").click()
    expect(page.locator(".messages")).to_contain_text("Published version 1")
    expect(page.locator(".versions")).to_contain_text("Version 1")
    assert campaign.guidelines.get().version == 1

    # Members: an existing account, and an invitation with a one-time password.
    page.locator(".tabs").get_by_role("link", name="Overview").click()
    page.get_by_label("Add members").fill("alice")
    page.get_by_role("button", name="Add", exact=True).click()
    expect(page.locator("#members")).to_contain_text("alice")
    page.get_by_label("Username").fill("newbie")
    page.get_by_role("button", name="Create account").click()
    password = page.locator("#one-time-password").text_content()
    assert len(password) >= 16
    page.get_by_role("link", name="Back to the campaign").click()
    expect(page.locator("#members")).to_contain_text("newbie")

    # Activate, pause (with a confirmation for closing only).
    page.get_by_role("button", name="Activate").click()
    expect(page.locator("h1 .badge")).to_have_text("Active")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("h1 .badge")).to_have_text("Paused")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Close").click()
    expect(page.locator("h1 .badge")).to_have_text("Paused")
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("h1 .badge")).to_have_text("Active")
    campaign.refresh_from_db()
    assert campaign.status == "active"
    page.screenshot(path=str(output_dir / "dashboard-campaign.png"), full_page=True)

    page.goto("/dashboard/")
    row = page.locator("#campaigns tbody tr", has_text="Helpfulness round 1")
    expect(row).to_contain_text("0 / 4 tasks")
    page.screenshot(path=str(output_dir / "dashboard-campaigns.png"), full_page=True)


# --- 2. training: a reward model followed live to success ---------------------------------------


def test_reward_model_job_runs_to_success_with_charts(
    page, log_in, admin, jobs_run, tiny_model_dir, output_dir
):
    campaign = labelled_marker_campaign(tasks=120)
    log_in(page, admin)
    page.goto(f"/dashboard/campaigns/{campaign.pk}/")
    page.get_by_role("link", name="Train a reward model on it").click()
    expect(page.get_by_role("heading", name="Train a reward model")).to_be_visible()
    expect(page.locator("#id_config__learning_rate")).to_have_value("5e-05")  # the default
    page.get_by_label("…or a model path / hub id").fill(str(tiny_model_dir))
    page.get_by_label("Name", exact=True).fill("marker-rm")
    for name, value in {
        "num_epochs": "4",
        "learning_rate": "0.001",
        "batch_size": "16",
        "max_length": "48",
        "eval_fraction": "0.2",
    }.items():
        page.locator(f"#id_config__{name}").fill(value)
    page.locator("#id_config__lr_schedule").select_option("cosine")
    page.screenshot(path=str(output_dir / "dashboard-job-form.png"), full_page=True)
    page.get_by_role("button", name="Queue the job").click()
    expect(page).to_have_url(re.compile(r"/dashboard/training/jobs/\d+/$"))
    job = TrainingJob.objects.get()

    expect_job_to_end(page, "Succeeded")
    expect(page.locator("body")).to_have_attribute("data-polling", "stopped")
    loss = page.locator(".chart", has_text="Loss").locator("canvas")
    expect(loss).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"))
    accuracy = page.locator(".chart", has_text="Accuracy").locator("canvas")
    expect(accuracy).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"))
    job.refresh_from_db()
    steps = page.locator("#job-step").text_content()
    assert int(steps) == job.progress_total > 0
    expect(page.locator("#job-progress")).to_have_attribute("value", str(job.progress_total))
    expect(page.locator("#summary-table")).to_contain_text("eval/accuracy")
    expect(page.locator("#job-log")).to_contain_text("succeeded")
    expect(page.locator("#job-result")).to_be_visible()
    expect(page.locator("#cancel-form")).to_be_hidden()
    assert job.status == "succeeded" and job.summary["metrics"]["eval/accuracy"] > 0.8
    page.screenshot(path=str(output_dir / "dashboard-job.png"), full_page=True)

    page.get_by_role("link", name="Models & rounds").click()
    expect(page.locator(f"#version-{job.result_version_id}")).to_contain_text("marker-rm")
    page.screenshot(path=str(output_dir / "dashboard-models.png"), full_page=True)


def test_a_round_held_for_review_then_started_anyway_from_the_dashboard(
    page, log_in, admin, jobs_run, gate, tiny_model_dir, output_dir
):
    """60 one-pair rankings hold out about 6 pairs, fewer than the 50 the round asks by default:
    the form says so before the job runs, the round stops after the update with the reason on
    its card, and the admin starts the next round anyway."""
    campaign = labelled_marker_campaign(tasks=60)
    log_in(page, admin)
    page.goto("/dashboard/training/models/")
    register = page.locator("#register-form")
    register.get_by_label("Name").fill("tiny-base")
    register.get_by_label("Path or hub id").fill(str(tiny_model_dir))
    register.get_by_role("button", name="Register").click()
    expect(page.locator(".messages")).to_contain_text("Registered tiny-base")
    start = page.locator("#round-form")
    start.get_by_label("Campaign").select_option(str(campaign.pk))
    base = ModelVersion.objects.get(name="tiny-base")
    start.get_by_label("Policy", exact=True).select_option(str(base.pk))
    start.locator("summary", has_text="Evaluation and review").click()
    expect(start.get_by_label("min held out pairs")).to_have_value("50")
    start.get_by_label("max new tokens").fill("8")
    start.get_by_role("button", name="Start the round").click()
    expect(page.locator(".messages")).to_contain_text("Round 0 started")
    rnd = Round.objects.get(campaign=campaign)
    assert rnd.eval_settings["max_new_tokens"] == 8
    assert rnd.eval_settings["min_held_out_pairs"] == 50

    page.locator(f"#round-{rnd.pk}").get_by_role("link", name="Run the whole round").click()
    expect(page.get_by_role("heading", name="Run a whole round")).to_be_visible()
    expect(page.locator("#id_round")).to_have_value(str(rnd.pk))
    expect(page.locator(".warning-box")).to_contain_text("fewer than 50")
    for name, value in {
        "reward_model__num_epochs": "1",
        "reward_model__learning_rate": "0.001",
        "reward_model__batch_size": "16",
        "reward_model__max_length": "48",
        "ppo__total_steps": "2",
        "ppo__rollout_batch_size": "8",
        "sampling__max_new_tokens": "8",
    }.items():
        page.locator(f"#id_config__{name}").fill(value)
    page.get_by_role("button", name="Queue the job").click()
    expect(page).to_have_url(re.compile(r"/dashboard/training/jobs/\d+/$"))
    job_url = page.url

    # The round's card follows the job live, then reloads with what it produced. The job waits
    # at the gate until the card was seen following it.
    page.get_by_role("link", name="Models & rounds").click()
    card = page.locator(f"#round-{rnd.pk}")
    live = card.locator(".round-live")
    expect(live.locator("progress")).to_be_visible()
    expect(live.locator(".round-live-text")).to_contain_text("Queued")
    expect(card.locator(".round-state")).to_have_text("Queued")
    gate.set()
    expect(card.locator(".badge").first).to_have_text("Needs review", timeout=JOB_TIMEOUT_MS)
    expect(card.locator(".round-live")).to_have_count(0)

    page.goto(job_url)
    expect_job_to_end(page, "Succeeded")
    expect(page.locator("#job-log")).to_contain_text("held for review")
    steps = page.locator("#steps-title + ol li")
    expect(steps).to_have_count(2)  # reward model and PPO; nothing generated
    for step in steps.all():
        expect(step.locator(".badge")).to_have_text("Succeeded")

    page.get_by_role("link", name="Models & rounds").click()
    card = page.locator(f"#round-{rnd.pk}")
    expect(card.locator(".badge").first).to_have_text("Needs review")
    expect(card.locator(".warning-box")).to_contain_text("held-out pairs, fewer than 50")
    expect(card.locator("table.evaluation")).to_contain_text("policy_after")
    rnd.refresh_from_db()
    assert rnd.next_campaign is None and rnd.policy_after is not None

    card.get_by_role("link", name="Start next round").click()
    expect(page.locator("#id_round")).to_have_value(str(rnd.pk))
    page.locator("#id_config__max_new_tokens").fill("8")
    page.get_by_role("button", name="Queue the job").click()
    expect_job_to_end(page, "Succeeded")
    page.get_by_role("link", name="Models & rounds").click()
    card = page.locator(f"#round-{rnd.pk}")
    expect(card.locator(".badge").first).to_have_text("Next round opened")
    expect(card.locator(".chain")).not_to_contain_text("not yet")
    expect(card.locator(".warning-box")).to_contain_text(
        f"the next round was started anyway by {admin.username}"
    )
    rnd.refresh_from_db()
    assert rnd.next_campaign.tasks.count() == 60
    assert rnd.next_campaign.status == "draft"
    page.screenshot(path=str(output_dir / "dashboard-rounds.png"), full_page=True)


# --- 3. cancelling a running job ----------------------------------------------------------------


def test_cancel_a_running_job(page, log_in, admin, jobs_run, tiny_model_dir):
    campaign = labelled_marker_campaign(tasks=40)
    config = {"num_epochs": 500, "batch_size": 4, "max_length": 32, "eval_fraction": 0.2}
    job = lifecycle.job_create(
        "reward_model",
        reward_model_kind.Request(
            created_by=admin,
            campaign_ids=[campaign.pk],
            base_model_path=str(tiny_model_dir),
            config=config,
        ),
    )
    log_in(page, admin)
    page.goto(f"/dashboard/training/jobs/{job.pk}/")
    expect(page.locator("#job-status")).to_have_text("Running", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#job-step")).not_to_have_text("0", timeout=JOB_TIMEOUT_MS)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator("#job-status")).to_have_text(re.compile("Cancelling|Cancelled"))
    try:
        expect(page.locator("#job-status")).to_have_text("Cancelled", timeout=JOB_TIMEOUT_MS)
    except AssertionError:
        job.refresh_from_db()
        raise AssertionError(
            f"not cancelled: {job.status} cancel_requested={job.cancel_requested} "
            f"step {job.progress_step}/{job.progress_total}\n{job.log_tail[-2000:]}"
        ) from None
    expect(page.locator("#retry-form")).to_be_visible()
    job.refresh_from_db()
    assert job.status == "cancelled" and job.cancel_requested
    assert job.progress_step < job.progress_total
    assert job.result_version is None


def test_a_failed_job_shows_its_error_and_can_be_retried(page, log_in, admin, jobs_run, tmp_path):
    campaign = labelled_marker_campaign(tasks=10)
    job = lifecycle.job_create(
        "reward_model",
        reward_model_kind.Request(
            created_by=admin,
            campaign_ids=[campaign.pk],
            base_model_path=str(tmp_path / "no-such-model"),
        ),
    )
    log_in(page, admin)
    page.goto(f"/dashboard/training/jobs/{job.pk}/")
    expect_job_to_end(page, "Failed")
    expect(page.locator("#job-error")).to_be_visible()
    expect(page.locator("#job-error-text")).to_contain_text("Traceback")
    expect(page.locator("#job-error-text")).to_contain_text("no-such-model")
    expect(page.locator("#cancel-form")).to_be_hidden()
    page.get_by_role("button", name="Retry").click()
    expect(page).to_have_url(re.compile(rf"/dashboard/training/jobs/(?!{job.pk}/)\d+/$"))
    expect(page.locator(".messages")).to_contain_text("Retrying as #")


# --- 4. quality ---------------------------------------------------------------------------------


def test_quality_page_draws_the_trend_and_flags_the_outlier(page, log_in, admin, output_dir):
    campaign = CampaignFactory(completions_per_task=3, overlap=4, name="Outliers")
    people = [UserFactory(username=name) for name in ("ann", "ben", "cat", "contrarian")]
    annotation_services.campaign_add_members(campaign=campaign, users=people)
    make_tasks(campaign, 12)
    for person in people[:3]:
        rank_every_task(campaign, person, lambda ids: {c: i + 1 for i, c in enumerate(ids)})
    rank_every_task(campaign, people[3], lambda ids: {c: 3 - i for i, c in enumerate(ids)})
    earlier = list(Ranking.objects.filter(campaign=campaign).order_by("id")[:20])
    Ranking.objects.filter(pk__in=[r.pk for r in earlier]).update(
        created_at=timezone.now() - timedelta(days=3)
    )
    log_in(page, admin)
    page.goto(f"/dashboard/campaigns/{campaign.pk}/quality/")
    expect(page.locator("#trend-chart")).to_have_attribute("data-drawn", "true")
    flagged = page.locator("#labeller-quality tr.is-flagged")
    expect(flagged).to_have_count(1)
    expect(flagged).to_contain_text("contrarian")
    page.screenshot(path=str(output_dir / "dashboard-quality.png"), full_page=True)
    flagged.get_by_role("link", name="contrarian").click()
    expect(page.locator(".task-compare")).to_have_count(12)
    page.locator(".task-compare h2 a").first.click()
    expect(page.locator("#task-rankings thead")).to_contain_text("Consensus")
    page.screenshot(path=str(output_dir / "dashboard-task.png"), full_page=True)


def test_quality_page_draws_gold_agreement_over_time(page, log_in, admin, monkeypatch, output_dir):
    monkeypatch.setattr(annotation_services.assignment, "_gold_draw", lambda: 0.0)
    campaign = CampaignFactory(completions_per_task=2, overlap=2, gold_rate=0.5)
    lines = [{"prompt": f"g{i}", "completions": [f"good {i}", f"bad {i}"], "gold": [1, 2]}
             for i in range(12)]  # fmt: skip
    lines += [{"prompt": f"p{i}", "completions": [f"a {i}", f"b {i}"]} for i in range(14)]
    annotation_services.campaign_import(
        campaign=campaign, data=jsonl_bytes(lines), filename="g.jsonl"
    )
    ann, ben = UserFactory(username="ann"), UserFactory(username="ben")
    annotation_services.campaign_add_members(campaign=campaign, users=[ann, ben])
    rank_every_task(campaign, ann, lambda ids: {ids[0]: 1, ids[1]: 2})
    rank_every_task(campaign, ben, lambda ids: {ids[0]: 2, ids[1]: 1})
    log_in(page, admin)
    page.goto(f"/dashboard/campaigns/{campaign.pk}/quality/")
    expect(page.locator("#gold-drift-chart")).to_have_attribute("data-drawn", "true")
    drift = json.loads(page.locator("#gold-drift-data").text_content())
    assert drift["labels"] == ["gold tasks 1-10", "gold tasks 11-12"]
    page.locator("#gold-drift-chart").screenshot(path=str(output_dir / "dashboard-gold-drift.png"))
    # A real task made gold from its page: the form starts from the consensus.
    task = campaign.tasks.filter(is_gold=False).order_by("id").first()
    page.goto(f"/dashboard/campaigns/{campaign.pk}/tasks/{task.pk}/")
    page.get_by_role("button", name="Use as a gold task").click()
    expect(page.locator(".messages")).to_contain_text("is a gold task")
    expect(page.locator("#task-rankings thead")).to_contain_text("Gold reference")
    page.screenshot(path=str(output_dir / "dashboard-gold-task.png"), full_page=True)
    task.refresh_from_db()
    # ann and ben ranked it in opposite orders: the consensus, and so the reference, is a tie
    assert task.is_gold and sorted(task.gold_ranking.values()) == [1, 1]


# --- 5. hostile text is shown as text -----------------------------------------------------------

HOSTILE = (
    "<script>window.pwned = '{where}'; alert('{where}')</script>"
    "<img src=x onerror=\"alert('{where}')\">"
)


def test_html_and_script_in_campaign_data_never_run_on_the_dashboard(page, log_in, admin):
    """Campaign name and description, guidelines (with the live preview), prompts, completions,
    ranking comments and skip reasons, model names: every page shows them as text."""
    campaign = CampaignFactory(
        completions_per_task=3,
        overlap=2,
        name=HOSTILE.format(where="name"),
        description=HOSTILE.format(where="description"),
        created_by=admin,
    )
    annotation_services.guideline_publish(
        campaign=campaign, text="# Rules\n\n" + HOSTILE.format(where="guidelines"), created_by=admin
    )
    lines = [
        {
            "prompt": HOSTILE.format(where=f"prompt {i}"),
            "completions": [HOSTILE.format(where=f"completion {i}.{j}") for j in range(3)],
        }
        for i in range(3)
    ]
    annotation_services.campaign_import(
        campaign=campaign, data="\n".join(json.dumps(line) for line in lines).encode(),
        filename="hostile.jsonl",
    )  # fmt: skip
    ann, ben = UserFactory(username="ann"), UserFactory(username="ben")
    annotation_services.campaign_add_members(campaign=campaign, users=[ann, ben])
    for user in (ann, ben):
        annotation_services.guideline_acknowledge(user=user, guideline=campaign.guidelines.get())
    for i, user in enumerate((ann, ben)):
        assignment = annotation_services.task_assign_next(labeller=user, campaign=campaign)
        annotation_services.ranking_submit(
            labeller=user,
            assignment=assignment,
            items=[
                {"completion": c, "rank": n + 1} for n, c in enumerate(assignment.display_order)
            ],
            time_spent_ms=1000,
            comment=HOSTILE.format(where=f"comment {i}"),
        )
    skipped = annotation_services.task_assign_next(labeller=ann, campaign=campaign)
    annotation_services.assignment_skip(
        labeller=ann, assignment=skipped, reason=HOSTILE.format(where="skip reason")
    )
    ModelVersion.objects.create(
        kind="base", name=HOSTILE.format(where="model name"), path="/models/hostile"
    )
    task = Ranking.objects.filter(campaign=campaign).first().task

    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    log_in(page, admin)
    for url in (
        "/dashboard/",
        f"/dashboard/campaigns/{campaign.pk}/",
        f"/dashboard/campaigns/{campaign.pk}/edit/",
        f"/dashboard/campaigns/{campaign.pk}/guidelines/",
        f"/dashboard/campaigns/{campaign.pk}/tasks/",
        f"/dashboard/campaigns/{campaign.pk}/tasks/{task.pk}/",
        f"/dashboard/campaigns/{campaign.pk}/labellers/{ann.pk}/",
        f"/dashboard/campaigns/{campaign.pk}/quality/",
        "/dashboard/training/models/",
        "/dashboard/training/new/reward_model/",
    ):
        assert page.goto(url).status == 200, url
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.pwned") is None, url
    # The guidelines editor's live preview renders what is typed, sanitised.
    page.goto(f"/dashboard/campaigns/{campaign.pk}/guidelines/")
    page.locator("textarea").first.fill("Typed: " + HOSTILE.format(where="preview"))
    page.wait_for_timeout(1500)  # the preview is debounced, then fetched
    assert page.evaluate("window.pwned") is None
    # The texts are there, as text.
    page.goto(f"/dashboard/campaigns/{campaign.pk}/tasks/{task.pk}/")
    expect(page.locator("body")).to_contain_text("<script>window.pwned = 'prompt")
    expect(page.locator("body")).to_contain_text("window.pwned = 'comment")
    assert dialogs == []


# --- 6. labellers are kept out ------------------------------------------------------------------


def test_labeller_gets_403_on_the_dashboard_and_its_api(page, log_in, campaign, labeller):
    log_in(page, labeller)
    for url in (
        "/dashboard/",
        f"/dashboard/campaigns/{campaign.pk}/",
        f"/dashboard/campaigns/{campaign.pk}/quality/",
        "/dashboard/training/",
        "/dashboard/training/models/",
        "/api/training-jobs/",
        f"/api/campaigns/{campaign.pk}/agreement/",
    ):
        assert page.goto(url).status == 403, url
    page.goto("/")
    expect(page.get_by_role("link", name="Dashboard")).to_have_count(0)


def test_anonymous_visitor_is_sent_to_login(page):
    page.goto("/dashboard/training/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/dashboard/training/"))
