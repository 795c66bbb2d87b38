"""Run a trainer on one process or sharded over several: the runner's entry points.

:func:`train_reward_model_distributed`, :func:`run_dpo_distributed` and
:func:`run_ppo_distributed` take the same plain data as ``train_reward_model``, ``run_dpo`` and
``run_ppo``. With one process (``gpus`` resolving to 1, the CPU default) they simply call them
in this process: one code path, the world of size 1. With more (or FSDP2's CPU offload on one
GPU, which needs a process group) they write the inputs to a private temporary directory beside
``output_dir``, start::

    python -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node N \\
        -m training.ml train-reward|train-dpo|train-ppo ... --progress json --result result.json

relay rank 0's progress lines (one JSON object per line on stdout, ``{"step", "total",
"metrics"}``) to ``on_progress`` in the calling thread, poll ``should_stop()`` meanwhile, and
when the processes are done rename the finished model into ``output_dir`` and return the result
rank 0 wrote. Cancelling terminates torchrun and its ranks (SIGTERM, then SIGKILL after a grace
period), removes the temporary directory and raises
:class:`~training.ml.common.TrainingCancelled`: ``output_dir`` is never touched. A failed run
raises :class:`DistributedTrainingError` carrying the tail of the processes' stderr.

Several GPUs and scaling out
----------------------------
**One worker, all its GPUs: FSDP2 through torchrun.** A trainer's ``gpus`` chooses the number
of processes: 0 (the default) means one per visible CUDA device (``CUDA_VISIBLE_DEVICES``
decides which) and 1 on CPU; N starts N ranks, each on GPU ``LOCAL_RANK``, NCCL on CUDA and gloo
on CPU (which the tests use). With ``shard: fsdp`` (the default) every trained model is sharded
per decoder layer with PyTorch FSDP2 (``fully_shard``): parameters, gradients and Adam's states
split N ways, bf16 compute with fp32 gradient reduction on CUDA (``MixedPrecisionPolicy``),
``offload`` keeping the shards in CPU memory; the frozen models (PPO's reference and reward
model, DPO's reference) are loaded in bf16 on CUDA and sharded too. ``shard: none`` keeps a
replica per rank and averages the gradients. ``training.ml.parallel`` holds the rules.

Batch sizes stay global: every step, each rank takes an equal share of the global batch (a
weight-0 dummy pads a short share, since every rank must run every forward pass of a sharded
model), so the effective batch, the learning-rate schedule and the number of steps do not change
with N and the same seed gives the same model up to floating-point summation order
(``tests/training/ml/test_fsdp.py``: 2 CPU processes equal 1). Evaluation, normalisation and
PPO's rollout metrics cover every rank's share. Only rank 0 reports progress and writes the
output directory, from the full state dict gathered on it (``get_model_state_dict(...,
full_state_dict=True, cpu_offload=True)``), in the dtype the starting model was published in:
``from_pretrained`` loads it. The same command works by hand::

    torchrun --standalone --nproc_per_node 8 -m training.ml train-reward \\
        --pairs pairs.jsonl --base /models/base --out /models/rm

Startup costs a few seconds per process, so several GPUs pay off on large models. In Docker,
give the ``gpu-worker`` service the GPUs (``deploy.resources.reservations.devices[].count: 8``
or ``all``) and enough shared memory for NCCL (``shm_size: 8gb`` or ``ipc: host``; NCCL fails
with Docker's 64 MB default). Before a job is queued, ``training.jobs.preflight`` checks that
it fits on the GPUs it asks for (``TRAINING_GPUS_PER_WORKER`` x ``TRAINING_GPU_MEMORY_GB``).

**Several nodes: Ray.** A job whose config asks for ``nodes`` > 1 is placed on the Ray cluster
at ``RAY_ADDRESS`` by :class:`training.ml.ray_launch.RayBackend`: one bundle of ``gpus`` GPUs
per node in a placement group, one torchrun per node with a static rendezvous at node 0, the
same ``python -m training.ml train-*`` entry point on every rank. This module's :func:`launch`
drives it exactly as it drives torchrun on one node (:class:`Backend`, :class:`Processes`):
progress, cancellation, the stderr tail of a failure, the model published by the supervisor.

**More workers: more ``gpu-worker`` containers.** Jobs are independent, so the platform scales
out by running more workers. ``docker compose up -d --scale gpu-worker=N`` starts N replicas;
every replica must reach the same PostgreSQL, Redis and model store (``MODEL_STORE_DIR``: the
same shared volume at the same path on every worker and on the web service, since a model's
path is stored in the database). Every ``gpu-worker`` consumes the ``gpu`` queue with
concurrency 1, prefetch multiplier 1 and late acks, so each takes one job at a time and a job
whose worker dies is delivered again, resuming from its last checkpoint when its config saves
them (``checkpoint_every``; ``training.ml.checkpoint``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import queue
import re
import shutil
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from training.ml.common import ProgressFn, StopFn, TrainingCancelled, publish_dir, staging_dir_for
from training.ml.config import DPOConfig, PPOConfig, RewardModelConfig
from training.ml.device import default_num_processes, pick_device
from training.ml.dpo import DPOResult, run_dpo
from training.ml.ppo import PPOResult, run_ppo
from training.ml.processes import (
    PROJECT_ROOT,
    Backend,
    DistributedTrainingError,
    TorchrunBackend,
)
from training.ml.records import PreferencePair, Prompt
from training.ml.reward_model import RewardModelResult, RewardNormalization, train_reward_model

STDERR_TAIL_LINES = 60
"""lines of the processes' stderr kept for the error message of a failed run"""


