"""``reward_model``: a Bradley-Terry reward model on the campaigns' preference pairs.

With a round: the pairs of every round's campaigns so far (or the round's only, as its
``reward_scope`` says), starting from the round's reference and normalised on the completions of
its ``policy_before``; the new version becomes the round's reward model. Campaigns of the data
that serve their most uncertain tasks first are re-scored by it (acquisition jobs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from django.conf import settings

from training import exports, rounds, selectors, services
from training.jobs.acquisition import after_reward_model
from training.jobs.base import (
    Built,
    ConfigSection,
    FromPairs,
    JobKind,
    JobOutcome,
    JobRequest,
    RunContext,
    Spec,
    StartingPolicy,
    base_path,
    check_config,
    require_campaigns,
    require_rankings,
    round_pk,
    single,
    starting_model,
)
from training.jobs.preflight import require_fit
from training.ml.config import RewardModelConfig
from training.models import ModelVersion, TrainingJob


@dataclass(kw_only=True)
class Request(FromPairs, StartingPolicy, JobRequest):
    pass


@dataclass(frozen=True, kw_only=True)
class RewardModelSpec(Spec):
    campaign_ids: list[int]
    """the campaigns whose pairs it trains on"""
    ties: bool = False
    fail_policy: Literal["drop", "rank_last"] = "drop"
    base_model_path: str = ""
    """the model to start from when the job has no base version ("": the default)"""
    reference_model_version: int | None = None
    """normalise rewards on this policy's completions"""
    round: int | None = None
    config: RewardModelConfig = field(default_factory=RewardModelConfig)

    def campaigns(self) -> list[int]:
        return list(self.campaign_ids)

    def starting_path(self) -> str:
        return self.base_model_path


class RewardModelJob(JobKind):
    kind = TrainingJob.Kind.REWARD_MODEL
    title = "Train a reward model"
    blurb = (
        "A Bradley-Terry reward model on the campaigns' preference pairs (with a round: its "
        "campaigns so far), registered as a reward model version when it succeeds."
    )
    Request = Request
    Spec = RewardModelSpec
    sections = (
        ConfigSection(
            RewardModelConfig,
            ("num_epochs", "learning_rate", "lr_schedule", "batch_size", "max_length",
             "tie_loss", "eval_fraction", "seed", "gpus", "nodes", "shard", "use_lora",
             "gradient_checkpointing", "offload", "checkpoint_every"),
        ),
    )  # fmt: skip

    def build(self, request: Request) -> Built:
        request.check_models()
        config = check_config(RewardModelConfig, request.config)
        campaign_ids = request.campaign_ids
        base = request.base_model_version
        reference = request.reference_model_version
        if request.round is not None:
            campaign_ids = campaign_ids or selectors.round_reward_campaign_ids(round=request.round)
            if base is None and not request.base_model_path:
                base = request.round.reference
            reference = reference or request.round.policy_before
        require_campaigns(campaign_ids)
        require_rankings(campaign_ids)
        preflight = require_fit(
            "reward_model",
            model_path=base.path
            if base is not None
            else request.base_model_path or settings.DEFAULT_BASE_MODEL,
            config=config,
        )
        spec = RewardModelSpec(
            preflight=preflight,
            campaign_ids=campaign_ids,
            ties=request.ties,
            fail_policy=request.fail_policy,
            config=config,
            name=request.name,
            base_model_path=request.base_model_path,
            reference_model_version=reference.pk if reference is not None else None,
            round=round_pk(request),
        )
        return Built(spec, single(campaign_ids), base, round_pk(request))

    def run(self, spec: RewardModelSpec, ctx: RunContext) -> JobOutcome:
        from training.ml.launch import (
            train_reward_model_distributed,
        )  # torch: the web process imports the job kinds

        job = ctx.job
        pairs = exports.preference_pairs(
            campaign_ids=spec.campaign_ids, ties=spec.ties, fail_policy=spec.fail_policy
        )
        ctx.log(f"{len(pairs)} preference pairs from campaign(s) {spec.campaign_ids}")
        references = exports.reference_samples(
            campaign_ids=spec.campaign_ids, model_version_id=spec.reference_model_version
        )
        base = base_path(job, spec)
        # One process per GPU asked for (torchrun, FSDP2) or in this process on the CPU.
        result = train_reward_model_distributed(
            pairs,
            base_model=base,
            output_dir=services.model_store_dir(job),
            config=spec.config,
            reference_samples=references or None,
            on_progress=ctx.on_progress,
            should_stop=ctx.should_stop,
            metadata={"job": job.pk, "campaigns": spec.campaign_ids, "round": spec.round},
            checkpoint_dir=services.checkpoint_dir(job),
        )
        for note in result.notes:
            ctx.log(note)
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

        def record(job: TrainingJob, version: ModelVersion | None) -> None:
            if spec.round is not None:
                rounds.round_record_reward_model(round_id=spec.round, version=version)
            # Campaigns that serve their most uncertain tasks first are re-scored by the model.
            after_reward_model(ctx, campaign_ids=spec.campaign_ids, version=version)

        return JobOutcome(
            on_success=record,
            version={
                "kind": ModelVersion.Kind.REWARD,
                "name": spec.name or f"reward-model-{job.pk}",
                "path": str(result.output_dir),
                "base": starting_model(job, spec),
                "parent": job.base_model,
                "metrics": {
                    **result.metrics,
                    **{f"counts/{k}": v for k, v in result.counts.items()},
                },
                "reward_offset": result.normalization.offset,
                "reward_scale": result.normalization.scale,
            },
            summary=summary,
        )
