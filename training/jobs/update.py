"""What PPO and DPO jobs share: their request fields, the held-out prompts, the evaluation of an
update against the policy it started from, and the registration of the new policy (with a
round: recorded there as ``policy_after`` in the same transaction)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training import exports, rounds, services
from training.jobs.base import (
    JobOutcome,
    JobRequest,
    RunContext,
    Spec,
    StartingPolicy,
    starting_model,
)
from training.ml.evaluation import EvalSettings, evaluate_policies
from training.models import ModelVersion, TrainingJob

Prompts = list[exports.PromptRecord]


@dataclass(kw_only=True)
class UpdateRequest(StartingPolicy, JobRequest):
    reward_model_version: ModelVersion | None = None
    """the reward model (PPO: default the round's, else the newest; DPO: only evaluates)"""
    evaluation: dict[str, Any] | None = None
    """without a round: how the update is evaluated on held-out prompts (EvalSettings)"""


@dataclass(frozen=True, kw_only=True)
class UpdateSpec(Spec):
    campaign_ids: list[int]
    """the campaigns whose prompts (PPO) or pairs (DPO) it trains on"""
    reference_model_version: int | None = None
    """the KL reference (None: the starting policy)"""
    reward_model_version: int | None = None
    base_model_path: str = ""
    round: int | None = None
    evaluation: EvalSettings = field(default_factory=EvalSettings)

    def campaigns(self) -> list[int]:
        return list(self.campaign_ids)

    def starting_path(self) -> str:
        return self.base_model_path


def eval_prompts(spec: UpdateSpec, campaign_ids: list[int]) -> tuple[Prompts, Prompts]:
    """``(train, held_out)`` prompts of ``campaign_ids``; each content once among the
    held-out ones."""
    records = exports.campaign_prompts(campaign_ids=campaign_ids)
    train, held_out = exports.held_out_split(records, fraction=spec.evaluation.eval_fraction)
    unique = list({r.key: r for r in held_out}.values())
    return train, unique


def reference_path(spec: UpdateSpec, policy: str) -> str:
    if spec.reference_model_version is None:
        return policy
    return services.model_path(ModelVersion.objects.get(pk=spec.reference_model_version).path)


def evaluate_update(
    spec: UpdateSpec,
    ctx: RunContext,
    *,
    before: str | Path,
    after: str | Path,
    reference: str | Path,
    reward_model: str | Path | None,
    prompts: Prompts,
    device: str | None,
) -> dict[str, Any]:
    """Both policies on the held-out prompts: reward, KL to the reference, and their deltas."""
    settings = spec.evaluation
    prompts = list(prompts)[: settings.max_prompts]
    if not prompts:
        ctx.log("no held-out prompts: the update is not evaluated")
        return {}
    ctx.log(
        f"evaluating on {len(prompts)} held-out prompts x {settings.samples_per_prompt} samples"
    )
    results = evaluate_policies(
        {"policy_before": before, "policy_after": after},
        reference=reference,
        reward_model=reward_model,
        prompts=[r.prompt for r in prompts],
        settings=settings,
        device=device,
        should_stop=ctx.should_stop,
    )
    delta = {
        key: results["policy_after"][key] - results["policy_before"][key]
        for key in ("reward", "gold_score", "kl_ref")
        if results["policy_after"].get(key) is not None
    }
    return {
        **results,
        "delta": delta,
        "algorithm": ctx.job.kind,
        "job": ctx.job.pk,
        "held_out_prompts": len(prompts),
        "settings": dataclasses.asdict(settings),
    }


def policy_outcome(
    spec: UpdateSpec,
    ctx: RunContext,
    *,
    algorithm: str,
    output_dir: Path,
    metrics: dict[str, float],
    summary: dict[str, Any],
    evaluation: dict[str, Any],
) -> JobOutcome:
    """Register the new policy (parent: the policy it started from); with a round, record it
    there as ``policy_after`` with its evaluation, in the same transaction."""
    job = ctx.job
    after = evaluation.get("policy_after", {})
    eval_metrics = {f"eval/{k}": v for k, v in after.items() if isinstance(v, int | float)}

    def record(_job: TrainingJob, version: ModelVersion | None) -> None:
        rounds.round_record_policy_update(
            round_id=spec.round, version=version, evaluation=evaluation
        )

    return JobOutcome(
        version={
            "kind": ModelVersion.Kind.POLICY,
            "name": spec.name or f"{algorithm}-{job.pk}",
            "path": str(output_dir),
            "base": starting_model(job, spec),
            "parent": job.base_model,
            "metrics": {**metrics, **eval_metrics},
        },
        summary={**summary, "evaluation": evaluation},
        on_success=record if spec.round is not None else None,
    )
