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
    from rest_framework.authtoken.models import Token

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
    tokens = [Token.objects.get_or_create(user=u)[0].key for u in users]
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


def _code(response) -> str:
    try:
        return str(response.json().get("code", ""))
    except ValueError:
        return "not-json"


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
    import httpx

    headers = {"Authorization": f"Token {token}"}
    assignment = None
    while time.monotonic() < deadline:
        if assignment is None:
            start = time.perf_counter()
            try:
                response = await client.post(
                    f"{base}/api/campaigns/{campaign}/next-task/", headers=headers
                )
            except httpx.HTTPError as exc:
                stats.error(f"next:{type(exc).__name__}")
                await asyncio.sleep(0.05)
                continue
            stats.next_ms.append((time.perf_counter() - start) * 1000)
            if response.status_code == 204:
                return
            if response.status_code != 200:
                stats.error(f"next:{response.status_code}:{_code(response)}")
                await asyncio.sleep(0.05)
                continue
            assignment = response.json()
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
            response = await client.post(
                url, json={"items": items, "time_spent_ms": 1000}, headers=headers
            )
        except httpx.HTTPError as exc:
            stats.error(f"submit:{type(exc).__name__}")
            continue  # retry the same assignment: the submit is idempotent
        stats.submit_ms.append((time.perf_counter() - start) * 1000)
        if response.status_code not in (200, 201):
            stats.error(f"submit:{response.status_code}:{_code(response)}")
            assignment = None
            continue
        body = response.json()
        if body["id"] not in stats.submitted_ids:
            stats.submitted += 1
            stats.submitted_ids.add(body["id"])
        assignment = body["next"]["assignment"] if combined else None
        if combined and assignment is None:
            return


async def run_load(
    base: str, campaign: int, tokens: list[str], seconds: float, think: float, combined: bool
) -> tuple[Stats, float]:
    import httpx

    stats = Stats()
    limits = httpx.Limits(max_connections=len(tokens), max_keepalive_connections=len(tokens))
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        start = time.monotonic()
        deadline = start + seconds
        await asyncio.gather(
            *(labeller(client, base, campaign, t, deadline, think, combined, stats) for t in tokens)
        )
        elapsed = time.monotonic() - start
    return stats, elapsed


def start_server(port: int, workers: int, threads: int) -> subprocess.Popen:
    import socket

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(f"port {port} is taken: pass --port")
    env = {**os.environ, "DJANGO_DEBUG": "false", "LOG_LEVEL": "WARNING"}
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "config.wsgi",
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
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument(
        "--combined",
        action="store_true",
        help="submit with ?next=1 (one request per task, as the labeller page)",
    )
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("set DATABASE_URL to a PostgreSQL database (see the docstring)")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, check=True)
    server = start_server(args.port, args.workers, args.threads)
    rows = []
    try:
        for k in args.labellers:
            tag = f"{int(time.time())}-{k}"
            campaign, tokens = setup_campaign(
                labellers=k, tasks=args.tasks, overlap=args.overlap, tag=tag
            )
            stats, elapsed = asyncio.run(
                run_load(
                    f"http://127.0.0.1:{args.port}",
                    campaign,
                    tokens,
                    args.seconds,
                    args.think,
                    args.combined,
                )
            )
            checks = check_database(campaign, stats)
            rows.append((k, stats, elapsed, checks))
            latencies = stats.next_ms + stats.submit_ms
            median = statistics.median(latencies) if latencies else float("nan")
            print(
                f"K={k:3d}  {stats.submitted / elapsed:7.1f} rankings/s  "
                f"next p50/p95/p99 {_triple(stats.next_ms)} ms  "
                f"submit p50/p95/p99 {_triple(stats.submit_ms)} ms  "
                f"all p50 {median:.1f} ms  errors {stats.errors or 0}  db {checks}",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
