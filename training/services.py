"""Writes for training: creating, running, cancelling and sweeping jobs; registering models;
the rounds of the online RLHF loop.

A job runs inside ``training_job_run`` (called by the thin Celery task on the ``gpu`` queue):
it claims the row, hands plain data to ``training.ml`` with a reporter that stores progress,
metrics, log lines and heartbeats, and on success registers the ModelVersion only after the
ML code has renamed the finished directory into the model store. Failures are stored with
their traceback and re-raised; nothing is swallowed. A ``round`` job runs its steps (reward
model, PPO or DPO, generate) as jobs of their own, inline, one after the other.

A round (``Round``) moves collecting → trained → completed: its reward model and its updated
policy are recorded in the transaction that marks their job succeeded; "start the next round"
(a generate job) opens the next campaign and the next Round in one transaction.

Locks: the TrainingJob row (``SELECT ... FOR UPDATE``) while its status changes; the Round row
while a job records its result there or opens the next round (then the new campaign's row).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import re
import socket
import threading
import time
import traceback
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connections, transaction
from django.utils import timezone

from annotation.errors import Conflict, InvalidInput
from training.ml.evaluation import EvalSettings
from training.models import JobMetric, ModelVersion, Round, TrainingJob

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 200


# --- Model versions -----------------------------------------------------------------------------


def model_version_register(
    *,
    kind: str,
    name: str,
    path: str,
    base: str = "",
    parent: ModelVersion | None = None,
    job: TrainingJob | None = None,
    metrics: dict | None = None,
    reward_offset: float | None = None,
    reward_scale: float | None = None,
) -> ModelVersion:
    """Record a complete model (a directory in the store, a local directory or a hub id)."""
    if kind not in ModelVersion.Kind.values:
        raise InvalidInput(f"unknown kind {kind!r}", field="kind")
    if not path.strip():
        raise InvalidInput("is empty", field="path")
    return ModelVersion.objects.create(
        kind=kind,
        name=name,
        path=path,
        base=base,
        parent=parent,
        created_by_job=job,
        metrics=metrics or {},
        reward_offset=reward_offset,
        reward_scale=reward_scale,
    )


def model_store_dir(job: TrainingJob) -> Path:
    """Where a job's model goes: ``MODEL_STORE_DIR/<kind>-<job id>``."""
    return Path(settings.MODEL_STORE_DIR) / f"{job.kind}-{job.pk:06d}"


# --- Creating and cancelling --------------------------------------------------------------------


def training_job_create(
    *,
    kind: str,
    params: dict[str, Any],
    created_by: AbstractBaseUser | None,
    campaign_id: int | None = None,
    base_model: ModelVersion | None = None,
    round_id: int | None = None,
    parent: TrainingJob | None = None,
) -> TrainingJob:
    """Create a queued job and enqueue it on the ``gpu`` queue once the transaction commits.

    A job with a ``parent`` (a step of a chained ``round`` job) is not enqueued: the parent's
    runner runs it in its own process, one step after the other.
    """
    from training.tasks import run_training_job

    if kind not in TrainingJob.Kind.values:
        raise InvalidInput(f"unknown kind {kind!r}", field="kind")
    with transaction.atomic():
        job = TrainingJob.objects.create(
            kind=kind,
            params=params,
            created_by=created_by,
            campaign_id=campaign_id,
            base_model=base_model,
            round_id=round_id,
            parent=parent,
        )
        if parent is None:
            transaction.on_commit(lambda: _enqueue(job.pk, run_training_job))
    return job


# --- Job parameters -----------------------------------------------------------------------------

CONFIG_CLASSES: dict[str, str] = {
    TrainingJob.Kind.REWARD_MODEL: "training.ml.config.RewardModelConfig",
    TrainingJob.Kind.PPO: "training.ml.config.PPOConfig",
    TrainingJob.Kind.DPO: "training.ml.config.DPOConfig",
    TrainingJob.Kind.GENERATE: "training.ml.config.SamplingConfig",
}
ROUND_CONFIG_SECTIONS: dict[str, str] = {
    "reward_model": TrainingJob.Kind.REWARD_MODEL,
    "ppo": TrainingJob.Kind.PPO,
    "dpo": TrainingJob.Kind.DPO,
    "sampling": TrainingJob.Kind.GENERATE,
}
"""A ``round`` job's ``config``: one section per step, each checked by its step's class."""

MIX_ROLES = ("policy", "previous", "reference")
"""Where a generated completion can come from: the new policy, the round's previous policy
(the one that generated the round's own completions), the KL reference."""


