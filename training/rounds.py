"""The online RLHF loop: rounds.

A round (``Round``) moves collecting → trained → completed: its reward model and its updated
policy are recorded in the transaction that marks their job succeeded; "start the next round"
(a generate job) opens the next campaign, as a draft, and the next Round in one transaction.

Locks: the Round row while a job records its result there or opens the next round (then the new
campaign's row).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Count

from annotation import services as annotation_services
from annotation.errors import Conflict, InvalidInput
from annotation.models import Campaign, Completion, Prompt, Webhook
from annotation.services import webhooks
from training.ml.config import config_from_dict
from training.ml.evaluation import EvalSettings
from training.models import ModelVersion, Round, TrainingJob


@transaction.atomic
def round_start(
    *,
    campaign,
    policy: ModelVersion,
    reference: ModelVersion | None = None,
    reward_scope: str = Round.RewardScope.ALL,
    eval_settings: dict[str, Any] | None = None,
    created_by: AbstractBaseUser | None,
) -> Round:
    """Start the RLHF loop on a campaign whose completions ``policy`` generated (or that were
    imported: then ``policy`` is the model the loop starts from). The round's number is the
    campaign's ``round_number``; ``reference`` (default: ``policy``) stays the KL reference of
    every later round.

    Locks: the campaign row, so two requests cannot both start a round on it.
    """
    if policy.kind == ModelVersion.Kind.REWARD:
        raise InvalidInput("must be a base or policy model", field="policy")
    if reference is not None and reference.kind == ModelVersion.Kind.REWARD:
        raise InvalidInput("must be a base or policy model", field="reference")
    if reward_scope not in Round.RewardScope.values:
        raise InvalidInput(f"unknown reward scope {reward_scope!r}", field="reward_scope")
    settings_ = eval_settings_clean(eval_settings)
    campaign = Campaign.objects.select_for_update(no_key=True).get(pk=campaign.pk)
    if Round.objects.filter(campaign=campaign).exists():
        raise Conflict("the campaign already has a round", field="campaign", code="round_exists")
    return Round.objects.create(
        number=campaign.round_number,
        campaign=campaign,
        policy_before=policy,
        reference=reference or policy,
        reward_scope=reward_scope,
        eval_settings=settings_,
        created_by=created_by,
    )


def eval_settings_clean(data: Any, *, field: str = "eval_settings") -> dict[str, Any]:
    """Evaluation settings with the defaults filled in, as stored on a Round and a job."""
    try:
        return dataclasses.asdict(config_from_dict(EvalSettings, data or {}))
    except ValueError as exc:
        raise InvalidInput(str(exc), field=field) from None


def campaign_policy(campaign) -> ModelVersion | None:
    """The policy a round on ``campaign`` starts from when the admin names none: the model that
    generated most of its completions, else (imported completions) the default base model."""
    generated = (
        Completion.objects.filter(prompt__campaign=campaign, model_version__isnull=False)
        .exclude(model_version__kind=ModelVersion.Kind.REWARD)
        .values("model_version")
        .annotate(n=Count("id"))
        .order_by("-n", "model_version")
        .values_list("model_version", flat=True)
        .first()
    )
    if generated is not None:
        return ModelVersion.objects.get(pk=generated)
    return ModelVersion.objects.filter(
        kind=ModelVersion.Kind.BASE, path=str(settings.DEFAULT_BASE_MODEL)
    ).first()


def round_busy(rnd: Round) -> TrainingJob | None:
    """The unfinished whole-round job of ``rnd``, if one is queued or running."""
    return (
        TrainingJob.objects.filter(round=rnd, kind=TrainingJob.Kind.ROUND)
        .exclude(status__in=TrainingJob.FINISHED)
        .order_by("pk")
        .first()
    )


@dataclass(frozen=True)
class RoundState:
    """What a round is doing now, for people: its stored status while no job works on it, else
    what its job is doing (``Round.status`` only moves when a step's result is recorded)."""

    key: str
    """collecting, waiting, queued, training, generating, trained, needs_review, completed,
    failed or cancelled"""
    label: str
    badge: str
    """the CSS badge class that colours it"""
    job: TrainingJob | None = None
    """the job it comes from: the unfinished one, or the last one that failed or was
    cancelled"""


_STORED_BADGE = {
    Round.Status.COLLECTING: "badge-round-collecting",
    Round.Status.TRAINED: "badge-round-trained",
    Round.Status.NEEDS_REVIEW: "badge-round-needs_review",
    Round.Status.COMPLETED: "badge-round-completed",
}


def round_state(rnd: Round, jobs: Sequence[TrainingJob] | None = None) -> RoundState:
    """The round's state at every step of its work, from its status and ``jobs`` (the round's
    jobs, a chained job's steps included, oldest first; read when not given):

    * completed: the next campaign is open, whatever ran before;
    * a job of the round unfinished: "Waiting for the queue" (the broker did not take it yet),
      "Queued", "Training" (reward model, PPO or DPO) or "Generating" (the next campaign's
      completions), from the job, or for a whole round from the step it is on;
    * else the newest job the admin started failed or was cancelled: "Failed", "Cancelled";
    * else the stored status: "Collecting labels", "Policy updated", "Needs review".
    """
    if rnd.status == Round.Status.COMPLETED:
        return RoundState("completed", rnd.get_status_display(), _STORED_BADGE[rnd.status])
    if jobs is None:
        jobs = list(TrainingJob.objects.filter(round=rnd).order_by("created_at", "id"))
    top = [j for j in jobs if j.parent_id is None]
    active = next((j for j in reversed(top) if not j.finished), None)
    if active is not None:
        return _working(active, [j for j in jobs if j.parent_id == active.pk])
    last = top[-1] if top else None
    if last is not None and last.status in (
        TrainingJob.Status.FAILED,
        TrainingJob.Status.CANCELLED,
    ):
        return RoundState(last.status, last.get_status_display(), f"badge-{last.status}", last)
    return RoundState(rnd.status, rnd.get_status_display(), _STORED_BADGE[rnd.status])


_GENERATING = RoundState("generating", "Generating", "badge-running")
_TRAINING = RoundState("training", "Training", "badge-running")


def _working(job: TrainingJob, steps: Sequence[TrainingJob]) -> RoundState:
    """The state of a round while ``job`` (top-level, unfinished) works on it."""
    if job.waiting_for_queue:
        return RoundState("waiting", "Waiting for the queue", "badge-queued", job)
    if job.status == TrainingJob.Status.QUEUED:
        return RoundState("queued", "Queued", "badge-queued", job)
    kind = job.kind
    if kind == TrainingJob.Kind.ROUND:
        current = next((s for s in steps if not s.finished), None)
        if current is not None:
            kind = current.kind
        else:  # between two steps: the next is the update, else generation
            done = {s.kind for s in steps if s.status == TrainingJob.Status.SUCCEEDED}
            updated = done & {TrainingJob.Kind.PPO, TrainingJob.Kind.DPO}
            kind = TrainingJob.Kind.GENERATE if updated else TrainingJob.Kind.REWARD_MODEL
    state = _GENERATING if kind == TrainingJob.Kind.GENERATE else _TRAINING
    return dataclasses.replace(state, job=job)


def lock_idle_round(rnd: Round) -> Round:
    """Lock the Round row and refuse it while a whole-round job of it is unfinished: one round
    at a time per campaign. Locks: the Round row (a second request waits, then is refused)."""
    rnd = Round.objects.select_for_update().get(pk=rnd.pk)
    busy = round_busy(rnd)
    if busy is not None:
        raise Conflict(
            f"round {rnd.number} is already running as job #{busy.pk} ({busy.status}): wait for "
            "it to finish or cancel it",
            field="round",
            code="round_busy",
        )
    return rnd


def _lock_round(round_id: int, *, to: str | None = None) -> Round:
    """Lock the Round row; with ``to``, refuse a status move the round does not allow."""
    rnd = Round.objects.select_for_update().get(pk=round_id)
    if to is not None and to not in Round.TRANSITIONS[rnd.status]:
        raise Conflict(
            f"round {rnd.number} is {rnd.status}; it cannot become {to}",
            field="round",
            code="illegal_transition",
        )
    if to is None and rnd.status == Round.Status.COMPLETED:
        raise Conflict(
            f"round {rnd.number} is completed: its next round has started",
            field="round",
            code="round_completed",
        )
    return rnd


@transaction.atomic
def round_record_reward_model(*, round_id: int, version: ModelVersion) -> Round:
    """The round's reward model is now ``version``. Locks: the Round row."""
    rnd = _lock_round(round_id)
    rnd.reward_model = version
    rnd.save(update_fields=["reward_model", "updated_at"])
    return rnd


@transaction.atomic
def round_record_policy_update(
    *, round_id: int, version: ModelVersion, evaluation: dict[str, Any]
) -> Round:
    """A PPO or DPO update produced ``version``: it becomes the round's ``policy_after`` (a
    later update replaces it) with its evaluation and the round's checks. The round is trained,
    or held for review when a check fails (:func:`round_checks`). Locks: the Round row."""
    rnd = _lock_round(round_id, to=Round.Status.TRAINED)
    checks = round_checks(rnd, evaluation)
    rnd.policy_after = version
    rnd.evaluation = {**evaluation, **checks}
    rnd.status = Round.Status.NEEDS_REVIEW if checks["warnings"] else Round.Status.TRAINED
    rnd.save(update_fields=["policy_after", "evaluation", "status", "updated_at"])
    if rnd.status == Round.Status.NEEDS_REVIEW:
        webhooks.webhooks_emit(
            campaign_id=rnd.campaign_id,
            event=Webhook.Event.ROUND_NEEDS_REVIEW,
            data={"round": rnd.pk, "number": rnd.number, "warnings": checks["warnings"]},
        )
    return rnd


def round_checks(rnd: Round, evaluation: dict[str, Any]) -> dict[str, Any]:
    """What an admin must know before the round's policy generates the next campaign: the
    reward model's held-out size and accuracy (with a 95% Wilson interval), and ``warnings``
    for each threshold of the round's eval settings it misses."""
    settings_ = EvalSettings(**eval_settings_clean(rnd.eval_settings))
    warnings = []
    report: dict[str, Any] = {}
    reward_model = rnd.reward_model
    if reward_model is not None:
        pairs = int(reward_model.metrics.get("counts/eval_pairs", 0) or 0)
        accuracy = reward_model.metrics.get("eval/accuracy")
        report = {"held_out_pairs": pairs, "accuracy": accuracy}
        if isinstance(accuracy, int | float) and pairs:
            report["accuracy_ci95"] = list(wilson_interval(accuracy, pairs))
        if pairs < settings_.min_held_out_pairs:
            warnings.append(
                f"the reward model was evaluated on {pairs} held-out pairs, fewer than "
                f"{settings_.min_held_out_pairs}: its accuracy says little; label more"
            )
    gain = (evaluation.get("delta") or {}).get("reward")
    if settings_.reward_must_not_fall and isinstance(gain, int | float) and gain < 0:
        warnings.append(f"the update lowered the reward on held-out prompts by {-gain:.3g}")
    return {"reward_model": report, "warnings": warnings}


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``rate`` observed on ``n`` trials."""
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class GeneratedCompletion:
    """One generated completion to store: its text and where it came from."""

    text: str
    source: str
    model_version_id: int | None
    metadata: dict[str, Any] = field(default_factory=dict)


@transaction.atomic
def generated_tasks_store(
    *,
    campaign,
    prompt_ids: Sequence[int],
    completions: Sequence[Sequence[GeneratedCompletion]],
) -> list:
    """Write generated completions and one task per prompt into ``campaign``, all or nothing.

    ``completions[i]`` belong to ``prompt_ids[i]`` and number the campaign's N. A prompt of
    another campaign is copied into this one first (text, messages and external id; metadata
    records the prompt it came from and the first one of its line, ``root_prompt``, which keeps
    one prompt on one side of a reward model's train/eval split round after round).

    Locks: the campaign row (no key update), so an import or a status change waits.
    """
    if len(prompt_ids) != len(completions):
        raise ValueError("one group of completions per prompt")
    campaign = Campaign.objects.select_for_update(no_key=True).get(pk=campaign.pk)
    if campaign.status == Campaign.Status.CLOSED:
        raise Conflict("cannot add tasks to a closed campaign", field="campaign")
    sources = Prompt.objects.in_bulk(list(prompt_ids))
    copies = {
        pk: Prompt(
            campaign=campaign,
            external_id=prompt.external_id,
            text=prompt.text,
            messages=prompt.messages,
            metadata={
                **prompt.metadata,
                "source_prompt": prompt.pk,
                "root_prompt": prompt.metadata.get("root_prompt", prompt.pk),
            },
        )
        for pk, prompt in sources.items()
        if prompt.campaign_id != campaign.pk
    }
    Prompt.objects.bulk_create(list(copies.values()))
    prompts = [copies.get(pk) or sources[pk] for pk in prompt_ids]
    rows = Completion.objects.bulk_create(
        [
            Completion(
                prompt=prompt,
                text=c.text,
                source=c.source[:200],
                model_version_id=c.model_version_id,
                metadata=c.metadata,
            )
            for prompt, group in zip(prompts, completions, strict=True)
            for c in group
        ]
    )
    groups, start = [], 0
    for prompt, group in zip(prompts, completions, strict=True):
        groups.append((prompt, rows[start : start + len(group)]))
        start += len(group)
    return annotation_services.tasks_create(campaign=campaign, groups=groups)


def _campaign_settings(campaign) -> dict[str, Any]:
    """Every setting ``campaign_create`` takes (N, overlap, ties, fail, description, ...), as
    the campaign has it: a later round is labelled under the same rules."""
    fields = {f.name for f in campaign._meta.concrete_fields}
    parameters = inspect.signature(annotation_services.campaign_create).parameters
    return {
        name: getattr(campaign, name)
        for name, parameter in parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        and name in fields
        and name not in ("created_by", "name", "round_number")
    }


def _next_campaign_name(name: str, number: int) -> str:
    stem = re.sub(r" · round \d+$", "", name)
    suffix = f" · round {number}"
    return stem[: 200 - len(suffix)] + suffix


@transaction.atomic
def round_open_next(
    *,
    round_id: int,
    policy: ModelVersion | None,
    prompt_ids: Sequence[int],
    completions: Sequence[Sequence[GeneratedCompletion]],
    created_by: AbstractBaseUser | None,
    activate: bool = True,
) -> Round:
    """Start round n + 1: a new campaign with the same settings, members and guidelines (the
    current text, published again as version 1) whose tasks hold the generated completions;
    the round records it and becomes completed. Returns the new round, whose
    ``policy_before`` is ``policy`` (the round's ``policy_after`` when none is given). All or
    nothing.

    Locks: the Round row first (a second "next" for the same round waits, then finds it
    completed and is refused), then the new campaign's row.
    """
    rnd = _lock_round(round_id, to=Round.Status.COMPLETED)
    old = rnd.campaign
    policy = policy or rnd.policy_after
    if policy is None:
        raise Conflict(f"round {rnd.number} has no updated policy", field="round")
    new = annotation_services.campaign_create(
        created_by=created_by,
        name=_next_campaign_name(old.name, old.round_number + 1),
        round_number=old.round_number + 1,
        **_campaign_settings(old),
    )
    guideline = old.guidelines.order_by("-version").first()
    if guideline is not None:
        annotation_services.guideline_publish(
            campaign=new, text=guideline.text, created_by=created_by
        )
    members = get_user_model().objects.filter(memberships__campaign=old)
    annotation_services.campaign_add_members(campaign=new, users=list(members))
    generated_tasks_store(campaign=new, prompt_ids=prompt_ids, completions=completions)
    if activate:
        annotation_services.campaign_set_status(campaign=new, status=Campaign.Status.ACTIVE)
    following = Round.objects.create(
        number=new.round_number,
        campaign=new,
        previous=rnd,
        policy_before=policy,
        reference=rnd.reference,
        reward_scope=rnd.reward_scope,
        eval_settings=rnd.eval_settings,
        created_by=created_by,
    )
    rnd.next_campaign = new
    rnd.status = Round.Status.COMPLETED
    rnd.save(update_fields=["next_campaign", "status", "updated_at"])
    return following
