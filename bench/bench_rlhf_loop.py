"""The online RLHF loop, round after round, with a synthetic labeller: gold score, reward-model
score and KL to the reference per round, the over-optimisation curve, plus PPO step timings.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_rlhf_loop.py [--rounds 5] [--ppo-steps 30]
        [--prompts 64] [--gold network|rules] [--kl-targets 15,20,25,30,40] [--device cpu|cuda|auto]
        [--update ppo|dpo] [--out bench/rlhf_loop.png]

Everything runs through the project's own path, in one process: a throwaway SQLite database
(migrated on start), the services and job kinds (``lifecycle.job_run``, no Celery), and the
synthetic labeller client over the real HTTP API (Django's WSGI application behind
``httpx.WSGITransport``). Round 0's completions come from the base model (a ``generate`` job);
each round then is one chained ``round`` job: reward model on every round's pairs → PPO (or DPO)
→ the next campaign's completions from the new policy, which the labeller ranks in turn.

The base is the tiny local model pretrained briefly on the bundled corpus (cached under
``var/bench/``), or ``--model-dir``. The synthetic labeller's hidden gold is, with ``--gold
network`` (the default), ``training.ml.synthetic.GoldNetwork``: a seeded random network about five
times the size of the reward model the loop trains (the proxy), which sees only its labels; with
``--gold rules``, the rule ``gold_score``. The reward-model score is each round's own reward
model (normalised on the round's starting policy), so it is compared within a round (before →
after), not across rounds.

PPO adapts β towards a KL target per round (``--kl-targets``, the last one repeated): rising
targets walk the policy away from the reference round by round, so the over-optimisation curve
(``training.overoptimisation``: gold and summed proxy gains against √KL, as the rounds page draws
it) covers a range of KL; each round's final KL is reported against its target. The targets start
at 15 nats: a KL penalty summed over tokens makes stopping at once (about 2.5 nats) the cheapest
policy once β·KL outweighs the reward model's range, and the β that holds this tiny policy under
about 10 nats is past that point (it collapses to empty completions). Figures are
printed; the plots (matplotlib, Agg) go to ``--out`` and ``--curve-out`` (with a CSV beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.ml.synthetic import PROMPT_FORMS, PROMPT_TOPICS, synthetic_prompts  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ppo-steps", type=int, default=40, help="PPO steps per round")
    parser.add_argument(
        "--prompts", type=int, default=64, help=f"at most {len(PROMPT_TOPICS) * len(PROMPT_FORMS)}"
    )
    parser.add_argument("--completions", type=int, default=4, help="N = K per task")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="PPO learning rate")
    parser.add_argument("--kl-coef", type=float, default=0.1, help="PPO's initial β")
    parser.add_argument(
        "--kl-targets",
        default="15,20,25,30,40",
        help="adaptive KL target per round, nats per completion (the last one repeats)",
    )
    parser.add_argument(
        "--kl-horizon",
        type=int,
        default=32,
        help="adaptive KL horizon in episodes (32 = two PPO steps: β moves up to 10%% a step; "
        "0 = PPOConfig's default, a tenth of the run)",
    )
    parser.add_argument("--fixed-kl", action="store_true", help="keep β at --kl-coef")
    parser.add_argument("--gold", choices=["network", "rules"], default="network")
    parser.add_argument("--update", choices=["ppo", "dpo"], default="ppo")
    parser.add_argument("--noise", type=float, default=0.1, help="labeller's score noise (std)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--model-dir", type=Path, help="base model (default: pretrained tiny)")
    parser.add_argument("--pretrain-steps", type=int, default=200, help="for the tiny model")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "rlhf_loop.png")
    parser.add_argument(
        "--curve-out", type=Path, default=ROOT / "bench" / "rlhf_overoptimisation.png"
    )
    parser.add_argument("--keep", type=Path, help="keep the database and models in this folder")
    return parser.parse_args()


def setup_django(workdir: Path) -> None:
    """A private world in ``workdir``: SQLite database, model store, and Celery's filesystem
    queue (jobs run here, in-process; what job creation enqueues never reaches a worker)."""
    os.environ["RLHF_VAR_DIR"] = str(workdir)
    os.environ["DATABASE_URL"] = f"sqlite:///{workdir / 'bench.sqlite3'}"
    os.environ["MODEL_STORE_DIR"] = str(workdir / "models")
    os.environ.pop("REDIS_URL", None)
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def quiet_logs() -> None:
    """No line per request (the labeller's 403 before acknowledging the guidelines included)."""
    import logging

    for name in ("django.request", "httpx", "kombu"):
        logging.getLogger(name).setLevel(logging.ERROR)


def configs(args: argparse.Namespace) -> tuple[dict, dict, dict]:
    device = None if args.device == "auto" else args.device
    sampling = {
        "temperature": 1.0,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "device": device,
    }
    round_config = {
        "reward_model": {
            "num_epochs": 3,
            "learning_rate": 1e-3,
            "lr_schedule": "cosine",
            "batch_size": 16,
            "max_length": 64,
            "eval_fraction": 0.2,
            "seed": args.seed,
            "device": device,
        },
        "ppo": {
            "total_steps": args.ppo_steps,
            "rollout_batch_size": 16,
            "mini_batch_size": 8,
            "ppo_epochs": 4,
            "max_new_tokens": args.max_new_tokens,
            "temperature": 1.0,
            "learning_rate": args.learning_rate,
            "anneal_lr": False,
            "kl_coef": args.kl_coef,
            "adaptive_kl": not args.fixed_kl,
            "kl_horizon": args.kl_horizon,
            "missing_eos_penalty": None,
            "seed": args.seed,
            "device": device,
        },
        "dpo": {
            "beta": 0.1,
            "learning_rate": 1e-4,
            "num_epochs": 2,
            "batch_size": 8,
            "seed": args.seed,
            "device": device,
        },
        "sampling": sampling,
    }
    eval_settings = {
        "eval_fraction": 0.2,
        "samples_per_prompt": 4,
        "temperature": 1.0,
        "max_new_tokens": args.max_new_tokens,
        "seed": 1234,
        "gold_score": True,
        "gold": args.gold,
        # Past the point of over-optimisation an update may lower the held-out reward; the bench
        # records that (the round's warnings) and goes on instead of holding the round.
        "reward_must_not_fall": False,
    }
    return sampling, round_config, eval_settings


def base_model(args: argparse.Namespace) -> Path:
    if args.model_dir:
        return args.model_dir
    from training.ml.tiny import build_tiny_model, bundled_corpus_files

    return build_tiny_model(
        ROOT / "var" / "bench" / f"tiny-pretrained-{args.pretrain_steps}",
        seed=0,
        pretrain_files=bundled_corpus_files() if args.pretrain_steps else None,
        pretrain_steps=args.pretrain_steps,
    )


def run_job(job):
    from training.jobs import lifecycle

    started = time.perf_counter()
    job = lifecycle.job_run(job_id=job.pk, worker="bench")
    if job.status != "succeeded":
        raise SystemExit(f"job #{job.pk} ({job.kind}) {job.status}:\n{job.error}")
    return job, time.perf_counter() - started


def ppo_timings(job) -> dict[str, float]:
    """Medians over the PPO steps of a job (the first step is left out: warm-up)."""
    from training.selectors import job_metrics

    rows = [m.values for m in job_metrics(job=job)][1:]
    if not rows:
        return {}

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rows if key in r)

    return {
        "rollout_tokens_per_s": round(median("ppo/rollout_tokens_per_s"), 1),
        "rollout_seconds": round(median("ppo/rollout_seconds"), 4),
        "update_seconds": round(median("ppo/update_seconds"), 4),
        "step_seconds": round(median("ppo/step_seconds"), 4),
    }


