"""Will a job fit? Memory per GPU estimated from the model's config, before anything is loaded.

The estimate adds, per GPU:

* **model states**: a trained model keeps fp32 weights, fp32 gradients and Adam's two fp32
  moments (16 bytes a parameter, ZeRO's figure); under LoRA its frozen base is bf16 (2 bytes on
  CUDA) and only the adapters carry the 16 bytes; a frozen model (reference, reward model in
  PPO) is bf16. With ``shard: fsdp`` every one of these is divided by the number of GPUs
  (FSDP2 per decoder layer), plus the full bf16 weights of two layers being gathered (one
  running, one prefetched) and of the root (embeddings, head); ``offload`` moves the sharded
  states to CPU memory. One GPU without FSDP keeps autocast's bf16 copies of the weights too;
* **activations** of one forward and backward pass of the micro-batch this GPU runs, from
  the tensors a decoder layer saves for backward in bf16 (``2 x (10 h + 5 kv + 4 i)`` bytes a
  token, h the hidden size, kv the key/value width, i the MLP width; SDPA, no attention matrix);
  with gradient checkpointing, every layer's input plus three layers' worth (the one being
  recomputed and its gradients); the fp32 logits of the positions that need them (three
  copies: logits, log-softmax, gradient); the optimiser step's temporaries on CUDA (foreach
  Adam: one fp32 copy of what it steps);
* **KV cache** of a rollout or generation: ``2 x layers x kv_heads x head_dim x 2 bytes`` a
  token, for every sequence generated at once;
* a fixed overhead for the CUDA context and the allocator (1.5 GB) and 5% for fragmentation.

PPO's peak is its models' states plus the larger of the rollout (KV cache and no-grad forward
passes) and the update (policy and critic forward and backward). Estimates on the CPU (fp32
activations) are checked against the measured peak of small models in
``tests/training/ml/test_preflight.py`` (they bound it from above, 1.22 to 1.54 times it: the
activations are counted generously, the safe side for a refusal), and the 8B and 70B figures
against published ones.

:func:`shape_from_config` reads a ``config.json`` as plain JSON (the web process, which never
imports torch, checks jobs with it); :func:`shape_from_meta` builds the model on PyTorch's meta
device (no weights, no memory) and counts its parameters exactly, for the CLI
(``python -m training.ml plan``) and to check the former in the tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GB = 1024**3
OVERHEAD_BYTES = int(1.5 * GB)
"""CUDA context, cuBLAS workspaces, the allocator's slack"""
FRAGMENTATION = 0.05
BF16, FP32 = 2, 4
LOGIT_COPIES_BYTES = 12
"""fp32 logits, their log-softmax and its gradient: three 4-byte copies a vocabulary entry"""
ADAM_STATE_BYTES = 16
"""fp32 weight + fp32 gradient + two fp32 Adam moments, per trained parameter"""

KINDS = ("reward_model", "dpo", "ppo", "generate")


