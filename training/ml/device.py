"""Where the ML code runs: device and precision choice, in one place.

Rules:
    * CUDA when available, else CPU (``"mps"`` only when asked for explicitly).
    * On CUDA the forward passes run under ``torch.autocast(dtype=torch.bfloat16)`` when the GPU
      supports bf16 (weights and optimiser state stay fp32: mixed precision); on CPU everything is
      fp32 (CPU bf16 is slow and lossy for tiny models; TRL's bf16 default fails on CPU).

Several processes: ``training.ml.launch`` starts them (torchrun), :func:`process_group` joins
the group in each, and ``training.ml.parallel`` places the models (FSDP2 or replicas). The
training loops only call the placed modules, ``backward()``, the gradient reduction and
``optimizer.step()``; only rank 0 writes output directories. One process needs none of this:
it is the world of size 1 and runs the same code.

:class:`World` says which process this is (rank 0 of 1 outside a launcher);
:func:`process_group` joins the group a launcher set up (NCCL on CUDA, gloo on CPU) and
:func:`default_num_processes` is the "one per visible GPU, else 1" rule. Starting the processes
is ``training.ml.launch``'s job (see its docstring: "Several GPUs and scaling out").
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from transformers.utils import logging as hf_logging


def pick_device(preference: str | None = None) -> torch.device:
    """Return the torch device to use.

    ``preference`` may be ``None``/``"auto"`` (CUDA if available, else CPU), ``"cpu"``,
    ``"cuda"``, ``"cuda:N"`` or ``"mps"``. Under a distributed launcher ``LOCAL_RANK`` selects the
    GPU.
    """
    if preference in (None, "", "auto"):
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} requested but CUDA is not available")
    return device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``device``: bf16 on a bf16-capable GPU, else ``None`` (fp32)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Context manager for forward passes: bf16 autocast on CUDA, a no-op elsewhere."""
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def device_name(device: torch.device) -> str:
    """A human-readable name, e.g. ``"cuda:0 (NVIDIA H200)"`` or ``"cpu (2 threads)"``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run a block with torch's global RNG seeded, restoring the previous RNG state afterwards."""
    devices = []
    if device is not None and device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' info/warning logs and progress bars inside the block (restored after).

    For expected messages (a freshly initialised ``score`` head) and for worker logs.
    """
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------------------------
# Data-parallel processes (torchrun / torch.distributed)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class World:
    """This process's place among the data-parallel processes: rank 0 of 1 when alone."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that reports progress and writes output."""
        return self.rank == 0


SINGLE_PROCESS = World()
"""Rank 0 of 1: no process group."""


def current_world() -> World:
    """The initialised ``torch.distributed`` process group, or a single process (rank 0 of 1)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE_PROCESS
    return World(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)
"""How long a collective may wait for the slowest rank (NCCL's default is 10 minutes): rank 0
writing a 70B model while the others wait at the final barrier takes minutes."""


def backend_for(device: torch.device) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(preference: str | None = None) -> Iterator[World]:
    """Join the process group a launcher described in the environment (``WORLD_SIZE`` > 1,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` as torchrun sets them) and leave it
    on exit; yields the :class:`World`. Without a launcher (or ``WORLD_SIZE`` 1) nothing is
    initialised and the world is rank 0 of 1.

    On CUDA each rank takes the GPU ``LOCAL_RANK`` and the backend is NCCL; on CPU it is gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield current_world()
        return
    device = pick_device(preference)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend_for(device), timeout=COLLECTIVE_TIMEOUT)
    try:
        yield current_world()
        # Every rank leaves together: a rank that tore its gloo group down and exited while
        # another was still in its last collectives (rank 0 writing the model) died in
        # interpreter shutdown ("terminate called without an active exception", SIGABRT), one
        # 2-process CPU run in five on a busy machine. Not on the error path: a failed rank's
        # peers would wait out the timeout; torchrun stops them instead.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def default_num_processes(preference: str | None = None) -> int:
    """Processes for a trainer whose ``gpus`` is 0: one per visible CUDA
    device when the device is ``auto``/``cuda`` (``CUDA_VISIBLE_DEVICES`` decides what is
    visible), else 1 (CPU, or one named GPU such as ``cuda:1``)."""
    if preference not in (None, "", "auto", "cuda") or not torch.cuda.is_available():
        return 1
    return max(1, torch.cuda.device_count())
