"""``round``: a whole RLHF round as one job: reward model → PPO or DPO → generate the next
campaign, each step a job of its own (``parent`` = the round job) run one after the other in
the round job's process, so each step's progress, metrics and log are visible as for any job.
A failed step fails the round job with its error.

Without a round, the one campaign named picks it (a round is started there from
``base_model_version`` if the campaign has none).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from annotation.errors import Conflict, InvalidInput
from annotation.models import Campaign
from training import rounds
from training.jobs import dpo, generate, ppo, reward_model
from training.jobs.base import (
    Built,
    ConfigSection,
    FromPairs,
    JobKind,
    JobOutcome,
    JobRequest,
    RunContext,
    Spec,
    config_from_dict,
    require_rankings,
    to_json,
)
from training.ml.common import TrainingCancelled
from training.ml.config import DPOConfig, PPOConfig, RewardModelConfig, SamplingConfig
from training.models import ModelVersion, Round, TrainingJob


@dataclass
class RoundConfig:
    """A round job's hyper-parameters, one section per step."""

    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    """the reward model's (RewardModelConfig)"""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """the update's, when it is PPO (PPOConfig)"""
    dpo: DPOConfig = field(default_factory=DPOConfig)
    """the update's, when it is DPO (DPOConfig)"""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """the next campaign's completions (SamplingConfig)"""


SECTIONS = tuple(f for f in RoundConfig.__dataclass_fields__)

STEP_SCALE = 100
"""A round job's progress counts each of its three steps as this many units, so the bar moves
while a step runs (the step's own progress, scaled), not only between steps."""


@dataclass(kw_only=True)
class Request(FromPairs, JobRequest):
    base_model_version: ModelVersion | None = None
    """without a round yet: the policy that generated the campaign's completions"""
    reference_model_version: ModelVersion | None = None
    """without a round yet: the KL reference of every round (default: that policy)"""
    update: Literal["ppo", "dpo"] = "ppo"
    """the policy update"""
    num_completions: int | None = None
    """K for the next campaign; must equal the campaign's N (default: N)"""
    mix: dict[str, int] | None = None
    """how many of the K come from the new policy, the previous one and the reference"""


@dataclass(frozen=True, kw_only=True)
class RoundSpec(Spec):
    round: int
    update: Literal["ppo", "dpo"] = "ppo"
    config: RoundConfig = field(default_factory=RoundConfig)
    num_completions: int
    mix: dict[str, int]
    ties: bool = False
    fail_policy: Literal["drop", "rank_last"] = "drop"