def config_class(kind: str) -> type:
    """The ``training.ml`` config dataclass of a job kind."""
    from importlib import import_module

    module, name = CONFIG_CLASSES[kind].rsplit(".", 1)
    return getattr(import_module(module), name)


def config_from_dict(cls: type, data: Any) -> Any:
    """Build a config dataclass from JSON, refusing unknown fields, values of the wrong type and
    values the class itself refuses: ``ValueError`` naming the field."""
    if not isinstance(data, dict):
        raise ValueError("must be an object of hyper-parameters")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if not _matches(value, hints[key]):
            expected = str(hints[key]).replace("typing.", "")
            raise ValueError(f"{key}: {value!r} is not a valid {expected}")
    try:
        return cls.from_dict(data) if hasattr(cls, "from_dict") else cls(**data)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a (simple) type hint; unknown hints accept anything."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        return (
            isinstance(value, list | tuple)
            and len(value) == len(args)
            and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        )
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    return True


def _check_config(kind: str, config: Any) -> None:
    """Refuse unknown or invalid hyper-parameters before anything is queued."""
    if kind not in CONFIG_CLASSES:
        return
    try:
        config_from_dict(config_class(kind), config)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="config") from None


def eval_settings_clean(data: Any, *, field: str = "eval_settings") -> dict[str, Any]:
    """Evaluation settings with the defaults filled in, as stored on a Round and a job."""
    try:
        return dataclasses.asdict(config_from_dict(EvalSettings, data or {}))
    except ValueError as exc:
        raise InvalidInput(str(exc), field=field) from None


@dataclass
class _Form:
    """What an admin asked for, whatever the kind (see ``training_job_create_from_form``)."""

    created_by: AbstractBaseUser | None
    campaign_ids: list[int]
    name: str
    base_model_version: ModelVersion | None
    base_model_path: str
    reference_model_version: ModelVersion | None
    reward_model_version: ModelVersion | None
    ties: bool
    fail_policy: str
    config: dict[str, Any]
    round: Round | None
    target_campaign: Any
    num_completions: int | None
    mix: dict[str, int] | None
    update: str
    evaluation: dict[str, Any] | None


@dataclass
class _JobSpec:
    params: dict[str, Any]
    campaign_id: int | None = None
    base_model: ModelVersion | None = None
    round_id: int | None = None