def kl_targets(args: argparse.Namespace) -> list[float]:
    """The KL target of each round: ``--kl-targets``, its last value repeated."""
    targets = [float(t) for t in args.kl_targets.split(",") if t.strip()]
    if not targets or min(targets) <= 0:
        raise SystemExit("--kl-targets: positive numbers, comma-separated")
    return [targets[min(i, len(targets) - 1)] for i in range(args.rounds)]


def ppo_kl(job) -> dict[str, float]:
    """β and the rollouts' KL to the reference at the last PPO step of a job."""
    from training.selectors import job_metrics

    rows = [m.values for m in job_metrics(job=job) if "ppo/kl_ref" in m.values]
    if not rows:
        return {}
    return {"beta_final": rows[-1].get("ppo/beta"), "train_kl_final": rows[-1]["ppo/kl_ref"]}


def curve_rows(rounds: list) -> list[dict]:
    """The over-optimisation curve of the chain, from the rounds' stored evaluations (the same
    function the rounds page draws it with)."""
    from training.overoptimisation import overoptimisation_curve

    points = overoptimisation_curve([(r.number, r.evaluation) for r in rounds])
    return [
        {
            "policy": p.label,
            "kl": round(p.kl, 3),
            "sqrt_kl": round(p.sqrt_kl, 3),
            "gold": round(p.gold, 4),
            "gold_gain": round(p.gold_gain, 4),
            "proxy_gain": None if p.proxy_gain is None else round(p.proxy_gain, 4),
        }
        for p in points
    ]


