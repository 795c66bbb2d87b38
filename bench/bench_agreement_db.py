"""Benchmark of agreement and pair export through the database (PostgreSQL).

    createdb -h 127.0.0.1 -U postgres rlhf_bench
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/rlhf_bench .venv/bin/python manage.py migrate
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/rlhf_bench \\
        .venv/bin/python bench/bench_agreement_db.py [--tasks 25000] [--labellers-per-task 4]

Stores (bulk_create, once; later runs reuse it, ``--recreate`` replaces it) a campaign of
25,000 tasks x 4 labellers = 100,000 rankings of 4 completions, with the synthetic judgements of
``bench/bench_agreement.py`` (a pool of 200 labellers, noisy views of a hidden quality, ties
and F marks) and texts of realistic length. Then times, best of ``--repeat`` runs:

* agreement: reading the rankings from the database (``annotation.exports.ranking_rows``),
  building the matrices (records -> ``RankingTable`` -> pair votes), computing every figure with
  its 1000-resample bootstrap interval (campaign figures + labeller quality table), and the
  ``agreement/`` and ``labellers/`` API views end to end;
* pair export: the ``pairs/`` API view end to end (query, texts, expansion, JSONL, streamed), in
  pairs per second, split into the database reads and the generator; the aggregated modes and
  the rankings export (JSONL, CSV) too.

Targets: agreement of the campaign under 5 s (read + build + compute); pair export over
100,000 pairs/s. Runs only on a database whose name contains "bench" (it writes to it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
from bench_agreement import synthesise  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.urls import resolve  # noqa: E402
from django.utils import timezone  # noqa: E402
from rest_framework.test import APIRequestFactory, force_authenticate  # noqa: E402

from annotation import agreement, agreement_figures, exports, services  # noqa: E402
from annotation.agreement import Bootstrap  # noqa: E402
from annotation.models import (  # noqa: E402
    Assignment,
    Campaign,
    Completion,
    Guideline,
    Prompt,
    Ranking,
    RankingItem,
    Task,
    TaskCompletion,
)
from annotation.pairs import FAIL  # noqa: E402

T = TypeVar("T")
BATCH = 10_000
SENTENCE = (
    "the model answer explains why water boils at lower temperatures at altitude because air "
    "pressure drops and so the vapour pressure needed is reached sooner; it gives an example "
    "with numbers, a caveat about pressure cookers, and a short summary at the end."
)
WORDS = SENTENCE.split(" ")


def timed(fn: Callable[[], T], repeat: int = 1) -> tuple[T, float]:
    """The result of the last run and the best time of ``repeat`` runs."""
    best = float("inf")
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best  # type: ignore[return-value]


def text(rng: np.random.Generator, low: int, high: int, head: str) -> str:
    words = rng.integers(0, len(WORDS), size=int(rng.integers(low, high)))
    return head + " " + " ".join(WORDS[i] for i in words)


def campaign_name(args) -> str:
    return (
        f"bench: {args.tasks} tasks x {args.labellers_per_task} labellers x "
        f"{args.completions} completions, pool {args.pool}, seed {args.seed}"
    )


@transaction.atomic
def create_campaign(args) -> Campaign:
    """The synthetic campaign, stored with bulk_create."""
    records = synthesise(
        args.tasks, args.labellers_per_task, args.completions, args.pool, args.seed
    )
    rng = np.random.default_rng(args.seed + 1)
    User = get_user_model()
    admin, _ = User.objects.get_or_create(username="bench-admin", defaults={"is_staff": True})
    names = [f"bench-labeller-{i}" for i in range(1, args.pool + 1)]
    User.objects.bulk_create(
        [User(username=name) for name in names], ignore_conflicts=True, batch_size=BATCH
    )
    user_ids = dict(User.objects.filter(username__in=names).values_list("username", "id"))
    labeller_pk = {i: user_ids[f"bench-labeller-{i}"] for i in range(1, args.pool + 1)}

    campaign = Campaign.objects.create(
        team=services.team_default(),
        name=campaign_name(args),
        status=Campaign.Status.ACTIVE,
        completions_per_task=args.completions,
        overlap=args.labellers_per_task,
        round_number=1,
        created_by=admin,
    )
    guideline = Guideline.objects.create(campaign=campaign, version=1, text="# Rank")
    prompts = Prompt.objects.bulk_create(
        [
            Prompt(campaign=campaign, external_id=f"p-{t}", text=text(rng, 15, 60, f"Q{t}:"))
            for t in range(args.tasks)
        ],
        batch_size=BATCH,
    )
    completions = Completion.objects.bulk_create(
        [
            Completion(prompt=prompts[t], text=text(rng, 40, 160, f"A{t}.{c}:"), source="bench")
            for t in range(args.tasks)
            for c in range(args.completions)
        ],
        batch_size=BATCH,
    )
    tasks = Task.objects.bulk_create(
        [
            Task(
                campaign=campaign,
                prompt=prompts[t],
                target_overlap=args.labellers_per_task,
                active_count=args.labellers_per_task,
                submitted_count=args.labellers_per_task,
            )
            for t in range(args.tasks)
        ],
        batch_size=BATCH,
    )
    TaskCompletion.objects.bulk_create(
        [
            TaskCompletion(
                task=tasks[t], completion=completions[t * args.completions + c], position=c
            )
            for t in range(args.tasks)
            for c in range(args.completions)
        ],
        batch_size=BATCH,
    )
    now = timezone.now()
    assignments = Assignment.objects.bulk_create(
        [
            Assignment(
                task=tasks[r.task_id - 1],
                campaign=campaign,
                labeller_id=labeller_pk[r.labeller_id],
                status=Assignment.Status.SUBMITTED,
                display_order=[completions[cid].pk for cid in r.items],
                assigned_at=now,
                lease_expires_at=now + timedelta(minutes=30),
                finished_at=now,
            )
            for r in records
        ],
        batch_size=BATCH,
    )
    rankings = Ranking.objects.bulk_create(
        [
            Ranking(
                assignment=assignment,
                task=assignment.task,
                campaign=campaign,
                labeller_id=assignment.labeller_id,
                guideline=guideline,
                time_spent_ms=int((r.seconds or 0) * 1000),
            )
            for r, assignment in zip(records, assignments, strict=True)
        ],
        batch_size=BATCH,
    )
    RankingItem.objects.bulk_create(
        [
            RankingItem(
                ranking=ranking,
                completion=completions[cid],
                rank=None if label == FAIL else label,
                failed=label == FAIL,
            )
            for r, ranking in zip(records, rankings, strict=True)
            for cid, label in r.items.items()
        ],
        batch_size=BATCH,
    )
    return campaign


def the_campaign(args) -> Campaign:
    existing = Campaign.objects.filter(name=campaign_name(args)).order_by("-id")
    if args.recreate:
        for campaign in existing:
            campaign.delete()
    elif existing.exists():
        campaign = existing.first()
        print(f"reusing campaign {campaign.pk} ({campaign.rankings.count():,} rankings)")
        return campaign
    campaign, seconds = timed(lambda: create_campaign(args))
    print(f"created campaign {campaign.pk} with bulk_create in {seconds:.1f} s")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return campaign


def call_view(action: str, campaign: Campaign, admin, query: str = "") -> object:
    """GET an API URL through its view as the router builds it (no middleware, no server)."""
    path = f"/api/campaigns/{campaign.pk}/{action}/"
    request = APIRequestFactory().get(f"{path}?{query}")
    force_authenticate(request, user=admin)
    match = resolve(path)
    response = match.func(request, *match.args, **match.kwargs)
    assert response.status_code == 200, (action, response.status_code)
    return response


def streamed_lines(response) -> int:
    return sum(chunk.count(b"\n") for chunk in response.streaming_content)


def bench_agreement(campaign: Campaign, admin, args) -> float:
    bootstrap = Bootstrap(resamples=args.resamples, seed=args.seed)
    repeat = args.repeat
    rows, read_s = timed(lambda: exports.ranking_rows(campaign_ids=[campaign.pk]), repeat)
    records, records_s = timed(lambda: exports.ranking_records(rows), repeat)
    table, table_s = timed(lambda: agreement.ranking_table(records), repeat)
    votes, votes_s = timed(lambda: agreement.pair_votes(table), repeat)
    inputs = agreement_figures.AgreementInputs(
        campaign_id=campaign.pk,
        fail_policy="rank_last",
        table=table,
        votes=votes,
        prompt_of_task={row.task_id: row.prompt_id for row in rows},
    )
    agreement._task_weights(table.n_tasks, bootstrap.resamples, bootstrap.seed)  # warm the cache
    figures, campaign_s = timed(
        lambda: agreement_figures.campaign_figures(inputs, bootstrap=bootstrap), repeat
    )
    labellers, labellers_s = timed(
        lambda: agreement_figures.labeller_figures(inputs, bootstrap=bootstrap), repeat
    )
    _, tasks_s = timed(lambda: agreement_figures.task_figures(inputs, limit=100), repeat)
    build_s = records_s + table_s + votes_s
    compute_s = campaign_s + labellers_s
    total = read_s + build_s + compute_s

    print(f"\nagreement of {len(rows):,} rankings ({table.n_tasks:,} tasks), best of {repeat}:")
    print(f"  {'DB read (exports.ranking_rows)':46} {read_s:7.3f} s")
    print(f"  {'build: rows -> records':46} {records_s:7.3f} s")
    print(f"  {'build: records -> RankingTable':46} {table_s:7.3f} s")
    print(f"  {'build: RankingTable -> pair votes':46} {votes_s:7.3f} s")
    print(f"  {'compute: campaign figures (8, bootstrap)':46} {campaign_s:7.3f} s")
    print(f"  {'compute: labeller quality table':46} {labellers_s:7.3f} s")
    print(f"  {'total: read + build + compute':46} {total:7.3f} s  (target < 5 s)")
    print(f"  {'(per-task figures, one page of 100)':46} {tasks_s:7.3f} s")
    for figure in figures.figures:
        value = "undefined" if figure.value is None else f"{figure.value:.3f}"
        ci = "" if figure.ci_low is None else f" [{figure.ci_low:.3f}, {figure.ci_high:.3f}]"
        print(f"    {figure.key:28} {value}{ci} n={figure.n:,}")
    print(f"    {len(labellers)} labellers, {sum(row.flagged for row in labellers)} flagged")

    query = f"resamples={args.resamples}&seed={args.seed}"
    _, agreement_api_s = timed(lambda: call_view("agreement", campaign, admin, query), repeat)
    _, labellers_api_s = timed(lambda: call_view("labellers", campaign, admin, query), repeat)
    print(f"  {'API agreement/ end to end':46} {agreement_api_s:7.3f} s")
    print(f"  {'API labellers/ end to end':46} {labellers_api_s:7.3f} s")
    return total


def bench_export(campaign: Campaign, admin, args) -> float:
    repeat = args.repeat
    rows, read_s = timed(lambda: exports.ranking_rows(campaign_ids=[campaign.pk]), repeat)
    texts, texts_s = timed(lambda: exports.texts_for(rows), repeat)
    print("\npair export, best of", repeat)
    print(f"  {'DB read: ranking_rows':46} {read_s:7.3f} s")
    print(f"  {'DB read: texts_for':46} {texts_s:7.3f} s")

    def generate(**options) -> tuple[int, int]:
        count = size = 0
        for chunk in exports.pairs_jsonl(rows, texts, **options):
            count += chunk.count(b"\n")
            size += len(chunk)
        return count, size

    (count, size), gen_s = timed(generate, repeat)
    print(
        f"  {'generator: expansion + JSONL':46} {gen_s:7.3f} s  {count:,} pairs "
        f"= {count / gen_s:,.0f} pairs/s ({size / 1e6:.0f} MB)"
    )
    lines, api_s = timed(lambda: streamed_lines(call_view("pairs", campaign, admin)), repeat)
    rate = lines / api_s
    print(
        f"  {'API pairs/ end to end (reads + stream)':46} {api_s:7.3f} s  {lines:,} pairs "
        f"= {rate:,.0f} pairs/s  (target > 100,000)"
    )
    for options in (
        {"ties": True, "fail_policy": "rank_last"},
        {"aggregate": "majority"},
        {"aggregate": "ranked_pairs"},
        {"aggregate": "bradley_terry"},
    ):
        (n, _), seconds = timed(lambda options=options: generate(**options))
        label = ", ".join(f"{k}={v}" for k, v in options.items())
        print(f"  {'generator: ' + label:46} {seconds:7.3f} s  {n:,} pairs = {n / seconds:,.0f}/s")
    for fmt in ("jsonl", "csv"):
        n, seconds = timed(
            lambda fmt=fmt: streamed_lines(
                call_view("rankings/export", campaign, admin, f"format={fmt}")
            )
        )
        print(
            f"  {'API rankings/export/ format=' + fmt:46} {seconds:7.3f} s  {n:,} lines "
            f"= {n / seconds:,.0f} rankings/s"
        )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=25_000)
    parser.add_argument("--labellers-per-task", type=int, default=4)
    parser.add_argument("--completions", type=int, default=4)
    parser.add_argument("--pool", type=int, default=200)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="time each step this many times")
    parser.add_argument("--recreate", action="store_true", help="replace the stored campaign")
    args = parser.parse_args()

    database = settings.DATABASES["default"]
    if "bench" not in str(database["NAME"]):
        sys.exit(
            f"refusing to write to database {database['NAME']!r}: set DATABASE_URL to a "
            "database whose name contains 'bench' (see the docstring)"
        )
    print(f"database: {database['ENGINE'].rsplit('.', 1)[-1]} {database['NAME']}")
    campaign = the_campaign(args)
    admin = get_user_model().objects.get(username="bench-admin")
    total = bench_agreement(campaign, admin, args)
    rate = bench_export(campaign, admin, args)
    print(
        f"\ntargets: agreement < 5 s: {'met' if total < 5 else 'MISSED'} ({total:.2f} s); "
        f"pair export > 100,000 pairs/s: {'met' if rate > 100_000 else 'MISSED'} ({rate:,.0f})"
    )


if __name__ == "__main__":
    main()