def training_job_create_from_form(
    *,
    created_by: AbstractBaseUser | None,
    kind: str,
    campaign_ids: Sequence[int] | None = None,
    name: str = "",
    base_model_version: ModelVersion | None = None,
    base_model_path: str = "",
    reference_model_version: ModelVersion | None = None,
    ties: bool = False,
    fail_policy: str = "drop",
    config: dict[str, Any] | None = None,
    round: Round | None = None,
    reward_model_version: ModelVersion | None = None,
    target_campaign: Any = None,
    num_completions: int | None = None,
    mix: dict[str, int] | None = None,
    update: str = "ppo",
    evaluation: dict[str, Any] | None = None,
    parent: TrainingJob | None = None,
) -> TrainingJob:
    """Validate what an admin asked for (API or dashboard form) and queue the job.

    Common: ``config`` overrides the kind's config dataclass (an unknown field or a bad value is
    refused on ``config``); ``name`` names the version the job registers; ``round`` ties the
    job to an RLHF round, whose campaign and models fill in whatever is not given.

    * ``reward_model``: pairs of ``campaign_ids`` (with a round: every round's campaigns so far,
      or the round's only, as its ``reward_scope`` says), from ``base_model_version`` /
      ``base_model_path`` (round: its reference), normalised on ``reference_model_version``'s
      completions (round: the round's ``policy_before``). ``config``: RewardModelConfig.
    * ``ppo``: the policy ``base_model_version`` (round: ``policy_before``) against
      ``reward_model_version`` (round: its reward model; else the newest one), KL to
      ``reference_model_version`` (round: its reference; else the policy), on the prompts of
      ``campaign_ids`` (round: its campaign) minus the held-out ones. ``config``: PPOConfig.
    * ``dpo``: the policy on the pairs of ``campaign_ids`` (round: as for the reward model),
      reference as for PPO. ``config``: DPOConfig.
    * ``generate``: K = ``num_completions`` completions per prompt of ``campaign_ids`` (round:
      its campaign) from the policy (round: ``policy_after``), split by ``mix`` between
      ``policy``, ``previous`` and ``reference``; written as tasks into ``target_campaign``
      (default: the one campaign of ``campaign_ids``, whose prompts without a task get one) or,
      with a round, into the next round's new campaign. K must equal that campaign's N.
      ``config``: SamplingConfig.
    * ``round``: reward model → ``update`` (ppo or dpo) → generate, as steps of one job.
      ``config`` holds one section per step: ``reward_model``, ``ppo``, ``dpo``, ``sampling``
      (a flat dict is taken as the update's section). Without ``round``, the one campaign of
      ``campaign_ids`` names it (a round is started there from ``base_model_version`` if the
      campaign has none).

    ``parent`` (internal): the ``round`` job this one is a step of; such a job is not queued.
    """
    from training import runners  # noqa: F401 - registers the runners

    if kind not in RUNNERS:
        raise InvalidInput(f"jobs of kind {kind!r} cannot run yet", field="kind")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise InvalidInput("must be an object of hyper-parameters", field="config")
    if base_model_version is not None and base_model_path:
        raise InvalidInput(
            "give base_model_version or base_model_path, not both", field="base_model_path"
        )
    if base_model_version is not None and base_model_version.kind == ModelVersion.Kind.REWARD:
        raise InvalidInput("start from a base or policy model", field="base_model_version")
    if reward_model_version is not None and reward_model_version.kind != ModelVersion.Kind.REWARD:
        raise InvalidInput("must be a reward model", field="reward_model_version")
    if (
        reference_model_version is not None
        and reference_model_version.kind == ModelVersion.Kind.REWARD
    ):
        raise InvalidInput("must be a base or policy model", field="reference_model_version")
    if round is not None and round.status == Round.Status.COMPLETED:
        raise Conflict(
            f"round {round.number} is completed: its next round has started",
            field="round",
            code="round_completed",
        )
    form = _Form(
        created_by=created_by,
        campaign_ids=sorted(set(campaign_ids or [])),
        name=name,
        base_model_version=base_model_version,
        base_model_path=base_model_path,
        reference_model_version=reference_model_version,
        reward_model_version=reward_model_version,
        ties=ties,
        fail_policy=fail_policy,
        config=config,
        round=round,
        target_campaign=target_campaign,
        num_completions=num_completions,
        mix=mix,
        update=update,
        evaluation=evaluation,
    )
    builders: dict[str, Callable[[_Form], _JobSpec]] = {
        TrainingJob.Kind.REWARD_MODEL: _reward_model_job,
        TrainingJob.Kind.PPO: _ppo_job,
        TrainingJob.Kind.DPO: _dpo_job,
        TrainingJob.Kind.GENERATE: _generate_job,
        TrainingJob.Kind.ROUND: _round_job,
    }
    build = builders.get(kind)
    if build is None:  # e.g. acquisition jobs, which have their own endpoint
        raise InvalidInput(f"jobs of kind {kind!r} are not created here", field="kind")
    with transaction.atomic():
        spec = build(form)
        return training_job_create(
            kind=kind,
            params=spec.params,
            created_by=created_by,
            campaign_id=spec.campaign_id,
            base_model=spec.base_model,
            round_id=spec.round_id,
            parent=parent,
        )


def _require_campaigns(campaign_ids: list[int]) -> None:
    if not campaign_ids:
        raise InvalidInput("name at least one campaign", field="campaign_ids")


def _require_rankings(campaign_ids: list[int], *, field: str = "campaign_ids") -> None:
    from annotation.models import Ranking

    if not Ranking.objects.filter(campaign_id__in=campaign_ids).exists():
        raise InvalidInput("these campaigns have no rankings yet", field=field)


def _single(campaign_ids: list[int]) -> int | None:
    return campaign_ids[0] if len(campaign_ids) == 1 else None


def _round_pk(form: _Form) -> int | None:
    return form.round.pk if form.round is not None else None


def _policy(form: _Form, *, round_default: ModelVersion | None) -> ModelVersion | None:
    """The policy a job starts from: the version asked for, else the round's, else none (the
    runner then loads ``base_model_path`` or the default base model)."""
    if form.base_model_version is not None:
        return form.base_model_version
    if form.base_model_path:
        return None
    return round_default


def _evaluation(form: _Form) -> dict[str, Any]:
    if form.round is not None:
        if form.evaluation:
            raise InvalidInput("a round job uses the round's eval_settings", field="evaluation")
        return eval_settings_clean(form.round.eval_settings)
    return eval_settings_clean(form.evaluation, field="evaluation")


