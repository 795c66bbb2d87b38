"""Job runners: turn a TrainingJob's parameters into a call of ``training.ml``.

Each runner reads what it needs from the database into plain data, calls the ML entry point
with the reporter's ``on_progress`` and ``should_stop``, and returns what to register. They are
registered by kind with ``@runner`` and looked up by ``services.training_job_run``:

* ``reward_model``: ``train_reward_model`` on the campaigns' pairs;
* ``ppo`` / ``dpo``: ``run_ppo`` / ``run_dpo`` from a policy, then the evaluation of the update on
  held-out prompts (:func:`training.ml.evaluation.evaluate_policies`);
* ``generate``: ``generate_completions`` from one to three sources, then the tasks (and, for a
  round, the next campaign) in the transaction that marks the job succeeded;
* ``round``: the three steps above as jobs of their own, run one after the other.

With a round, what a job produced is recorded on the Round in that same transaction
(``JobOutcome.on_success``): the job succeeded and the round moved on, or neither.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from training import exports, services
from training.ml.evaluation import EvalSettings, evaluate_policies
from training.models import ModelVersion, Round, TrainingJob
from training.services import (
    GeneratedCompletion,
    JobOutcome,
    JobReporter,
    config_from_dict,
    model_store_dir,
    runner,
)


def _base_path(job: TrainingJob) -> str:
    from django.conf import settings

    if job.base_model is not None:
        return job.base_model.path
    return job.params.get("base_model_path") or settings.DEFAULT_BASE_MODEL


@runner(TrainingJob.Kind.REWARD_MODEL)
def run_reward_model(job: TrainingJob, reporter: JobReporter) -> JobOutcome:
    from training.ml.config import RewardModelConfig
    from training.ml.launch import train_reward_model_distributed

    params = job.params
    campaign_ids = params["campaign_ids"]
    pairs = exports.preference_pairs(
        campaign_ids=campaign_ids,
        ties=params.get("ties", False),
        fail_policy=params.get("fail_policy", "drop"),
    )
    reporter.log(f"{len(pairs)} preference pairs from campaign(s) {campaign_ids}")
    references = exports.reference_samples(
        campaign_ids=campaign_ids, model_version_id=params.get("reference_model_version")
    )
    config = RewardModelConfig.from_dict(params.get("config", {}))
    base = _base_path(job)
    # One process per visible GPU (torchrun, data parallel) or in this process on the CPU.
    result = train_reward_model_distributed(
        pairs,
        base_model=base,
        output_dir=model_store_dir(job),
        config=config,
        reference_samples=references or None,
        on_progress=reporter.on_progress,
        should_stop=reporter.should_stop,
        metadata={"job": job.pk, "campaigns": campaign_ids, "round": params.get("round")},
    )
    for note in result.notes:
        reporter.log(note)
    summary = {
        "metrics": result.metrics,
        "counts": result.counts,
        "steps": result.steps,
        "seconds": result.seconds,
        "device": result.device,
        "normalization": {
            "offset": result.normalization.offset,
            "scale": result.normalization.scale,
            "source": result.normalization.source,
            "samples": result.normalization.num_samples,
        },
    }
    round_id = params.get("round")

    def record(_job: TrainingJob, version: ModelVersion | None) -> None:
        from training.acquisition import acquisition_jobs_after_reward_model

        if round_id:
            services.round_record_reward_model(round_id=round_id, version=version)
        # Campaigns that serve their most uncertain tasks first are re-scored by the new model.
        acquisition_jobs_after_reward_model(job=_job, version=version)

    return JobOutcome(
        on_success=record,
        version={
            "kind": ModelVersion.Kind.REWARD,
            "name": params.get("name") or f"reward-model-{job.pk}",
            "path": str(result.output_dir),
            "base": base,
            "parent": job.base_model,
            "metrics": {**result.metrics, **{f"counts/{k}": v for k, v in result.counts.items()}},
            "reward_offset": result.normalization.offset,
            "reward_scale": result.normalization.scale,
        },
        summary=summary,
    )


# --- Policy updates: PPO and DPO ----------------------------------------------------------------


def _version(pk: int | None) -> ModelVersion | None:
    return ModelVersion.objects.get(pk=pk) if pk is not None else None


Prompts = list[exports.PromptRecord]


def _eval_prompts(job: TrainingJob) -> tuple[Prompts, Prompts]:
    """``(train, held_out)`` prompts of the job: the round's campaign's, else the job's
    campaigns'; each content once among the held-out ones."""
    params = job.params
    settings = EvalSettings(**params["evaluation"])
    campaign_ids = params["campaign_ids"]
    if params.get("round") is not None and job.kind == TrainingJob.Kind.DPO:
        campaign_ids = [Round.objects.get(pk=params["round"]).campaign_id]
    records = exports.campaign_prompts(campaign_ids=campaign_ids)
    train, held_out = exports.held_out_split(records, fraction=settings.eval_fraction)
    unique = list({r.key: r for r in held_out}.values())
    return train, unique


