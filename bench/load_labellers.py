"""Load benchmark: K concurrent labellers against gunicorn on PostgreSQL and Redis.

Each simulated labeller loops: POST next-task, optionally wait a think time, POST the ranking.
For every K it makes a fresh campaign (tasks x 4 completions, overlap 3), starts gunicorn as
docker-compose does, runs for a bounded time against 127.0.0.1 only, stops by itself, then
checks the database: rankings stored = successful submits, no task above its overlap, no
duplicate ranking.

    createdb -h 127.0.0.1 -U postgres rlhf_load
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/rlhf_load REDIS_URL=redis://127.0.0.1:6379/0 \
        .venv/bin/python bench/load_labellers.py --labellers 1 8 32 64 --seconds 20

Figures go to bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


@dataclass
class Stats:
    next_ms: list[float] = field(default_factory=list)
    submit_ms: list[float] = field(default_factory=list)
    submitted: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    submitted_ids: set[int] = field(default_factory=set)

    def error(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _triple(values: list[float]) -> str:
    return "/".join(f"{percentile(values, q):6.1f}" for q in (50, 95, 99))


def setup_campaign(*, labellers: int, tasks: int, overlap: int, tag: str) -> tuple[int, list[str]]:
    """A fresh active campaign with bulk-created tasks; returns its id and the API tokens."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from accounts.services import token_create
    from annotation import services
    from annotation.models import Completion, Prompt, Task, TaskCompletion

    User = get_user_model()
    campaign = services.campaign_create(
        created_by=None, name=f"load {tag}", completions_per_task=4, overlap=overlap
    )
    prompts = Prompt.objects.bulk_create(
        [Prompt(campaign=campaign, text=f"Load prompt {i}: explain it.") for i in range(tasks)]
    )
    completions = Completion.objects.bulk_create(
        [
            Completion(prompt=p, text=f"Answer {j} to {p.text} " + "word " * 40, source="load")
            for p in prompts
            for j in range(4)
        ]
    )
    task_rows = Task.objects.bulk_create(
        [Task(campaign=campaign, prompt=p, target_overlap=overlap) for p in prompts]
    )
    TaskCompletion.objects.bulk_create(
        [
            TaskCompletion(task=t, completion=completions[4 * i + j], position=j)
            for i, t in enumerate(task_rows)
            for j in range(4)
        ]
    )
    users = []
    for i in range(labellers):
        user, _ = User.objects.get_or_create(username=f"load-{tag}-{i}")
        users.append(user)
    services.campaign_add_members(campaign=campaign, users=users)
    guideline = services.guideline_publish(campaign=campaign, text="Rank them.", created_by=None)
    for user in users:
        services.guideline_acknowledge(user=user, guideline=guideline)
    services.campaign_set_status(campaign=campaign, status="active")
    services.task_statistics_refresh()  # as an import through the service does on commit
    tokens = [token_create(user=u)[1] for u in users]
    return campaign.pk, tokens


def check_database(campaign_id: int, stats: Stats) -> dict[str, int]:
    from django.db import connection
    from django.db.models import Count, F

    from annotation.models import Ranking, Task

    connection.close()
    rankings = Ranking.objects.filter(campaign_id=campaign_id)
    over = Task.objects.filter(campaign_id=campaign_id).annotate(n=Count("rankings"))
    return {
        "stored": rankings.count(),
        "acknowledged_submits": stats.submitted,
        "lost": len(stats.submitted_ids - set(rankings.values_list("pk", flat=True))),
        "over_assigned": over.filter(n__gt=F("target_overlap")).count(),
        "duplicates": rankings.count()
        - rankings.values("task_id", "labeller_id").distinct().count(),
    }


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes and their reaped children have used (Linux
    /proc): a PostgreSQL backend or a gunicorn worker that exits during the run is still
    counted, in its parent's (postmaster's, arbiter's) children's times."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / ticks


