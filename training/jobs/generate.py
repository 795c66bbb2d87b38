"""``generate``: K completions per prompt from one to three policies, stored as tasks.

Without a round: into the target campaign (default: the one campaign named, whose prompts
without a task get one). With a trained round: into the next round's new campaign (same
settings, members and guidelines), created as a draft, and the next Round starts on it; the
admin reads the round's report, then activates the campaign. Either way the tasks are written in
the transaction that marks the job succeeded: they exist iff it succeeded.

Each policy is sampled by Hugging Face generate or, where vLLM is installed and the worker has a
GPU, by vLLM (``rollout_engine``); every stored completion's metadata says which (``engine``).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from annotation.errors import Conflict, InvalidInput
from annotation.models import Campaign, Prompt
from training import exports, rounds, services
from training.jobs.base import (
    Built,
    ConfigSection,
    JobKind,
    JobOutcome,
    JobRequest,
    RunContext,
    Spec,
    StartingPolicy,
    check_config,
    require_campaigns,
    round_pk,
    starting_policy,
    version,
)
from training.ml.common import TrainingCancelled
from training.ml.config import SamplingConfig
from training.models import ModelVersion, Round, TrainingJob

MIX_ROLES = ("policy", "previous", "reference")
"""Where a generated completion can come from: the new policy, the round's previous policy
(the one that generated the round's own completions), the KL reference."""

SAMPLE_PROMPTS = 5
"""Prompts whose completions the job's summary shows (where a degenerate policy shows first)."""


@dataclass(kw_only=True)
class Request(StartingPolicy, JobRequest):
    target_campaign: Any = None
    """without a round: the campaign that gets the tasks (default: the one campaign named)"""
    num_completions: int | None = None
    """K, completions per prompt; must equal the campaign's N (default: N)"""
    mix: dict[str, int] | None = None
    """how many of the K come from where: ``{"policy": 2, "previous": 1, "reference": 1}``
    (default: all from the policy)"""


@dataclass(frozen=True, kw_only=True)
class Source:
    """One policy a generate job samples from."""

    role: str
    model_version: int | None
    path: str
    count: int


@dataclass(frozen=True, kw_only=True)
class GenerateSpec(Spec):
    campaign_ids: list[int]
    """whose prompts get completions"""
    round: int | None = None
    target_campaign: int | None = None
    num_completions: int
    mix: dict[str, int]
    sources: list[Source]
    config: SamplingConfig = field(default_factory=SamplingConfig)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> GenerateSpec:
        spec = super().from_params(params)
        sources = [s if isinstance(s, Source) else Source(**s) for s in spec.sources]
        return dataclasses.replace(spec, sources=sources)

    def campaigns(self) -> list[int]:
        return list(self.campaign_ids)

    def starting_path(self) -> str:
        """The new policy's path when it was given as a path, not a version."""
        policy = next((s for s in self.sources if s.role == "policy"), None)
        return policy.path if policy is not None and policy.model_version is None else ""


class GenerateJob(JobKind):
    kind = TrainingJob.Kind.GENERATE
    title = "Start the next round: generate completions"
    blurb = (
        "Sample K completions per prompt from a policy. With a trained round: into the next "
        "round's new campaign (same settings, members and guidelines), created as a draft that "
        "you activate after reading the round's report. Without: as tasks of the target "
        "campaign."
    )
    Request = Request
    Spec = GenerateSpec
    sections = (
        ConfigSection(
            SamplingConfig,
            ("temperature", "top_p", "max_new_tokens", "batch_size", "seed", "rollout_engine"),
        ),
    )

    def build(self, request: Request) -> Built:
        request.check_models()
        rnd = request.round
        sampling = check_config(SamplingConfig, request.config)
        from_config = request.config.get("num_completions")
        previous = None
        if rnd is not None:
            if request.target_campaign is not None:
                raise InvalidInput(
                    "a round writes into its next campaign: give round or target_campaign",
                    field="target_campaign",
                )
            if rnd.status not in (Round.Status.TRAINED, Round.Status.NEEDS_REVIEW):
                raise Conflict(
                    f"round {rnd.number} has no updated policy yet: run PPO or DPO first",
                    field="round",
                    code="round_not_trained",
                )
            policy = starting_policy(request, round_default=rnd.policy_after)
            previous = rnd.policy_before
            campaign_ids = request.campaign_ids or [rnd.campaign_id]
            target = None
            n = rnd.campaign.completions_per_task
        else:
            policy = request.base_model_version
            campaign_ids = request.campaign_ids
            require_campaigns(campaign_ids)
            target = request.target_campaign
            if target is None:
                if len(campaign_ids) != 1:
                    raise InvalidInput(
                        "name the campaign to write the tasks into", field="target_campaign"
                    )
                target = Campaign.objects.get(pk=campaign_ids[0])
            if target.status == Campaign.Status.CLOSED:
                raise Conflict("the campaign is closed", field="target_campaign")
            n = target.completions_per_task
        require_campaigns(campaign_ids)
        prompts = Prompt.objects.filter(campaign_id__in=campaign_ids)
        if target is not None and campaign_ids == [target.pk]:
            prompts = prompts.exclude(tasks__campaign=target)
            if not prompts.exists():
                raise InvalidInput(
                    "every prompt of the campaign already has a task", field="campaign_ids"
                )
        elif not prompts.exists():
            raise InvalidInput("these campaigns have no prompts", field="campaign_ids")
        k = completions_count(request.num_completions, n=n, from_config=from_config)
        mix = check_mix(request.mix, k)
        reference = request.reference_model_version or (rnd.reference if rnd else None)
        sources = generation_sources(
            mix,
            policy=policy,
            policy_path=request.base_model_path,
            previous=previous,
            reference=reference,
        )
        spec = GenerateSpec(
            campaign_ids=campaign_ids,
            round=round_pk(request),
            target_campaign=target.pk if target is not None else None,
            num_completions=k,
            mix=mix,
            sources=sources,
            config=dataclasses.replace(sampling, num_completions=k),
            name=request.name,
        )
        campaign_id = target.pk if target is not None else rnd.campaign_id
        return Built(spec, campaign_id, policy, round_pk(request))

    def run(self, spec: GenerateSpec, ctx: RunContext) -> JobOutcome:
        job = ctx.job
        target_id = spec.target_campaign
        same_campaign = target_id is not None and spec.campaign_ids == [target_id]
        records = exports.campaign_prompts(
            campaign_ids=spec.campaign_ids, without_tasks_in=target_id if same_campaign else None
        )
        if not records:
            raise ValueError("no prompts to generate completions for")
        sampling = spec.config
        prompts = [r.prompt for r in records]
        groups: list[list[rounds.GeneratedCompletion]] = [[] for _ in records]
        counts: dict[str, Any] = {}
        for index, source in enumerate(spec.sources, 1):
            if ctx.should_stop():
                raise TrainingCancelled("generation cancelled")
            model = version(source.model_version)
            label = f"{source.role}:{model.name if model else source.path}"
            config = dataclasses.replace(
                sampling, num_completions=source.count, seed=sampling.seed + 7919 * (index - 1)
            )
            ctx.log(f"sampling {source.count} per prompt from {label} ({len(prompts)} prompts)")
            path = services.model_path(source.path)
            rows, empty = sample(path, prompts, config, should_stop=ctx.should_stop)
            for group, row in zip(groups, rows, strict=True):
                for completion in row:
                    group.append(
                        rounds.GeneratedCompletion(
                            text=completion.text,
                            source=label,
                            model_version_id=model.pk if model else None,
                            metadata={
                                "role": source.role,
                                "job": job.pk,
                                "eos": completion.eos,
                                "tokens": len(completion.token_ids),
                                "engine": completion.engine,
                            },
                        )
                    )
            flat = [c for row in rows for c in row]
            stats = {
                "eos_rate": sum(c.eos for c in flat) / len(flat),
                "response_length": sum(len(c.token_ids) for c in flat) / len(flat),
                "unusable": empty,
            }
            engines = sorted({c.engine for c in flat})
            counts[source.role] = {
                "label": label,
                "count": source.count,
                "engine": ", ".join(engines),
                **stats,
            }
            ctx.on_progress(
                index, len(spec.sources), {f"generate/{k}": v for k, v in stats.items()}
            )
        # Each task lists its completions in a seeded random order (labellers see their own
        # shuffle anyway; this keeps the stored positions from revealing the source).
        rng = random.Random(sampling.seed)
        for group in groups:
            rng.shuffle(group)
        # A task the import would refuse (an empty completion, or two the same, across sources)
        # is not stored: the summary counts them.
        kept = [i for i, group in enumerate(groups) if not _bad(group)]
        empty = sum(not c.text.strip() for g in groups for c in g)
        duplicates = sum(len(g) - len({c.text for c in g if c.text.strip()}) for g in groups)
        duplicates -= empty
        if not kept:
            raise ValueError(
                f"every one of the {len(groups)} tasks had an empty or a duplicate completion "
                f"after resampling ({empty} empty, {duplicates} duplicates): the policy looks "
                "degenerate; nothing was stored"
            )
        dropped = len(groups) - len(kept)
        if dropped:
            ctx.log(f"{dropped} of {len(groups)} tasks dropped: empty or duplicate completions")
        prompt_ids = [records[i].id for i in kept]
        groups = [groups[i] for i in kept]
        summary: dict[str, Any] = {
            "prompts": len(records),
            "tasks": len(kept),
            "tasks_dropped": dropped,
            "completions": sum(len(g) for g in groups),
            "sources": counts,
            "empty_completions": empty,
            "duplicate_completions": duplicates,
            "samples": [
                {
                    "prompt": _prompt_text(records[i].prompt),
                    "completions": [{"text": c.text, "source": c.source} for c in group],
                }
                for i, group in zip(kept[:SAMPLE_PROMPTS], groups, strict=False)
            ],
        }

        def store(_job: TrainingJob, _registered: ModelVersion | None) -> None:
            if spec.round is not None:
                # The next campaign opens as a draft: the admin reads the round's report, then
                # activates it.
                following = rounds.round_open_next(
                    round_id=spec.round,
                    policy=job.base_model,
                    prompt_ids=prompt_ids,
                    completions=groups,
                    created_by=job.created_by,
                    activate=False,
                )
                summary.update(next_round=following.pk, campaign=following.campaign_id)
            else:
                rounds.generated_tasks_store(
                    campaign=Campaign.objects.get(pk=target_id),
                    prompt_ids=prompt_ids,
                    completions=groups,
                )
                summary.update(campaign=target_id)

        return JobOutcome(summary=summary, on_success=store)


def _prompt_text(prompt: Any) -> str:
    """A prompt as one line of text: its text, or its chat's last message."""
    if isinstance(prompt, str):
        return prompt
    return str(prompt[-1].get("content", "")) if prompt else ""


def completions_count(asked: int | None, *, n: int, from_config: int | None) -> int:
    """K: ``num_completions`` (or the sampling config's), which must equal the campaign's N."""
    if None not in (asked, from_config) and asked != from_config:
        raise InvalidInput(
            "num_completions and config.num_completions disagree", field="num_completions"
        )
    k = asked or from_config or n
    if k != n:
        raise InvalidInput(
            f"the campaign shows N = {n} completions per task: generate K = {n}",
            field="num_completions",
        )
    return k


def check_mix(mix: Any, k: int) -> dict[str, int]:
    """``{"policy": 2, "previous": 1, "reference": 1}``: how many of the K come from where."""
    if mix is None:
        return {"policy": k}
    if not isinstance(mix, dict) or not mix:
        raise InvalidInput(f"must map some of {list(MIX_ROLES)} to counts", field="mix")
    unknown = sorted(set(mix) - set(MIX_ROLES))
    if unknown:
        raise InvalidInput(f"unknown sources {unknown}; use {list(MIX_ROLES)}", field="mix")
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in mix.values()):
        raise InvalidInput("counts must be integers >= 0", field="mix")
    if sum(mix.values()) != k:
        raise InvalidInput(f"the counts add up to {sum(mix.values())}, not K = {k}", field="mix")
    return {role: mix[role] for role in MIX_ROLES if mix.get(role)}


