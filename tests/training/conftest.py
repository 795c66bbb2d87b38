"""Shared fixtures for the training tests (no database needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.ml.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny local causal LM + tokenizer directory (no pretraining), built once per session.

    Loadable with ``AutoModelForCausalLM``, ``AutoModelForSequenceClassification`` (num_labels=1)
    and ``AutoTokenizer``. Treat it as read-only: copy it before writing into it.
    """
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)
