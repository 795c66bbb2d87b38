"""Training state saved during a run, so that a job whose worker died resumes where it was.

A checkpoint is a directory ``step-000040`` under the job's checkpoint directory holding the
trained modules' parameters and the optimisers' state in ``torch.distributed.checkpoint``'s
format (sharded: each process writes its own shards, and a run on another number of processes
can load them) and ``state.json``: the step reached and whatever the trainer needs to go on
exactly as if it had not stopped (metrics history, the KL coefficient, ...). It is written to
a hidden temporary directory and renamed into place by rank 0 when complete, then older ones
are removed: a worker killed while saving leaves the previous checkpoint intact.

The trainers make their data order and their random draws a function of (seed, step) rather
than of the RNG's history, so a resumed run reads exactly the batches the uninterrupted one
would have read from that step on, and samples the same tokens: nothing is skipped or repeated
(tests/training/ml/test_resume.py checks a resumed run equals the uninterrupted one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from training.ml.parallel import Placement, broadcast_object

STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


def _barrier(placement: Placement) -> None:
    if placement.world.size > 1:
        dist.barrier()


def latest_checkpoint(directory: Path | None) -> Path | None:
    """The complete checkpoint of the highest step in ``directory`` (None: none yet)."""
    if directory is None or not directory.is_dir():
        return None
    steps = [
        (int(match.group(1)), path)
        for path in directory.iterdir()
        if (match := _STEP_DIR.match(path.name)) and (path / STATE_FILE).is_file()
    ]
    return max(steps)[1] if steps else None


@dataclass
class Checkpointer:
    """Saves every ``every`` steps into ``directory`` and loads the latest on resume; does
    nothing when ``directory`` is None or ``every`` is 0 (loading still works then)."""

    directory: Path | None
    every: int
    placement: Placement

    def due(self, step: int, total: int) -> bool:
        """Whether to save after ``step``: every ``every`` steps, not after the last (the
        finished model is published instead)."""
        return (
            self.directory is not None and self.every > 0 and step % self.every == 0
        ) and step < total

    def save(
        self,
        step: int,
        *,
        modules: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
    ) -> Path:
        """Write the checkpoint of ``step`` (a collective call: every process makes it).
        ``modules`` holds every trained module (an ``nn.ModuleDict`` for several), ``state``
        is JSON."""
        from torch.distributed.checkpoint import save as dcp_save
        from torch.distributed.checkpoint.state_dict import get_state_dict

        assert self.directory is not None
        if self.placement.world.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:06d}.", dir=self.directory))
        else:
            tmp = None
        tmp = Path(broadcast_object(str(tmp) if tmp else None, self.placement))
        model_state, optim_state = get_state_dict(modules, optimizer)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "assuming a single process"
            dcp_save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp))
        _barrier(self.placement)
        final = self.directory / f"step-{step:06d}"
        if self.placement.world.is_main:
            (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}) + "\n")
            os.replace(tmp, final)
            for old in self.directory.iterdir():
                if old != final and (_STEP_DIR.match(old.name) or old.name.startswith(".step-")):
                    shutil.rmtree(old, ignore_errors=True)
        _barrier(self.placement)
        return final

    def load_latest(
        self, *, modules: nn.Module, optimizer: torch.optim.Optimizer
    ) -> dict[str, Any] | None:
        """Restore the latest checkpoint into ``modules`` and ``optimizer``; returns its state
        (``step`` included), or None when there is none."""
        from torch.distributed.checkpoint import load as dcp_load
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        found = latest_checkpoint(self.directory) if self.placement.world.is_main else None
        path = broadcast_object(str(found) if found else None, self.placement)
        if path is None:
            return None
        model_state, optim_state = get_state_dict(modules, optimizer)
        loaded = {"model": model_state, "optim": optim_state}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp_load(loaded, checkpoint_id=path)
        set_state_dict(
            modules,
            optimizer,
            model_state_dict=loaded["model"],
            optim_state_dict=loaded["optim"],
        )
        return json.loads((Path(path) / STATE_FILE).read_text())

    def remove(self) -> None:
        """Delete every checkpoint (the run finished and published its model)."""
        if self.directory is not None and self.placement.world.is_main:
            shutil.rmtree(self.directory, ignore_errors=True)