def _policy_outcome(
    job: TrainingJob,
    *,
    algorithm: str,
    output_dir: Path,
    metrics: dict[str, float],
    summary: dict[str, Any],
    evaluation: dict[str, Any],
) -> JobOutcome:
    """Register the new policy (parent: the policy it started from); with a round, record it
    there as ``policy_after`` with its evaluation, in the same transaction."""
    params = job.params
    round_id = params.get("round")
    after = evaluation.get("policy_after", {})
    eval_metrics = {f"eval/{k}": v for k, v in after.items() if isinstance(v, int | float)}

    def record(_job: TrainingJob, version: ModelVersion | None) -> None:
        services.round_record_policy_update(
            round_id=round_id, version=version, evaluation=evaluation
        )

    return JobOutcome(
        version={
            "kind": ModelVersion.Kind.POLICY,
            "name": params.get("name") or f"{algorithm}-{job.pk}",
            "path": str(output_dir),
            "base": _base_path(job),
            "parent": job.base_model,
            "metrics": {**metrics, **eval_metrics},
        },
        summary={**summary, "evaluation": evaluation},
        on_success=record if round_id is not None else None,
    )


@runner(TrainingJob.Kind.PPO)
def run_ppo_job(job: TrainingJob, reporter: JobReporter) -> JobOutcome:
    from training.ml.config import PPOConfig
    from training.ml.ppo import run_ppo

    params = job.params
    policy = _base_path(job)
    reward = ModelVersion.objects.get(pk=params["reward_model_version"])
    reference_version = _version(params.get("reference_model_version"))
    reference = reference_version.path if reference_version else policy
    config = config_from_dict(PPOConfig, params.get("config", {}))
    train, held_out = _eval_prompts(job)
    reporter.log(
        f"PPO of {policy} against reward model #{reward.pk} on {len(train)} prompts "
        f"({len(held_out)} held out for evaluation), KL reference {reference}"
    )
    result = run_ppo(
        policy_dir=policy,
        reference_dir=reference,
        reward_model_dir=reward.path,
        prompts=[r.prompt for r in train],
        output_dir=model_store_dir(job),
        config=config,
        on_progress=reporter.on_progress,
        should_stop=reporter.should_stop,
        metadata={
            "job": job.pk,
            "round": params.get("round"),
            "campaigns": params["campaign_ids"],
            "reward_model_version": reward.pk,
        },
    )
    evaluation = evaluate_update(
        job,
        reporter,
        before=policy,
        after=result.output_dir,
        reference=reference,
        reward_model=reward.path,
        prompts=held_out,
        device=config.device,
    )
    return _policy_outcome(
        job,
        algorithm="ppo",
        output_dir=result.output_dir,
        metrics=result.metrics,
        summary={"metrics": result.metrics, "steps": result.steps, "prompts": len(train)},
        evaluation=evaluation,
    )


@runner(TrainingJob.Kind.DPO)
def run_dpo_job(job: TrainingJob, reporter: JobReporter) -> JobOutcome:
    from training.ml.config import DPOConfig
    from training.ml.dpo import run_dpo

    params = job.params
    policy = _base_path(job)
    reference_version = _version(params.get("reference_model_version"))
    reference = reference_version.path if reference_version else policy
    reward = _version(params.get("reward_model_version"))
    config = config_from_dict(DPOConfig, params.get("config", {}))
    _, held_out = _eval_prompts(job)
    held_keys = {r.key for r in held_out}
    pairs = exports.preference_pairs(
        campaign_ids=params["campaign_ids"],
        ties=params.get("ties", False),
        fail_policy=params.get("fail_policy", "drop"),
    )
    kept = [p for p in pairs if exports.prompt_key(p.prompt) not in held_keys]
    reporter.log(
        f"DPO of {policy} on {len(kept)} pairs ({len(pairs) - len(kept)} on held-out prompts "
        f"left out), reference {reference}"
    )
    result = run_dpo(
        policy_dir=policy,
        reference_dir=reference,
        pairs=kept,
        output_dir=model_store_dir(job),
        config=config,
        on_progress=reporter.on_progress,
        should_stop=reporter.should_stop,
        metadata={"job": job.pk, "round": params.get("round"), "campaigns": params["campaign_ids"]},
    )
    evaluation = evaluate_update(
        job,
        reporter,
        before=policy,
        after=result.output_dir,
        reference=reference,
        reward_model=reward.path if reward else None,
        prompts=held_out,
        device=config.device,
    )
    return _policy_outcome(
        job,
        algorithm="dpo",
        output_dir=result.output_dir,
        metrics=result.metrics,
        summary={"metrics": result.metrics, "steps": result.steps, "counts": result.counts},
        evaluation=evaluation,
    )