def _pids(*, parent: int | None = None, user: str | None = None) -> list[int]:
    """The children of ``parent``, or every process run by ``user``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if parent is not None:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == parent:
                    pids.append(int(entry.name))
            elif entry.owner() == user and (entry / "comm").read_text().strip() == "postgres":
                pids.append(int(entry.name))
        except (OSError, KeyError):
            continue
    return pids


def _machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used since boot (all cores: /proc/stat's
    user, nice, system, irq, softirq and steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMeter:
    """CPU seconds used by the web workers, PostgreSQL and this load generator during a run,
    which says where a ranking's cost goes on a machine whose speed varies; and by everything
    else on the machine (``others``: the rest of /proc/stat's busy time), which says how much of
    the cores other people's work took while the run was measured."""

    server_pid: int
    web: float = 0.0
    db: float = 0.0
    load: float = 0.0
    others: float = 0.0
    wall: float = 0.0

    def _read(self) -> tuple[float, float, float, float, float]:
        usage = os.times()
        return (
            _cpu_seconds([self.server_pid, *_pids(parent=self.server_pid)]),
            _cpu_seconds(_pids(user="postgres")),
            usage.user + usage.system,
            _machine_busy_seconds(),
            time.monotonic(),
        )

    def __enter__(self) -> CpuMeter:
        self._start = self._read()
        return self

    def __exit__(self, *exc) -> None:
        end = self._read()
        self.web, self.db, self.load, busy, self.wall = (
            b - a for a, b in zip(self._start, end, strict=True)
        )
        self.others = max(0.0, busy - self.web - self.db - self.load)


class TransportError(Exception):
    """The request did not get an answer (connection refused or reset, timeout)."""


class HttpxClient:
    """POST through one shared ``httpx.AsyncClient`` (keep-alive, one connection per labeller)."""

    def __init__(self, connections: int) -> None:
        import httpx

        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._client = httpx.AsyncClient(timeout=30, limits=limits)
        self._errors = (httpx.HTTPError,)

    async def post(self, url: str, *, headers: dict, json: dict | None = None):
        try:
            response = await self._client.post(url, headers=headers, json=json)
        except self._errors as exc:
            raise TransportError(type(exc).__name__) from exc
        return response.status_code, _json(response.content)

    async def close(self) -> None:
        await self._client.aclose()


class AiohttpClient:
    """The same through ``aiohttp``, which spends about a third of httpx's CPU per request:
    on a 2-core machine the load generator's CPU is taken from the server (bench/README.md)."""

    def __init__(self, connections: int) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        self._errors = (aiohttp.ClientError, asyncio.TimeoutError)

    async def post(self, url: str, *, headers: dict, json: dict | None = None):
        try:
            async with self._session.post(url, headers=headers, json=json) as response:
                return response.status, _json(await response.read())
        except self._errors as exc:
            raise TransportError(type(exc).__name__) from exc

    async def close(self) -> None:
        await self._session.close()


CLIENTS = {"httpx": HttpxClient, "aiohttp": AiohttpClient}


def _json(content: bytes):
    import json

    try:
        return json.loads(content) if content else None
    except ValueError:
        return None


def _code(body) -> str:
    return str(body.get("code", "")) if isinstance(body, dict) else "not-json"


async def labeller(
    client,
    base: str,
    campaign: int,
    token: str,
    deadline: float,
    think: float,
    combined: bool,
    stats: Stats,
) -> None:
    headers = {"Authorization": f"Token {token}"}
    assignment = None
    while time.monotonic() < deadline:
        if assignment is None:
            start = time.perf_counter()
            try:
                code, body = await client.post(
                    f"{base}/api/campaigns/{campaign}/next-task/", headers=headers
                )
            except TransportError as exc:
                stats.error(f"next:{exc}")
                await asyncio.sleep(0.05)
                continue
            stats.next_ms.append((time.perf_counter() - start) * 1000)
            if code == 204:
                return
            if code != 200:
                stats.error(f"next:{code}:{_code(body)}")
                await asyncio.sleep(0.05)
                continue
            assignment = body
        if think:
            await asyncio.sleep(random.expovariate(1 / think))
        ids = [c["id"] for c in assignment["completions"]]
        random.shuffle(ids)
        items = [{"completion": c, "rank": i + 1} for i, c in enumerate(ids)]
        url = f"{base}/api/assignments/{assignment['id']}/ranking/" + (
            "?next=1" if combined else ""
        )
        start = time.perf_counter()
        try:
            code, body = await client.post(
                url, json={"items": items, "time_spent_ms": 1000}, headers=headers
            )
        except TransportError as exc:
            stats.error(f"submit:{exc}")
            continue  # retry the same assignment: the submit is idempotent
        stats.submit_ms.append((time.perf_counter() - start) * 1000)
        if code not in (200, 201):
            stats.error(f"submit:{code}:{_code(body)}")
            assignment = None
            continue
        if body["id"] not in stats.submitted_ids:
            stats.submitted += 1
            stats.submitted_ids.add(body["id"])
        assignment = body["next"]["assignment"] if combined else None
        if combined and assignment is None:
            return


async def run_load(
    base: str,
    campaign: int,
    tokens: list[str],
    seconds: float,
    think: float,
    combined: bool,
    client_name: str = "httpx",
) -> tuple[Stats, float]:
    stats = Stats()
    client = CLIENTS[client_name](len(tokens))
    try:
        start = time.monotonic()
        deadline = start + seconds
        await asyncio.gather(
            *(labeller(client, base, campaign, t, deadline, think, combined, stats) for t in tokens)
        )
        elapsed = time.monotonic() - start
    finally:
        await client.close()
    return stats, elapsed


def start_server(
    port: int, workers: int, threads: int, app: str = "config.wsgi"
) -> subprocess.Popen:
    import socket

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(f"port {port} is taken: pass --port")
    env = {**os.environ, "DJANGO_DEBUG": "false", "LOG_LEVEL": "WARNING"}
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            app,
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env=env,
    )
    import httpx

    for _ in range(100):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("gunicorn did not start")


