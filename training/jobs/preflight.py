"""Before a job is queued: will it fit on the GPUs it asks for?

The kinds' ``build`` call :func:`require_fit` with the model directories they resolved and
their config; it reads the models' ``config.json`` (no weights, no torch: the web process
checks the job), asks :mod:`training.ml.preflight` for the memory per GPU and either returns
the plan (stored with the job's parameters, returned by the API, shown on the job form) or
refuses the job with :class:`DoesNotFit`, a 400 naming the memory needed per GPU and the
options that would make it fit.

The worker's GPUs come from the settings ``TRAINING_GPUS_PER_WORKER`` (what ``gpus: 0``
means) and ``TRAINING_GPU_MEMORY_GB`` (0 turns the check off, e.g. for CPU workers). A model
given by hub id (no local ``config.json``) is not estimated: the plan says so.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from annotation.errors import InvalidInput
from training.ml.preflight import Hardware, Plan, read_config, shape_from_config, with_suggestions


class DoesNotFit(InvalidInput):
    """The job needs more memory per GPU than the GPUs it asked for have; ``plan`` says how
    much and what would fit."""

    def __init__(self, plan: Plan, *, field: str = "config") -> None:
        super().__init__(
            f"does not fit: {plan.reason()}",
            field=field,
            code="does_not_fit",
            extra={"preflight": plan.to_dict()},
        )
        self.plan = plan


def worker_hardware(config: Any) -> Hardware:
    """The GPUs a job with this config runs on (``gpus`` 0: all of a worker's; with ``nodes``,
    that many on each node: the Ray cluster's nodes are taken to be like the worker)."""
    gpus = getattr(config, "gpus", 0) or settings.TRAINING_GPUS_PER_WORKER
    nodes = getattr(config, "nodes", 1)
    return Hardware(gpus=max(1, gpus) * nodes, gpu_memory_gb=settings.TRAINING_GPU_MEMORY_GB)


def job_plan(
    kind: str, *, model_path: str, config: Any, reward_path: str | None = None
) -> Plan | None:
    """The memory plan of a job, or None when its model has no local ``config.json``."""
    model_config = read_config(model_path)
    if model_config is None:
        return None
    shape = shape_from_config(model_config)
    reward_config = read_config(reward_path) if reward_path else None
    reward_shape = shape_from_config(reward_config) if reward_config else None
    plan = with_suggestions(
        kind,
        shape,
        config,
        worker_hardware(config),
        reward_shape=reward_shape,
        max_gpus=max(settings.TRAINING_GPUS_PER_WORKER, 8),
    )
    plan.notes.insert(0, f"model: {shape.params / 1e9:.2f} B parameters ({model_path})")
    if kind == "ppo" and getattr(config, "adaptive_kl", False):
        plan.notes.append(
            f"adaptive KL horizon: {config.resolved_kl_horizon} episodes "
            f"({config.episodes} in the run)"
        )
    return plan


def require_fit(
    kind: str, *, model_path: str, config: Any, reward_path: str | None = None
) -> dict[str, Any]:
    """The plan as JSON when the job fits (or cannot be estimated, or the check is off);
    :class:`DoesNotFit` when it does not; ``InvalidInput`` when it asks for more GPUs than a
    worker has."""
    if settings.TRAINING_GPU_MEMORY_GB <= 0:
        return {}
    gpus = getattr(config, "gpus", 0)
    if gpus > settings.TRAINING_GPUS_PER_WORKER:
        per = "a node" if getattr(config, "nodes", 1) > 1 else "a worker"
        raise InvalidInput(
            f"gpus: {gpus} GPUs asked for, {per} has {settings.TRAINING_GPUS_PER_WORKER}",
            field="config",
        )
    plan = job_plan(kind, model_path=model_path, config=config, reward_path=reward_path)
    if plan is None:
        return {"notes": [f"not estimated: {model_path} has no local config.json"]}
    if not plan.fits:
        raise DoesNotFit(plan)
    return plan.to_dict()