_EXCEPTION_LINE = re.compile(
    r"^(?:\[node \d+\]\s*)?(?:\[rank\d+\]:\s*)?([A-Za-z_][\w.]*(?:Error|Exception)\b.*)$"
)


class _StderrTail:
    """The last lines of stderr, and the first line that looks like a raised exception."""

    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.first_exception = ""

    def append(self, line: str) -> None:
        self.lines.append(line)
        match = _EXCEPTION_LINE.match(line)
        if match and not self.first_exception and "ChildFailedError" not in line:
            self.first_exception = match.group(1)

    def message(self, head: str) -> str:
        cause = f" {self.first_exception}" if self.first_exception else ""
        return f"{head}{cause}\n--- stderr (last {len(self.lines)} lines) ---\n" + "\n".join(
            self.lines
        )


# --------------------------------------------------------------------------------------------
# The protocol between the launcher and rank 0 (progress lines, result file)
# --------------------------------------------------------------------------------------------


def progress_line(step: int, total: int, metrics: dict[str, float]) -> str:
    """One progress report as one line of JSON: ``{"step", "total", "metrics"}``."""
    return json.dumps({"step": step, "total": total, "metrics": metrics}, sort_keys=True)


def parse_progress_line(line: str) -> tuple[int, int, dict[str, float]] | None:
    """The report in a line written by :func:`progress_line`; None for any other line."""
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict) or not {"step", "total", "metrics"} <= data.keys():
        return None
    return int(data["step"]), int(data["total"]), dict(data["metrics"])


def write_result(result: RewardModelResult, path: Path) -> None:
    """Write ``result`` as JSON (temp file, then rename: a reader never sees half of it)."""
    data = dataclasses.asdict(result)
    data["output_dir"] = str(result.output_dir)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_result(path: Path, *, output_dir: Path) -> RewardModelResult:
    """Inverse of :func:`write_result`, with the model now at ``output_dir``."""
    data = json.loads(path.read_text())
    data["output_dir"] = output_dir
    data["normalization"] = RewardNormalization(**data["normalization"])
    return RewardModelResult(**data)


# --------------------------------------------------------------------------------------------
# Launching
# --------------------------------------------------------------------------------------------


def resolve_num_processes(config: Any) -> int:
    """``config.gpus``, with 0 meaning one process per visible CUDA device (1 on CPU); per node
    for a job over several nodes, where 0 stays 0 and the Ray backend counts the nodes' GPUs."""
    if config.gpus > 0 or getattr(config, "nodes", 1) > 1:
        return config.gpus
    return default_num_processes(config.device)


def needs_launcher(config: Any, nproc: int) -> bool:
    """Whether the run needs processes of its own: more than one, several nodes, or FSDP2 CPU
    offload on one GPU (FSDP needs a process group, which a Celery worker's own process must not
    hold)."""
    if nproc > 1 or getattr(config, "nodes", 1) > 1:
        return True
    offload = getattr(config, "offload", False) and getattr(config, "shard", "") == "fsdp"
    return bool(offload) and pick_device(config.device).type == "cuda"


