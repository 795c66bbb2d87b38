"""A synthetic labeller that works through the real HTTP API, as a person in the ranking UI would.

    python -m training.synthetic_client --base-url http://127.0.0.1:8000 \\
        --username alice --password demo-alice --campaign 3 --noise 0.1 [--seed 0]

It logs in with token auth (``POST /api/auth/token/``), acknowledges the campaign's current
guidelines when the server asks for it, then loops: ``next-task`` → rank the completions with
``training.ml.synthetic`` (the hidden gold score, the rules or the network of ``--gold``, plus
Gaussian noise) → ``POST`` the ranking, until the server answers 204 (nothing left for this
labeller). Humans are not available to tests and benchmarks; this client closes the loop for
them.

It imports no Django: only ``httpx`` and the synthetic labeller.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from training.ml.synthetic import GOLD_KINDS, SyntheticLabeller

MAX_BUSY_RETRIES = 20


class LabellingError(RuntimeError):
    """The server refused something the client cannot recover from."""


@dataclass
class LabellingStats:
    """What a labelling session did."""

    rankings: int = 0
    """rankings the server stored"""
    acknowledged: int = 0
    """guideline versions acknowledged"""
    lease_expired: int = 0
    """rankings refused because the task had gone to someone else meanwhile"""
    seconds: float = 0.0


def login(client: httpx.Client, *, username: str, password: str) -> str:
    """Get an API token and make ``client`` send it from now on."""
    response = client.post("/api/auth/token/", json={"username": username, "password": password})
    if response.status_code != 200:
        raise LabellingError(
            f"login as {username!r} failed: {response.status_code} {response.text}"
        )
    token = response.json()["token"]
    client.headers["Authorization"] = f"Token {token}"
    return token


def _post(client: httpx.Client, url: str, body: Any = None) -> httpx.Response:
    """POST, waiting out 503 answers (the server asks to retry under contention)."""
    for _ in range(MAX_BUSY_RETRIES):
        response = client.post(url, json=body)
        if response.status_code != 503:
            return response
        time.sleep(float(response.headers.get("Retry-After", "1")))
    return response


def _error(response: httpx.Response) -> dict:
    try:
        return response.json()
    except ValueError:
        return {"detail": response.text}


def label_campaign(
    client: httpx.Client,
    *,
    campaign_id: int,
    labeller: SyntheticLabeller,
    max_tasks: int | None = None,
    time_spent_ms: int = 1000,
) -> LabellingStats:
    """Rank tasks of the campaign until none is left (or ``max_tasks`` rankings are stored).

    ``client`` is an authenticated ``httpx.Client`` whose base URL is the server (any
    transport: a socket, or ``httpx.WSGITransport`` for an in-process server).
    """
    stats = LabellingStats()
    started = time.perf_counter()
    next_url = f"/api/campaigns/{campaign_id}/next-task/"
    while max_tasks is None or stats.rankings < max_tasks:
        response = _post(client, next_url)
        if response.status_code == 204:
            break
        body = _error(response)
        if response.status_code == 403 and body.get("code") == "guidelines_not_acknowledged":
            version = body["guideline_version"]
            ack = _post(
                client,
                f"/api/campaigns/{campaign_id}/guidelines/acknowledge/",
                {"version": version},
            )
            if ack.status_code != 200:
                raise LabellingError(f"acknowledging v{version} failed: {ack.text}")
            stats.acknowledged += 1
            continue
        if response.status_code != 200:
            raise LabellingError(f"next-task: {response.status_code} {body}")
        assignment = body
        completions = assignment["completions"]
        labeller.allow_ties = labeller.allow_ties and assignment["allow_ties"]
        if not assignment["allow_fail"]:
            labeller.fail_below = None
        # Rank in completion-id order, not in this labeller's shuffled display order: the
        # labeller's noise then falls on the same completions whatever the shuffle (seeded runs
        # repeat exactly).
        by_id = sorted(completions, key=lambda c: c["id"])
        labels = labeller.rank([c["text"] for c in by_id])
        items = [
            {"completion": c["id"], "rank": label} for c, label in zip(by_id, labels, strict=True)
        ]
        submitted = _post(
            client,
            f"/api/assignments/{assignment['id']}/ranking/",
            {"items": items, "time_spent_ms": time_spent_ms, "comment": "synthetic labeller"},
        )
        if submitted.status_code in (200, 201):
            stats.rankings += 1
        elif submitted.status_code == 409 and _error(submitted).get("code") == "lease_expired":
            stats.lease_expired += 1
        else:
            raise LabellingError(f"ranking: {submitted.status_code} {_error(submitted)}")
    stats.seconds = time.perf_counter() - started
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.synthetic_client", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000")
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--campaign", type=int, required=True, help="campaign id")
    parser.add_argument("--noise", type=float, default=0.1, help="std of the score noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ties", action="store_true", help="tie close scores (if allowed)")
    parser.add_argument(
        "--fail-below", type=float, default=None, help="mark F below this perceived score"
    )
    parser.add_argument("--invert", action="store_true", help="an adversarial labeller")
    parser.add_argument(
        "--gold", choices=GOLD_KINDS, default="rules", help="the hidden preference it labels by"
    )
    parser.add_argument("--max-tasks", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    args = parser.parse_args(argv)

    labeller = SyntheticLabeller(
        noise=args.noise,
        seed=args.seed,
        allow_ties=args.ties,
        fail_below=args.fail_below,
        invert=args.invert,
        gold=args.gold,
    )
    with httpx.Client(base_url=args.base_url, timeout=args.timeout) as client:
        try:
            login(client, username=args.username, password=args.password)
            stats = label_campaign(
                client, campaign_id=args.campaign, labeller=labeller, max_tasks=args.max_tasks
            )
        except (LabellingError, httpx.HTTPError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(json.dumps({"campaign": args.campaign, "username": args.username, **asdict(stats)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
