"""Jobs over several nodes: one torchrun per node of a Ray placement group.

A job whose config asks for ``nodes`` > 1 is started here instead of by torchrun on the worker's
own machine (``training.ml.launch.backend_for``). The Celery task stays the job's supervisor:
it calls the same ``launch`` as on one node, which relays rank 0's progress lines, polls for
cancellation and raises with the ranks' stderr on failure; only where the processes run
changes.

How a job is placed (the way OpenRLHF and verl place their actors):

1. Connect to the cluster at ``RAY_ADDRESS`` (``ray start --head`` on one machine, ``ray start
   --address=head:6379`` on the others; ``docker-compose.yml``'s ``ray-head`` service).
2. Reserve one bundle per node: ``{"CPU": 1, "GPU": gpus}`` (``{"CPU": gpus}`` on a cluster
   without GPUs), strategy ``SPREAD``. Ray schedules GPU bundles where the GPUs are, so on 8-GPU
   nodes a bundle of 8 is a node. Waiting for room ends after ``TRAINING_RAY_PLACEMENT_TIMEOUT``
   seconds (default 600) with an error that says what the cluster has free.
3. Start a :class:`NodeRunner` actor in each bundle (Ray sets ``CUDA_VISIBLE_DEVICES`` to its
   GPUs). Node 0's actor picks a free port on its node: that is the rendezvous.
4. Each actor runs ``python -m torch.distributed.run --nnodes N --node-rank i --master-addr
   <node 0> ... -m training.ml <command>``: the same entry point, the same process-group set-up
   (static rendezvous, NCCL or gloo) and the same training code as a job on one node.
5. Every ``poll_seconds`` the supervisor collects what each node's torchrun printed: node 0's
   stdout carries rank 0's progress lines, everything else lands in the stderr tail, prefixed
   with its node. A node that fails stops the others; cancelling stops every node's torchrun
   (SIGTERM to its ranks, SIGKILL after the grace period), then the actors and the placement
   group are released.

What every node needs: the trainer image (this code importable at the same path, the same
Python environment with the ``[ray]`` extra), the model store mounted at the same path (rank 0
writes the model into a temporary directory beside the job's output there, and the supervisor
publishes it), and network reach to node 0's rendezvous port and to each other (NCCL). Only the
supervisor's ``PYTHON*``, ``OMP_NUM_THREADS``, ``HF_*``, ``TRANSFORMERS_*``, ``TORCH_*``,
``NCCL_*``, ``GLOO_*`` and ``TRAINING_*`` variables travel to the nodes; each keeps its own for
the rest (its GPUs above all).
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from training.ml.processes import (
    PROJECT_ROOT,
    DistributedTrainingError,
    Processes,
    start_torchrun,
    terminate_tree,
    torchrun_command,
)

FORWARDED_ENV_PREFIXES = (
    "PYTHON",
    "OMP_NUM_THREADS",
    "HF_",
    "TRANSFORMERS_",
    "TORCH_",
    "NCCL_",
    "GLOO_",
    "TRAINING_",
)
"""the supervisor's environment variables that reach the nodes' torchrun (by prefix)"""

PLACEMENT_TIMEOUT_SECONDS = float(os.environ.get("TRAINING_RAY_PLACEMENT_TIMEOUT", "600"))
"""how long a job waits for the cluster to have room for all its nodes"""


def connect(address: str | None = None) -> None:
    """Join the Ray cluster at ``address`` (default ``RAY_ADDRESS``) unless this process already
    has; the connection is kept for the next job of this worker."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    if not address:
        raise DistributedTrainingError(
            "a job over several nodes runs on a Ray cluster: set RAY_ADDRESS to its head "
            "(host:6379) on the gpu worker"
        )
    ray.init(address=address, log_to_driver=False, configure_logging=False)


