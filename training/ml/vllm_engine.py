"""What samples completions: Hugging Face ``generate`` or, where installed, vLLM.

Both engines, :class:`VLLMEngine` here and :class:`~training.ml.generation.HFEngine`, take
token-id queries and :class:`~training.ml.sampling.SamplingSettings` and return
:class:`~training.ml.sampling.SampledResponses` (response ids truncated after the first EOS, which
is kept, and an EOS flag per response), with the same ``sample``/``sample_share``/
``sync_weights``/``close`` methods, so PPO's rollout and the generate job do not care which one
ran. Log-probs for PPO's loss are always
recomputed by the trainer from these tokens (``logits / temperature``); vLLM's own log-probs are
never asked for.

Choosing (:func:`choose_engine`): ``rollout_engine: auto`` takes vLLM when the package is
importable (the ``[vllm]`` extra, GPU machines only) and the device is CUDA, else HF; ``hf``
always HF; ``vllm`` refuses to start (``ValueError``) without vLLM or without CUDA. ``vllm`` is
imported only inside :func:`launch_vllm`: nothing here needs it installed.

Sampling: both engines sample from ``softmax(logits / temperature)`` with nucleus ``top_p`` and
no top-k, repetition penalty or minimum length (the model's ``generation_config`` is ignored:
``generation_config="vllm"``), stopping at any of the EOS ids (the tokenizer's EOS and the chat
template's end-of-turn token). HF seeds torch's RNG per chunk of queries; vLLM gets one seed per
request (``SamplingParams(seed=...)``), a function of the run's seed and the request's index, so a
request samples the same tokens whatever else is in the batch. The two engines draw different
tokens from the same distribution: a run is reproducible on one engine, not across them.

PPO (colocated, one node): like TRL's ``vllm_mode="colocate"`` and verl's hybrid engine, every
training process holds a vLLM engine on its own GPU. Under ``torchrun`` the engines use vLLM's
``external_launcher`` backend, which makes the processes of a node one tensor-parallel group: a
model is split over the node's GPUs, every process of the group submits the same requests (the
episodes of the whole group, each with its seed) and keeps its own share. In a single process
the engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that weights can
be loaded into it directly. The engine sleeps (``llm.sleep(level=1)``: weights to CPU memory, KV
cache dropped) while the trainer recomputes log-probs and updates; after each update
:meth:`VLLMEngine.sync_weights` wakes the weights, streams the policy's full parameters into the
running model (``model_runner.model.load_weights`` through ``LLM.collective_rpc``, as OpenRLHF's
and verl's worker extensions and vLLM's RLHF examples do), with FSDP2 shards gathered one
parameter at a time and a LoRA adapter merged in, and resets the prefix cache; the KV cache is
woken just before the next rollout.

Generate job: one engine for the job's process, tensor parallel over every visible GPU, vLLM's
own worker processes; no weights to sync.

Status: the vLLM path is tested on the CPU through a stand-in with vLLM's ``LLM`` /
``SamplingParams`` surface (``tests/helpers/fake_vllm.py``); it has not yet been run against a
real vLLM on a GPU in this repository.
"""

from __future__ import annotations

import gc
import importlib.util
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from training.ml import device as device_lib
from training.ml.common import StopFn, check_stop
from training.ml.sampling import (
    EngineName,
    SampledResponses,
    SamplingSettings,
    truncate_at_eos,
)

ENGINE_CHOICES = ("auto", "hf", "vllm")
"""What a config's ``rollout_engine`` may say."""

WEIGHT_BATCH_BYTES = 1 << 30
"""Bytes of parameters handed to vLLM's ``load_weights`` per call during a weight sync."""


# ================================================================================================
# Choosing the engine
# ================================================================================================