# --------------------------------------------------------------------------------------------
# The model's shape
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a transformer."""

    params: int
    """parameters of the causal LM, LM head included (counted once when tied)"""
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = False
    layer_params: int = 0
    """parameters of one decoder layer"""
    exact: bool = True
    """counted (meta device or a known layout), not approximated"""

    @property
    def head_params(self) -> int:
        """The LM head's parameters (0 when tied to the embeddings)."""
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def root_params(self) -> int:
        """Parameters outside the decoder layers (embeddings, final norm, head)."""
        return self.params - self.layers * self.layer_params

    @property
    def backbone_params(self) -> int:
        """A reward or value model: the LM without its vocabulary head (the score head is
        negligible)."""
        return self.params - self.head_params + self.hidden

    @property
    def kv_bytes_per_token(self) -> int:
        """bf16 keys and values of one token over all layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim * BF16

    def lora_params(self, r: int) -> int:
        """Adapter parameters with ``all-linear`` targets: r x (in + out) per linear layer."""
        q_out, kv_out = self.heads * self.head_dim, self.kv_heads * self.head_dim
        per_layer = r * (
            (self.hidden + q_out)
            + 2 * (self.hidden + kv_out)
            + (q_out + self.hidden)
            + 3 * (self.hidden + self.intermediate)
        )
        return self.layers * per_layer


def _first(config: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if config.get(name) is not None:
            return config[name]
    return default


def shape_from_config(config: dict[str, Any]) -> ModelShape:
    """The shape of a decoder from its ``config.json`` (plain JSON; no torch). Llama-like
    layouts (Llama, Mistral, Qwen2/3, Gemma, Phi-3: gated MLP, grouped keys and values) are
    counted exactly; others (GPT-2, BERT) approximately from their widths."""
    config = dict(config.get("text_config") or config)
    hidden = int(_first(config, "hidden_size", "n_embd", "d_model"))
    layers = int(_first(config, "num_hidden_layers", "n_layer", "num_layers"))
    heads = int(_first(config, "num_attention_heads", "n_head"))
    kv_heads = int(_first(config, "num_key_value_heads", default=heads))
    head_dim = int(_first(config, "head_dim", default=hidden // heads))
    intermediate = int(_first(config, "intermediate_size", "n_inner", default=4 * hidden))
    vocab = int(config["vocab_size"])
    tied = bool(config.get("tie_word_embeddings", config.get("model_type") in ("gpt2", "bert")))
    llama_like = config.get("hidden_act", config.get("hidden_activation")) in (
        "silu",
        "swiglu",
        "gelu_pytorch_tanh",
    ) and config.get("model_type") not in ("gpt2", "bert")
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    attn_bias = bool(config.get("attention_bias", config.get("model_type") == "qwen2"))
    if llama_like:
        attention = hidden * q_out + 2 * hidden * kv_out + q_out * hidden
        if attn_bias:
            attention += q_out + 2 * kv_out
        mlp = 3 * hidden * intermediate + (
            2 * intermediate + hidden if config.get("mlp_bias") else 0
        )
        norms = 2 * hidden
        if config.get("model_type") == "qwen3":
            norms += 2 * head_dim  # q_norm, k_norm
        layer = attention + mlp + norms
        root = vocab * hidden + hidden + (0 if tied else vocab * hidden)
        exact = True
    else:  # GPT-2/BERT-like: biased attention and a 2-matrix MLP, learned positions
        layer = 4 * hidden * hidden + 4 * hidden + 2 * hidden * intermediate
        layer += intermediate + hidden + 4 * hidden
        positions = int(_first(config, "max_position_embeddings", "n_positions", default=0))
        root = (vocab + positions) * hidden + 2 * hidden + (0 if tied else vocab * hidden)
        exact = False
    return ModelShape(
        params=layers * layer + root,
        layers=layers,
        hidden=hidden,
        intermediate=intermediate,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=vocab,
        tied=tied,
        layer_params=layer,
        exact=exact,
    )


def read_config(model_dir: str | Path) -> dict[str, Any] | None:
    """A model directory's ``config.json`` as a dict; None when there is none (a hub id)."""
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def shape_from_meta(config: Any) -> ModelShape:
    """The shape of a model counted on PyTorch's meta device: ``config`` is a transformers
    config, a config dict or a model directory. Nothing is allocated."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

    if isinstance(config, str | Path):
        config = AutoConfig.from_pretrained(str(config))
    elif isinstance(config, dict):
        data = dict(config)
        config = AutoConfig.for_model(data.pop("model_type"), **data)
    assert isinstance(config, PretrainedConfig)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())  # shared (tied) tensors counted once
    from training.ml.parallel import decoder_layers

    layers = decoder_layers(model)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    analytic = shape_from_config(text.to_dict())
    return dataclasses.replace(
        analytic,
        params=params,
        layer_params=sum(p.numel() for p in layers[0].parameters()) if layers else 0,
        layers=len(layers) or analytic.layers,
        tied=model.get_output_embeddings() is None
        or model.get_output_embeddings().weight is model.get_input_embeddings().weight,
        exact=True,
    )


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hardware:
    """Where the job would run."""

    gpus: int = 1
    """GPUs the job uses (processes)"""
    gpu_memory_gb: float = 80.0
    """memory of each GPU"""
    cuda: bool = True
    """False: estimate a CPU run (fp32 everywhere, no autocast copies, no CUDA overhead)"""


@dataclass
class Line:
    """One part of the estimate."""

    what: str
    bytes: float
    note: str = ""
    phase: str = ""
    """"" for memory held throughout; else the phase (step, rollout, update, optimiser) it is
    held during"""


@dataclass
class Plan:
    """The estimate of one job: what each part needs per GPU, the peak, and whether it fits."""

    kind: str
    gpus: int
    gpu_memory_gb: float
    lines: list[Line] = field(default_factory=list)
    peak_bytes: float = 0.0
    cpu_bytes: float = 0.0
    """CPU memory the offloaded states take (whole job)"""
    options: dict[str, Any] = field(default_factory=dict)
    suggestions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    trained_local: float = 0.0
    """trained parameters this GPU holds (sharded, adapters only under LoRA): the optimiser
    step's temporaries scale with them"""
    gathered: float = 0.0
    """FSDP: the full bf16 weights of the largest model's two layers and root, gathered while
    it runs (one model runs at a time)"""

    @property
    def peak_gb(self) -> float:
        return self.peak_bytes / GB

    @property
    def fits(self) -> bool:
        return self.peak_gb <= self.gpu_memory_gb

    def reason(self) -> str:
        """The refusal: memory needed per GPU against what there is, and what would fit."""
        head = (
            f"needs {self.peak_gb:.1f} GB per GPU on {self.gpus} GPU(s) of "
            f"{self.gpu_memory_gb:g} GB"
        )
        if self.suggestions:
            return f"{head}; it would fit with: " + "; ".join(self.suggestions)
        return f"{head}; no combination of more GPUs, LoRA, offload and checkpointing fits"

    def to_dict(self) -> dict[str, Any]:
        """JSON for the API, the job's parameters and the form."""
        return {
            "kind": self.kind,
            "gpus": self.gpus,
            "gpu_memory_gb": self.gpu_memory_gb,
            "peak_gb": round(self.peak_gb, 2),
            "fits": self.fits,
            "cpu_offload_gb": round(self.cpu_bytes / GB, 2),
            "lines": [
                {"what": line.what, "gb": round(line.bytes / GB, 3), "note": line.note}
                for line in self.lines
            ],
            "options": self.options,
            "suggestions": self.suggestions,
            "notes": self.notes,
        }

    def table(self) -> str:
        """The plan as text (the CLI's output)."""
        rows = [
            f"{self.kind}: {self.peak_gb:.1f} GB per GPU ({self.gpus} x {self.gpu_memory_gb:g} GB)"
        ]
        for line in self.lines:
            note = f"  ({line.note})" if line.note else ""
            rows.append(f"  {line.what:<42} {line.bytes / GB:8.2f} GB{note}")
        if self.cpu_bytes:
            rows.append(f"  offloaded to CPU memory: {self.cpu_bytes / GB:.1f} GB")
        rows.append("fits" if self.fits else "does NOT fit: " + self.reason())
        rows.extend(f"note: {note}" for note in self.notes)
        return "\n".join(rows)