def forwarded_env(env: Mapping[str, str]) -> dict[str, str]:
    """The part of the supervisor's environment that travels to the nodes."""
    return {k: v for k, v in env.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


def _drain(stream: Any, sink: collections.deque) -> None:
    for line in stream:
        sink.append(line.rstrip("\n"))


def _take(lines: collections.deque) -> list[str]:
    taken = []
    while lines:
        taken.append(lines.popleft())
    return taken


class NodeRunner:
    """A Ray actor: one node's torchrun for one job, and the lines it printed since the last
    :meth:`read`."""

    def __init__(self) -> None:
        self.proc = None
        self.out: collections.deque[str] = collections.deque()
        self.err: collections.deque[str] = collections.deque()
        self.pumps: list[threading.Thread] = []

    def rendezvous(self) -> str:
        """``host:port`` for the job's rendezvous: this node's address and a free port on it."""
        with socket.socket() as probe:
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        return f"{ray.util.get_node_ip_address()}:{port}"

    def start(
        self,
        command: Sequence[str],
        *,
        nproc: int,
        nodes: int,
        node_rank: int,
        master: str,
        env: Mapping[str, str],
    ) -> None:
        argv = torchrun_command(
            command, nproc=nproc, nodes=nodes, node_rank=node_rank, master=master
        )
        self.proc = start_torchrun(argv, {**os.environ, **env})
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            pump = threading.Thread(target=_drain, args=(stream, sink), daemon=True)
            pump.start()
            self.pumps.append(pump)

    def read(self) -> tuple[list[str], list[str], int | None]:
        """(stdout lines, stderr lines, exit status): the status only once torchrun has exited
        and both pipes are drained, so that no line comes after it."""
        done = self.proc.poll() is not None and not any(p.is_alive() for p in self.pumps)
        return _take(self.out), _take(self.err), self.proc.returncode if done else None

    def stop(self, grace: float) -> int | None:
        """Stop torchrun and its ranks (SIGTERM, SIGKILL after ``grace`` seconds)."""
        if self.proc is not None and self.proc.poll() is None:
            terminate_tree(self.proc, grace=grace)
        return None if self.proc is None else self.proc.returncode


class RayProcesses:
    """A job's torchruns on the nodes of a placement group, seen as one run (the
    :class:`~training.ml.launch.Processes` that ``launch`` drives)."""

    def __init__(
        self,
        runners: list[Any],
        group: Any,
        *,
        poll_seconds: float = 0.2,
        grace: float = 15.0,
    ) -> None:
        self.runners = runners
        self.group = group
        self.poll_seconds = poll_seconds
        self.grace = grace
        self.returncode: int | None = None
        self._out: queue.Queue[str | None] = queue.Queue()
        self._err: queue.Queue[str | None] = queue.Queue()
        self.stdout = self._lines(self._out)
        self.stderr = self._lines(self._err)
        self._stopping = threading.Event()
        self._follower = threading.Thread(target=self._follow, daemon=True)
        self._follower.start()

    @staticmethod
    def _lines(source: queue.Queue[str | None]) -> Iterator[str]:
        yield from iter(source.get, None)

    def _follow(self) -> None:
        codes: list[int | None] = [None] * len(self.runners)
        try:
            while None in codes:
                pending = [i for i, code in enumerate(codes) if code is None]
                answers = ray.get([self.runners[i].read.remote() for i in pending])
                for i, (out, err, code) in zip(pending, answers, strict=True):
                    for line in out:
                        (self._out if i == 0 else self._err).put(
                            line if i == 0 else f"[node {i}] {line}"
                        )
                    for line in err:
                        self._err.put(f"[node {i}] {line}")
                    codes[i] = code
                if any(code for code in codes) and None in codes:
                    self._stop_nodes()  # a failed node: the others cannot finish without it
                if None in codes:
                    time.sleep(self.poll_seconds)
        except RayError as exc:  # an actor or its node was lost
            self._err.put(f"[ray] a node of the job was lost: {exc}")
            codes = [code if code is not None else 1 for code in codes]
            self._stop_nodes()
        finally:
            self.returncode = next((code for code in codes if code), 0)
            self._release()
            self._out.put(None)
            self._err.put(None)

    def _stop_nodes(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        with contextlib.suppress(RayError):
            ray.get([runner.stop.remote(self.grace) for runner in self.runners])

    def _release(self) -> None:
        for runner in self.runners:
            with contextlib.suppress(RayError):
                ray.kill(runner)
        with contextlib.suppress(RayError):
            remove_placement_group(self.group)

    def poll(self) -> int | None:
        return None if self._follower.is_alive() else self.returncode

    def terminate(self, *, grace: float) -> None:
        self.grace = grace
        self._stop_nodes()
        self._follower.join(timeout=grace + 30)


class RayBackend:
    """Start a job's ranks on ``nodes`` nodes of the Ray cluster, ``nproc`` per node (0: the
    GPUs of the cluster's smallest GPU node, or 1 process on a cluster without GPUs)."""

    def __init__(
        self,
        *,
        nodes: int,
        device: str | None = None,
        address: str | None = None,
        placement_timeout: float = PLACEMENT_TIMEOUT_SECONDS,
    ) -> None:
        self.nodes = nodes
        self.device = device
        self.address = address
        self.placement_timeout = placement_timeout

    def describe(self, nproc: int) -> str:
        return f"{self.nodes} nodes x {nproc or 'all'} processes (Ray)"

    def _uses_gpus(self) -> bool:
        if self.device == "cpu":
            return False
        return ray.cluster_resources().get("GPU", 0) > 0

    def processes_per_node(self, nproc: int) -> int:
        if nproc > 0:
            return nproc
        if not self._uses_gpus():
            return 1
        return int(min(n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"]) or 1)

    def start(self, command: Sequence[str], *, nproc: int, env: dict[str, str]) -> Processes:
        connect(self.address)
        gpus = self._uses_gpus()
        nproc = self.processes_per_node(nproc)
        bundle = {"CPU": 1.0, "GPU": float(nproc)} if gpus else {"CPU": float(nproc)}
        group = placement_group([bundle] * self.nodes, strategy="SPREAD")
        try:
            ray.get(group.ready(), timeout=self.placement_timeout)
        except GetTimeoutError:
            remove_placement_group(group)
            raise DistributedTrainingError(
                f"the Ray cluster has no room for {self.nodes} nodes of {bundle} within "
                f"{self.placement_timeout:.0f} s; free now: {ray.available_resources()}"
            ) from None
        actor = ray.remote(NodeRunner)
        runtime_env = {"env_vars": {"PYTHONPATH": str(PROJECT_ROOT)}}
        runners = [
            actor.options(
                num_cpus=bundle["CPU"],
                num_gpus=bundle.get("GPU", 0),
                runtime_env=runtime_env,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    group, placement_group_bundle_index=i
                ),
            ).remote()
            for i in range(self.nodes)
        ]
        try:
            master = ray.get(runners[0].rendezvous.remote())
            ray.get(
                [
                    runner.start.remote(
                        list(command),
                        nproc=nproc,
                        nodes=self.nodes,
                        node_rank=i,
                        master=master,
                        env=forwarded_env(env),
                    )
                    for i, runner in enumerate(runners)
                ]
            )
        except BaseException:
            processes = RayProcesses(runners, group)
            processes.terminate(grace=5)
            raise
        return RayProcesses(runners, group)