def vllm_installed() -> bool:
    """Whether ``import vllm`` would find a package (without importing it)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except ValueError:  # in sys.modules without a spec
        return True


def device_supports_vllm(device: torch.device) -> bool:
    """vLLM runs on CUDA devices only (here)."""
    return device.type == "cuda"


def choose_engine(requested: str | None, device: torch.device) -> EngineName:
    """The engine for ``rollout_engine = requested`` on ``device``: ``auto`` (or ``None``) takes
    vLLM when it is installed and the device is CUDA, else HF; ``vllm`` without either is a
    ``ValueError`` that says what is missing."""
    requested = requested or "auto"
    if requested not in ENGINE_CHOICES:
        raise ValueError(f"unknown rollout_engine {requested!r}: one of {list(ENGINE_CHOICES)}")
    if requested == "hf":
        return "hf"
    available = vllm_installed() and device_supports_vllm(device)
    if requested == "auto":
        return "vllm" if available else "hf"
    if not device_supports_vllm(device):
        raise ValueError(
            f"rollout_engine 'vllm' needs a CUDA device, and this job runs on {device.type}: "
            "use 'auto' or 'hf'"
        )
    if not vllm_installed():
        raise ValueError(
            "rollout_engine 'vllm' needs vLLM, which is not installed on this worker "
            "(pip install \".[vllm]\"): use 'auto' or 'hf'"
        )
    return "vllm"


# ================================================================================================
# Sampling settings
# ================================================================================================


def request_seed(seed: int, index: int) -> int:
    """The vLLM seed of request ``index`` of a call seeded with ``seed`` (a 63-bit value)."""
    return (seed * 1_000_003 + index + 1) % (2**63 - 1)


def sampling_params_kwargs(settings: SamplingSettings, seed: int | None) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one request: plain ancestral sampling
    as in :func:`training.ml.generation.sample_responses` (no top-k, repetition penalty or
    minimum length), stopping at any EOS id."""
    return {
        "n": 1,
        "temperature": settings.temperature,
        "top_p": settings.top_p if settings.temperature > 0 else 1.0,
        "top_k": settings.top_k,
        "repetition_penalty": 1.0,
        "max_tokens": settings.max_new_tokens,
        "min_tokens": 0,
        "seed": seed,
        "stop_token_ids": sorted(settings.eos_token_ids),
    }


