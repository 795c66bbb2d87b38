"""Where the labelling hot path spends its CPU: next task + submit, in process, no network.

Calls the project's WSGI application directly (middleware, DRF, token authentication, the
services, PostgreSQL) for N next-task + submit cycles of one labeller on a fresh campaign, and
reports the CPU time of this process (``time.process_time``: the web side only, PostgreSQL's
backend is another process) per request. ``--profile`` adds a cProfile of the same cycles,
sorted by own time, so a change to the hot path can be weighed before the load bench.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/rlhf_load REDIS_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python bench/profile_hot_path.py --cycles 300 [--profile 25]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_DEBUG", "false")  # as the load bench serves: no query log

from load_labellers import setup_campaign  # sets DJANGO_SETTINGS_MODULE


def _call(app, method: str, path: str, token: str, body: bytes = b"") -> tuple[int, bytes]:
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_AUTHORIZATION": f"Token {token}",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }
    status: list[str] = []
    chunks = app(environ, lambda s, headers, exc_info=None: status.append(s))
    content = b"".join(chunks)
    if hasattr(chunks, "close"):
        chunks.close()
    return int(status[0].split()[0]), content


def cycles(app, campaign_id: int, token: str, n: int) -> tuple[float, float]:
    """Run n next + submit cycles; CPU seconds spent in next-task and in submit."""
    next_cpu = submit_cpu = 0.0
    for _ in range(n):
        start = time.process_time()
        code, content = _call(app, "POST", f"/api/campaigns/{campaign_id}/next-task/", token)
        middle = time.process_time()
        if code != 200:
            raise SystemExit(f"next-task answered {code}: {content[:200]!r}")
        task = json.loads(content)
        items = [{"completion": c["id"], "rank": i + 1} for i, c in enumerate(task["completions"])]
        body = json.dumps({"items": items, "time_spent_ms": 1000}).encode()
        code, content = _call(app, "POST", f"/api/assignments/{task['id']}/ranking/", token, body)
        end = time.process_time()
        if code != 201:
            raise SystemExit(f"submit answered {code}: {content[:200]!r}")
        next_cpu += middle - start
        submit_cpu += end - middle
    return next_cpu, submit_cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--profile", type=int, default=0, help="print the top N functions")
    args = parser.parse_args()

    total = args.warmup + args.cycles * (2 if args.profile else 1)
    campaign_id, (token,) = setup_campaign(
        labellers=1, tasks=total + 10, overlap=1, tag=f"profile-{time.time_ns()}"
    )
    from django.core.wsgi import get_wsgi_application

    app = get_wsgi_application()
    cycles(app, campaign_id, token, args.warmup)  # connections, prepared statements, imports
    next_cpu, submit_cpu = cycles(app, campaign_id, token, args.cycles)
    per = 1000 / args.cycles
    print(
        f"{args.cycles} cycles, CPU ms per request: next task {next_cpu * per:.2f}, "
        f"submit {submit_cpu * per:.2f}, both {(next_cpu + submit_cpu) * per:.2f}"
    )
    if args.profile:
        profiler = cProfile.Profile(time.process_time)
        profiler.runcall(cycles, app, campaign_id, token, args.cycles)
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(args.profile)
        stats.sort_stats("cumulative").print_stats(args.profile)


if __name__ == "__main__":
    main()
