"""Shared ML plumbing: cancellation, the atomic publish of a directory, the tokenizer loader."""

from __future__ import annotations

import logging
import os

import pytest
from transformers import AutoTokenizer

from training.ml import common
from training.ml.common import (
    TrainingCancelled,
    check_stop,
    load_tokenizer,
    publish_dir,
    staging_dir_for,
)

# ---- cancellation ----------------------------------------------------------------------------


def test_check_stop_raises_only_when_should_stop_says_so():
    check_stop(None, "unused")
    check_stop(lambda: False, "unused")
    with pytest.raises(TrainingCancelled, match=r"^DPO stopped$"):
        check_stop(lambda: True, "DPO stopped")


# ---- output directories ----------------------------------------------------------------------


def test_staging_dir_is_a_fresh_hidden_sibling_of_the_output(tmp_path):
    out = tmp_path / "models" / "ppo-000007"
    first, second = staging_dir_for(out), staging_dir_for(out, tag="run")
    assert first.parent == second.parent == out.parent and first != second
    assert first.name.startswith(".ppo-000007.tmp-") and second.name.startswith(".ppo-000007.run-")
    assert not out.exists()


def test_publish_dir_renames_staging_to_a_new_output(tmp_path):
    out = tmp_path / "out"
    staging = staging_dir_for(out)
    (staging / "new.txt").write_text("new")
    publish_dir(staging, out)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_publish_dir_replaces_an_existing_directory_atomically(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    staging = staging_dir_for(out)
    (staging / "new.txt").write_text("new")
    publish_dir(staging, out)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_publish_dir_puts_the_old_directory_back_when_the_new_one_cannot_move_in(
    tmp_path, monkeypatch
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    staging = staging_dir_for(out)
    real_replace = os.replace

    def failing_replace(src, dst):
        if src == staging:
            raise OSError("disk trouble")
        real_replace(src, dst)

    monkeypatch.setattr(common.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk trouble"):
        publish_dir(staging, out)
    assert (out / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", staging.name])


# ---- tokenizer -------------------------------------------------------------------------------


def test_load_tokenizer_sets_the_padding_side_it_is_given(tiny_model_dir):
    assert load_tokenizer(tiny_model_dir, padding_side="left").padding_side == "left"
    assert load_tokenizer(tiny_model_dir, padding_side="right").padding_side == "right"
    saved = AutoTokenizer.from_pretrained(tiny_model_dir)
    kept = load_tokenizer(tiny_model_dir, padding_side=None)
    assert kept.padding_side == saved.padding_side
    assert kept.pad_token_id == saved.pad_token_id != kept.eos_token_id


def test_load_tokenizer_falls_back_to_eos_as_pad_with_a_warning(tiny_model_dir, tmp_path, caplog):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / "no-pad")
    with caplog.at_level(logging.WARNING, logger="training.ml.common"):
        loaded = load_tokenizer(tmp_path / "no-pad", padding_side="left")
    assert loaded.pad_token_id == loaded.eos_token_id is not None
    assert "no PAD token" in caplog.text

    tokenizer.eos_token = None
    tokenizer.save_pretrained(tmp_path / "neither")
    with pytest.raises(ValueError, match="neither a pad nor an eos token"):
        load_tokenizer(tmp_path / "neither", padding_side=None)