def write_curve(curve: list[dict], path: Path, title: str) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with path.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(curve[0]))
        writer.writeheader()
        writer.writerows(curve)
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [c["sqrt_kl"] for c in curve]
    ax.plot(x, [c["gold_gain"] for c in curve], marker="o", label="gold (hidden labeller)")
    ax.plot(
        x,
        [c["proxy_gain"] for c in curve],
        marker="s",
        linestyle="--",
        label="proxy (reward models' gains, summed)",
    )
    for c in curve:
        ax.annotate(c["policy"].replace("round ", "r"), (c["sqrt_kl"], c["gold_gain"]), fontsize=7)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set(xlabel="√KL(π ‖ π_ref)  (KL in nats per completion)", ylabel="gain over the start")
    ax.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [r["round"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    gold_x = [0] + [r + 1 for r in rounds]
    gold_y = [rows[0]["gold_before"]] + [r["gold_after"] for r in rows]
    axes[0].plot(gold_x, gold_y, marker="o")
    axes[0].set(title="Gold score on held-out prompts", xlabel="policy after round (0 = base)")
    axes[1].plot(rounds, [r["reward_before"] for r in rows], marker="o", label="before")
    axes[1].plot(rounds, [r["reward_after"] for r in rows], marker="o", label="after")
    axes[1].set(title="Reward-model score (each round's RM)", xlabel="round")
    axes[1].legend()
    kl_y = [rows[0]["kl_ref_before"]] + [r["kl_ref_after"] for r in rows]
    axes[2].plot(gold_x, kl_y, marker="o", label="to the reference")
    axes[2].plot(gold_x[1:], [r["kl_previous"] for r in rows], marker="o", label="to the previous")
    axes[2].set(title="KL (nats per completion)", xlabel="policy after round (0 = base)")
    axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="rlhf-loop-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        run(args, workdir)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, workdir: Path) -> None:
    setup_django(workdir)

    import httpx
    from django.contrib.auth import get_user_model
    from django.core.wsgi import get_wsgi_application

    from annotation import services as annotation_services
    from annotation.models import Prompt
    from training import services
    from training.ml.device import device_name, pick_device
    from training.ml.synthetic import SyntheticLabeller
    from training.models import Round, TrainingJob
    from training.synthetic_client import label_campaign, login

    started = time.perf_counter()
    base_dir = base_model(args)
    sampling, round_config, eval_settings = configs(args)
    users = get_user_model().objects
    admin = users.create_superuser("bench-admin", password="bench-admin")
    labeller = users.create_user("bench-labeller", password="bench-labeller")
    base = services.model_version_register(kind="base", name="base", path=str(base_dir))
    campaign = annotation_services.campaign_create(
        created_by=admin,
        name="RLHF loop bench",
        completions_per_task=args.completions,
        overlap=1,
        allow_ties=False,
        allow_fail=False,
    )
    annotation_services.campaign_add_members(campaign=campaign, users=[labeller])
    annotation_services.guideline_publish(
        campaign=campaign, text="Rank the replies, best first.", created_by=admin
    )
    annotation_services.campaign_set_status(campaign=campaign, status="active")
    prompts = synthetic_prompts(args.prompts)
    Prompt.objects.bulk_create(
        [Prompt(campaign=campaign, external_id=f"p{i}", text=p) for i, p in enumerate(prompts)]
    )

    # Both the admin and the labeller go through the HTTP API with token auth.
    transport = httpx.WSGITransport(app=get_wsgi_application())
    quiet_logs()  # after get_wsgi_application(): its django.setup() configures logging again
    admin_api = httpx.Client(transport=transport, base_url="http://localhost")
    login(admin_api, username="bench-admin", password="bench-admin")
    http = httpx.Client(transport=transport, base_url="http://localhost")
    login(http, username="bench-labeller", password="bench-labeller")

    def create(url: str, body: dict) -> TrainingJob:
        response = admin_api.post(url, json=body)
        if response.status_code != 201:
            raise SystemExit(f"{url}: {response.status_code} {response.text[:500]}")
        return TrainingJob.objects.get(pk=response.json()["id"])

    run_job(
        create(
            "/api/training-jobs/",
            {
                "kind": "generate",
                "campaign_ids": [campaign.pk],
                "base_model_version": base.pk,
                "config": sampling,
            },
        )
    )
    response = admin_api.post(
        "/api/rounds/",
        json={"campaign": campaign.pk, "policy": base.pk, "eval_settings": eval_settings},
    )
    rnd = Round.objects.get(pk=response.json()["id"])
    synthetic = SyntheticLabeller(noise=args.noise, seed=args.seed, gold=args.gold)
    targets = kl_targets(args)
    rows = []
    chain = []
    for number in range(args.rounds):
        stats = label_campaign(http, campaign_id=rnd.campaign_id, labeller=synthetic)
        round_config["ppo"]["kl_target"] = targets[number]
        job, seconds = run_job(
            create(
                f"/api/rounds/{rnd.pk}/run/",
                {"config": round_config, "update": args.update},
            )
        )
        rnd.refresh_from_db()
        chain.append(rnd)
        steps = {s.kind: s for s in job.steps.all()}
        evaluation = rnd.evaluation
        before, after = evaluation["policy_before"], evaluation["policy_after"]
        row = {
            "round": number,
            "rankings": stats.rankings,
            "labelling_seconds": round(stats.seconds, 2),
            "rm_eval_accuracy": rnd.reward_model.metrics.get("eval/accuracy"),
            "rm_pairs": rnd.reward_model.metrics.get("counts/train_pairs"),
            "gold_before": before["gold_score"],
            "gold_after": after["gold_score"],
            "reward_before": before["reward"],
            "reward_after": after["reward"],
            "kl_ref_before": before["kl_ref"],
            "kl_ref_after": after["kl_ref"],
            "kl_previous": after["kl_previous"],
            "kl_target": None if args.fixed_kl or args.update != "ppo" else targets[number],
            **(ppo_kl(steps["ppo"]) if "ppo" in steps else {}),
            "response_length_after": after["response_length"],
            "eos_rate_after": after["eos_rate"],
            "round_job_seconds": round(seconds, 1),
            **({"ppo": ppo_timings(steps["ppo"])} if "ppo" in steps else {}),
            "example_after": after["examples"][0]["completion"],
        }
        rows.append(row)
        print(
            f"round {number}: {stats.rankings} rankings; RM eval acc "
            f"{row['rm_eval_accuracy']:.3f}; gold {row['gold_before']:.3f} -> "
            f"{row['gold_after']:.3f}; RM score {row['reward_before']:+.3f} -> "
            f"{row['reward_after']:+.3f}; KL ref {row['kl_ref_after']:.2f} "
            + (
                f"(target {row['kl_target']:g}, x{row['kl_ref_after'] / row['kl_target']:.2f}; "
                f"beta {row['beta_final']:.3g}, rollout KL {row['train_kl_final']:.2f}) "
                if row["kl_target"]
                else ""
            )
            + f"(to previous {row['kl_previous']:.2f}); {seconds:.0f} s"
            + (
                f"; PPO {row['ppo']['rollout_tokens_per_s']:.0f} tok/s rollout, "
                f"{row['ppo']['update_seconds']:.3f} s update"
                if "ppo" in row
                else ""
            ),
            flush=True,
        )
        row["warnings"] = evaluation.get("warnings", [])
        if rnd.status == Round.Status.NEEDS_REVIEW:
            raise SystemExit(f"round {number} held for review: {evaluation['warnings']}")
        rnd = rnd.next_round
        # The next campaign opens as a draft; the bench, as the admin, activates it.
        response = admin_api.post(
            f"/api/campaigns/{rnd.campaign_id}/status/", json={"status": "active"}
        )
        if response.status_code != 200:
            raise SystemExit(f"activating round {rnd.number}: {response.text[:500]}")

    device = device_name(pick_device(None if args.device == "auto" else args.device))
    title = (
        f"{args.update.upper()}, {args.rounds} rounds x {args.ppo_steps} steps, "
        f"{len(prompts)} prompts x {args.completions}, noise {args.noise}, gold {args.gold}, "
        + (
            f"KL coef {args.kl_coef} fixed"
            if args.fixed_kl
            else f"KL targets {args.kl_targets} (beta0 {args.kl_coef}, horizon {args.kl_horizon})"
        )
        + f", seed {args.seed}, {device}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, args.out, title)
    curve = curve_rows(chain)
    print("\npolicy    KL     sqrt(KL)  gold    gold gain  proxy gain")
    for c in curve:
        proxy = "" if c["proxy_gain"] is None else f"{c['proxy_gain']:+.3f}"
        print(
            f"{c['policy']:<9} {c['kl']:6.2f} {c['sqrt_kl']:8.2f}  {c['gold']:+.3f}  "
            f"{c['gold_gain']:+9.3f}  {proxy:>10}"
        )
    final = rows[-1]
    if final["kl_target"]:
        ratio = final["kl_ref_after"] / final["kl_target"]
        print(
            f"final KL to the reference {final['kl_ref_after']:.2f} against a target of "
            f"{final['kl_target']:g}: x{ratio:.2f} "
            + ("(within 1.5x)" if 1 / 1.5 <= ratio <= 1.5 else "(NOT within 1.5x)"),
            flush=True,
        )
    if len(curve) > 1:
        args.curve_out.parent.mkdir(parents=True, exist_ok=True)
        write_curve(curve, args.curve_out, title)
    summary = {
        "device": device,
        "base_model": str(base_dir),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rounds": rows,
        "curve": curve,
        "total_seconds": round(time.perf_counter() - started, 1),
        "plot": str(args.out),
        "curve_plot": str(args.curve_out),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
