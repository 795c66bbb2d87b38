"""Restart PostgreSQL and Redis while labellers submit: nothing lost, nothing doubled.

K simulated labellers loop next-task → submit against gunicorn (as bench/load_labellers.py),
retrying like the labeller page does: on a 503 or a broken connection they wait (Retry-After)
and send the same request again; submits are idempotent, so a retry whose first attempt was
stored answers 200 with the same ranking. Half-way through, PostgreSQL is restarted, then
Redis. Afterwards the database must hold exactly the rankings the clients were told about.

It restarts the machine's shared services: run it on its own, not while tests run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/rlhf_load REDIS_URL=redis://127.0.0.1:6379/0 \
        .venv/bin/python bench/fault_restart.py --labellers 16 --seconds 40
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load_labellers import (
    REPO,
    Stats,
    check_database,
    setup_campaign,
    start_server,
)

RETRYABLE = {502, 503, 504}


async def send(client, method: str, url: str, stats: Stats, key: str, **kwargs):
    """One request, retried on 5xx-unavailable and connection errors; returns the response."""
    import httpx

    delay = 0.2
    while True:
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            stats.error(f"{key}:retry:{type(exc).__name__}")
        else:
            if response.status_code not in RETRYABLE:
                return response
            stats.error(f"{key}:retry:{response.status_code}")
            delay = max(delay, float(response.headers.get("Retry-After", delay)))
        await asyncio.sleep(delay)
        delay = min(delay * 2, 4.0)


async def labeller(
    client, base: str, campaign: int, token: str, deadline: float, stats: Stats
) -> None:
    headers = {"Authorization": f"Token {token}"}
    while time.monotonic() < deadline:
        start = time.perf_counter()
        response = await send(
            client,
            "POST",
            f"{base}/api/campaigns/{campaign}/next-task/",
            stats,
            "next",
            headers=headers,
        )
        stats.next_ms.append((time.perf_counter() - start) * 1000)
        if response.status_code == 204:
            return
        if response.status_code != 200:
            stats.error(f"next:{response.status_code}")
            continue
        assignment = response.json()
        items = [
            {"completion": c["id"], "rank": i + 1} for i, c in enumerate(assignment["completions"])
        ]
        start = time.perf_counter()
        response = await send(
            client,
            "POST",
            f"{base}/api/assignments/{assignment['id']}/ranking/",
            stats,
            "submit",
            headers=headers,
            json={"items": items, "time_spent_ms": 1000},
        )
        stats.submit_ms.append((time.perf_counter() - start) * 1000)
        if response.status_code not in (200, 201):
            stats.error(f"submit:{response.status_code}")
            continue
        ranking_id = response.json()["id"]
        if ranking_id not in stats.submitted_ids:
            stats.submitted += 1
            stats.submitted_ids.add(ranking_id)


def restart_services(at_postgres: float, at_redis: float, log: list[str]) -> threading.Thread:
    def run() -> None:
        start = time.monotonic()
        time.sleep(at_postgres)
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        t0 = time.monotonic()
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True
        )
        log.append(
            f"PostgreSQL restarted at {t0 - start:.1f} s (took {time.monotonic() - t0:.1f} s)"
        )
        time.sleep(max(0.0, at_redis - (time.monotonic() - start)))
        t0 = time.monotonic()
        subprocess.run(["redis-cli", "-h", "127.0.0.1", "shutdown", "nosave"], check=False)
        subprocess.run(
            [
                "redis-server",
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "-::1",
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                "/var/lib/redis",
                "--logfile",
                "/var/log/redis/ci.log",
            ],
            check=True,
        )
        log.append(f"Redis restarted at {t0 - start:.1f} s (took {time.monotonic() - t0:.1f} s)")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def run(base: str, campaign: int, tokens: list[str], seconds: float) -> Stats:
    import httpx

    stats = Stats()
    async with httpx.AsyncClient(timeout=30) as client:
        deadline = time.monotonic() + seconds
        await asyncio.gather(
            *(labeller(client, base, campaign, t, deadline, stats) for t in tokens)
        )
    return stats


def main() -> None:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--labellers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--port", type=int, default=8792)
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("set DATABASE_URL to a PostgreSQL database (see the docstring)")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, check=True)
    campaign, tokens = setup_campaign(
        labellers=args.labellers, tasks=3000, overlap=3, tag=f"fault-{int(time.time())}"
    )
    server = start_server(args.port, workers=3, threads=4)
    log: list[str] = []
    try:
        restarter = restart_services(args.seconds * 0.25, args.seconds * 0.6, log)
        stats = asyncio.run(run(f"http://127.0.0.1:{args.port}", campaign, tokens, args.seconds))
        restarter.join(timeout=60)
    finally:
        server.terminate()
        server.wait(timeout=30)
    for line in log:
        print(line)
    checks = check_database(campaign, stats)
    retries = {k: v for k, v in stats.errors.items() if ":retry:" in k}
    failures = {k: v for k, v in stats.errors.items() if ":retry:" not in k}
    print(
        f"rankings acknowledged {stats.submitted}, retried requests {retries or 0}, "
        f"unexpected answers {failures or 0}"
    )
    print(f"database: {checks}")
    ok = (
        checks["lost"] == 0
        and checks["duplicates"] == 0
        and checks["over_assigned"] == 0
        and checks["stored"] == checks["acknowledged_submits"]
    )
    print("OK: nothing lost, nothing doubled" if ok else "FAILED")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