def main() -> None:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--labellers", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--think", type=float, default=0.0, help="mean think time (s)")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--overlap", type=int, default=3)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument(
        "--app",
        default="config.wsgi",
        help="WSGI application to serve (bench.bare_pair:application: the bare yardstick)",
    )
    parser.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="httpx",
        help="HTTP client of the load generator (aiohttp costs less CPU per request)",
    )
    parser.add_argument(
        "--combined",
        action="store_true",
        help="submit with ?next=1 (one request per task, as the labeller page)",
    )
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("set DATABASE_URL to a PostgreSQL database (see the docstring)")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, check=True)
    server = start_server(args.port, args.workers, args.threads, args.app)
    rows = []
    try:
        for k in args.labellers:
            tag = f"{int(time.time())}-{k}"
            campaign, tokens = setup_campaign(
                labellers=k, tasks=args.tasks, overlap=args.overlap, tag=tag
            )
            with CpuMeter(server_pid=server.pid) as cpu:
                stats, elapsed = asyncio.run(
                    run_load(
                        f"http://127.0.0.1:{args.port}",
                        campaign,
                        tokens,
                        args.seconds,
                        args.think,
                        args.combined,
                        args.client,
                    )
                )
            checks = check_database(campaign, stats)
            rows.append((k, stats, elapsed, checks))
            latencies = stats.next_ms + stats.submit_ms
            median = statistics.median(latencies) if latencies else float("nan")
            per = 1000 / max(stats.submitted, 1)
            print(
                f"K={k:3d}  {stats.submitted / elapsed:7.1f} rankings/s  "
                f"next p50/p95/p99 {_triple(stats.next_ms)} ms  "
                f"submit p50/p95/p99 {_triple(stats.submit_ms)} ms  "
                f"all p50 {median:.1f} ms  errors {stats.errors or 0}  db {checks}  "
                f"CPU ms per ranking: web {cpu.web * per:.1f}, postgres {cpu.db * per:.1f}, "
                f"load generator {cpu.load * per:.1f}; other processes used "
                f"{cpu.others / max(cpu.wall, 1e-9):.2f} cores",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
