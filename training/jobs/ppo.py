"""``ppo``: optimise a policy against a reward model on the campaigns' prompts, with a KL penalty
towards the reference; evaluated on held-out prompts against the policy it started from.

With a round: from its ``policy_before`` against its reward model, KL to its reference, on its
campaign's prompts; the new policy becomes the round's ``policy_after``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings

from annotation.errors import InvalidInput
from training import services
from training.jobs.base import (
    Built,
    ConfigSection,
    JobKind,
    JobOutcome,
    RunContext,
    base_path,
    check_config,
    evaluation_for,
    require_campaigns,
    require_prompts,
    round_pk,
    single,
    starting_policy,
)
from training.jobs.preflight import require_fit, worker_hardware
from training.jobs.update import (
    UpdateRequest,
    UpdateSpec,
    eval_prompts,
    evaluate_update,
    policy_outcome,
    reference_path,
)
from training.ml.config import PPOConfig
from training.models import ModelVersion, TrainingJob


@dataclass(kw_only=True)
class Request(UpdateRequest):
    pass


@dataclass(frozen=True, kw_only=True)
class PPOSpec(UpdateSpec):
    reward_model_version: int
    config: PPOConfig = field(default_factory=PPOConfig)


class PPOJob(JobKind):
    kind = TrainingJob.Kind.PPO
    title = "Run a PPO round"
    blurb = (
        "Optimise the policy against a reward model with PPO on the campaigns' prompts, with a "
        "KL penalty towards the reference; evaluated against the policy it started from."
    )
    Request = Request
    Spec = PPOSpec
    sections = (
        ConfigSection(
            PPOConfig,
            ("total_steps", "rollout_batch_size", "learning_rate", "value_learning_rate",
             "kl_coef", "adaptive_kl", "kl_target", "kl_horizon", "clip_range", "ppo_epochs",
             "mini_batch_size", "temperature", "max_new_tokens", "missing_eos_penalty",
             "ent_coef", "use_lora", "seed", "gpus", "nodes", "shard", "gradient_checkpointing",
             "offload", "checkpoint_every", "rollout_engine"),
        ),
    )  # fmt: skip

    def build(self, request: Request) -> Built:
        request.check_models()
        rnd = request.round
        config = check_config(PPOConfig, request.config)
        evaluation = evaluation_for(request)
        policy = starting_policy(request, round_default=rnd.policy_before if rnd else None)
        reward = request.reward_model_version
        if reward is not None and reward.kind != ModelVersion.Kind.REWARD:
            raise InvalidInput("must be a reward model", field="reward_model_version")
        if reward is None and rnd is not None:
            reward = rnd.reward_model
            if reward is None:
                raise InvalidInput(
                    f"round {rnd.number} has no reward model yet: train one first, or name one",
                    field="reward_model_version",
                )
        if reward is None:
            reward = ModelVersion.objects.filter(kind=ModelVersion.Kind.REWARD).first()
            if reward is None:
                raise InvalidInput(
                    "no reward model yet: train one first", field="reward_model_version"
                )
        reference = request.reference_model_version or (rnd.reference if rnd else None)
        campaign_ids = request.campaign_ids or ([rnd.campaign_id] if rnd else [])
        require_campaigns(campaign_ids)
        require_prompts(campaign_ids)
        preflight = require_fit(
            "ppo",
            model_path=policy.path
            if policy is not None
            else request.base_model_path or settings.DEFAULT_BASE_MODEL,
            config=config,
            reward_path=reward.path,
        )
        gpus = worker_hardware(config).gpus if settings.TRAINING_GPU_MEMORY_GB > 0 else 1
        episodes = config.rollout_batch_size * config.samples_per_prompt
        if gpus > 1 and (episodes % gpus or config.mini_batch_size % gpus):
            raise InvalidInput(
                f"on {gpus} GPUs, rollout_batch_size x samples_per_prompt ({episodes}) and "
                f"mini_batch_size ({config.mini_batch_size}) must be multiples of {gpus}",
                field="config",
            )
        spec = PPOSpec(
            preflight=preflight,
            campaign_ids=campaign_ids,
            reward_model_version=reward.pk,
            reference_model_version=reference.pk if reference else None,
            config=config,
            name=request.name,
            round=round_pk(request),
            evaluation=evaluation,
            base_model_path=request.base_model_path,
        )
        return Built(spec, single(campaign_ids), policy, round_pk(request))

    def run(self, spec: PPOSpec, ctx: RunContext) -> JobOutcome:
        from training.ml.launch import run_ppo_distributed  # torch: not in the web process

        job = ctx.job
        policy = base_path(job, spec)
        reward = ModelVersion.objects.get(pk=spec.reward_model_version)
        reference = reference_path(spec, policy)
        train, held_out = eval_prompts(spec, spec.campaign_ids)
        ctx.log(
            f"PPO of {policy} against reward model #{reward.pk} on {len(train)} prompts "
            f"({len(held_out)} held out for evaluation), KL reference {reference}"
        )
        # One process per GPU asked for (torchrun, FSDP2) or in this process on the CPU.
        result = run_ppo_distributed(
            policy_dir=policy,
            reference_dir=reference,
            reward_model_dir=services.model_path(reward.path),
            prompts=[r.prompt for r in train],
            output_dir=services.model_store_dir(job),
            config=spec.config,
            on_progress=ctx.on_progress,
            should_stop=ctx.should_stop,
            metadata={
                "job": job.pk,
                "round": spec.round,
                "campaigns": spec.campaign_ids,
                "reward_model_version": reward.pk,
            },
            checkpoint_dir=services.checkpoint_dir(job),
        )
        for note in result.notes:
            ctx.log(note)
        evaluation = evaluate_update(
            spec,
            ctx,
            before=policy,
            after=result.output_dir,
            reference=reference,
            reward_model=services.model_path(reward.path),
            prompts=held_out,
            device=spec.config.device,
        )
        return policy_outcome(
            spec,
            ctx,
            algorithm="ppo",
            output_dir=result.output_dir,
            metrics=result.metrics,
            summary={"metrics": result.metrics, "steps": result.steps, "prompts": len(train)},
            evaluation=evaluation,
        )