def _reward_model_job(form: _Form) -> _JobSpec:
    from training import selectors

    _check_config(TrainingJob.Kind.REWARD_MODEL, form.config)
    campaign_ids = form.campaign_ids
    base = form.base_model_version
    reference = form.reference_model_version
    if form.round is not None:
        campaign_ids = campaign_ids or selectors.round_reward_campaign_ids(round=form.round)
        if base is None and not form.base_model_path:
            base = form.round.reference
        reference = reference or form.round.policy_before
    _require_campaigns(campaign_ids)
    _require_rankings(campaign_ids)
    params: dict[str, Any] = {
        "campaign_ids": campaign_ids,
        "ties": form.ties,
        "fail_policy": form.fail_policy,
        "config": form.config,
        "name": form.name,
    }
    if form.base_model_path:
        params["base_model_path"] = form.base_model_path
    if reference is not None:
        params["reference_model_version"] = reference.pk
    if form.round is not None:
        params["round"] = form.round.pk
    return _JobSpec(params, _single(campaign_ids), base, _round_pk(form))


def _ppo_job(form: _Form) -> _JobSpec:
    from annotation.models import Prompt

    rnd = form.round
    _check_config(TrainingJob.Kind.PPO, form.config)
    evaluation = _evaluation(form)
    policy = _policy(form, round_default=rnd.policy_before if rnd else None)
    reward = form.reward_model_version
    if reward is None and rnd is not None:
        reward = rnd.reward_model
        if reward is None:
            raise InvalidInput(
                f"round {rnd.number} has no reward model yet: train one first, or name one",
                field="reward_model_version",
            )
    if reward is None:
        reward = ModelVersion.objects.filter(kind=ModelVersion.Kind.REWARD).first()
        if reward is None:
            raise InvalidInput("no reward model yet: train one first", field="reward_model_version")
    reference = form.reference_model_version or (rnd.reference if rnd else None)
    campaign_ids = form.campaign_ids or ([rnd.campaign_id] if rnd else [])
    _require_campaigns(campaign_ids)
    if not Prompt.objects.filter(campaign_id__in=campaign_ids).exists():
        raise InvalidInput("these campaigns have no prompts", field="campaign_ids")
    params: dict[str, Any] = {
        "campaign_ids": campaign_ids,
        "reward_model_version": reward.pk,
        "reference_model_version": reference.pk if reference else None,
        "config": form.config,
        "name": form.name,
        "round": _round_pk(form),
        "evaluation": evaluation,
    }
    if form.base_model_path:
        params["base_model_path"] = form.base_model_path
    return _JobSpec(params, _single(campaign_ids), policy, _round_pk(form))


def _dpo_job(form: _Form) -> _JobSpec:
    from training import selectors

    rnd = form.round
    _check_config(TrainingJob.Kind.DPO, form.config)
    evaluation = _evaluation(form)
    policy = _policy(form, round_default=rnd.policy_before if rnd else None)
    reference = form.reference_model_version or (rnd.reference if rnd else None)
    campaign_ids = form.campaign_ids
    if rnd is not None:
        campaign_ids = campaign_ids or selectors.round_reward_campaign_ids(round=rnd)
    _require_campaigns(campaign_ids)
    _require_rankings(campaign_ids)
    reward = form.reward_model_version or (rnd.reward_model if rnd else None)
    params: dict[str, Any] = {
        "campaign_ids": campaign_ids,
        "ties": form.ties,
        "fail_policy": form.fail_policy,
        "reference_model_version": reference.pk if reference else None,
        "reward_model_version": reward.pk if reward else None,
        "config": form.config,
        "name": form.name,
        "round": _round_pk(form),
        "evaluation": evaluation,
    }
    if form.base_model_path:
        params["base_model_path"] = form.base_model_path
    return _JobSpec(params, _single(campaign_ids), policy, _round_pk(form))


def _completions_count(form: _Form, *, n: int, from_config: int | None) -> int:
    """K: ``num_completions`` (or the sampling config's), which must equal the campaign's N."""
    if None not in (form.num_completions, from_config) and form.num_completions != from_config:
        raise InvalidInput(
            "num_completions and config.num_completions disagree", field="num_completions"
        )
    k = form.num_completions or from_config or n
    if k != n:
        raise InvalidInput(
            f"the campaign shows N = {n} completions per task: generate K = {n}",
            field="num_completions",
        )
    return k


def _check_mix(mix: Any, k: int) -> dict[str, int]:
    """``{"policy": 2, "previous": 1, "reference": 1}``: how many of the K come from where."""
    if mix is None:
        return {"policy": k}
    if not isinstance(mix, dict) or not mix:
        raise InvalidInput(f"must map some of {list(MIX_ROLES)} to counts", field="mix")
    unknown = sorted(set(mix) - set(MIX_ROLES))
    if unknown:
        raise InvalidInput(f"unknown sources {unknown}; use {list(MIX_ROLES)}", field="mix")
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in mix.values()):
        raise InvalidInput("counts must be integers >= 0", field="mix")
    if sum(mix.values()) != k:
        raise InvalidInput(f"the counts add up to {sum(mix.values())}, not K = {k}", field="mix")
    return {role: mix[role] for role in MIX_ROLES if mix.get(role)}