class RoundJob(JobKind):
    kind = TrainingJob.Kind.ROUND
    title = "Run a whole round"
    blurb = (
        "Reward model, then PPO or DPO, then generation of the next campaign's completions, "
        "one after the other as steps of one job."
    )
    Request = Request
    Spec = RoundSpec
    sections = (
        ConfigSection(
            RewardModelConfig,
            ("num_epochs", "learning_rate", "batch_size", "max_length", "seed"),
            key="reward_model",
            title="Reward model",
        ),
        ConfigSection(
            PPOConfig,
            ("total_steps", "rollout_batch_size", "learning_rate", "kl_coef", "clip_range",
             "seed"),
            key="ppo",
            title="PPO (update = ppo)",
        ),
        ConfigSection(
            DPOConfig,
            ("beta", "learning_rate", "num_epochs", "batch_size", "seed"),
            key="dpo",
            title="DPO (update = dpo)",
        ),
        ConfigSection(
            SamplingConfig,
            ("temperature", "top_p", "max_new_tokens", "seed"),
            key="sampling",
            title="Sampling the next campaign",
        ),
    )  # fmt: skip

    def build(self, request: Request) -> Built:
        rnd = request.round
        if rnd is None:
            rnd = self._round_of_campaign(request)
        elif (
            request.base_model_version is not None
            and request.base_model_version != rnd.policy_before
        ):
            raise InvalidInput(
                f"round {rnd.number} starts from version {rnd.policy_before_id}",
                field="base_model_version",
            )
        if request.update not in (TrainingJob.Kind.PPO, TrainingJob.Kind.DPO):
            raise InvalidInput("must be ppo or dpo", field="update")
        rnd = rounds.lock_idle_round(rnd)
        config = round_config(request.config, request.update)
        require_rankings([rnd.campaign_id], field="round")
        k = generate.completions_count(
            request.num_completions,
            n=rnd.campaign.completions_per_task,
            from_config=(request.config.get("sampling") or {}).get("num_completions"),
        )
        sampling = dataclasses.replace(config.sampling, num_completions=k)
        spec = RoundSpec(
            round=rnd.pk,
            update=request.update,
            config=dataclasses.replace(config, sampling=sampling),
            num_completions=k,
            mix=generate.check_mix(request.mix, k),
            ties=request.ties,
            fail_policy=request.fail_policy,
            name=request.name,
        )
        return Built(spec, rnd.campaign_id, rnd.policy_before, rnd.pk)

    def _round_of_campaign(self, request: Request) -> Round:
        if len(request.campaign_ids) != 1:
            raise InvalidInput("name the round (or its one campaign)", field="round")
        campaign = Campaign.objects.get(pk=request.campaign_ids[0])
        rnd = Round.objects.filter(campaign=campaign).first()
        if rnd is None:
            policy = request.base_model_version or rounds.campaign_policy(campaign)
            if policy is None:
                raise InvalidInput(
                    f"campaign {campaign.pk} has no round yet: name the policy that generated "
                    "its completions to start one",
                    field="base_model_version",
                )
            return rounds.round_start(
                campaign=campaign,
                policy=policy,
                reference=request.reference_model_version,
                created_by=request.created_by,
            )
        if rnd.status == Round.Status.COMPLETED:
            raise Conflict(
                f"round {rnd.number} is completed: its next round has started",
                field="round",
                code="round_completed",
            )
        return rnd

    def run(self, spec: RoundSpec, ctx: RunContext) -> JobOutcome:
        job = ctx.job
        rnd = Round.objects.get(pk=spec.round)
        prefix = spec.name or f"round-{rnd.number}"
        config = spec.config
        pairs = {"ties": spec.ties, "fail_policy": spec.fail_policy}
        update = ppo if spec.update == TrainingJob.Kind.PPO else dpo
        steps: list[tuple[str, Any, dict[str, Any]]] = [
            (
                TrainingJob.Kind.REWARD_MODEL,
                reward_model.Request,
                {"config": _overrides(config.reward_model), "name": f"{prefix}-reward-model",
                 **pairs},
            ),
            (
                spec.update,
                update.Request,
                {"config": _overrides(getattr(config, spec.update)),
                 "name": f"{prefix}-{spec.update}",
                 **(pairs if spec.update == TrainingJob.Kind.DPO else {})},
            ),
            (
                TrainingJob.Kind.GENERATE,
                generate.Request,
                {"config": _overrides(config.sampling), "num_completions": spec.num_completions,
                 "mix": spec.mix, "name": f"{prefix}-generate"},
            ),
        ]  # fmt: skip
        done: dict[str, int] = {}
        total = len(steps) * STEP_SCALE
        for index, (kind, request_class, fields) in enumerate(steps, 1):
            if ctx.should_stop():
                raise TrainingCancelled(f"cancelled before step {index} ({kind})")
            rnd.refresh_from_db()
            request = request_class(created_by=job.created_by, round=rnd, parent=job, **fields)
            step = ctx.queue(kind, request)
            ctx.log(f"step {index}/{len(steps)}: {kind} as job #{step.pk}")
            start = (index - 1) * STEP_SCALE

            def follow(done_steps: int, step_total: int, start: int = start) -> None:
                fraction = min(done_steps / step_total, 1.0) if step_total else 0.0
                ctx.reporter.progress(start + int(STEP_SCALE * fraction), total)

            step = ctx.run_step(step, follow)
            if step.status == TrainingJob.Status.CANCELLED:
                raise TrainingCancelled(f"step {index} ({kind}, job #{step.pk}) was cancelled")
            if step.status != TrainingJob.Status.SUCCEEDED:
                raise RuntimeError(f"step {index} ({kind}, job #{step.pk}) {step.status}")
            done[kind] = step.pk
            ctx.on_progress(index * STEP_SCALE, total, {"round/steps_done": float(index)})
            if kind == spec.update:
                rnd.refresh_from_db()
                if rnd.status == Round.Status.NEEDS_REVIEW:
                    warnings = rnd.evaluation.get("warnings", [])
                    ctx.log("held for review before generating: " + "; ".join(warnings))
                    return JobOutcome(
                        summary={
                            "steps": done,
                            "round": rnd.pk,
                            "held_for_review": warnings,
                            "evaluation": rnd.evaluation,
                        }
                    )
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


def _overrides(config: Any) -> dict[str, Any]:
    """A step's config as its request takes it: every field (the round's Spec stores them all)."""
    return to_json(config)


def round_config(config: dict[str, Any], update: str) -> RoundConfig:
    """The round job's config by step; a flat dict is the update step's section."""
    if config and not set(config) & set(SECTIONS):
        config = {update: config}
    unknown = sorted(set(config) - set(SECTIONS))
    if unknown:
        raise InvalidInput(f"unknown sections {unknown}; use {list(SECTIONS)}", field="config")
    try:
        return config_from_dict(RoundConfig, {k: v or {} for k, v in config.items()})
    except ValueError as exc:
        raise InvalidInput(str(exc), field="config") from None