def _check_devices(config: Any, nproc: int) -> None:
    if getattr(config, "nodes", 1) > 1:
        return  # the Ray nodes' devices, checked by the placement group
    device = pick_device(config.device)
    if device.type != "cuda":
        return
    if device.index is not None and config.device not in (None, "", "auto"):
        raise ValueError(f"{nproc} processes cannot share the one device {config.device!r}")
    if nproc > torch.cuda.device_count():
        raise ValueError(f"{nproc} processes but {torch.cuda.device_count()} visible CUDA devices")


def _write_inputs(
    run_dir: Path,
    pairs: Sequence[PreferencePair],
    config: RewardModelConfig,
    reference_samples: Sequence[tuple[Prompt, str]] | None,
    metadata: Mapping[str, Any] | None,
) -> list[str]:
    """Write the inputs into ``run_dir``; returns the matching ``train-reward`` options."""
    with (run_dir / "pairs.jsonl").open("w", encoding="utf-8") as handle:
        for pair in pairs:
            handle.write(json.dumps(dataclasses.asdict(pair)) + "\n")
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    args = ["--pairs", str(run_dir / "pairs.jsonl"), "--config", str(run_dir / "config.json")]
    if reference_samples:
        with (run_dir / "reference.jsonl").open("w", encoding="utf-8") as handle:
            for prompt, completion in reference_samples:
                handle.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
        args += ["--reference", str(run_dir / "reference.jsonl")]
    if metadata:
        (run_dir / "metadata.json").write_text(json.dumps(dict(metadata)))
        args += ["--metadata", str(run_dir / "metadata.json")]
    return args


def _pump(stream: Any, sink: queue.Queue | _StderrTail) -> None:
    """Copy lines from a pipe into a queue (stdout; None at EOF) or the stderr tail."""
    for line in stream:
        (sink.put if isinstance(sink, queue.Queue) else sink.append)(line.rstrip("\n"))
    if isinstance(sink, queue.Queue):
        sink.put(None)


def backend_for(config: Any) -> Backend:
    """Ray for a job over several nodes (``config.nodes`` > 1), torchrun on this node otherwise."""
    if getattr(config, "nodes", 1) > 1:
        from training.ml.ray_launch import RayBackend  # ray: only for jobs that span nodes

        return RayBackend(nodes=config.nodes, device=config.device)
    return TorchrunBackend()