def _generation_sources(
    mix: dict[str, int],
    *,
    policy: ModelVersion | None,
    policy_path: str,
    previous: ModelVersion | None,
    reference: ModelVersion | None,
) -> list[dict[str, Any]]:
    """Each source of the mix as ``{"role", "model_version", "path", "count"}``."""
    from django.conf import settings as django_settings

    versions = {"policy": policy, "previous": previous, "reference": reference}
    sources = []
    for role, count in mix.items():
        version = versions[role]
        if role == "policy":
            path = version.path if version else policy_path or django_settings.DEFAULT_BASE_MODEL
        elif version is None:
            hint = "name a reference_model_version" if role == "reference" else "needs a round"
            raise InvalidInput(f"{role}: no {role} policy to sample from ({hint})", field="mix")
        else:
            path = version.path
        sources.append(
            {
                "role": role,
                "model_version": version.pk if version else None,
                "path": path,
                "count": count,
            }
        )
    return sources


def _generate_job(form: _Form) -> _JobSpec:
    from annotation.models import Campaign, Prompt

    rnd = form.round
    _check_config(TrainingJob.Kind.GENERATE, form.config)
    sampling = dict(form.config)
    from_config = sampling.pop("num_completions", None)
    previous = None
    if rnd is not None:
        if form.target_campaign is not None:
            raise InvalidInput(
                "a round writes into its next campaign: give round or target_campaign",
                field="target_campaign",
            )
        if rnd.status != Round.Status.TRAINED:
            raise Conflict(
                f"round {rnd.number} has no updated policy yet: run PPO or DPO first",
                field="round",
                code="round_not_trained",
            )
        policy = _policy(form, round_default=rnd.policy_after)
        previous = rnd.policy_before
        campaign_ids = form.campaign_ids or [rnd.campaign_id]
        target = None
        n = rnd.campaign.completions_per_task
    else:
        policy = form.base_model_version
        campaign_ids = form.campaign_ids
        _require_campaigns(campaign_ids)
        target = form.target_campaign
        if target is None:
            if len(campaign_ids) != 1:
                raise InvalidInput(
                    "name the campaign to write the tasks into", field="target_campaign"
                )
            target = Campaign.objects.get(pk=campaign_ids[0])
        if target.status == Campaign.Status.CLOSED:
            raise Conflict("the campaign is closed", field="target_campaign")
        n = target.completions_per_task
    _require_campaigns(campaign_ids)
    prompts = Prompt.objects.filter(campaign_id__in=campaign_ids)
    if target is not None and campaign_ids == [target.pk]:
        prompts = prompts.exclude(tasks__campaign=target)
        if not prompts.exists():
            raise InvalidInput(
                "every prompt of the campaign already has a task", field="campaign_ids"
            )
    elif not prompts.exists():
        raise InvalidInput("these campaigns have no prompts", field="campaign_ids")
    k = _completions_count(form, n=n, from_config=from_config)
    mix = _check_mix(form.mix, k)
    reference = form.reference_model_version or (rnd.reference if rnd else None)
    sources = _generation_sources(
        mix,
        policy=policy,
        policy_path=form.base_model_path,
        previous=previous,
        reference=reference,
    )
    params: dict[str, Any] = {
        "campaign_ids": campaign_ids,
        "round": _round_pk(form),
        "target_campaign": target.pk if target is not None else None,
        "num_completions": k,
        "mix": mix,
        "sources": sources,
        "config": sampling,
        "name": form.name,
    }
    campaign_id = target.pk if target is not None else rnd.campaign_id
    return _JobSpec(params, campaign_id, policy, _round_pk(form))


def _round_sections(config: dict[str, Any], update: str) -> dict[str, dict[str, Any]]:
    """The ``round`` job's config by step; a flat dict is the update step's section."""
    if config and not set(config) & set(ROUND_CONFIG_SECTIONS):
        config = {update: config}
    unknown = sorted(set(config) - set(ROUND_CONFIG_SECTIONS))
    if unknown:
        raise InvalidInput(
            f"unknown sections {unknown}; use {list(ROUND_CONFIG_SECTIONS)}", field="config"
        )
    sections = {}
    for section, kind in ROUND_CONFIG_SECTIONS.items():
        values = config.get(section) or {}
        try:
            config_from_dict(config_class(kind), values)
        except ValueError as exc:
            raise InvalidInput(f"{section}: {exc}", field="config") from None
        sections[section] = values
    return sections