@dataclass(frozen=True)
class Options:
    """The job's choices that move its memory (from its config)."""

    shard: str = "fsdp"
    use_lora: bool = False
    lora_r: int = 16
    offload: bool = False
    gradient_checkpointing: bool = False


def options_of(config: Any) -> Options:
    """The :class:`Options` of a trainer's config (a dataclass or a dict)."""
    get = (
        (lambda k, d: config.get(k, d))
        if isinstance(config, dict)
        else (lambda k, d: getattr(config, k, d))
    )
    return Options(
        shard=get("shard", "fsdp"),
        use_lora=bool(get("use_lora", False)),
        lora_r=int(get("lora_r", 16)),
        offload=bool(get("offload", False)),
        gradient_checkpointing=bool(get("gradient_checkpointing", False)),
    )


def _trained_states(
    what: str, params: int, shape: ModelShape, options: Options, hw: Hardware, plan: Plan
) -> None:
    """The lines of one trained model (``params``: its parameter count)."""
    degree = hw.gpus if options.shard == "fsdp" else 1
    sharded = degree > 1
    if options.use_lora:
        adapters = shape.lora_params(options.lora_r)
        states = [
            (f"{what}: frozen base", params * (BF16 if hw.cuda else FP32) / degree),
            (f"{what}: LoRA adapters + Adam", adapters * ADAM_STATE_BYTES / degree),
        ]
        plan.trained_local += adapters / degree
    else:
        states = [(f"{what}: weights, grads, Adam (fp32)", params * ADAM_STATE_BYTES / degree)]
        plan.trained_local += params / degree
    for label, size in states:
        if options.offload and sharded and hw.cuda:
            plan.cpu_bytes += size * degree
            plan.lines.append(Line(label, 0.0, "offloaded to CPU"))
        else:
            plan.lines.append(Line(label, size, f"/ {degree} GPUs" if sharded else ""))
    if sharded:
        plan.gathered = max(plan.gathered, (2 * shape.layer_params + shape.root_params) * BF16)
    elif hw.cuda and not options.use_lora:
        plan.lines.append(Line(f"{what}: bf16 autocast copies", params * BF16))


