"""Configuration dataclasses for the ML code: one documented field per parameter (cleanrl style).

``RewardModelConfig`` (reward_model.py), ``PPOConfig`` (ppo.py), ``DPOConfig`` (dpo.py) and
``SamplingConfig`` (generation.py) live here, apart from their algorithms, because the web
process builds and validates them (forms, API) and must never import torch.

Reward-model defaults follow the literature the project measures itself against:
    * OpenAI ``lm-human-preferences`` and "The N Implementation Details of RLHF with PPO"
      (Huang et al.): one epoch, Adam eps 1e-5, learning rate annealed linearly to 0, batch 32
      (RM lr 5e-5 there), dropout off, reward normalised on reference-policy samples.
    * InstructGPT / Stiennon et al.: a single epoch over the comparisons (more overfits), score read
      at the last token of the completion.

This module holds configuration only and imports nothing heavy.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import json
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

TieLoss = Literal["soft_label", "squared", "drop"]
LrSchedule = Literal["linear", "cosine", "constant"]
Shard = Literal["none", "fsdp"]
RolloutEngine = Literal["auto", "hf", "vllm"]


@dataclass
class ScaleConfig:
    """Where a trainer runs and how its models share the GPUs (``training.ml.parallel``): the
    same fields on the reward model, PPO and DPO."""

    gpus: int = 0
    """GPUs the job runs on, one torchrun process each: 0 = every visible GPU of the worker
    (one process on a CPU), N = the first N; with ``nodes`` > 1, GPUs per node. Batch sizes stay
    global: each process takes an equal share of every batch, so the optimisation does not
    change with N"""
    nodes: int = 1
    """nodes of the Ray cluster at ``RAY_ADDRESS`` the job spans, ``gpus`` processes on each
    (``training.ml.ray_launch``); 1 = the worker's own GPUs, no Ray"""
    shard: Shard = "fsdp"
    """how the processes hold the trained models: ``fsdp`` shards parameters, gradients and
    optimiser state per decoder layer (PyTorch FSDP2; bf16 compute with fp32 gradient reduction
    on CUDA; frozen models sharded too); ``none`` keeps a full replica on every process and
    all-reduces the gradients. One process: the same either way"""
    gradient_checkpointing: bool = False
    """recompute each decoder layer's activations in the backward pass instead of keeping them
    (about a third more compute, activations of one layer instead of all)"""
    offload: bool = False
    """keep sharded parameters, gradients and optimiser state in CPU memory between uses
    (FSDP2 CPU offload; needs ``shard: fsdp`` and CUDA; slower, for models that do not fit
    otherwise)"""

    def _check_scale(self) -> None:
        if self.gpus < 0:
            raise ValueError("gpus must be >= 0")
        if self.nodes < 1:
            raise ValueError("nodes must be >= 1")
        if self.shard not in ("none", "fsdp"):
            raise ValueError(f"unknown shard {self.shard!r}: none or fsdp")
        if self.offload and self.shard != "fsdp":
            raise ValueError("offload needs shard 'fsdp'")


@dataclass
class LoraFields:
    """Low-rank adapters (peft) instead of all weights: what the reward model, PPO and DPO
    share. The frozen reference of PPO and DPO is then the policy with its adapter off."""

    use_lora: bool = False
    """train LoRA adapters instead of all weights (the frozen base is held in bf16 on CUDA); for
    PPO and DPO whose reference is the starting policy, the reference is the policy with its
    adapter switched off (no second copy in memory); a reward model's score head is trained in
    full (``modules_to_save``). The saved model has the adapter merged in"""
    lora_r: int = 16
    """LoRA rank"""
    lora_alpha: int = 32
    """LoRA alpha (scale = alpha / r)"""
    lora_target_modules: str | list[str] = "all-linear"
    """modules that get adapters (peft's ``target_modules``)"""

    def _check_lora(self) -> None:
        if self.lora_r < 1 or self.lora_alpha < 1:
            raise ValueError("lora_r and lora_alpha must be >= 1")


