"""Configuration dataclasses for the ML code: one documented field per parameter (cleanrl style).

Defaults follow the literature the project measures itself against:
    * OpenAI ``lm-human-preferences`` and "The N Implementation Details of RLHF with PPO"
      (Huang et al.): one epoch, Adam eps 1e-5, learning rate annealed linearly to 0, batch 32
      (RM lr 5e-5 there), dropout off, reward normalised on reference-policy samples.
    * InstructGPT / Stiennon et al.: a single epoch over the comparisons (more overfits), score read
      at the last token of the completion.

This module holds configuration only; the algorithm lives in ``reward_model.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

TieLoss = Literal["soft_label", "squared", "drop"]
LrSchedule = Literal["linear", "cosine", "constant"]


@dataclass
class RewardModelConfig:
    """Hyper-parameters of reward-model training (see ``training.ml.reward_model``)."""

    num_epochs: int = 1
    """passes over the training pairs; 1 is the literature default (more epochs overfit)"""
    learning_rate: float = 5e-5
    """peak learning rate of Adam (lm-human-preferences); tiny models from scratch want ~1e-3"""
    lr_schedule: LrSchedule = "linear"
    """how the learning rate is annealed to 0 over training: linear, cosine, or constant"""
    warmup_fraction: float = 0.0
    """fraction of the optimiser steps spent warming the learning rate up linearly from 0"""
    adam_eps: float = 1e-5
    """Adam epsilon (1e-5, not PyTorch's 1e-8: Huang et al. implementation detail)"""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam beta1, beta2"""
    weight_decay: float = 0.0
    """decoupled (AdamW) weight decay"""
    max_grad_norm: float = 1.0
    """clip the global gradient norm to this value before each optimiser step (<= 0: no clipping)"""
    batch_size: int = 32
    """preference pairs per optimiser step (each pair is two sequences: chosen and rejected)"""
    micro_batch_size: int = 0
    """pairs per forward/backward pass; gradients are accumulated up to batch_size (0: no split)"""
    eval_batch_size: int = 64
    """pairs per forward pass during evaluation and sequences per pass when scoring"""
    max_length: int = 512
    """tokens per sequence (prompt + completion + EOS): the prompt loses tokens from its left
    first, the completion is cut on its right only if it cannot fit alone; both are counted"""
    append_eos: bool = True
    """append the tokenizer's EOS to every completion so that the score is always read at the same
    kind of token (training and scoring do the same)"""
    tie_loss: TieLoss = "soft_label"
    """loss for pairs marked ``tie``, with d = r_a - r_b: ``soft_label`` =
    -0.5*logsigmoid(d) - 0.5*logsigmoid(-d) (Bradley-Terry with target probability 1/2; minimum
    log 2 at d = 0, gradient 0.5*tanh(d/2)), ``squared`` = d**2, ``drop`` = not trained on
    (counted)"""
    use_weights: bool = True
    """multiply each pair's loss by its ``weight`` (e.g. labeller agreement); False: all 1"""
    eval_fraction: float = 0.1
    """fraction of prompts (not pairs) held out for evaluation; no prompt is in both splits"""
    seed: int = 0
    """seeds the split, the shuffling, the head initialisation"""
    reference_max_samples: int = 2048
    """at most this many (prompt, completion) samples are scored to fit the reward normalisation"""
    device: str | None = None
    """``None``/``"auto"``: CUDA with bf16 autocast if available, else CPU fp32; or ``"cpu"``,
    ``"cuda"``, ``"cuda:1"``"""
    num_processes: int = 0
    """data-parallel processes (``training.ml.launch``): 0 = one per visible CUDA device when
    ``device`` is auto/cuda, else 1; 1 = in-process, as without a launcher; N > 1 = torchrun
    with N ranks (NCCL on CUDA, gloo on CPU). ``batch_size`` stays the global batch: each rank
    takes batch_size / N pairs of every step, so the optimisation does not change with N"""

    def __post_init__(self) -> None:
        if self.num_epochs < 1:
            raise ValueError("num_epochs must be >= 1")
        if self.num_processes < 0:
            raise ValueError("num_processes must be >= 0")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        if self.micro_batch_size < 0:
            raise ValueError("micro_batch_size must be >= 0")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError("eval_fraction must be in [0, 1)")
        if self.max_length < 8:
            raise ValueError("max_length must be >= 8")
        if self.tie_loss not in ("soft_label", "squared", "drop"):
            raise ValueError(f"unknown tie_loss {self.tie_loss!r}")
        if self.lr_schedule not in ("linear", "cosine", "constant"):
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError("warmup_fraction must be in [0, 1)")
        self.adam_betas = (float(self.adam_betas[0]), float(self.adam_betas[1]))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of all fields."""
        data = dataclasses.asdict(self)
        data["adam_betas"] = list(self.adam_betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RewardModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (typos should not pass)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown RewardModelConfig fields: {sorted(unknown)}")
        data = dict(data)
        if "adam_betas" in data:
            data["adam_betas"] = tuple(data["adam_betas"])
        return cls(**data)
