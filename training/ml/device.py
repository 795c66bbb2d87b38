"""Where the ML code runs: device and precision choice, in one place.

Rules:
    * CUDA when available, else CPU (``"mps"`` only when asked for explicitly).
    * On CUDA the forward passes run under ``torch.autocast(dtype=torch.bfloat16)`` when the GPU
      supports bf16 (weights and optimiser state stay fp32: mixed precision); on CPU everything is
      fp32 (CPU bf16 is slow and lossy for tiny models; TRL's bf16 default fails on CPU).

Multi-GPU data-parallel training is meant to run through the standard launchers, not anything
home-made: ``accelerate launch -m training.ml ...`` or ``torchrun --nproc-per-node N -m training.ml
...`` start one process per GPU with ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` set; each process then
wraps the one module that does the forward pass (``reward_model.LastTokenScorer``) with
``accelerate.Accelerator().prepare(scorer, optimizer)`` (or
``torch.nn.parallel.DistributedDataParallel``) and takes its own slice of every batch. The
training loops in this package are written to be compatible with that: the device comes from
:func:`pick_device` (which honours ``LOCAL_RANK``), the loop only calls the wrapped module,
``loss.backward()``, ``clip_grad_norm_`` and ``optimizer.step()``, and only rank 0 should write
output directories. Nothing here starts processes or averages gradients by hand. The
single-process path needs none of this and is what the tests and the Celery tasks use.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


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
    from transformers.utils import logging as hf_logging

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