def _round_job(form: _Form) -> _JobSpec:
    from annotation.models import Campaign

    rnd = form.round
    if rnd is None:
        if len(form.campaign_ids) != 1:
            raise InvalidInput("name the round (or its one campaign)", field="round")
        campaign = Campaign.objects.get(pk=form.campaign_ids[0])
        rnd = Round.objects.filter(campaign=campaign).first()
        if rnd is None:
            if form.base_model_version is None:
                raise InvalidInput(
                    f"campaign {campaign.pk} has no round yet: name the policy that generated "
                    "its completions to start one",
                    field="base_model_version",
                )
            rnd = round_start(
                campaign=campaign,
                policy=form.base_model_version,
                reference=form.reference_model_version,
                created_by=form.created_by,
            )
        elif rnd.status == Round.Status.COMPLETED:
            raise Conflict(
                f"round {rnd.number} is completed: its next round has started",
                field="round",
                code="round_completed",
            )
    elif form.base_model_version is not None and form.base_model_version != rnd.policy_before:
        raise InvalidInput(
            f"round {rnd.number} starts from version {rnd.policy_before_id}",
            field="base_model_version",
        )
    if form.update not in (TrainingJob.Kind.PPO, TrainingJob.Kind.DPO):
        raise InvalidInput("must be ppo or dpo", field="update")
    sections = _round_sections(form.config, form.update)
    _require_rankings([rnd.campaign_id], field="round")
    k = _completions_count(
        form,
        n=rnd.campaign.completions_per_task,
        from_config=sections["sampling"].get("num_completions"),
    )
    params = {
        "round": rnd.pk,
        "update": form.update,
        "config": sections,
        "num_completions": k,
        "mix": _check_mix(form.mix, k),
        "ties": form.ties,
        "fail_policy": form.fail_policy,
        "name": form.name,
    }
    return _JobSpec(params, rnd.campaign_id, rnd.policy_before, rnd.pk)


# --- Rounds -------------------------------------------------------------------------------------


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
    from annotation.models import Campaign

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
    later update replaces it) with its evaluation. Locks: the Round row."""
    rnd = _lock_round(round_id, to=Round.Status.TRAINED)
    rnd.policy_after = version
    rnd.evaluation = evaluation
    rnd.status = Round.Status.TRAINED
    rnd.save(update_fields=["policy_after", "evaluation", "status", "updated_at"])
    return rnd


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
    from annotation import services as annotation_services
    from annotation.models import Campaign, Completion, Prompt

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
    import inspect

    from annotation import services as annotation_services

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
    from django.contrib.auth import get_user_model

    from annotation import services as annotation_services
    from annotation.models import Campaign

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


def _enqueue(job_id: int, task) -> None:
    result = task.apply_async(args=[job_id], queue="gpu")
    TrainingJob.objects.filter(pk=job_id, celery_task_id="").update(celery_task_id=result.id)


@transaction.atomic
def training_job_cancel(*, job: TrainingJob) -> TrainingJob:
    """Cancel a job: a queued one at once, a running one at its next step (cooperative)."""
    job = TrainingJob.objects.select_for_update().get(pk=job.pk)
    if job.finished:
        raise Conflict(f"the job already {job.status}", code="job_finished")
    if job.status == TrainingJob.Status.QUEUED:
        job.status = TrainingJob.Status.CANCELLED
        job.finished_at = timezone.now()
        job.cancel_requested = True
        job.save(update_fields=["status", "finished_at", "cancel_requested"])
        if job.celery_task_id:
            task_id = job.celery_task_id
            transaction.on_commit(lambda: _revoke(task_id))
        return job
    job.cancel_requested = True
    job.save(update_fields=["cancel_requested"])
    return job


def _revoke(task_id: str) -> None:
    from config.celery import app

    try:
        app.control.revoke(task_id)
    except Exception:
        logger.warning("could not revoke Celery task %s", task_id, exc_info=True)


def training_job_retry(*, job: TrainingJob, created_by: AbstractBaseUser | None) -> TrainingJob:
    """A new job with the same kind and parameters as a failed or cancelled one."""
    if job.status not in (TrainingJob.Status.FAILED, TrainingJob.Status.CANCELLED):
        raise Conflict("only failed or cancelled jobs can be retried", code="job_not_retryable")
    return training_job_create(
        kind=job.kind,
        params={**job.params, "retry_of": job.pk},
        created_by=created_by,
        campaign_id=job.campaign_id,
        base_model=job.base_model,
        round_id=job.round_id,
    )


def training_jobs_fail_stale(*, now: datetime | None = None) -> int:
    """Mark running jobs whose worker stopped sending heartbeats as failed, with the reason.

    A worker killed outright (SIGKILL, the machine lost) cannot report; this sweep (Celery beat,
    on the default queue) makes sure its job does not stay "running" for ever.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.TRAINING_HEARTBEAT_TIMEOUT_SECONDS)
    count = 0
    stale = TrainingJob.objects.filter(
        status=TrainingJob.Status.RUNNING, heartbeat_at__lt=cutoff
    ).values_list("pk", flat=True)
    for job_id in stale:
        with transaction.atomic():
            job = TrainingJob.objects.select_for_update().get(pk=job_id)
            if job.status != TrainingJob.Status.RUNNING or (
                job.heartbeat_at and job.heartbeat_at >= cutoff
            ):
                continue
            job.status = TrainingJob.Status.FAILED
            job.error = (
                f"the worker {job.worker or '?'} stopped responding: no heartbeat since "
                f"{job.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC (it was probably killed). "
                "Retry the job to run it again."
            )
            job.finished_at = now
            job.save(update_fields=["status", "error", "finished_at"])
            count += 1
    return count


