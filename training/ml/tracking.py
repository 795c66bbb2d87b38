"""Experiment trackers a training run reports to, as options: TensorBoard event files, MLflow
and Weights & Biases. No Django.

:func:`open_trackers` starts a run in each tracker named and returns a :class:`TrackedRun`
whose ``log(step, metrics)`` is called with every step's metrics (the job's ``on_progress``
calls it) and ``close(status)`` when the run ends; ``links`` says where each run is:

* ``tensorboard``: event files under ``<directory>/tensorboard/<run name>`` (tensorboardX writes
  them; ``tensorboard --logdir <directory>/tensorboard`` shows every job);
* ``mlflow``: a run in the experiment ``rlhf-annotate`` of ``mlflow_uri`` (a local file store
  ``<directory>/mlruns`` unless a tracking server is named), its parameters the job's config;
* ``wandb``: a run in ``wandb_project``, ``mode`` ``offline`` (files under ``<directory>``, to
  ``wandb sync`` later) or ``online`` (needs ``WANDB_API_KEY``).

A tracker that fails to start is left out with a warning in ``notes``: tracking never fails a
training job.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

logger = logging.getLogger(__name__)

TRACKERS: Final = ("tensorboard", "mlflow", "wandb")
EXPERIMENT = "rlhf-annotate"


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = str(value)[:500]
    return flat


@dataclass
class TrackedRun:
    links: dict[str, str] = field(default_factory=dict)
    """tracker -> where its run is: a directory, or a URI"""
    notes: list[str] = field(default_factory=list)
    _sinks: list[Any] = field(default_factory=list)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for sink in list(self._sinks):
            try:
                sink.log(step, metrics)
            except Exception as exc:  # a tracker going wrong never stops the training
                logger.warning("tracker %s failed: %r; it is dropped", sink.name, exc)
                self.notes.append(f"{sink.name} stopped: {exc!r}")
                self._sinks.remove(sink)

    def close(self, status: str = "succeeded") -> None:
        for sink in self._sinks:
            try:
                sink.close(status)
            except Exception as exc:
                logger.warning("tracker %s failed to close: %r", sink.name, exc)
        self._sinks = []


class _TensorBoard:
    name = "tensorboard"

    def __init__(self, directory: Path, run_name: str, config: Mapping[str, Any]) -> None:
        from tensorboardX import SummaryWriter

        self.path = directory / "tensorboard" / run_name
        self.writer = SummaryWriter(logdir=str(self.path))
        text = "\n".join(f"    {k} = {v}" for k, v in sorted(_flat(config).items()))
        self.writer.add_text("config", text or "(defaults)", 0)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def close(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.close()


class _MLflow:
    name = "mlflow"

    def __init__(self, uri: str, run_name: str, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        if uri.startswith("file:"):  # MLflow 3 keeps its file store only when asked to
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(EXPERIMENT)
        )
        run = self.client.create_run(experiment_id, run_name=run_name)
        self.run_id = run.info.run_id
        params = [Param(k, v) for k, v in sorted(_flat(config).items())]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        self.link = f"{uri.rstrip('/')}#/experiments/{experiment_id}/runs/{self.run_id}"
        if uri.startswith("file:"):
            self.link = str(Path(uri.removeprefix("file:")) / experiment_id / self.run_id)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key.replace("@", "_"), float(v), now, step) for key, v in metrics.items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def close(self, status: str) -> None:
        state = {"succeeded": "FINISHED", "cancelled": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(self.run_id, status=state)


class _WandB:
    name = "wandb"

    def __init__(
        self, directory: Path, run_name: str, config: Mapping[str, Any], project: str, mode: str
    ) -> None:
        import wandb

        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            name=run_name,
            dir=str(directory),
            mode=mode,
            config=dict(config),
            reinit="create_new",
        )
        self.link = self.run.url if mode == "online" and self.run.url else str(self.run.dir)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "succeeded" else 1)


def open_trackers(
    names: Any,
    *,
    run_name: str,
    directory: str | Path,
    config: Mapping[str, Any],
    mlflow_uri: str | None = None,
    wandb_project: str = EXPERIMENT,
    wandb_mode: str = "offline",
) -> TrackedRun:
    """Start a run named ``run_name`` in each tracker of ``names`` (see the module)."""
    directory = Path(directory)
    run = TrackedRun()
    for name in dict.fromkeys(names or ()):
        try:
            if name == "tensorboard":
                sink: Any = _TensorBoard(directory, run_name, config)
                run.links[name] = str(sink.path)
            elif name == "mlflow":
                uri = mlflow_uri or f"file:{directory / 'mlruns'}"
                sink = _MLflow(uri, run_name, config)
                run.links[name] = sink.link
            elif name == "wandb":
                sink = _WandB(directory / "wandb", run_name, config, wandb_project, wandb_mode)
                run.links[name] = sink.link
            else:
                raise ValueError(f"unknown tracker {name!r}")
        except Exception as exc:
            logger.warning("tracker %s did not start: %r", name, exc)
            run.notes.append(f"{name} did not start: {exc!r}")
            continue
        run._sinks.append(sink)
    return run
