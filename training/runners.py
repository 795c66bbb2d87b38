"""Job runners: turn a TrainingJob's parameters into a call of ``training.ml``.

Each runner reads what it needs from the database into plain data, calls the ML entry point
with the reporter's ``on_progress`` and ``should_stop``, and returns what to register. They are
registered by kind with ``@runner`` and looked up by ``services.training_job_run``.
"""

from __future__ import annotations

from training import exports
from training.models import ModelVersion, TrainingJob
from training.services import JobOutcome, JobReporter, model_store_dir, runner


def _base_path(job: TrainingJob) -> str:
    from django.conf import settings

    if job.base_model is not None:
        return job.base_model.path
    return job.params.get("base_model_path") or settings.DEFAULT_BASE_MODEL


@runner(TrainingJob.Kind.REWARD_MODEL)
def run_reward_model(job: TrainingJob, reporter: JobReporter) -> JobOutcome:
    from training.ml.config import RewardModelConfig
    from training.ml.reward_model import train_reward_model

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
    result = train_reward_model(
        pairs,
        base_model=base,
        output_dir=model_store_dir(job),
        config=config,
        reference_samples=references or None,
        on_progress=reporter.on_progress,
        should_stop=reporter.should_stop,
        metadata={"job": job.pk, "campaigns": campaign_ids},
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
    return JobOutcome(
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