# --- Running ------------------------------------------------------------------------------------


class JobReporter:
    """What the ML code is given: progress, metrics, log lines, cancellation, heartbeats.

    ``on_progress(step, total, metrics)`` stores a JobMetric row and the progress;
    ``should_stop()`` reads the cancel flag (the job's, or its parent's for a step of a chained
    job) at most once a second; a background thread refreshes the heartbeat while a long step
    (loading a model, say) runs.
    """

    def __init__(self, job: TrainingJob, *, heartbeat_seconds: float | None = None) -> None:
        self.job_id = job.pk
        self._watched = [job.pk] if job.parent_id is None else [job.pk, job.parent_id]
        self.lines: collections.deque[str] = collections.deque(
            job.log_tail.splitlines()[-LOG_TAIL_LINES:], maxlen=LOG_TAIL_LINES
        )
        self._cancel = False
        self._checked_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat_seconds = heartbeat_seconds or settings.TRAINING_HEARTBEAT_SECONDS
        self._thread = threading.Thread(target=self._beat, name=f"job-{job.pk}-heartbeat")
        self._last_flush = 0.0

    def __enter__(self) -> JobReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()

    def _beat(self) -> None:
        try:
            while not self._stop.wait(self._heartbeat_seconds):
                TrainingJob.objects.filter(pk=self.job_id).update(heartbeat_at=timezone.now())
        finally:
            connections.close_all()

    def log(self, message: str) -> None:
        stamp = timezone.now().strftime("%H:%M:%S")
        with self._lock:
            for line in str(message).splitlines() or [""]:
                self.lines.append(f"{stamp} {line}")
        if time.monotonic() - self._last_flush > 2.0:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            text = "\n".join(self.lines)
        self._last_flush = time.monotonic()
        TrainingJob.objects.filter(pk=self.job_id).update(
            log_tail=text, heartbeat_at=timezone.now()
        )

    def on_progress(self, step: int, total: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if _finite_number(v)}
        JobMetric.objects.create(job_id=self.job_id, step=step, values=clean)
        TrainingJob.objects.filter(pk=self.job_id).update(
            progress_step=step, progress_total=total, heartbeat_at=timezone.now()
        )

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._cancel and now - self._checked_at >= 1.0:
            self._checked_at = now
            self._cancel = TrainingJob.objects.filter(
                pk__in=self._watched, cancel_requested=True
            ).exists()
        return self._cancel


def _finite_number(value: Any) -> bool:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return number == number and abs(number) != float("inf")


class _LogToReporter(logging.Handler):
    def __init__(self, reporter: JobReporter) -> None:
        super().__init__(level=logging.INFO)
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.reporter.log(f"{record.levelname} {record.name}: {record.getMessage()}")


@dataclass
class JobOutcome:
    """What a runner returns: the model it wrote (if any) and a summary.

    ``version`` holds the keyword arguments of :func:`model_version_register`; the row is
    created in the same transaction that marks the job succeeded, after the directory is in
    place, so no ModelVersion ever points at a partial directory.
    """

    version: dict[str, Any] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    on_success: Callable[[TrainingJob, ModelVersion | None], None] | None = None
    """called in the transaction that marks the job succeeded, with the registered version (a
    round records its new reward model or policy this way: both happen, or neither)"""


Runner = Callable[[TrainingJob, JobReporter], JobOutcome]
RUNNERS: dict[str, Runner] = {}


