"""Rankings in, on real multi-annotator data: the PandaLM human test set (999 pairwise items,
each judged by the same 3 annotators) imported as rankings in one command, its agreement read
from the API, both timed.

The data is not in this repository: ``data/testset-v1.json`` of github.com/WeOpenML/PandaLM
(Apache-2.0; README "Test data"). Each item: ``instruction``, ``input``, ``response1``,
``response2`` (six are JSON booleans, written here as text), ``cmp_key`` naming the two models
(``bloom-7b_llama-7b``: response1 by bloom-7b) and ``annotator1..3``: 1 or 2 for the better
response, 0 for "similar in quality" (a tie). 54 responses are empty.

    python bench/bench_import_rankings.py convert testset-v1.json -o pandalm-rankings.jsonl
    time python manage.py import_rankings --new-campaign "PandaLM test set" \
        pandalm-rankings.jsonl --allow-empty --allow-identical
    python bench/bench_import_rankings.py agreement CAMPAIGN_ID

or all three, timed, with ``python bench/bench_import_rankings.py run testset-v1.json``.
Results: bench/README.md, "Rankings in".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABELS = {1: [1, 2], 2: [2, 1], 0: [1, 1]}  # response1's rank, response2's rank


def convert(items: list[dict]) -> list[dict]:
    """PandaLM items as rankings-import lines: one per item and annotator."""
    lines = []
    for item in items:
        first, second = item["cmp_key"].split("_", 1)
        prompt = item["instruction"] + (f"\n\n{item['input']}" if item["input"] else "")
        completions = [
            {"text": str(item["response1"]), "source": first},
            {"text": str(item["response2"]), "source": second},
        ]
        for k in (1, 2, 3):
            lines.append(
                {
                    "prompt_id": f"pandalm-{item['idx']}",
                    "prompt": prompt,
                    "metadata": {"motivation_app": item["motivation_app"]},
                    "completions": completions,
                    "labeller": f"pandalm-annotator{k}",
                    "ranks": LABELS[item[f"annotator{k}"]],
                }
            )
    return lines


def agreement(campaign_id: int) -> dict:
    """GET /api/campaigns/{id}/agreement/ as a superuser, in this process."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    admin, _ = get_user_model().objects.get_or_create(
        username="bench-admin", defaults={"is_superuser": True, "is_staff": True}
    )
    client = APIClient()
    client.force_authenticate(admin)
    start = time.perf_counter()
    response = client.get(f"/api/campaigns/{campaign_id}/agreement/")
    seconds = time.perf_counter() - start
    assert response.status_code == 200, response.content[:500]
    return {"seconds": seconds, **response.json()}


def _print_agreement(body: dict) -> None:
    print(f"agreement read from the API in {body['seconds']:.2f} s")
    print(f"rankings {body['rankings']}, tasks {body['tasks']}, labellers {body['labellers']}")
    figures = body["pairwise_agreement"] + body["krippendorff_alpha"]
    for figure in [*figures, body["fleiss_kappa"], body["kendall_w"]]:
        value = "n/a" if figure["value"] is None else f"{figure['value']:.4f}"
        interval = (
            ""
            if figure["ci_low"] is None
            else f" [{figure['ci_low']:.4f}, {figure['ci_high']:.4f}]"
        )
        print(f"  {figure['label']}: {value}{interval} n={figure['n']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert")
    c.add_argument("testset", type=Path)
    c.add_argument("-o", "--output", type=Path, required=True)
    a = sub.add_parser("agreement")
    a.add_argument("campaign", type=int)
    r = sub.add_parser("run")
    r.add_argument("testset", type=Path)
    args = parser.parse_args()
    if args.command in ("convert", "run"):
        lines = convert(json.loads(args.testset.read_text()))
        output = getattr(args, "output", None) or Path("pandalm-rankings.jsonl")
        output.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
        print(f"{len(lines)} rankings written to {output}")
    if args.command == "agreement":
        _print_agreement(agreement(args.campaign))
    if args.command == "run":
        command = [
            sys.executable,
            str(ROOT / "manage.py"),
            "import_rankings",
            "--new-campaign",
            f"PandaLM test set {time.strftime('%H:%M:%S')}",
            str(output),
            "--allow-empty",
            "--allow-identical",
        ]
        start = time.perf_counter()
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        print(done.stdout.strip().splitlines()[-1])
        print(f"import_rankings took {seconds:.1f} s (the whole command, Django start included)")
        campaign = int(done.stdout.split("into campaign ")[1].split(":")[0])
        _print_agreement(agreement(campaign))


if __name__ == "__main__":
    main()
