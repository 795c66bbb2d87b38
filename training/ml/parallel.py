"""How a trainer's models sit on the processes of one node: one code path for 1 or N processes.

Every trainer (reward model, DPO, PPO) asks this module, never ``torch.distributed`` directly:

* :class:`Placement` says where this process is (:class:`~training.ml.device.World`), on which
  device, and whether its trained models are sharded. A single process on the CPU is the world
  of size 1: nothing is wrapped, every collective below is the identity, and the trainers run
  the very same lines as under ``torchrun``.
* :func:`prepare_trained` puts a trained module on its device and, with ``shard: fsdp`` and
  more than one process, shards it with FSDP2 (``torch.distributed.fsdp.fully_shard``) per
  decoder layer and then at the root: each process keeps 1/N of every parameter, gradient and
  optimiser state; a layer's full parameters exist only while it runs. On CUDA the compute is
  bf16 with fp32 gradient reduction (``MixedPrecisionPolicy``), optionally with the shards in
  CPU memory (``CPUOffloadPolicy``). With ``shard: none`` each process keeps a replica and
  :func:`reduce_gradients` averages the gradients after ``backward()``.
* :func:`prepare_frozen` does the same for frozen models (the reference, the reward model in
  PPO), which are loaded in bf16 on CUDA (:func:`frozen_dtype`) rather than fp32 re-cast on
  every forward.
* :func:`full_state_dict` gathers a trained module's full parameters on rank 0 (on the CPU)
  for the Hugging Face directory rank 0 writes.

The loss convention shared by the trainers: each process computes the sum of its examples'
losses divided by the size of the GLOBAL batch and backpropagates it multiplied by
``world.size``; FSDP's reduce-scatter and :func:`reduce_gradients` average over the processes,
so every process ends with the gradient of the global batch's mean loss, as one process would.
Under FSDP every process must run the same number of forward and backward passes of a sharded
module (each pass gathers parameters from all of them): :func:`equal_shares` splits a batch so
that they do, padding a short share with a dummy example of weight 0.

The process group itself is joined by :func:`training.ml.device.process_group` (torchrun sets
the environment; ``training.ml.launch`` starts torchrun). A Ray backend would set the same
environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...) and reuse everything here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from training.ml.device import SINGLE_PROCESS, World, current_world, pick_device

T = TypeVar("T")
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Placement:
    """Where this process runs and how it holds the models it trains."""

    world: World = SINGLE_PROCESS
    device: torch.device = CPU
    shard: str = "none"
    """``fsdp`` or ``none`` as configured (what actually happens: :attr:`sharded`)"""
    offload: bool = False
    gradient_checkpointing: bool = False

    @property
    def sharded(self) -> bool:
        """FSDP2 is in use: ``shard: fsdp`` and more than one process."""
        return self.shard == "fsdp" and self.world.size > 1

    @property
    def mixed_precision(self) -> bool:
        """bf16 compute: a bf16-capable CUDA device."""
        return self.device.type == "cuda" and torch.cuda.is_bf16_supported()

    def describe(self) -> str:
        """One line for the job's log: processes, device, sharding."""
        if self.world.size == 1:
            how = "one process"
        elif self.sharded:
            how = f"{self.world.size} processes, FSDP2 per decoder layer"
        else:
            how = f"{self.world.size} processes, replicas with all-reduced gradients"
        extras = [
            name
            for name, on in (
                ("bf16 compute, fp32 reduction", self.sharded and self.mixed_precision),
                ("CPU offload", self.sharded and self.offload),
                ("gradient checkpointing", self.gradient_checkpointing),
            )
            if on
        ]
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        detail = f" ({backend})" if self.world.size > 1 else ""
        return f"{how}{detail} on {self.device.type}" + (f"; {', '.join(extras)}" if extras else "")


def placement_for(config: Any, *, world: World | None = None) -> Placement:
    """The placement of a trainer's config (:class:`~training.ml.config.ScaleConfig` fields and
    ``device``) in the current process group."""
    world = world or current_world()
    device = pick_device(getattr(config, "device", None))
    if world.size > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return Placement(
        world=world,
        device=device,
        shard=getattr(config, "shard", "none"),
        offload=bool(getattr(config, "offload", False)) and device.type == "cuda",
        gradient_checkpointing=bool(getattr(config, "gradient_checkpointing", False)),
    )


def frozen_dtype(device: torch.device) -> torch.dtype:
    """The dtype frozen models are loaded in: bf16 on a bf16-capable GPU, else fp32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


# --------------------------------------------------------------------------------------------
# Wrapping
# --------------------------------------------------------------------------------------------


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformer (the units FSDP shards and checkpointing
    recomputes): modules whose class the model names in ``_no_split_modules`` (Hugging Face's
    list of blocks that must stay whole), else the members of its longest ``ModuleList``."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if layers:
        return layers
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer's activations in backward (non-reentrant, which works with
    FSDP2 and LoRA). The model is put in train mode, which is when Hugging Face checkpoints;
    its dropout must already be 0 (the loaders here set it so)."""
    target = model
    while not hasattr(target, "gradient_checkpointing_enable") and hasattr(target, "model"):
        target = target.model
    if not hasattr(target, "gradient_checkpointing_enable"):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
    target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()


def _fsdp_kwargs(placement: Placement) -> dict[str, Any]:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    kwargs: dict[str, Any] = {}
    if placement.mixed_precision:
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32
        )
    if placement.offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    return kwargs