def _frozen_states(
    what: str, params: int, options: Options, hw: Hardware, plan: Plan, shape: ModelShape
) -> None:
    degree = hw.gpus if options.shard == "fsdp" else 1
    element = BF16 if hw.cuda else FP32
    note = ("bf16" if hw.cuda else "fp32") + (f" / {degree} GPUs" if degree > 1 else "")
    plan.lines.append(Line(f"{what} (frozen)", params * element / degree, note))
    if degree > 1:
        plan.gathered = max(plan.gathered, (2 * shape.layer_params + shape.root_params) * BF16)


def _layer_activation_bytes(shape: ModelShape, cuda: bool) -> float:
    """What one decoder layer saves for backward, per token (bf16 on CUDA, fp32 on the CPU)."""
    element = BF16 if cuda else FP32
    kv = shape.kv_heads * shape.head_dim
    return element * (10 * shape.hidden + 5 * kv + 4 * shape.intermediate)


def _pass_bytes(
    shape: ModelShape, options: Options, hw: Hardware, *, sequences: int, length: int
) -> float:
    """Activations of one forward and backward pass of ``sequences`` x ``length`` tokens:
    what every layer saves (SDPA keeps no attention matrix); with gradient checkpointing, each
    layer's input plus the layer being recomputed and its gradients (two layers' worth).
    Gradients of activations need no more: backward frees a layer's activations as it makes
    its gradients."""
    tokens = sequences * length
    layer = _layer_activation_bytes(shape, hw.cuda) * tokens
    if options.gradient_checkpointing:
        inputs = (BF16 if hw.cuda else FP32) * shape.hidden * shape.layers * tokens
        return inputs + 3 * layer
    return layer * shape.layers


