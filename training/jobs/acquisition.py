"""``acquisition``: a reward model scores a campaign's unfinished tasks and their priorities decide
which are served first (campaigns whose ``task_order`` is ``uncertainty``).

The scoring is :mod:`training.ml.acquisition` (pure); this module reads the tasks into plain
data, runs it and stores the priorities through :func:`annotation.services.task_priorities_set`.

Recomputed after every reward-model training: :func:`after_reward_model` queues one job per
campaign of the new reward model's data that orders by uncertainty (the reward-model job calls
it when its version is registered). An admin can also queue one:
``POST /api/campaigns/{id}/acquisition/``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import F

from annotation import services as annotation_services
from annotation.errors import Conflict, InvalidInput
from annotation.models import Campaign, Task, TaskCompletion
from training import services
from training.jobs.base import Built, JobKind, JobOutcome, JobRequest, RunContext, Spec
from training.ml import acquisition
from training.ml.acquisition import TaskTexts
from training.models import ModelVersion, TrainingJob


@dataclass(kw_only=True)
class Request(JobRequest):
    campaign: Campaign | None = None
    """the campaign whose open tasks are scored"""
    reward_model_version: ModelVersion | None = None
    """the reward model that scores them (default: the newest)"""
    batch_size: int = 32
    """tasks per forward pass"""


@dataclass(frozen=True, kw_only=True)
class AcquisitionSpec(Spec):
    campaign_id: int
    reward_model_version: int
    batch_size: int = 32

    def campaigns(self) -> list[int]:
        return [self.campaign_id]


class AcquisitionJob(JobKind):
    kind = TrainingJob.Kind.ACQUISITION
    title = "Task priorities from the reward model"
    blurb = "Score the campaign's open tasks with a reward model; the most uncertain come first."
    Request = Request
    Spec = AcquisitionSpec
    created_here = False

    def build(self, request: Request) -> Built:
        """Refuses a campaign that does not order its tasks by uncertainty, a model that is not
        a reward model, and a closed campaign."""
        campaign = request.campaign
        if campaign is None:
            raise InvalidInput("name the campaign", field="campaign")
        if campaign.task_order != Campaign.TaskOrder.UNCERTAINTY:
            raise Conflict(
                f"the campaign serves its tasks in {campaign.task_order} order; set task_order "
                "to uncertainty first",
                field="task_order",
            )
        if campaign.status == Campaign.Status.CLOSED:
            raise Conflict("the campaign is closed", field="campaign")
        reward_model = request.reward_model_version
        if reward_model is None:
            reward_model = ModelVersion.objects.filter(kind=ModelVersion.Kind.REWARD).first()
            if reward_model is None:
                raise InvalidInput("there is no reward model yet", field="reward_model_version")
        if reward_model.kind != ModelVersion.Kind.REWARD:
            raise InvalidInput("must be a reward model", field="reward_model_version")
        if not 1 <= request.batch_size <= 4096:
            raise InvalidInput("must be between 1 and 4096", field="batch_size")
        spec = AcquisitionSpec(
            campaign_id=campaign.pk,
            reward_model_version=reward_model.pk,
            batch_size=request.batch_size,
        )
        return Built(spec, campaign.pk, reward_model)

    def run(self, spec: AcquisitionSpec, ctx: RunContext) -> JobOutcome:
        from training.ml.reward_model import (
            load_reward_model,
        )  # torch: the web process imports the job kinds

        campaign = Campaign.objects.get(pk=spec.campaign_id)
        version = ModelVersion.objects.get(pk=spec.reward_model_version)
        tasks = open_task_texts(campaign)
        ctx.log(f"{len(tasks)} open tasks of campaign {campaign.pk}; reward model {version}")
        model = load_reward_model(services.model_path(version.path))
        scores = acquisition.score_tasks(
            model,
            tasks,
            batch_size=spec.batch_size,
            on_progress=ctx.on_progress,
            should_stop=ctx.should_stop,
        )
        priorities = acquisition.uncertainty_priorities(scores)
        campaign.refresh_from_db(fields=["task_order"])
        applied = campaign.task_order == Campaign.TaskOrder.UNCERTAINTY
        written = 0
        if applied:
            written = annotation_services.task_priorities_set(
                campaign=campaign, priorities=priorities
            )
        else:
            ctx.log(f"the campaign now orders by {campaign.task_order}: priorities not stored")
        summary: dict[str, Any] = {
            **acquisition.summary(priorities),
            "campaign": campaign.pk,
            "reward_model_version": version.pk,
            "applied": applied,
            "tasks_updated": written,
        }
        ctx.log(f"{written} task priorities stored")
        return JobOutcome(summary=summary)


def after_reward_model(
    ctx: RunContext, *, campaign_ids: Sequence[int], version: ModelVersion | None
) -> list[TrainingJob]:
    """Queue an acquisition job with the just-registered reward model for every campaign of its
    data that orders its tasks by uncertainty and is not closed. Called inside the transaction
    that registers the version: the jobs are enqueued when it commits, or not at all."""
    if version is None or version.kind != ModelVersion.Kind.REWARD:
        return []
    campaigns = Campaign.objects.filter(
        pk__in=list(campaign_ids), task_order=Campaign.TaskOrder.UNCERTAINTY
    ).exclude(status=Campaign.Status.CLOSED)
    return [
        ctx.queue(
            TrainingJob.Kind.ACQUISITION,
            Request(created_by=ctx.job.created_by, campaign=campaign, reward_model_version=version),
        )
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
