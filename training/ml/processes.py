"""Starting a job's processes, on this node or anywhere: what ``training.ml.launch`` drives and
``training.ml.ray_launch`` builds on. torchrun in its own session, stopped whole (SIGTERM to every
rank's process group, SIGKILL after a grace period), dying with its parent."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class DistributedTrainingError(RuntimeError):
    """The torchrun processes failed: the message names the first exception a rank printed and
    ends with the tail of their stderr."""


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of the direct children of ``pid``, from /proc ([] elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = entry.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append((int(entry.parent.name), fields[19]))
    return found


def _still_running(pid: int, started: str) -> bool:
    """The process ``pid`` that started at ``started`` exists and is not a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == started and fields[0] != "Z"


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send SIGTERM to the child when this process dies (a worker
    killed by a hard time limit or the OOM killer), so that torchrun stops its ranks instead of
    holding the GPUs. libc is loaded here, in the parent: the child only makes one call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def terminate_tree(proc: subprocess.Popen, *, grace: float) -> None:
    """Stop torchrun and its ranks: SIGTERM to all (each rank leads its own process group),
    SIGKILL to whatever is left after ``grace`` seconds."""
    ranks = _children(proc.pid)
    for pid, _ in [(proc.pid, ""), *ranks]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid, started in ranks:
        while _still_running(pid, started) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _still_running(pid, started):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


class Processes(Protocol):
    """A started run, wherever its processes are: rank 0's stdout and everyone's stderr as
    lines (each iteration ends when the run has closed it), its exit status, and a way to stop
    it whole."""

    stdout: Iterable[str]
    stderr: Iterable[str]
    returncode: int | None

    def poll(self) -> int | None: ...

    def terminate(self, *, grace: float) -> None: ...


class Backend(Protocol):
    """What starts a job's processes: torchrun on this node (:class:`TorchrunBackend`), or one
    torchrun per node of a Ray placement group (``training.ml.ray_launch.RayBackend``). Both run
    the same ``python -m training.ml <command>`` entry point on every rank."""

    def start(self, command: Sequence[str], *, nproc: int, env: dict[str, str]) -> Processes: ...


class LocalProcesses:
    """torchrun started on this machine, stopped through its process group."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen
        self.stdout = popen.stdout
        self.stderr = popen.stderr

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    def terminate(self, *, grace: float) -> None:
        terminate_tree(self.popen, grace=grace)


def torchrun_command(
    command: Sequence[str], *, nproc: int, nodes: int = 1, node_rank: int = 0, master: str = ""
) -> list[str]:
    """``python -m torch.distributed.run ... <command>``: ``--standalone`` on one node (a free
    local port, so several jobs may share a machine), else a static rendezvous at ``master``
    (``host:port`` of node 0)."""
    if nodes == 1:
        where = ["--standalone", "--nnodes=1"]
    else:
        host, port = master.rsplit(":", 1)
        where = [
            f"--nnodes={nodes}",
            f"--node-rank={node_rank}",
            f"--master-addr={host}",
            f"--master-port={port}",
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *where,
        f"--nproc-per-node={nproc}",
        *command,
    ]


def start_torchrun(argv: list[str], env: Mapping[str, str]) -> subprocess.Popen:
    """Start ``argv`` (a :func:`torchrun_command`) in its own session, its pipes as text."""
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=dict(env),
        start_new_session=True,  # its own process group, so that it can be stopped whole
        preexec_fn=_parent_death_signal(),
    )


class TorchrunBackend:
    """``python -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node N``."""

    def start(self, command: Sequence[str], *, nproc: int, env: dict[str, str]) -> Processes:
        return LocalProcesses(start_torchrun(torchrun_command(command, nproc=nproc), env))