def launch(
    command: Sequence[str],
    *,
    nproc: int,
    what: str,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    poll_seconds: float = 0.2,
    terminate_grace_seconds: float = 15.0,
    backend: Backend | None = None,
) -> None:
    """Run ``python -m training.ml <command...>`` on ``nproc`` processes and wait: rank 0's
    progress lines go to ``on_progress`` in this thread, ``should_stop()`` is polled (True
    terminates the processes and raises :class:`TrainingCancelled`), a non-zero exit raises
    :class:`DistributedTrainingError` with the tail of stderr (``what`` names the run)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, nproc))))
    backend = backend or TorchrunBackend()
    proc = backend.start(["-m", "training.ml", *command], nproc=nproc, env=env)
    try:
        lines: queue.Queue[str | None] = queue.Queue()
        stderr = _StderrTail()
        readers = [
            threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, stderr), daemon=True),
        ]
        for reader in readers:
            reader.start()
        stdout_open = True
        while stdout_open or proc.poll() is None:
            if should_stop is not None and should_stop():
                proc.terminate(grace=terminate_grace_seconds)
                raise TrainingCancelled(f"{what} cancelled")
            try:
                line = lines.get(timeout=poll_seconds)
            except queue.Empty:
                continue
            if line is None:
                stdout_open = False
                continue
            report = parse_progress_line(line)
            if report is None:
                stderr.append(line)  # stray stdout: kept for the error message
            elif on_progress is not None:
                on_progress(*report)
        for reader in readers:
            reader.join(timeout=5)
        if proc.returncode != 0:
            where = getattr(backend, "describe", lambda n: f"{n} processes")(nproc)
            head = f"{what} on {where} failed (exit {proc.returncode}):"
            raise DistributedTrainingError(stderr.message(head))
    finally:
        if proc.poll() is None:  # an exception in this process
            proc.terminate(grace=terminate_grace_seconds)


def train_reward_model_distributed(
    pairs: Sequence[PreferencePair],
    *,
    base_model: str | Path,
    output_dir: str | Path,
    config: RewardModelConfig | None = None,
    reference_samples: Sequence[tuple[Prompt, str]] | None = None,
    nproc: int | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    metadata: Mapping[str, Any] | None = None,
    check_replicas: bool = False,
    checkpoint_dir: str | Path | None = None,
    poll_seconds: float = 0.2,
    terminate_grace_seconds: float = 15.0,
) -> RewardModelResult:
    """Train like :func:`~training.ml.reward_model.train_reward_model`, on ``nproc`` processes.

    ``nproc`` None: :func:`resolve_num_processes` of ``config``. One process (and no CPU
    offload) calls ``train_reward_model`` in this process with the same arguments. Otherwise
    torchrun runs ``nproc`` ranks (see the module docstring); ``on_progress`` is called in this
    thread, in order, once per line rank 0 prints; ``should_stop()`` is polled every
    ``poll_seconds`` (and after every progress line) and True terminates the processes and
    raises :class:`TrainingCancelled` with nothing written. A non-zero exit raises
    :class:`DistributedTrainingError` with the tail of stderr. ``check_replicas``: the ranks
    compare parameter checksums after training (``result.replica_checksums``).
    """
    config = config or RewardModelConfig()
    nproc = resolve_num_processes(config) if nproc is None else nproc
    if not needs_launcher(config, nproc):
        return train_reward_model(
            pairs,
            base_model=base_model,
            output_dir=output_dir,
            config=config,
            reference_samples=reference_samples,
            on_progress=on_progress,
            should_stop=should_stop,
            metadata=metadata,
            check_replicas=check_replicas,
            checkpoint_dir=checkpoint_dir,
        )
    if not pairs:
        raise ValueError("no preference pairs to train on")
    _check_devices(config, nproc)
    output_dir = Path(output_dir).resolve()
    run_dir = staging_dir_for(output_dir, tag="run")
    try:
        command = [
            "train-reward",
            *_write_inputs(run_dir, pairs, config, reference_samples, metadata),
            "--base",
            str(base_model),
            "--out",
            str(run_dir / "model"),
            "--result",
            str(run_dir / "result.json"),
            "--progress",
            "json",
            *(["--check-replicas"] if check_replicas else []),
            *(["--checkpoint-dir", str(checkpoint_dir)] if checkpoint_dir else []),
        ]
        launch(
            command,
            nproc=nproc,
            backend=backend_for(config),
            what="reward model training",
            on_progress=on_progress,
            should_stop=should_stop,
            poll_seconds=poll_seconds,
            terminate_grace_seconds=terminate_grace_seconds,
        )
        result = read_result(run_dir / "result.json", output_dir=output_dir)
        publish_dir(run_dir / "model", output_dir)
        return result
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# DPO and PPO: the same, through a JSON file of keyword arguments
# --------------------------------------------------------------------------------------------


def _run_policy_job(
    command: str,
    *,
    kwargs: dict[str, Any],
    config: Any,
    output_dir: str | Path,
    nproc: int | None,
    on_progress: ProgressFn | None,
    should_stop: StopFn | None,
    what: str,
    terminate_grace_seconds: float = 15.0,
) -> dict[str, Any]:
    """Run ``train-dpo``/``train-ppo`` on ``nproc`` processes with ``kwargs`` (JSON) and
    publish rank 0's model into ``output_dir``; returns rank 0's result JSON."""
    nproc = resolve_num_processes(config) if nproc is None else nproc
    _check_devices(config, nproc)
    output_dir = Path(output_dir).resolve()
    if output_dir.exists():
        raise FileExistsError(f"{output_dir} already exists")
    run_dir = staging_dir_for(output_dir, tag="run")
    try:
        job = {**kwargs, "config": dataclasses.asdict(config)}
        (run_dir / "job.json").write_text(json.dumps(job))
        launch(
            [
                command,
                "--job",
                str(run_dir / "job.json"),
                "--out",
                str(run_dir / "model"),
                "--result",
                str(run_dir / "result.json"),
            ],
            nproc=nproc,
            backend=backend_for(config),
            what=what,
            on_progress=on_progress,
            should_stop=should_stop,
            terminate_grace_seconds=terminate_grace_seconds,
        )
        result = json.loads((run_dir / "result.json").read_text())
        publish_dir(run_dir / "model", output_dir)
        result["output_dir"] = output_dir
        return result
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def run_dpo_distributed(
    *,
    policy_dir: str | Path,
    reference_dir: str | Path | None,
    pairs: Sequence[Any],
    output_dir: str | Path,
    config: DPOConfig | None = None,
    nproc: int | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    metadata: Mapping[str, Any] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> DPOResult:
    """:func:`~training.ml.dpo.run_dpo` on ``config.gpus`` processes (in this process when
    that is one)."""
    config = config or DPOConfig()
    nproc = resolve_num_processes(config) if nproc is None else nproc
    kwargs: dict[str, Any] = {
        "policy_dir": str(policy_dir),
        "reference_dir": str(reference_dir) if reference_dir else None,
        "metadata": dict(metadata or {}),
        "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
    }
    if not needs_launcher(config, nproc):
        return run_dpo(
            pairs=pairs,
            output_dir=output_dir,
            config=config,
            on_progress=on_progress,
            should_stop=should_stop,
            **{**kwargs, "policy_dir": policy_dir, "reference_dir": reference_dir},
        )
    kwargs["pairs"] = [pair_to_json(p) for p in pairs]
    result = _run_policy_job(
        "train-dpo",
        kwargs=kwargs,
        config=config,
        output_dir=output_dir,
        nproc=nproc,
        on_progress=on_progress,
        should_stop=should_stop,
        what="DPO",
    )
    return DPOResult(
        result["output_dir"],
        result["steps"],
        result["metrics"],
        result["counts"],
        result["history"],
    )


def run_ppo_distributed(
    *,
    policy_dir: str | Path,
    reference_dir: str | Path | None,
    reward_model_dir: str | Path,
    prompts: Sequence[Prompt],
    output_dir: str | Path,
    config: PPOConfig | None = None,
    nproc: int | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    metadata: Mapping[str, Any] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> PPOResult:
    """:func:`~training.ml.ppo.run_ppo` on ``config.gpus`` processes (in this process when
    that is one). A custom ``reward_fn`` cannot cross processes: call ``run_ppo`` for it."""
    config = config or PPOConfig()
    nproc = resolve_num_processes(config) if nproc is None else nproc
    kwargs: dict[str, Any] = {
        "policy_dir": str(policy_dir),
        "reference_dir": str(reference_dir) if reference_dir else None,
        "reward_model_dir": str(reward_model_dir),
        "metadata": dict(metadata or {}),
        "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
    }
    if not needs_launcher(config, nproc):
        return run_ppo(
            prompts=prompts,
            output_dir=output_dir,
            config=config,
            on_progress=on_progress,
            should_stop=should_stop,
            **kwargs,
        )
    kwargs["prompts"] = list(prompts)
    result = _run_policy_job(
        "train-ppo",
        kwargs=kwargs,
        config=config,
        output_dir=output_dir,
        nproc=nproc,
        on_progress=on_progress,
        should_stop=should_stop,
        what="PPO",
    )
    return PPOResult(
        output_dir=result["output_dir"],
        steps=result["steps"],
        metrics=result["metrics"],
        history=result["history"],
        notes=result.get("notes", []),
    )


def pair_to_json(pair: Any) -> dict[str, Any]:
    """A preference pair (a :class:`PreferencePair` or any object with its fields) as JSON."""
    if dataclasses.is_dataclass(pair):
        return dataclasses.asdict(pair)
    names = ("prompt", "chosen", "rejected", "prompt_id", "weight", "tie", "round")
    return {name: getattr(pair, name) for name in names if hasattr(pair, name)}


def pair_from_json(row: dict[str, Any]) -> PreferencePair:
    prompt = row["prompt"]
    default_id = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
    return PreferencePair(
        prompt=prompt,
        chosen=row["chosen"],
        rejected=row["rejected"],
        prompt_id=row.get("prompt_id", default_id),
        weight=float(row.get("weight", 1.0)),
        tie=bool(row.get("tie", False)),
        round=int(row.get("round", 0)),
    )