def estimate(
    kind: str,
    shape: ModelShape,
    config: Any,
    hw: Hardware,
    *,
    reward_shape: ModelShape | None = None,
) -> Plan:
    """The memory plan of a job of ``kind`` whose policy (or base) has ``shape``, with the
    config's batch sizes and lengths, on ``hw``. ``reward_shape``: PPO's reward model (and
    critic when initialised from it); default: the policy's.

    Resident states (weights, gradients, optimiser states, frozen models) are always there;
    the phases (a forward and backward pass, a rollout, the optimiser step) come one after the
    other, so the peak is the states plus the largest phase."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: {', '.join(KINDS)}")
    get = (
        (lambda k, d: config.get(k, d))
        if isinstance(config, dict)
        else (lambda k, d: getattr(config, k, d))
    )
    options = options_of(config)
    plan = Plan(kind=kind, gpus=hw.gpus, gpu_memory_gb=hw.gpu_memory_gb)
    plan.options = dataclasses.asdict(options)
    reward_shape = reward_shape or shape
    world = max(1, hw.gpus)

    def phase(name: str, what: str, size: float, note: str = "") -> None:
        plan.lines.append(Line(f"{name}: {what}", size, note, phase=name))

    if kind == "reward_model":
        _trained_states("reward model", shape.backbone_params, shape, options, hw, plan)
        pairs = get("micro_batch_size", 0) or math.ceil(get("batch_size", 32) / world)
        length = get("max_length", 512)
        size = _pass_bytes(shape, options, hw, sequences=2 * pairs, length=length)
        phase("step", "activations", size, f"{2 * pairs} sequences x {length} tokens")
    elif kind == "dpo":
        _trained_states("policy", shape.params, shape, options, hw, plan)
        if not options.use_lora:
            plan.notes.append(
                "the reference is loaded, its log-probs cached and freed before the policy loads"
            )
        pairs = math.ceil(get("batch_size", 8) / world)
        completion = get("max_completion_tokens", 256)
        length = get("max_prompt_tokens", 256) + completion
        size = _pass_bytes(shape, options, hw, sequences=2 * pairs, length=length)
        phase("step", "activations", size, f"{2 * pairs} sequences x {length} tokens")
        phase(
            "step",
            "logits of completion tokens",
            2 * pairs * completion * shape.vocab * LOGIT_COPIES_BYTES,
        )
    elif kind == "ppo":
        _trained_states("policy", shape.params, shape, options, hw, plan)
        critic = reward_shape if get("value_init", "reward_model") == "reward_model" else shape
        _trained_states("value model", critic.backbone_params, critic, options, hw, plan)
        if options.use_lora:
            plan.notes.append("reference = the policy with its adapter off (when it is the base)")
        else:
            _frozen_states("reference", shape.params, options, hw, plan, shape)
        _frozen_states(
            "reward model", reward_shape.backbone_params, options, hw, plan, reward_shape
        )
        prompt = get("max_prompt_tokens", 256) or 2048
        new = get("max_new_tokens", 48)
        length = prompt + new
        episodes = get("rollout_batch_size", 16) * get("samples_per_prompt", 1)
        generating = min(get("forward_batch_size", 16), math.ceil(episodes / world))
        phase(
            "rollout",
            "KV cache",
            generating * length * shape.kv_bytes_per_token,
            f"{generating} sequences x {length} tokens",
        )
        phase("rollout", "logits (no grad)", generating * new * shape.vocab * FP32 * 2)
        local = math.ceil(get("mini_batch_size", 8) / world)
        acts = _pass_bytes(shape, options, hw, sequences=local, length=length)
        acts += _pass_bytes(critic, options, hw, sequences=local, length=length)
        phase("update", "activations (policy + critic)", acts, f"{local} sequences")
        copies = 3 if get("ent_coef", 0.0) else 2  # no entropy graph when its coefficient is 0
        phase("update", "logits", local * new * shape.vocab * FP32 * copies)
    elif kind == "generate":
        element = BF16 if hw.cuda else FP32
        plan.lines.append(Line("policy (frozen)", shape.params * element))
        batch = get("batch_size", 16)
        length = (get("max_prompt_tokens", None) or 1024) + get("max_new_tokens", 64)
        kv = batch * length * shape.kv_bytes_per_token
        phase("generate", "KV cache", kv, f"{batch} sequences x {length} tokens")
    if plan.trained_local and hw.cuda:  # foreach Adam: one fp32 copy of the states it steps
        phase("optimiser", "Adam step temporaries", plan.trained_local * FP32)
    if plan.gathered:
        plan.lines.append(Line("FSDP gathered layers", plan.gathered, "2 layers + root, bf16"))
    states = sum(line.bytes for line in plan.lines if not line.phase)
    phases: dict[str, float] = {}
    for line in plan.lines:
        if line.phase:
            phases[line.phase] = phases.get(line.phase, 0.0) + line.bytes
    work = max(phases.values(), default=0.0)
    if len(phases) > 1:
        largest = max(phases, key=phases.__getitem__)
        sizes = ", ".join(f"{name} {size / GB:.2f} GB" for name, size in phases.items())
        plan.notes.append(f"peak = states + the largest phase, {largest} ({sizes})")
    overhead = OVERHEAD_BYTES if hw.cuda else 0
    plan.peak_bytes = (states + work) * (1 + FRAGMENTATION) + overhead
    if hw.cuda:
        plan.lines.append(
            Line("CUDA context, allocator, fragmentation", plan.peak_bytes - states - work)
        )
    if not shape.exact:
        plan.notes.append("parameter count approximated from the config's widths")
    return plan


def with_suggestions(
    kind: str,
    shape: ModelShape,
    config: Any,
    hw: Hardware,
    *,
    reward_shape: ModelShape | None = None,
    max_gpus: int = 8,
) -> Plan:
    """:func:`estimate`, and when it does not fit, the changes that would make it fit (each
    alone, else pairs of them), with the memory per GPU each would need."""
    plan = estimate(kind, shape, config, hw, reward_shape=reward_shape)
    if plan.fits or not hw.cuda:
        return plan
    base = dataclasses.asdict(options_of(config)) if not isinstance(config, dict) else {}
    values = dict(config) if isinstance(config, dict) else dataclasses.asdict(config)
    values.update({k: v for k, v in base.items() if k not in values})
    changes: list[tuple[str, dict[str, Any], Hardware]] = []
    for gpus in (2, 4, 8, 16, 32):
        if hw.gpus < gpus <= max(max_gpus, hw.gpus):
            changes.append((f"gpus={gpus}", {"shard": "fsdp"}, dataclasses.replace(hw, gpus=gpus)))
    for nodes in (2, 4, 8):  # beyond one node: Ray, ``max_gpus`` on each
        if max_gpus * nodes > hw.gpus:
            hardware = dataclasses.replace(hw, gpus=max_gpus * nodes)
            changes.append((f"nodes={nodes} x gpus={max_gpus}", {"shard": "fsdp"}, hardware))
    if not values.get("use_lora"):
        changes.append(("use_lora", {"use_lora": True}, hw))
    if not values.get("gradient_checkpointing"):
        changes.append(("gradient_checkpointing", {"gradient_checkpointing": True}, hw))
    if not values.get("offload") and kind != "generate":
        changes.append(("offload", {"offload": True, "shard": "fsdp"}, hw))
    found: list[str] = []
    for name, change, hardware in changes:
        trial = estimate(kind, shape, {**values, **change}, hardware, reward_shape=reward_shape)
        if trial.fits:
            found.append(f"{name} ({trial.peak_gb:.1f} GB per GPU)")
    if not found:
        for (a, ca, ha), (b, cb, hb) in (
            (x, y) for i, x in enumerate(changes) for y in changes[i + 1 :]
        ):
            hardware = ha if ha.gpus != hw.gpus else hb
            trial = estimate(
                kind, shape, {**values, **ca, **cb}, hardware, reward_shape=reward_shape
            )
            if trial.fits:
                found.append(f"{a} + {b} ({trial.peak_gb:.1f} GB per GPU)")
    plan.suggestions = found[:6]
    return plan


# --------------------------------------------------------------------------------------------
# The command line: python -m training.ml plan
# --------------------------------------------------------------------------------------------


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (its config.json is read)")
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--reward-model", help="PPO: the reward model's directory (default: --model)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs (per node with --nodes)")
    p.add_argument("--nodes", type=int, default=1, help="nodes of a Ray cluster")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GB per GPU")
    p.add_argument("--cpu", action="store_true", help="estimate a CPU run (fp32)")
    p.add_argument("--shard", choices=("none", "fsdp"), default="fsdp")
    p.add_argument("--lora", action="store_true", help="use_lora")
    p.add_argument("--offload", action="store_true")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="another config field, JSON value (e.g. --set max_new_tokens=256); repeatable",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def run_plan_command(args: argparse.Namespace) -> int:
    config: dict[str, Any] = {
        "shard": args.shard,
        "use_lora": args.lora,
        "offload": args.offload,
        "gradient_checkpointing": args.gradient_checkpointing,
    }
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            config[key] = json.loads(value)
        except ValueError:
            config[key] = value
    shape = shape_from_meta(args.model)
    reward = shape_from_meta(args.reward_model) if args.reward_model else None
    hw = Hardware(gpus=args.gpus * args.nodes, gpu_memory_gb=args.gpu_memory, cuda=not args.cpu)
    plan = with_suggestions(
        args.kind, shape, config, hw, reward_shape=reward, max_gpus=max(args.gpus, 8)
    )
    plan.notes.insert(0, f"model: {shape.params / 1e9:.2f} B parameters ({args.model})")
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.table())
    return 0 if plan.fits else 1
