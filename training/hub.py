"""Publishing a campaign's pairs and a model version to the Hugging Face Hub (settings
``HF_HUB_TOKEN``/``HF_HUB_TOKEN_FILE`` and ``HF_HUB_ENDPOINT``; ``manage.py publish_to_hub``).

What goes up is built in a temporary directory and uploaded as one commit by
:func:`training.ml.publishing.publish_folder`, whose Hub client can be replaced (``api``): the
tests publish to a recording stand-in, nothing leaves the machine.

* A campaign's pairs: ``pairs.parquet`` (TRL's format, the strict pairs) and ``ties.parquet``
  (the tie pairs, apart), each with the fixed schema of :mod:`annotation.pair_formats`, and a
  dataset card declaring both as configs (``load_dataset(repo, "pairs")``). Gold tasks are never
  in them.
* A model version: its directory as it is, with a model card; a reward model's ``config.json``
  carries its normalisation as OpenRLHF reads it (``mean``/``std``), added to the uploaded copy
  when the directory predates that.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings

from annotation import exports, pair_formats
from annotation.models import Campaign
from training.ml.publishing import HubApi, card, publish_folder, write_config_normalization
from training.models import ModelVersion


def campaign_pairs_publish(
    *,
    campaign: Campaign,
    repo_id: str,
    aggregate: str = "none",
    fail_policy: str = "drop",
    private: bool = True,
    api: HubApi | None = None,
) -> str:
    """Upload the campaign's pairs (TRL's format, Parquet) and ties to the dataset repo
    ``repo_id``; returns the commit's URL."""
    rows = exports.ranking_rows(campaign_ids=[campaign.pk])
    texts = exports.texts_for(rows)
    style = pair_formats.style_for(rows, texts)
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="hub-pairs-") as folder:
        for part in pair_formats.PARTS:
            options = {"style": style, "part": part, "aggregate": aggregate}
            records = list(
                pair_formats.trl_records(rows, texts, fail_policy=fail_policy, **options)
            )
            counts[part] = len(records)
            data = pair_formats.trl_parquet(records, **options)
            (Path(folder) / f"{part}.parquet").write_bytes(data)
        body = (
            f"Preference pairs of the campaign {campaign.name!r} (round {campaign.round_number}): "
            f"{counts['pairs']} pairs in TRL's {style} format (`prompt`, `chosen`, `rejected`), "
            f"and {counts['ties']} tie pairs apart (`prompt`, `completion_a`, `completion_b`). "
            f"Pairs: {'every labeller' if aggregate == 'none' else aggregate}; F items: "
            f"{fail_policy}. Columns `rlhf_*` are the annotation platform's provenance."
        )
        metadata = {
            "configs": [
                {"config_name": part, "data_files": f"{part}.parquet"}
                for part in pair_formats.PARTS
            ],
            "tags": ["rlhf", "preference", "trl"],
        }
        (Path(folder) / "README.md").write_text(
            card(title=f"{campaign.name}: preference pairs", body=body, metadata=metadata)
        )
        return publish_folder(
            folder,
            repo_id=repo_id,
            repo_type="dataset",
            token=settings.HF_HUB_TOKEN,
            endpoint=settings.HF_HUB_ENDPOINT,
            commit_message=f"Pairs of campaign {campaign.pk} ({counts['pairs']} pairs)",
            private=private,
            api=api,
        )


def model_version_publish(
    *, version: ModelVersion, repo_id: str, private: bool = True, api: HubApi | None = None
) -> str:
    """Upload a model version's directory to the model repo ``repo_id``; returns the commit's
    URL. Refuses a version that is not a local directory (a Hub id is already published)."""
    source = Path(version.path)
    if not source.is_dir():
        raise ValueError(f"model version {version.pk} is not a local directory: {version.path}")
    with tempfile.TemporaryDirectory(prefix="hub-model-") as tmp:
        folder = Path(tmp) / "model"
        shutil.copytree(source, folder)
        config_path = folder / "config.json"
        if version.kind == ModelVersion.Kind.REWARD and config_path.exists():
            config = json.loads(config_path.read_text())
            if "mean" not in config and version.reward_offset is not None:
                write_config_normalization(
                    folder, offset=version.reward_offset, scale=version.reward_scale or 1.0
                )
        metrics: dict[str, Any] = version.metrics or {}
        body = (
            f"{version.get_kind_display()} `{version.name}`, trained from `{version.base or '-'}`."
            + ("\n\nMetrics: " + json.dumps(metrics, sort_keys=True) if metrics else "")
        )
        if not (folder / "README.md").exists():
            (folder / "README.md").write_text(
                card(
                    title=version.name,
                    body=body,
                    metadata={"library_name": "transformers", "tags": ["rlhf", version.kind]},
                )
            )
        return publish_folder(
            folder,
            repo_id=repo_id,
            repo_type="model",
            token=settings.HF_HUB_TOKEN,
            endpoint=settings.HF_HUB_ENDPOINT,
            commit_message=f"Model version {version.pk}: {version.name}",
            private=private,
            api=api,
        )
