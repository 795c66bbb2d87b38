"""Publishing to the Hugging Face Hub, and the reward normalisation where other engines read it.
No Django.

:func:`publish_folder` uploads a directory as one commit to a dataset or model repository,
creating the repository when it is missing. The Hub client is ``huggingface_hub.HfApi`` (the
train extra has it; the web image does not) unless another object with the same two methods is
given (``create_repo`` and ``upload_folder``), which is how the tests run without a network.
The token and the endpoint come from the caller (Django's ``HF_HUB_TOKEN``, ``HF_HUB_ENDPOINT``
settings).

:func:`write_config_normalization` puts a reward model's normalisation into its
``config.json`` as OpenRLHF reads it: ``mean`` and ``std`` beside ``normalize_reward``
(OpenRLHF's ``RewardModel`` loads ``config.mean``/``config.std`` and, with
``normalize_reward``, returns ``(reward - mean) / std``). ``reward_normalization.json`` stays
the project's own record.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

RepoType = Literal["dataset", "model"]


class HubApi(Protocol):
    """What :func:`publish_folder` needs of ``huggingface_hub.HfApi``."""

    def create_repo(self, repo_id: str, **kwargs: Any) -> Any: ...

    def upload_folder(self, *, folder_path: str, repo_id: str, **kwargs: Any) -> Any: ...


def hub_api(*, endpoint: str | None = None) -> HubApi:
    """``huggingface_hub.HfApi`` at ``endpoint`` (None: the public Hub or ``HF_ENDPOINT``)."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint) if endpoint else HfApi()


def publish_folder(
    folder: str | Path,
    *,
    repo_id: str,
    repo_type: RepoType,
    token: str | None,
    commit_message: str,
    private: bool = True,
    api: HubApi | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload ``folder`` to ``repo_id`` as one commit (the repository is created first when
    missing; private unless told otherwise). Returns the commit's URL, or what the client
    answered."""
    if not repo_id or repo_id.count("/") != 1:
        raise ValueError(f"repo id {repo_id!r} must be 'owner/name'")
    client = api if api is not None else hub_api(endpoint=endpoint)
    client.create_repo(repo_id, repo_type=repo_type, private=private, token=token, exist_ok=True)
    info = client.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type=repo_type,
        token=token,
        commit_message=commit_message,
    )
    return str(getattr(info, "commit_url", info))


def write_config_normalization(model_dir: str | Path, *, offset: float, scale: float) -> dict:
    """Add ``mean``, ``std`` and ``normalize_reward`` to ``model_dir/config.json`` (the
    normalisation ``(raw - offset) / scale``, as OpenRLHF applies it); returns the config."""
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text())
    config.update({"mean": float(offset), "std": float(scale), "normalize_reward": True})
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config


def card(*, title: str, body: str, metadata: Mapping[str, Any]) -> str:
    """A Hub README: YAML front matter (the card's metadata) then markdown."""
    lines = ["---"]
    for key, value in metadata.items():
        lines.append(f"{key}: {json.dumps(value)}")
    lines += ["---", "", f"# {title}", "", body.strip(), ""]
    return "\n".join(lines)