def generation_sources(
    mix: dict[str, int],
    *,
    policy: ModelVersion | None,
    policy_path: str,
    previous: ModelVersion | None,
    reference: ModelVersion | None,
) -> list[Source]:
    """Each source of the mix: its role, model version, path and count."""
    versions = {"policy": policy, "previous": previous, "reference": reference}
    sources = []
    for role, count in mix.items():
        model = versions[role]
        if role == "policy":
            path = model.path if model else policy_path or settings.DEFAULT_BASE_MODEL
        elif model is None:
            hint = "name a reference_model_version" if role == "reference" else "needs a round"
            raise InvalidInput(f"{role}: no {role} policy to sample from ({hint})", field="mix")
        else:
            path = model.path
        sources.append(
            Source(role=role, model_version=model.pk if model else None, path=path, count=count)
        )
    return sources


def _bad(row: Sequence[Any]) -> list[int]:
    """Positions in a row of completions that a task cannot show: empty, or the same text as
    an earlier one (what the import refuses)."""
    seen: set[str] = set()
    bad = []
    for i, completion in enumerate(row):
        if not completion.text.strip() or completion.text in seen:
            bad.append(i)
        seen.add(completion.text)
    return bad


def sample(
    path: str,
    prompts: Sequence[Any],
    config: SamplingConfig,
    *,
    should_stop: Callable[[], bool],
) -> tuple[list[list[Any]], int]:
    """K completions per prompt; empty or duplicate ones are drawn again (two more seeds) from
    the same loaded policy (one vLLM engine start per source, not three). Returns the rows and
    how many completions are still empty or duplicates."""
    # torch: the web process imports the job kinds
    from training.ml.generation import generate_completions, samplers_reused

    with samplers_reused():
        return _sample_with_redraws(
            generate_completions, path, prompts, config, should_stop=should_stop
        )


def _sample_with_redraws(
    draw: Callable[..., list[list[Any]]],
    path: str,
    prompts: Sequence[Any],
    config: SamplingConfig,
    *,
    should_stop: Callable[[], bool],
) -> tuple[list[list[Any]], int]:
    rows = draw(path, prompts, config, should_stop=should_stop)
    for attempt in (1, 2):
        redo = [i for i, row in enumerate(rows) if _bad(row)]
        if not redo:
            break
        retry = dataclasses.replace(config, seed=config.seed + 10_007 * attempt)
        again = draw(path, [prompts[i] for i in redo], retry, should_stop=should_stop)
        for i, new_row in zip(redo, again, strict=True):
            row = list(rows[i])
            for position in _bad(row):
                texts = {c.text for c in row}
                spare = next((c for c in new_row if c.text.strip() and c.text not in texts), None)
                if spare is not None:
                    row[position] = spare
                    new_row = [c for c in new_row if c is not spare]
            rows[i] = row
    left = sum(len(_bad(row)) for row in rows)
    return rows, left