def runner(kind: str) -> Callable[[Runner], Runner]:
    def register(function: Runner) -> Runner:
        RUNNERS[kind] = function
        return function

    return register


def _claim(job_id: int, *, worker: str, device: str) -> TrainingJob | None:
    """Mark the job running; None when it must not run (finished, cancelled, or given up)."""
    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().get(pk=job_id)
        if job.finished:
            return None
        now = timezone.now()
        if job.cancel_requested:
            job.status = TrainingJob.Status.CANCELLED
            job.finished_at = now
            job.save(update_fields=["status", "finished_at"])
            return None
        notes = []
        if job.status == TrainingJob.Status.RUNNING:
            # The message came back: the worker that ran it died (acks_late + reject on loss).
            notes.append(f"attempt {job.attempts} died with its worker ({job.worker or '?'})")
            if job.attempts >= settings.TRAINING_MAX_ATTEMPTS:
                job.status = TrainingJob.Status.FAILED
                job.error = (
                    f"gave up after {job.attempts} attempts: each died with its worker "
                    f"(last: {job.worker or '?'})"
                )
                job.finished_at = now
                job.save(update_fields=["status", "error", "finished_at"])
                return None
        job.status = TrainingJob.Status.RUNNING
        job.attempts += 1
        job.worker = worker
        job.device = device
        job.started_at = job.started_at or now
        job.heartbeat_at = now
        if notes:
            job.log_tail = "\n".join([job.log_tail, *notes]).strip()
        job.save(
            update_fields=[
                "status",
                "attempts",
                "worker",
                "device",
                "started_at",
                "heartbeat_at",
                "log_tail",
            ]
        )
        return job


def training_job_run(*, job_id: int, worker: str | None = None) -> TrainingJob:
    """Run a job to its end: succeeded, failed (traceback stored, exception re-raised) or
    cancelled. Safe to call again for a finished job (it returns at once)."""
    from training.ml.device import device_name, pick_device
    from training.ml.reward_model import TrainingCancelled

    device = device_name(pick_device(None))
    job = _claim(job_id, worker=worker or socket.gethostname(), device=device)
    if job is None:
        return TrainingJob.objects.get(pk=job_id)
    run = RUNNERS.get(job.kind)
    handler: logging.Handler | None = None
    ml_logger = logging.getLogger("training")
    with JobReporter(job) as reporter:
        handler = _LogToReporter(reporter)
        ml_logger.addHandler(handler)
        try:
            if run is None:
                raise NotImplementedError(f"no runner for job kind {job.kind!r}")
            reporter.log(f"started {job.kind} on {job.worker} ({device}), attempt {job.attempts}")
            outcome = run(job, reporter)
        except TrainingCancelled:
            reporter.log("cancelled")
            _finish(job_id, status=TrainingJob.Status.CANCELLED)
        except BaseException as exc:
            reporter.log(f"failed: {exc!r}")
            _drop_broken_connections()
            _finish(job_id, status=TrainingJob.Status.FAILED, error=traceback.format_exc())
            raise
        else:
            reporter.log("succeeded")
            try:
                _finish(
                    job_id,
                    status=TrainingJob.Status.SUCCEEDED,
                    version=outcome.version,
                    summary=outcome.summary,
                    on_success=outcome.on_success,
                )
            except BaseException as exc:  # recording the result failed: nothing was recorded
                reporter.log(f"failed while recording the result: {exc!r}")
                _drop_broken_connections()
                _finish(job_id, status=TrainingJob.Status.FAILED, error=traceback.format_exc())
                raise
        finally:
            ml_logger.removeHandler(handler)
    return TrainingJob.objects.get(pk=job_id)


def _drop_broken_connections() -> None:
    """Before recording a failure, reconnect if the failure broke the database connection.
    (Django's close_old_connections would also close a healthy connection inside an atomic
    block, e.g. a test's, and the failure could then not be recorded.)"""
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and not conn.in_atomic_block and not conn.is_usable():
            conn.close()


def _finish(
    job_id: int,
    *,
    status: str,
    error: str = "",
    version: dict[str, Any] | None = None,
    summary: dict | None = None,
    on_success: Callable[[TrainingJob, ModelVersion | None], None] | None = None,
) -> None:
    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().get(pk=job_id)
        if version is not None:
            version = model_version_register(job=job, **version)
        if on_success is not None:
            on_success(job, version)
        job.status = status
        job.error = error[-20_000:]
        job.finished_at = timezone.now()
        job.result_version = version
        if summary is not None:
            job.summary = summary
        job.save(update_fields=["status", "error", "finished_at", "result_version", "summary"])
