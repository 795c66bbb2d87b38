"""The ``acquisition`` job: a reward model scores a campaign's unfinished tasks and their
priorities decide which are served first (campaigns whose ``task_order`` is ``uncertainty``).

The scoring is :mod:`training.ml.acquisition` (pure); this module reads the tasks into plain
data, runs it with the job's reporter and stores the priorities through
:func:`annotation.services.task_priorities_set`. Registered with ``@runner`` when
``training.tasks`` imports it.

Recomputing after every reward-model training: :func:`acquisition_jobs_after_reward_model`
queues one job per campaign of the new reward model's data that orders by uncertainty; the
reward-model runner calls it when the version is registered (its ``on_success``). An admin can
also queue one: ``POST /api/campaigns/{id}/acquisition/``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import F

from annotation import services as annotation_services
from annotation.errors import Conflict, InvalidInput
from annotation.models import Campaign, Task, TaskCompletion
from training import services
from training.ml.acquisition import TaskTexts
from training.models import ModelVersion, TrainingJob
from training.services import JobOutcome, JobReporter, runner


def acquisition_job_create(
    *,
    campaign: Campaign,
    created_by: AbstractBaseUser | None,
    reward_model: ModelVersion | None = None,
    batch_size: int = 32,
) -> TrainingJob:
    """Queue an acquisition job for ``campaign`` with ``reward_model`` (default: the newest
    reward model). Refuses a campaign that does not order its tasks by uncertainty, a model
    that is not a reward model, and a closed campaign."""
    if campaign.task_order != Campaign.TaskOrder.UNCERTAINTY:
        raise Conflict(
            f"the campaign serves its tasks in {campaign.task_order} order; set task_order to "
            "uncertainty first",
            field="task_order",
        )
    if campaign.status == Campaign.Status.CLOSED:
        raise Conflict("the campaign is closed", field="campaign")
    if reward_model is None:
        reward_model = ModelVersion.objects.filter(kind=ModelVersion.Kind.REWARD).first()
        if reward_model is None:
            raise InvalidInput("there is no reward model yet", field="reward_model_version")
    if reward_model.kind != ModelVersion.Kind.REWARD:
        raise InvalidInput("must be a reward model", field="reward_model_version")
    if not 1 <= batch_size <= 4096:
        raise InvalidInput("must be between 1 and 4096", field="batch_size")
    return services.training_job_create(
        kind=TrainingJob.Kind.ACQUISITION,
        params={
            "campaign_id": campaign.pk,
            "reward_model_version": reward_model.pk,
            "batch_size": batch_size,
        },
        created_by=created_by,
        campaign_id=campaign.pk,
        base_model=reward_model,
    )


def acquisition_jobs_after_reward_model(
    *, job: TrainingJob, version: ModelVersion | None
) -> list[TrainingJob]:
    """Queue an acquisition job with the just-registered reward model for every campaign of the
    reward-model job's data that orders its tasks by uncertainty and is not closed.

    Meant for the reward-model runner's ``on_success`` (inside the transaction that registers
    the version: the jobs are enqueued when it commits, or not at all).
    """
    if version is None or version.kind != ModelVersion.Kind.REWARD:
        return []
    campaign_ids = job.params.get("campaign_ids") or []
    campaigns = Campaign.objects.filter(
        pk__in=campaign_ids, task_order=Campaign.TaskOrder.UNCERTAINTY
    ).exclude(status=Campaign.Status.CLOSED)
    return [
        acquisition_job_create(campaign=campaign, created_by=job.created_by, reward_model=version)
        for campaign in campaigns.order_by("pk")
    ]


def open_task_texts(campaign: Campaign) -> list[TaskTexts]:
    """The campaign's real tasks that still want rankings, as plain data (three queries)."""
    tasks = list(
        Task.objects.filter(
            campaign=campaign, is_gold=False, submitted_count__lt=F("target_overlap")
        )
        .order_by("id")
        .values_list("id", "prompt__text", "prompt__messages")
    )
    texts: dict[int, list[str]] = defaultdict(list)
    for task_id, text in (
        TaskCompletion.objects.filter(task_id__in=[t for t, _, _ in tasks])
        .order_by("task_id", "position")
        .values_list("task_id", "completion__text")
        .iterator(chunk_size=10_000)
    ):
        texts[task_id].append(text)
    return [
        TaskTexts(task_id=task_id, prompt=messages or text, completions=tuple(texts[task_id]))
        for task_id, text, messages in tasks
        if len(texts[task_id]) >= 2
    ]


@runner(TrainingJob.Kind.ACQUISITION)
def run_acquisition(job: TrainingJob, reporter: JobReporter) -> JobOutcome:
    from training.ml import acquisition
    from training.ml.reward_model import TrainingCancelled, load_reward_model

    params = job.params
    campaign = Campaign.objects.get(pk=params["campaign_id"])
    version = ModelVersion.objects.get(pk=params["reward_model_version"])
    tasks = open_task_texts(campaign)
    reporter.log(f"{len(tasks)} open tasks of campaign {campaign.pk}; reward model {version}")
    model = load_reward_model(version.path, device=params.get("device"))
    try:
        scores = acquisition.score_tasks(
            model,
            tasks,
            batch_size=int(params.get("batch_size", 32)),
            on_progress=reporter.on_progress,
            should_stop=reporter.should_stop,
        )
    except acquisition.AcquisitionCancelled as exc:
        raise TrainingCancelled(str(exc)) from None
    priorities = acquisition.uncertainty_priorities(scores)
    campaign.refresh_from_db(fields=["task_order"])
    applied = campaign.task_order == Campaign.TaskOrder.UNCERTAINTY
    written = 0
    if applied:
        written = annotation_services.task_priorities_set(campaign=campaign, priorities=priorities)
    else:
        reporter.log(f"the campaign now orders by {campaign.task_order}: priorities not stored")
    summary: dict[str, Any] = {
        **acquisition.summary(priorities),
        "campaign": campaign.pk,
        "reward_model_version": version.pk,
        "applied": applied,
        "tasks_updated": written,
    }
    reporter.log(f"{written} task priorities stored")
    return JobOutcome(summary=summary)