# --- Evaluation: composes training.ml's public functions ----------------------------------------


def evaluate_update(
    job: TrainingJob,
    reporter: JobReporter,
    *,
    before: str | Path,
    after: str | Path,
    reference: str | Path,
    reward_model: str | Path | None,
    prompts: Sequence[exports.PromptRecord],
    device: str | None,
) -> dict[str, Any]:
    """The round's evaluation of an update: both policies on the held-out prompts."""
    settings = EvalSettings(**job.params["evaluation"])
    prompts = list(prompts)[: settings.max_prompts]
    if not prompts:
        reporter.log("no held-out prompts: the update is not evaluated")
        return {}
    reporter.log(
        f"evaluating on {len(prompts)} held-out prompts x {settings.samples_per_prompt} samples"
    )
    results = evaluate_policies(
        {"policy_before": before, "policy_after": after},
        reference=reference,
        reward_model=reward_model,
        prompts=[r.prompt for r in prompts],
        settings=settings,
        device=device,
        should_stop=reporter.should_stop,
    )
    delta = {
        key: results["policy_after"][key] - results["policy_before"][key]
        for key in ("reward", "gold_score", "kl_ref")
        if results["policy_after"].get(key) is not None
    }
    return {
        **results,
        "delta": delta,
        "algorithm": job.kind,
        "job": job.pk,
        "held_out_prompts": len(prompts),
        "settings": dataclasses.asdict(settings),
    }


# --- Generation: the next round's completions ---------------------------------------------------

EMPTY_PLACEHOLDER = "(empty response)"
"""Stored for a completion still empty after resampling: the database refuses empty texts."""


def _sample(
    path: str,
    prompts: Sequence[Any],
    config: Any,
    *,
    should_stop: Callable[[], bool],
) -> tuple[list[list[Any]], int]:
    """K completions per prompt; empty ones are drawn again (two more seeds) and, if still
    empty, replaced by :data:`EMPTY_PLACEHOLDER`. Returns the rows and how many stayed empty."""
    from training.ml.generation import generate_completions

    rows = generate_completions(path, prompts, config, should_stop=should_stop)
    for attempt in (1, 2):
        empty = [i for i, row in enumerate(rows) if any(not c.text for c in row)]
        if not empty:
            break
        retry = dataclasses.replace(config, seed=config.seed + 10_007 * attempt)
        again = generate_completions(
            path, [prompts[i] for i in empty], retry, should_stop=should_stop
        )
        for i, new_row in zip(empty, again, strict=True):
            spare = [c for c in new_row if c.text]
            rows[i] = [c if c.text or not spare else spare.pop() for c in rows[i]]
    left = sum(not c.text for row in rows for c in row)
    return rows, left


