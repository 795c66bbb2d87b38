"""Publishing to the Hugging Face Hub through a recording stand-in of its client (no network):
a campaign's pairs as TRL-format Parquet with ties apart, and a model version whose config.json
carries its reward normalisation."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from django.core.management import call_command

from annotation import services
from tests.factories import CampaignFactory, ModelVersionFactory
from training import hub
from training.models import ModelVersion

pytestmark = pytest.mark.django_db


class RecordingHub:
    """Stands in for ``huggingface_hub.HfApi``: keeps each call and a copy of each upload."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.files: dict[str, bytes] = {}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, *, folder_path, repo_id, **kwargs):
        self.calls.append(("upload_folder", {"repo_id": repo_id, **kwargs}))
        root = Path(folder_path)
        self.files = {
            str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()
        }
        return f"https://hub.example/{repo_id}/commit/1"


def test_campaign_pairs_go_up_as_trl_parquet_with_ties_apart(admin_user, settings):
    settings.HF_HUB_TOKEN = "hf_secret"
    campaign = CampaignFactory(completions_per_task=2, overlap=3, created_by=admin_user)
    lines = [
        {"prompt": "Q?", "completions": ["a", "b"], "labeller": name, "ranks": ranks}
        for name, ranks in (("x", [1, 2]), ("y", [1, 1]), ("z", [2, 1]))
    ]
    services.campaign_import_rankings(
        campaign=campaign,
        data="\n".join(json.dumps(line) for line in lines).encode(),
        filename="r.jsonl",
    )
    fake = RecordingHub()
    url = hub.campaign_pairs_publish(campaign=campaign, repo_id="lab/prefs", api=fake)
    assert url == "https://hub.example/lab/prefs/commit/1"
    (_, created), (_, uploaded) = fake.calls
    assert created == {
        "repo_id": "lab/prefs",
        "repo_type": "dataset",
        "private": True,
        "token": "hf_secret",
        "exist_ok": True,
    }
    assert uploaded["repo_type"] == "dataset" and uploaded["token"] == "hf_secret"
    assert sorted(fake.files) == ["README.md", "pairs.parquet", "ties.parquet"]
    pairs = pq.read_table(io.BytesIO(fake.files["pairs.parquet"]))
    ties = pq.read_table(io.BytesIO(fake.files["ties.parquet"]))
    assert pairs.num_rows == 2 and ties.num_rows == 1
    assert pairs.column_names[:3] == ["prompt", "chosen", "rejected"]
    assert ties.column_names[:3] == ["prompt", "completion_a", "completion_b"]
    readme = fake.files["README.md"].decode()
    assert '"config_name": "ties"' in readme and "2 pairs" in readme


def test_a_reward_model_version_goes_up_with_mean_and_std_in_its_config(tmp_path, monkeypatch):
    model_dir = tmp_path / "rm"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model_dir / "model.safetensors").write_bytes(b"weights")
    version = ModelVersionFactory(
        kind=ModelVersion.Kind.REWARD, path=str(model_dir), reward_offset=0.5, reward_scale=2.0
    )
    fake = RecordingHub()
    hub.model_version_publish(version=version, repo_id="lab/rm", api=fake)
    config = json.loads(fake.files["config.json"])
    assert (config["mean"], config["std"], config["normalize_reward"]) == (0.5, 2.0, True)
    assert json.loads((model_dir / "config.json").read_text()) == {"model_type": "llama"}
    assert fake.calls[0][1]["repo_type"] == "model" and "README.md" in fake.files
    with pytest.raises(ValueError, match="owner/name"):
        hub.model_version_publish(version=version, repo_id="no-owner", api=fake)
    # The command: the same path with the real client replaced.
    monkeypatch.setattr("training.ml.publishing.hub_api", lambda endpoint=None: fake)
    call_command("publish_to_hub", "model", str(version.pk), "--repo-id", "lab/rm2")
    assert fake.calls[-1][1]["repo_id"] == "lab/rm2"
    shutil.rmtree(model_dir)
