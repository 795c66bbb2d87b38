"""``dpo``: direct preference optimisation of a policy on the campaigns' pairs, towards the
reference; no reward model needed (one, if given, scores the evaluation).

With a round: from its ``policy_before`` on the pairs of its campaigns (as its reward model's),
reference its reference, evaluated on its own campaign's held-out prompts, whose pairs are left
out of training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from django.conf import settings

from annotation.errors import InvalidInput
from training import exports, selectors, services
from training.jobs.base import (
    Built,
    ConfigSection,
    FromPairs,
    JobKind,
    JobOutcome,
    RunContext,
    base_path,
    check_config,
    evaluation_for,
    require_campaigns,
    require_rankings,
    round_pk,
    single,
    starting_policy,
    version,
)
from training.jobs.preflight import require_fit
from training.jobs.update import (
    UpdateRequest,
    UpdateSpec,
    eval_prompts,
    evaluate_update,
    policy_outcome,
    reference_path,
)
from training.ml.config import DPOConfig
from training.models import ModelVersion, Round, TrainingJob


@dataclass(kw_only=True)
class Request(FromPairs, UpdateRequest):
    pass


@dataclass(frozen=True, kw_only=True)
class DPOSpec(UpdateSpec):
    ties: bool = False
    fail_policy: Literal["drop", "rank_last"] = "drop"
    config: DPOConfig = field(default_factory=DPOConfig)


class DPOJob(JobKind):
    kind = TrainingJob.Kind.DPO
    title = "Run DPO"
    blurb = (
        "Direct preference optimisation of the policy on the campaigns' pairs, towards the "
        "reference; no reward model needed."
    )
    Request = Request
    Spec = DPOSpec
    sections = (
        ConfigSection(
            DPOConfig,
            ("beta", "learning_rate", "num_epochs", "batch_size", "warmup_steps",
             "max_prompt_tokens", "max_completion_tokens", "seed", "gpus", "nodes", "shard",
             "use_lora", "gradient_checkpointing", "offload", "checkpoint_every"),
        ),
    )  # fmt: skip

    def build(self, request: Request) -> Built:
        request.check_models()
        rnd = request.round
        config = check_config(DPOConfig, request.config)
        evaluation = evaluation_for(request)
        policy = starting_policy(request, round_default=rnd.policy_before if rnd else None)
        reference = request.reference_model_version or (rnd.reference if rnd else None)
        campaign_ids = request.campaign_ids
        if rnd is not None:
            campaign_ids = campaign_ids or selectors.round_reward_campaign_ids(round=rnd)
        require_campaigns(campaign_ids)
        require_rankings(campaign_ids)
        reward = request.reward_model_version or (rnd.reward_model if rnd else None)
        if reward is not None and reward.kind != ModelVersion.Kind.REWARD:
            raise InvalidInput("must be a reward model", field="reward_model_version")
        preflight = require_fit(
            "dpo",
            model_path=policy.path
            if policy is not None
            else request.base_model_path or settings.DEFAULT_BASE_MODEL,
            config=config,
        )
        spec = DPOSpec(
            preflight=preflight,
            campaign_ids=campaign_ids,
            ties=request.ties,
            fail_policy=request.fail_policy,
            reference_model_version=reference.pk if reference else None,
            reward_model_version=reward.pk if reward else None,
            config=config,
            name=request.name,
            round=round_pk(request),
            evaluation=evaluation,
            base_model_path=request.base_model_path,
        )
        return Built(spec, single(campaign_ids), policy, round_pk(request))

    def run(self, spec: DPOSpec, ctx: RunContext) -> JobOutcome:
        from training.ml.launch import run_dpo_distributed  # torch: not in the web process

        job = ctx.job
        policy = base_path(job, spec)
        reference = reference_path(spec, policy)
        reward = version(spec.reward_model_version)
        held_out_from = spec.campaign_ids
        if spec.round is not None:
            held_out_from = [Round.objects.get(pk=spec.round).campaign_id]
        _, held_out = eval_prompts(spec, held_out_from)
        held_keys = {r.key for r in held_out}
        pairs = exports.preference_pairs(
            campaign_ids=spec.campaign_ids, ties=spec.ties, fail_policy=spec.fail_policy
        )
        kept = [p for p in pairs if exports.prompt_key(p.prompt) not in held_keys]
        ctx.log(
            f"DPO of {policy} on {len(kept)} pairs ({len(pairs) - len(kept)} on held-out "
            f"prompts left out), reference {reference}"
        )
        # One process per GPU asked for (torchrun, FSDP2) or in this process on the CPU.
        result = run_dpo_distributed(
            policy_dir=policy,
            reference_dir=reference,
            pairs=kept,
            output_dir=services.model_store_dir(job),
            config=spec.config,
            on_progress=ctx.on_progress,
            should_stop=ctx.should_stop,
            metadata={"job": job.pk, "round": spec.round, "campaigns": spec.campaign_ids},
            checkpoint_dir=services.checkpoint_dir(job),
        )
        evaluation = evaluate_update(
            spec,
            ctx,
            before=policy,
            after=result.output_dir,
            reference=reference,
            reward_model=services.model_path(reward.path) if reward else None,
            prompts=held_out,
            device=spec.config.device,
        )
        return policy_outcome(
            spec,
            ctx,
            algorithm="dpo",
            output_dir=result.output_dir,
            metrics=result.metrics,
            summary={"metrics": result.metrics, "steps": result.steps, "counts": result.counts},
            evaluation=evaluation,
        )
