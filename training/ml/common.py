"""Plumbing every ``training.ml`` module shares, written once (cf. TRL's old ``trl/core.py``).

* callbacks: :data:`ProgressFn` (``on_progress(step, total, metrics)``) and :data:`StopFn`
  (``should_stop()``), the two functions the Django side hands to every long ML call;
* cancellation: :class:`TrainingCancelled`, the one exception a stopped run raises, and
  :func:`check_stop`, which polls ``should_stop`` and raises it;
* atomic publish of a model directory: :func:`staging_dir_for` (a temp directory beside the
  output) and :func:`publish_dir` (rename it into place, replacing an old one);
* :func:`load_tokenizer`: the one tokenizer loader, with the padding side given by the caller
  and a PAD token guaranteed.

No torch or transformers at import time: the web process imports ``training.ml.acquisition``,
which imports this module.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, dict[str, float]], None]
"""``on_progress(step, total, metrics)``: called after each unit of work (namespaced metrics)"""
StopFn = Callable[[], bool]
"""``should_stop()``: polled between units of work; True cancels the run"""


# --- cancellation -------------------------------------------------------------------------------


class TrainingCancelled(Exception):
    """``should_stop()`` returned True; nothing was written."""


def check_stop(should_stop: StopFn | None, message: str) -> None:
    """Raise :class:`TrainingCancelled` with ``message`` (what stopped, and where) if
    ``should_stop()`` says so; no-op when ``should_stop`` is None."""
    if should_stop is not None and should_stop():
        raise TrainingCancelled(message)


# --- publishing a directory ---------------------------------------------------------------------


def staging_dir_for(output_dir: Path, *, tag: str = "tmp") -> Path:
    """A fresh hidden directory ``.<name>.<tag>-XXXX`` beside ``output_dir`` (its parent is
    created): on the same filesystem, so :func:`publish_dir` can rename it into place."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.{tag}-", dir=output_dir.parent))


def publish_dir(staging: Path, output_dir: Path) -> None:
    """Rename the finished ``staging`` directory to ``output_dir``, replacing an old one.

    The rule: an existing ``output_dir`` is replaced. It is first renamed aside into a hidden
    trash directory beside it, then ``staging`` is renamed in, then the old one is deleted; if
    the second rename fails, the old directory is put back. Readers therefore see the old complete
    directory or the new complete one (or, for an instant, none), never a partial one. Callers for
    whom an existing ``output_dir`` is an error (DPO, PPO: a model store path is written once)
    refuse it before training, not here. ``staging`` must be on ``output_dir``'s filesystem
    (:func:`staging_dir_for`).
    """
    if not output_dir.exists():
        os.replace(staging, output_dir)
        return
    trash = staging_dir_for(output_dir, tag="old")
    old = trash / output_dir.name
    os.replace(output_dir, old)
    try:
        os.replace(staging, output_dir)
    except BaseException:
        os.replace(old, output_dir)  # if this fails too, the old directory stays in ``trash``
        trash.rmdir()
        raise
    shutil.rmtree(trash, ignore_errors=True)


# --- tokenizer ----------------------------------------------------------------------------------


def load_tokenizer(
    name_or_path: str | Path, *, padding_side: Literal["left", "right"] | None
) -> Any:
    """Load a tokenizer with a PAD token guaranteed.

    ``padding_side``: ``"left"`` for generation (policies), ``"right"``, or None to keep the side
    the tokenizer was saved with (the reward model, which pads its batches itself and saves the
    tokenizer it loaded). A tokenizer without PAD gets PAD = EOS, with a warning: the code here
    finds real tokens from attention masks, never from token ids, so that is safe; a tokenizer
    with neither raises ``ValueError``.
    """
    from transformers import AutoTokenizer  # transformers: the web process imports this module

    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {name_or_path} has neither a pad nor an eos token")
        logger.warning("%s has no PAD token; using EOS as PAD", name_or_path)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