def group_range(num_queries: int, world: device_lib.World, group_size: int) -> range:
    """The queries of this process's tensor-parallel group: the contiguous block of the
    ``group_size`` consecutive ranks it belongs to, each of which holds ``num_queries /
    world.size`` (contiguous shares, as :func:`training.ml.ppo.episode_share` cuts them)."""
    per_rank = num_queries // world.size
    first = (world.rank // group_size) * group_size
    return range(first * per_rank, (first + group_size) * per_rank)


# ================================================================================================
# vLLM
# ================================================================================================


class VLLMEngine:
    """A running ``vllm.LLM``: samples token ids, takes new weights, sleeps between rollouts."""

    name: EngineName = "vllm"

    def __init__(
        self,
        llm: Any,
        *,
        sampling_params: Callable[..., Any],
        device: torch.device,
        dtype: torch.dtype,
        world: device_lib.World = device_lib.SINGLE_PROCESS,
        tensor_parallel_size: int = 1,
        sleep_mode: bool = False,
    ) -> None:
        self.llm = llm
        self.sampling_params = sampling_params
        """``vllm.SamplingParams``"""
        self.device = device
        self.dtype = dtype
        """the engine's weight dtype: synced parameters are cast to it before loading"""
        self.world = world
        self.tensor_parallel_size = tensor_parallel_size
        self.sleep_mode = sleep_mode
        self.asleep: set[str] = set()
        """the parts of the engine (``weights``, ``kv_cache``) that are asleep"""
        self.weight_syncs = 0

    def describe(self) -> str:
        tp = self.tensor_parallel_size
        parts = [f"rollouts sampled by vLLM (tensor parallel over {tp} GPU{'s' * (tp > 1)}"]
        if self.sleep_mode:
            parts.append("colocated with the trainer, asleep during updates")
        parts.append("weights synced after every update; log-probs recomputed by the trainer)")
        return ", ".join(parts)

    # --- sampling

    def sample(
        self,
        queries: Sequence[Sequence[int]],
        settings: SamplingSettings,
        *,
        seed_of: Callable[[int], int] | None = None,
        should_stop: StopFn | None = None,
    ) -> SampledResponses:
        """One response per query; request ``i`` is seeded with ``seed_of(i)`` (default: from
        ``settings.seed`` and ``i``; no seed at all when both are ``None``)."""
        check_stop(should_stop, "stopped before generation")
        if seed_of is None and settings.seed is not None:
            base = settings.seed
            seed_of = lambda i: request_seed(base, i)  # noqa: E731
        params = [
            self.sampling_params(
                **sampling_params_kwargs(settings, seed_of(i) if seed_of else None)
            )
            for i in range(len(queries))
        ]
        prompts = [{"prompt_token_ids": [int(t) for t in q]} for q in queries]
        self.wake_up()
        try:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        finally:
            self.sleep()
        out = SampledResponses()
        for request in outputs:
            tokens, emitted = response_tokens(request.outputs[0], settings.eos_token_ids)
            out.responses.append(tokens)
            out.eos.append(emitted)
        return out

    def sample_share(
        self,
        queries: Sequence[Sequence[int]],
        share: range,
        settings: SamplingSettings,
        *,
        seed_of: Callable[[int], int],
        should_stop: StopFn | None = None,
    ) -> SampledResponses:
        """This process's ``share`` of the global ``queries``: the tensor-parallel group's
        queries are all submitted (the same requests on every process of the group), global
        query ``i`` with seed ``seed_of(i)``, and this process keeps its own."""
        group = group_range(len(queries), self.world, self.tensor_parallel_size)
        sampled = self.sample(
            [queries[i] for i in group],
            settings,
            seed_of=lambda i: seed_of(group.start + i),
            should_stop=should_stop,
        )
        keep = slice(share.start - group.start, share.stop - group.start)
        return SampledResponses(responses=sampled.responses[keep], eos=sampled.eos[keep])

    # --- weights

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Load the policy's current full parameters into the running engine (every process
        calls this: gathering FSDP2 shards is collective), then drop the prefix cache, which
        holds keys and values of the old weights."""
        self.wake_up(("weights",))
        for batch in weight_batches(policy_weights(policy), WEIGHT_BATCH_BYTES):
            batch = [(name, t.to(self.device, self.dtype)) for name, t in batch]
            self.llm.collective_rpc(_load_weights_on_worker, args=(batch,))
        self.llm.reset_prefix_cache()
        self.weight_syncs += 1

    # --- memory

    def sleep(self) -> None:
        """Colocated: weights to CPU memory and the KV cache dropped (level 1), leaving the GPU
        to the trainer. A no-op without sleep mode."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}

    def wake_up(self, tags: Sequence[str] = ("weights", "kv_cache")) -> None:
        """Bring back the parts in ``tags`` that are asleep (weights before a sync, everything
        before generating)."""
        waking = [tag for tag in tags if tag in self.asleep]
        if waking:
            self.llm.wake_up(tags=waking)
            self.asleep -= set(waking)

    def close(self) -> None:
        """Release the engine and its GPU memory (best effort: vLLM offers no public close)."""
        shutdown = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if shutdown is not None and hasattr(shutdown, "shutdown"):
            shutdown.shutdown()
        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _load_weights_on_worker(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Runs on a vLLM worker (``LLM.collective_rpc`` passes the worker first): the model's own
    ``load_weights`` maps Hugging Face names onto its (fused, tensor-parallel) parameters."""
    worker.model_runner.model.load_weights(weights=weights)


def response_tokens(output: Any, eos_token_ids: Iterable[int]) -> tuple[list[int], bool]:
    """A vLLM ``CompletionOutput``'s token ids truncated after the first EOS (kept) and whether
    it emitted one; a stop token vLLM reports only as ``stop_reason`` is put back."""
    eos = set(eos_token_ids)
    tokens = [int(t) for t in output.token_ids]
    stop = getattr(output, "stop_reason", None)
    if (
        getattr(output, "finish_reason", None) == "stop"
        and isinstance(stop, int)
        and stop in eos
        and (not tokens or tokens[-1] != stop)
    ):
        tokens.append(stop)
    return truncate_at_eos(tokens, eos)


def launch_vllm(
    model_dir: str | Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    gpu_memory_utilization: float,
    seed: int,
    tensor_parallel_size: int | None = None,
    world: device_lib.World = device_lib.SINGLE_PROCESS,
    colocated: bool = False,
) -> VLLMEngine:
    """Start ``vllm.LLM`` on the model in ``model_dir``.

    ``colocated`` (PPO): the engine shares the GPUs with the trainer, sleeps between rollouts
    and takes weights in process: under ``torchrun`` (``world.size`` > 1) through vLLM's
    ``external_launcher`` with the node's processes as one tensor-parallel group, alone with
    its engine core in this process. Otherwise (the generate job): tensor parallel over
    ``tensor_parallel_size`` GPUs (default: every visible one) in vLLM's own workers.
    """
    import vllm  # the [vllm] extra: GPU machines only

    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        "tokenizer": str(model_dir),
        "dtype": str(dtype).removeprefix("torch."),
        "gpu_memory_utilization": gpu_memory_utilization,
        "seed": seed,
        "generation_config": "vllm",  # sample as told, not with the model's defaults
    }
    if colocated:
        tp = tensor_parallel_size or local_world_size(world)
        kwargs["enable_sleep_mode"] = True
        if world.size > 1:
            kwargs["distributed_executor_backend"] = "external_launcher"
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # weights loadable in process
    else:
        tp = tensor_parallel_size or max(1, torch.cuda.device_count())
        kwargs["enable_sleep_mode"] = False
    kwargs["tensor_parallel_size"] = tp
    llm = vllm.LLM(**kwargs)
    engine = VLLMEngine(
        llm,
        sampling_params=vllm.SamplingParams,
        device=device,
        dtype=dtype,
        world=world,
        tensor_parallel_size=tp,
        sleep_mode=colocated,
    )
    engine.sleep()
    return engine


def local_world_size(world: device_lib.World) -> int:
    """Processes on this node (torchrun's ``LOCAL_WORLD_SIZE``): one tensor-parallel group."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world.size))


# ================================================================================================
# The policy's weights under Hugging Face names
# ================================================================================================

_WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")
_PEFT_PREFIX = "base_model.model."


def hf_name(name: str) -> str:
    """A parameter name of the trained model as the Hugging Face checkpoint names it: without
    peft's prefix and ``base_layer``, or wrapper modules' parts."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name.removeprefix(_PEFT_PREFIX).replace(".base_layer.", ".")


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: an FSDP2 shard (``DTensor``) is all-gathered (collective)."""
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        if tensor.device.type == "cpu" and torch.cuda.is_available():  # CPU offload
            tensor = tensor.to("cuda")
        return tensor.full_tensor()
    return tensor


def policy_weights(policy: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's full parameters and persistent buffers, one at a time, under Hugging Face
    names, a LoRA adapter merged in (``W + scaling · B A``) without touching the model.

    Every process of a sharded model must iterate to the end (each gather is collective); the
    order is the module's ``state_dict`` order, the same on every process.
    """
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for raw_name, tensor in policy.state_dict().items():
        tensor = _full(tensor).detach()
        if ".lora_" not in raw_name and ".base_layer.weight" not in raw_name:
            yield hf_name(raw_name), tensor
            continue
        module_path, part = _lora_part(raw_name)
        parts = pending.setdefault(module_path, {})
        parts[part] = tensor
        if {"base", "A", "B"} <= set(parts):
            module = policy.get_submodule(module_path)
            yield hf_name(f"{module_path}.weight"), _merged(module, pending.pop(module_path))
    if pending:
        raise ValueError(f"LoRA layers without all their parts: {sorted(pending)}")


def _lora_part(name: str) -> tuple[str, str]:
    """``(module path, "base" | "A" | "B")`` of a LoRA layer's state-dict entry."""
    if name.endswith(".base_layer.weight"):
        return name.removesuffix(".base_layer.weight"), "base"
    for part in ("A", "B"):
        marker = f".lora_{part}."
        if marker in name:
            return name.split(marker)[0], part
    raise ValueError(f"unsupported adapter parameter {name!r} (only LoRA on linear layers)")


def _merged(module: torch.nn.Module, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """``base + scaling · B @ A`` of one LoRA linear layer (its active adapter)."""
    adapter = module.active_adapters[0]
    delta = parts["B"].float() @ parts["A"].float() * module.scaling[adapter]
    if getattr(module, "fan_in_fan_out", False):
        delta = delta.T
    return (parts["base"].float() + delta).to(parts["base"].dtype)


def weight_batches(
    weights: Iterable[tuple[str, torch.Tensor]], max_bytes: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Consecutive groups of ``weights`` of at most ``max_bytes`` each (a larger tensor
    alone)."""
    batch: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in weights:
        nbytes = tensor.numel() * tensor.element_size()
        if batch and size + nbytes > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append((name, tensor))
        size += nbytes
    if batch:
        yield batch