def shard_module(module: nn.Module, placement: Placement) -> nn.Module:
    """FSDP2 on every decoder layer inside ``module``, then on ``module`` itself (the root,
    which holds the embeddings, the final norm and the heads). In place; returns ``module``."""
    from torch.distributed.fsdp import fully_shard

    kwargs = _fsdp_kwargs(placement)
    for layer in decoder_layers(module):
        fully_shard(layer, **kwargs)
    fully_shard(module, **kwargs)
    return module


def prepare_trained(module: nn.Module, placement: Placement) -> nn.Module:
    """A module to train, on its device: gradient checkpointing if configured, then sharded
    (FSDP2) when the placement says so. Call before building the optimiser. The module whose
    ``forward`` does the whole computation must be the one passed (a wrapper such as the reward
    model's scorer), since FSDP gathers the root's parameters in the root's forward."""
    if placement.gradient_checkpointing:
        enable_gradient_checkpointing(module)
    if placement.sharded:
        if not placement.offload:
            module.to(placement.device)
        return shard_module(module, placement)
    return module.to(placement.device)


def prepare_frozen(module: nn.Module, placement: Placement) -> nn.Module:
    """A frozen module (no gradients, eval mode), on its device, sharded like the trained ones
    when the placement shards (a frozen 70B reference does not fit one GPU either)."""
    module.requires_grad_(False)
    module.eval()
    if placement.sharded:
        if not placement.offload:
            module.to(placement.device)
        return shard_module(module, placement)
    return module.to(placement.device)


# --------------------------------------------------------------------------------------------
# Gradients and collectives
# --------------------------------------------------------------------------------------------


def loss_scale(placement: Placement) -> float:
    """What a process multiplies its loss (sum over its examples / global batch size) by before
    ``backward()``: the world size, undone by the averaging reduction."""
    return float(placement.world.size)


def reduce_gradients(parameters: Iterable[nn.Parameter], placement: Placement) -> None:
    """Average the gradients over the processes for replicas (``shard: none``); FSDP2 has
    already reduced them in backward, and one process has nothing to do. One all-reduce per
    dtype over a flattened buffer."""
    if placement.world.size == 1 or placement.sharded:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for param in parameters:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        by_dtype.setdefault(param.grad.dtype, []).append(param.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= placement.world.size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()


def clip_grad_norm(parameters: Sequence[nn.Parameter], max_norm: float) -> float:
    """``clip_grad_norm_`` (sharded parameters included: the norm is the global one); returns
    the norm before clipping. ``max_norm <= 0`` only measures."""
    limit = max_norm if max_norm > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(list(parameters), limit)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return float(norm)


def all_reduce_sum(values: Sequence[float] | torch.Tensor, placement: Placement) -> torch.Tensor:
    """The element-wise sum over the processes of a vector (a float64 CPU tensor back)."""
    tensor = torch.as_tensor(values, dtype=torch.float64).reshape(-1).clone()
    if placement.world.size > 1:
        device = placement.device if placement.device.type == "cuda" else torch.device("cpu")
        moved = tensor.to(device)
        dist.all_reduce(moved)
        tensor = moved.cpu()
    return tensor


def all_gather_objects(value: Any, placement: Placement) -> list[Any]:
    """``value`` from every process, in rank order ([value] alone)."""
    if placement.world.size == 1:
        return [value]
    gathered: list[Any] = [None] * placement.world.size
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: Any, placement: Placement) -> Any:
    """Rank 0's ``value`` on every process."""
    if placement.world.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------------------------
# Splitting batches
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Share:
    """This process's part of a global batch: ``items`` with ``real[i]`` false for a dummy
    (a copy of an item added so that every process runs as many passes; weight it 0)."""

    items: list[Any]
    real: list[bool]

    @property
    def num_real(self) -> int:
        return sum(self.real)


def equal_shares(items: Sequence[T], world: World, *, contiguous: bool = False) -> Share:
    """This rank's share of ``items`` — every ``size``-th item from ``rank`` (strided) or the
    ``rank``-th contiguous block — padded with copies of ``items[0]`` to ``ceil(n / size)``, so
    that every rank holds the same number of items."""
    n = len(items)
    if n == 0:
        raise ValueError("nothing to share")
    per_rank = -(-n // world.size)
    if contiguous:
        local = list(items[world.rank * per_rank : (world.rank + 1) * per_rank])
    else:
        local = list(items[world.rank :: world.size])
    real = [True] * len(local) + [False] * (per_rank - len(local))
    return Share(local + [items[0]] * (per_rank - len(local)), real)


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive pieces of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def full_state_dict(module: nn.Module, placement: Placement) -> dict[str, torch.Tensor]:
    """The full parameters and persistent buffers of ``module`` on the CPU, on rank 0 ({} on
    the others). Sharded modules are gathered with ``torch.distributed.checkpoint``'s
    ``get_model_state_dict(full_state_dict=True, cpu_offload=True)``, a collective call: every
    process must make it."""
    if placement.sharded:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(module, options=options)
        return state if placement.world.is_main else {}
    if not placement.world.is_main:
        return {}
    return {k: v.detach().to("cpu") for k, v in module.state_dict().items()}


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix`` (a wrapper's attribute name and a dot), renamed without it."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_into_meta(template: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Fill a model built on the meta device with ``state`` (no copy: the tensors are
    assigned), re-tie its tied weights and give it real (CPU) non-persistent buffers by
    recomputing them from its config (rotary frequencies)."""
    template.load_state_dict(state, strict=True, assign=True)
    if hasattr(template, "tie_weights"):
        template.tie_weights()
    for module in template.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.is_meta:
                module.register_buffer(name, torch.zeros(buffer.shape, dtype=buffer.dtype))
    return template


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """The module in eval mode inside the block (generation wants its KV cache, which Hugging
    Face turns off for a model in train mode with gradient checkpointing), restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
