"""Benchmark of the pure agreement code on a synthetic campaign, and of pair export.

    .venv/bin/python bench/bench_agreement.py [--tasks 25000] [--labellers-per-task 4]

Synthesises 25,000 tasks x 4 labellers = 100,000 rankings of 4 completions (a pool of 200
labellers, noisy views of a hidden quality, a few F marks and ties), then times for each metric
"build" (records -> the arrays that metric needs) and "compute" (the statistic with its
1000-resample bootstrap interval), and pair expansion + JSONL serialisation in pairs per second.
Targets: all metrics under 5 s in total; pair export over 100,000 pairs/s.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotation import agreement
from annotation.agreement import (
    Bootstrap,
    Estimate,
    RankingRecord,
    alpha_estimate,
    alpha_pairs,
    fail_value_counts,
    fleiss_kappa_pairs,
    labeller_quality,
    mean_kendall_w,
    pair_votes,
    pairwise_agreement,
    rank_value_counts,
    ranking_table,
)
from annotation.pairs import FAIL, expand_ranking

T = TypeVar("T")


def synthesise(
    tasks: int, per_task: int, completions: int, pool: int, seed: int
) -> list[RankingRecord]:
    """Rankings of ``completions`` items by ``per_task`` labellers drawn from ``pool``."""
    rng = np.random.default_rng(seed)
    quality = rng.normal(size=(tasks, completions))
    noise_scale = rng.uniform(0.4, 1.2, size=pool)  # labellers differ in care
    labellers = np.argsort(rng.random((tasks, pool)), axis=1)[:, :per_task]
    seen = (
        quality[:, None, :]
        + rng.normal(size=(tasks, per_task, completions)) * noise_scale[labellers][..., None]
    )
    seen = np.round(seen * 4) / 4  # coarse judgements produce ties
    order = np.argsort(-seen, axis=2)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, completions + 1), axis=2)
    # equal judgements -> equal (competition) ranks
    sorted_seen = np.take_along_axis(seen, order, axis=2)
    first_of_tie = np.concatenate(
        [np.ones((*sorted_seen.shape[:2], 1), bool), sorted_seen[..., 1:] != sorted_seen[..., :-1]],
        axis=2,
    )
    position = np.arange(1, completions + 1)
    tie_rank = np.maximum.accumulate(np.where(first_of_tie, position, 0), axis=2)
    np.put_along_axis(ranks, order, tie_rank, axis=2)
    fails = (quality[:, None, :] < -1.8) & (rng.random(seen.shape) < 0.9)

    records = []
    ranking_id = 0
    for t in range(tasks):
        ids = range(t * completions, (t + 1) * completions)
        for k in range(per_task):
            ranking_id += 1
            items = {
                cid: FAIL if fails[t, k, c] else int(ranks[t, k, c]) for c, cid in enumerate(ids)
            }
            records.append(
                RankingRecord(
                    ranking_id=ranking_id,
                    task_id=t + 1,
                    labeller_id=int(labellers[t, k]) + 1,
                    items=items,
                    seconds=float(rng.gamma(4, 15)),
                )
            )
    return records


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def show(estimate: Estimate) -> str:
    if estimate.value is None:
        return f"undefined (n={estimate.n})"
    ci = (
        f"[{estimate.ci_low:.3f}, {estimate.ci_high:.3f}]"
        if estimate.ci_low is not None
        else "no CI"
    )
    return f"{estimate.value:.3f} {ci} n={estimate.n:,}"


def bench_metrics(records: list[RankingRecord], bootstrap: Bootstrap) -> float:
    rows: list[tuple[str, float, float, str]] = []
    table, build_table = timed(lambda: ranking_table(records))
    rows.append(
        ("records -> RankingTable (shared)", build_table, 0.0, f"{len(records):,} rankings")
    )
    # The resampling weights are drawn once and cached; time them on their own row.
    _, weights = timed(
        lambda: agreement._task_weights(table.n_tasks, bootstrap.resamples, bootstrap.seed)
    )
    rows.append(
        (
            "bootstrap task weights (shared)",
            0.0,
            weights,
            f"{bootstrap.resamples} x {table.n_tasks:,}",
        )
    )
    votes, build_votes = timed(lambda: pair_votes(table))
    rows.append(("pair votes (shared)", build_votes, 0.0, f"{votes.counts.shape[1]} pairs/task"))

    for form in ("strict", "three_way", "tie_half"):
        result, seconds = timed(
            lambda form=form: pairwise_agreement(votes, form=form, bootstrap=bootstrap)
        )
        rows.append((f"pairwise agreement, {form}", 0.0, seconds, show(result.estimate)))

    (counts, values), build = timed(lambda: rank_value_counts(table))
    result, seconds = timed(
        lambda: alpha_estimate(counts, values, level="ordinal", bootstrap=bootstrap)
    )
    rows.append(("alpha ordinal, ranks", build, seconds, show(result)))
    result, seconds = timed(lambda: alpha_pairs(votes, bootstrap=bootstrap))
    rows.append(("alpha nominal, pair preferences", 0.0, seconds, show(result)))
    fail_counts, build = timed(lambda: fail_value_counts(table))
    result, seconds = timed(
        lambda: alpha_estimate(
            fail_counts, np.array([0.0, 1.0]), level="nominal", bootstrap=bootstrap
        )
    )
    rows.append(("alpha nominal, F flags", build, seconds, show(result)))
    result, seconds = timed(lambda: mean_kendall_w(table, bootstrap=bootstrap))
    rows.append(("Kendall's W, mean over tasks", 0.0, seconds, show(result)))
    result, seconds = timed(lambda: fleiss_kappa_pairs(votes, bootstrap=bootstrap))
    rows.append(("Fleiss' kappa, pair preferences", 0.0, seconds, show(result)))
    quality, seconds = timed(lambda: labeller_quality(table, votes, bootstrap=bootstrap))
    flagged = sum(q.flagged for q in quality)
    rows.append(
        ("per-labeller quality", 0.0, seconds, f"{len(quality)} labellers, {flagged} flagged")
    )

    print(f"{'step':36} {'build s':>8} {'compute s':>10}  result")
    for name, build_s, compute_s, note in rows:
        print(f"{name:36} {build_s:8.3f} {compute_s:10.3f}  {note}")
    total = sum(build_s + compute_s for _, build_s, compute_s, _ in rows)
    print(f"{'total':36} {total:19.3f}")
    return total


def bench_pair_export(records: list[RankingRecord]) -> float:
    """Pairs per second: expand every ranking and write one JSON line per pair."""
    out = io.StringIO()
    start = time.perf_counter()
    n_pairs = 0
    dumps = json.dumps
    for record in records:
        for pair in expand_ranking(record.items):
            out.write(
                dumps(
                    {
                        "ranking_id": record.ranking_id,
                        "task_id": record.task_id,
                        "labeller_id": record.labeller_id,
                        "chosen": pair.chosen,
                        "rejected": pair.rejected,
                        "tie": pair.tie,
                    }
                )
            )
            out.write("\n")
            n_pairs += 1
    seconds = time.perf_counter() - start
    rate = n_pairs / seconds
    print(
        f"pair export: {n_pairs:,} pairs in {seconds:.2f} s = {rate:,.0f} pairs/s "
        f"({out.tell() / 1e6:.1f} MB of JSONL)"
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
    args = parser.parse_args()

    records, seconds = timed(
        lambda: synthesise(
            args.tasks, args.labellers_per_task, args.completions, args.pool, args.seed
        )
    )
    print(
        f"synthesised {len(records):,} rankings ({args.tasks:,} tasks x {args.labellers_per_task} "
        f"labellers, {args.completions} completions, pool {args.pool}) in {seconds:.1f} s\n"
    )
    total = bench_metrics(records, Bootstrap(resamples=args.resamples, seed=args.seed))
    _, end_to_end = timed(lambda: agreement.agreement_report(records))
    print(f"agreement_report(records) end to end: {end_to_end:.3f} s\n")
    rate = bench_pair_export(records)
    print(
        f"\ntargets: metrics < 5 s: {'met' if total < 5 else 'MISSED'} ({total:.2f} s); "
        f"pair export > 100,000 pairs/s: {'met' if rate > 100_000 else 'MISSED'} ({rate:,.0f})"
    )


if __name__ == "__main__":
    main()