@dataclass
class RewardModelConfig(ScaleConfig, LoraFields):
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
    use_margins: bool = True
    """subtract each strict pair's ``margin`` (Llama 2's m(r), from preference strength) from its
    reward difference; False: plain Bradley-Terry whatever the pairs carry"""
    eval_fraction: float = 0.1
    """fraction of prompts (not pairs) held out for evaluation; no prompt is in both splits"""
    seed: int = 0
    """seeds the split, the shuffling, the head initialisation"""
    reference_max_samples: int = 2048
    """at most this many (prompt, completion) samples are scored to fit the reward
    normalisation; 0 fits none (the identity normalisation, noted)"""
    checkpoint_every: int = 0
    """save the training state every this many optimiser steps, so that a job whose worker died
    resumes there (0: never)"""
    device: str | None = None
    """``None``/``"auto"``: CUDA with bf16 autocast if available, else CPU fp32; or ``"cpu"``,
    ``"cuda"``, ``"cuda:1"``"""

    def __post_init__(self) -> None:
        self._check_scale()
        self._check_lora()
        if self.num_epochs < 1:
            raise ValueError("num_epochs must be >= 1")
        if self.reference_max_samples < 0 or self.checkpoint_every < 0:
            raise ValueError("reference_max_samples and checkpoint_every must be >= 0")
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
        data = dict(data)
        if "num_processes" in data and "gpus" not in data:  # stored before ``gpus`` existed
            data["gpus"] = data.pop("num_processes")
        data.pop("num_processes", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown RewardModelConfig fields: {sorted(unknown)}")
        if "adam_betas" in data:
            data["adam_betas"] = tuple(data["adam_betas"])
        return cls(**data)


@dataclass
class PPOConfig(ScaleConfig, LoraFields):
    """Hyper-parameters of :func:`run_ppo`. Defaults follow Huang et al. unless noted."""

    # --- run
    seed: int = 0
    """seed for prompt order, sampling and minibatch shuffling"""
    total_steps: int = 100
    """number of PPO steps; each is one rollout followed by ``ppo_epochs`` of updates"""
    rollout_batch_size: int = 16
    """prompts per rollout"""
    samples_per_prompt: int = 1
    """completions sampled per prompt in a rollout (episodes per step = prompts * this)"""

    # --- sampling
    temperature: float = 0.7
    """sampling temperature; log-probs are computed from ``logits / temperature`` (must be > 0)"""
    top_p: float = 1.0
    """nucleus-sampling mass; 1.0 disables it"""
    max_new_tokens: int = 48
    """maximum response length in tokens, EOS included"""
    max_prompt_tokens: int | None = 256
    """keep only the last this-many prompt tokens; ``None`` keeps all"""
    missing_eos_penalty: float | None = 1.0
    """subtracted from the (normalised) reward-model score of a completion that never emits EOS
    (its end-of-turn token) within ``max_new_tokens``, TRL's convention; must be >= 0 (in
    standard deviations of the reference reward); ``None`` or 0: no penalty"""

    # --- reward and KL penalty
    kl_coef: float = 0.05
    """β: initial (adaptive) or constant (fixed) coefficient of the per-token KL penalty"""
    adaptive_kl: bool = True
    """adapt β towards ``kl_target`` (Ziegler et al. 2019); ``False`` keeps β fixed"""
    kl_target: float = 6.0
    """target KL(π‖π_ref) per episode, in nats, summed over response tokens"""
    kl_horizon: int = 0
    """horizon of the adaptive controller, in episodes: β may move by a factor of about
    exp(0.2 · episodes of the run / horizon) over the run. 0 = a tenth of the run's episodes
    (``total_steps * rollout_batch_size * samples_per_prompt``), so β can move about 7-fold either
    way; Ziegler et al.'s 10,000 suits runs of 100,000 episodes and more"""

    # --- advantages
    gamma: float = 1.0
    """discount factor gamma of GAE"""
    lam: float = 0.95
    """λ of GAE"""
    whiten_advantages: bool = True
    """normalise advantages to mean 0, std 1 over the valid tokens of a rollout"""

    # --- update
    ppo_epochs: int = 4
    """passes over each rollout"""
    mini_batch_size: int = 8
    """episodes per gradient step"""
    learning_rate: float = 1e-5
    """Adam learning rate of the policy (the actor)"""
    value_learning_rate: float | None = None
    """Adam learning rate of the value model (the critic); ``None``: the policy's"""
    anneal_lr: bool = True
    """decay the learning rate linearly from ``learning_rate`` at step 1 towards 0 at the end"""
    adam_eps: float = 1e-5
    """Adam epsilon (1e-5 as in the OpenAI baselines, not PyTorch's 1e-8)"""
    max_grad_norm: float = 1.0
    """gradient-norm clip, applied to the policy and to the value model separately"""
    clip_range: float = 0.2
    """ε: the surrogate clipping coefficient"""
    clip_range_value: float = 0.2
    """ε_v: how far a value prediction may move from the rollout's before the loss clips it"""
    vf_coef: float = 0.1
    """c1: weight of the value loss"""
    ent_coef: float = 0.0
    """c2: weight of the entropy term L_ENT = -mean entropy (so > 0 rewards entropy); 0 as in
    OpenAI's lm-human-preferences"""

    # --- models
    value_init: Literal["reward_model", "zero"] = "reward_model"
    """value model from the reward model (its score head gives per-token values), or the
    policy's backbone with a zero-initialised head"""

    # --- plumbing
    rollout_engine: RolloutEngine = "auto"
    """what samples the rollouts (``training.ml.vllm_engine``): ``auto`` = vLLM when it is
    installed (the ``[vllm]`` extra) and the device is CUDA, else Hugging Face generate; ``hf``;
    ``vllm`` (the job fails without vLLM or CUDA). vLLM runs colocated with the trainer,
    tensor parallel over the node's GPUs, asleep during updates, and gets the policy's weights
    after every update; the loss's log-probs are always recomputed by the trainer"""
    vllm_gpu_memory_utilization: float = 0.3
    """share of each GPU's memory the colocated vLLM engine reserves for its weights and KV
    cache while it generates (the trainer's models hold the rest)"""
    forward_batch_size: int = 16
    """sequences per no-grad forward pass or generate call in the rollout"""
    reward_batch_size: int = 16
    """sequences per reward-model forward pass"""
    checkpoint_every: int = 0
    """save the training state every this many PPO steps, so that a job whose worker died
    resumes there without repeating or skipping prompts (0: never)"""
    device: str | None = None
    """``None``/"auto", "cpu", "cuda", ...; CUDA runs forwards under bf16 autocast"""

    def __post_init__(self) -> None:
        self._check_scale()
        self._check_lora()
        if self.missing_eos_penalty is not None and not self.missing_eos_penalty >= 0:
            raise ValueError(
                "missing_eos_penalty is subtracted from the score (TRL's convention): it must "
                "be >= 0, or null for none"
            )
        if self.kl_horizon < 0 or self.checkpoint_every < 0:
            raise ValueError("kl_horizon and checkpoint_every must be >= 0")
        if self.value_learning_rate is not None and self.value_learning_rate < 0:
            raise ValueError("value_learning_rate must be >= 0")
        if self.temperature <= 0:
            raise ValueError("PPO needs temperature > 0 (log-probs use logits / temperature)")
        for name in (
            "total_steps",
            "rollout_batch_size",
            "samples_per_prompt",
            "ppo_epochs",
            "mini_batch_size",
            "forward_batch_size",
            "reward_batch_size",
            "max_new_tokens",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.value_init not in ("reward_model", "zero"):
            raise ValueError(f"unknown value_init {self.value_init!r}")
        _check_engine(self.rollout_engine, self.vllm_gpu_memory_utilization)

    @property
    def episodes(self) -> int:
        """Episodes of the whole run: total_steps * rollout_batch_size * samples_per_prompt."""
        return self.total_steps * self.rollout_batch_size * self.samples_per_prompt

    @property
    def resolved_kl_horizon(self) -> int:
        """``kl_horizon``, or for 0 a tenth of the run's episodes (at least one step's)."""
        if self.kl_horizon > 0:
            return self.kl_horizon
        per_step = self.rollout_batch_size * self.samples_per_prompt
        return max(per_step, self.episodes // 10)


@dataclass
class DPOConfig(ScaleConfig, LoraFields):
    """Hyper-parameters of :func:`run_dpo`."""

    beta: float = 0.1
    """β: strength of the implicit KL penalty towards the reference (0.1 in the paper)"""
    learning_rate: float = 1e-6
    """Adam learning rate (1e-6 in the paper)"""
    warmup_steps: int = 0
    """optimiser steps over which the learning rate rises linearly from 0"""
    num_epochs: int = 1
    """passes over the pairs"""
    batch_size: int = 8
    """pairs per optimiser step"""
    adam_eps: float = 1e-5
    """Adam epsilon (1e-5 as in the rest of this package)"""
    max_grad_norm: float = 1.0
    """gradient-norm clip"""
    max_prompt_tokens: int = 256
    """prompts keep their last this-many tokens"""
    max_completion_tokens: int = 256
    """completions (EOS included) keep their first this-many tokens"""
    use_weights: bool = True
    """multiply each pair's loss by its ``.weight`` when it has one"""
    reference_batch_size: int = 16
    """pairs per forward pass when caching the reference log-probs"""
    seed: int = 0
    """seed of the pair order"""
    checkpoint_every: int = 0
    """save the training state every this many optimiser steps, so that a job whose worker died
    resumes there (0: never)"""
    device: str | None = None
    """``None``/"auto", "cpu", "cuda", ...; CUDA runs forwards under bf16 autocast"""

    def __post_init__(self) -> None:
        self._check_scale()
        self._check_lora()
        for name in ("num_epochs", "batch_size", "reference_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.checkpoint_every < 0:
            raise ValueError("checkpoint_every must be >= 0")


@dataclass
class SamplingConfig:
    """How to sample completions."""

    num_completions: int = 4
    """K: completions per prompt"""
    temperature: float = 0.7
    """sampling temperature; 0 means greedy (then K identical completions are pointless)"""
    top_p: float = 1.0
    """nucleus sampling mass; 1.0 disables it"""
    max_new_tokens: int = 64
    """maximum response length in tokens (EOS included)"""
    max_prompt_tokens: int | None = None
    """keep only the last this-many prompt tokens; ``None`` keeps them all"""
    batch_size: int = 16
    """sequences (prompt, completion) per Hugging Face ``generate`` call (vLLM batches by
    itself)"""
    seed: int = 0
    """seed of the sampling: of torch's RNG for Hugging Face generate (restored afterwards), of
    each request (with its index) for vLLM"""
    device: str | None = None
    """``None``/"auto", "cpu", "cuda", ...; see ``training.ml.device.pick_device``"""
    rollout_engine: RolloutEngine = "auto"
    """what samples (``training.ml.vllm_engine``): ``auto`` = vLLM when it is installed (the
    ``[vllm]`` extra) and the device is CUDA, tensor parallel over every visible GPU, else
    Hugging Face generate; ``hf``; ``vllm`` (the job fails without vLLM or CUDA). Each
    completion records the engine that produced it"""
    vllm_gpu_memory_utilization: float = 0.9
    """share of each GPU's memory vLLM reserves for its weights and KV cache"""

    def __post_init__(self) -> None:
        _check_engine(self.rollout_engine, self.vllm_gpu_memory_utilization)


def _check_engine(engine: str, gpu_memory_utilization: float) -> None:
    if engine not in ("auto", "hf", "vllm"):
        raise ValueError(f"unknown rollout_engine {engine!r}: auto, hf or vllm")
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ValueError("vllm_gpu_memory_utilization must be in (0, 1]")


# --- From JSON, and the docs of the fields ---------------------------------------------------


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints(cls)``, once per class."""
    return typing.get_type_hints(cls)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (cleanrl style), by field name,
    inherited ones included: the help texts of the API and of the dashboard's forms."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass.__module__ == "builtins":
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, following in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


RENAMED = {("RewardModelConfig", "num_processes"): "gpus"}
"""Fields renamed since jobs were stored: (class, old name) -> new name, so that a stored job
still reads back and retries."""


def config_from_dict(cls: type, data: Any) -> Any:
    """Build a config dataclass from JSON, refusing unknown fields, values of the wrong type and
    values the class itself refuses: ``ValueError`` naming the field. A nested dataclass field
    (a round's sections) is built the same way."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError("must be an object of hyper-parameters")
    data = {RENAMED.get((cls.__name__, k), k): v for k, v in data.items()}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    hints = type_hints(cls)
    data = dict(data)
    for key, value in data.items():
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            try:
                data[key] = config_from_dict(hint, value if value is not None else {})
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        elif not _matches(value, hint):
            expected = str(hint).replace("typing.", "")
            raise ValueError(f"{key}: {value!r} is not a valid {expected}")
    try:
        return cls.from_dict(data) if hasattr(cls, "from_dict") else cls(**data)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a (simple) type hint; unknown hints accept anything."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        return (
            isinstance(value, list | tuple)
            and len(value) == len(args)
            and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        )
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    return True


# --- What a model recommends ----------------------------------------------------------------

RECOMMENDED_FILE = "training_defaults.json"
"""A model directory may hold the hyper-parameters its author recommends for training from it,
as a Hugging Face model holds its sampling defaults in ``generation_config.json``:
``{"PPOConfig": {"learning_rate": 1e-4, ...}, ...}``, by config class, overrides of the class's
defaults. The dashboard's job forms are prefilled with them (and show every one of them); the
tiny model writes its own (``training.ml.tiny``)."""


CONFIG_CLASSES = (RewardModelConfig, PPOConfig, DPOConfig, SamplingConfig)
"""The config classes a model may recommend values of."""


def recommended_overrides(model_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The overrides ``model_dir`` recommends, by config class name, each checked against its
    class (:func:`config_from_dict`); {} for a hub id, a missing file or one that does not
    parse, and a class whose values its class refuses is left out."""
    path = Path(model_dir) / RECOMMENDED_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    classes = {cls.__name__: cls for cls in CONFIG_CLASSES}
    recommended = {}
    for name, values in data.items():
        try:
            config_from_dict(classes[name], values)
        except (KeyError, ValueError):
            continue
        recommended[name] = dict(values)
    return recommended