@runner(TrainingJob.Kind.GENERATE)
def run_generate_job(job: TrainingJob, reporter: JobReporter) -> JobOutcome:
    from annotation.models import Campaign
    from training.ml.config import SamplingConfig
    from training.ml.reward_model import TrainingCancelled

    params = job.params
    target_id = params.get("target_campaign")
    same_campaign = target_id is not None and params["campaign_ids"] == [target_id]
    records = exports.campaign_prompts(
        campaign_ids=params["campaign_ids"], without_tasks_in=target_id if same_campaign else None
    )
    if not records:
        raise ValueError("no prompts to generate completions for")
    sampling = config_from_dict(SamplingConfig, params.get("config", {}))
    prompts = [r.prompt for r in records]
    groups: list[list[GeneratedCompletion]] = [[] for _ in records]
    sources = params["sources"]
    counts: dict[str, Any] = {}
    for index, source in enumerate(sources, 1):
        if reporter.should_stop():
            raise TrainingCancelled("generation cancelled")
        version = _version(source["model_version"])
        label = f"{source['role']}:{version.name if version else source['path']}"
        config = dataclasses.replace(
            sampling, num_completions=source["count"], seed=sampling.seed + 7919 * (index - 1)
        )
        reporter.log(f"sampling {source['count']} per prompt from {label} ({len(prompts)} prompts)")
        rows, empty = _sample(source["path"], prompts, config, should_stop=reporter.should_stop)
        for group, row in zip(groups, rows, strict=True):
            for completion in row:
                group.append(
                    GeneratedCompletion(
                        text=completion.text or EMPTY_PLACEHOLDER,
                        source=label,
                        model_version_id=version.pk if version else None,
                        metadata={
                            "role": source["role"],
                            "job": job.pk,
                            "eos": completion.eos,
                            "tokens": len(completion.token_ids),
                            **({"empty": True} if not completion.text else {}),
                        },
                    )
                )
        flat = [c for row in rows for c in row]
        stats = {
            "eos_rate": sum(c.eos for c in flat) / len(flat),
            "response_length": sum(len(c.token_ids) for c in flat) / len(flat),
            "empty": empty,
        }
        counts[source["role"]] = {"label": label, "count": source["count"], **stats}
        reporter.on_progress(index, len(sources), {f"generate/{k}": v for k, v in stats.items()})
    # Each task lists its completions in a seeded random order (labellers see their own
    # shuffle anyway; this keeps the stored positions from revealing the source).
    rng = random.Random(sampling.seed)
    for group in groups:
        rng.shuffle(group)
    duplicates = sum(len(g) - len({c.text for c in g}) for g in groups)
    prompt_ids = [r.id for r in records]
    round_id = params.get("round")
    summary: dict[str, Any] = {
        "prompts": len(records),
        "tasks": len(records),
        "completions": sum(len(g) for g in groups),
        "sources": counts,
        "duplicate_completions": duplicates,
    }

    def store(_job: TrainingJob, _registered: ModelVersion | None) -> None:
        # In the transaction that marks the job succeeded: the tasks exist iff it succeeded.
        if round_id is not None:
            following = services.round_open_next(
                round_id=round_id,
                policy=job.base_model,
                prompt_ids=prompt_ids,
                completions=groups,
                created_by=job.created_by,
            )
            summary.update(next_round=following.pk, campaign=following.campaign_id)
        else:
            services.generated_tasks_store(
                campaign=Campaign.objects.get(pk=target_id),
                prompt_ids=prompt_ids,
                completions=groups,
            )
            summary.update(campaign=target_id)

    return JobOutcome(summary=summary, on_success=store)


# --- The whole round as one chained job ---------------------------------------------------------


@runner(TrainingJob.Kind.ROUND)
def run_round_job(job: TrainingJob, reporter: JobReporter) -> JobOutcome:
    """Reward model → PPO (or DPO) → generate the next campaign, each step a job of its own
    (``parent`` = this one) run here one after the other, so each step's progress, metrics and
    log are visible as for any job. A failed step fails the round job with its error."""
    from training.ml.reward_model import TrainingCancelled

    params = job.params
    rnd = Round.objects.get(pk=params["round"])
    prefix = params.get("name") or f"round-{rnd.number}"
    sections, update = params["config"], params["update"]
    pairs = {"ties": params.get("ties", False), "fail_policy": params.get("fail_policy", "drop")}
    steps: list[tuple[str, dict[str, Any]]] = [
        (
            TrainingJob.Kind.REWARD_MODEL,
            {"config": sections["reward_model"], "name": f"{prefix}-reward-model", **pairs},
        ),
        (update, {"config": sections[update], "name": f"{prefix}-{update}", **pairs}),
        (
            TrainingJob.Kind.GENERATE,
            {
                "config": sections["sampling"],
                "num_completions": params["num_completions"],
                "mix": params["mix"],
                "name": f"{prefix}-generate",
            },
        ),
    ]
    done: dict[str, int] = {}
    for index, (kind, form) in enumerate(steps, 1):
        if reporter.should_stop():
            raise TrainingCancelled(f"cancelled before step {index} ({kind})")
        rnd.refresh_from_db()
        step = services.training_job_create_from_form(
            created_by=job.created_by, kind=kind, round=rnd, parent=job, **form
        )
        reporter.log(f"step {index}/{len(steps)}: {kind} as job #{step.pk}")
        step = services.training_job_run(job_id=step.pk, worker=job.worker)
        if step.status == TrainingJob.Status.CANCELLED:
            raise TrainingCancelled(f"step {index} ({kind}, job #{step.pk}) was cancelled")
        if step.status != TrainingJob.Status.SUCCEEDED:
            raise RuntimeError(f"step {index} ({kind}, job #{step.pk}) {step.status}")
        done[kind] = step.pk
        reporter.on_progress(index, len(steps), {"round/steps_done": float(index)})
    rnd.refresh_from_db()
    return JobOutcome(
        summary={
            "steps": done,
            "round": rnd.pk,
            "next_round": rnd.next_round.pk,
            "next_campaign": rnd.next_campaign_id,
            "evaluation": rnd.evaluation,
        }
    )
