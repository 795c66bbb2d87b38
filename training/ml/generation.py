"""Sampling completions from a policy: K per prompt, left padding, truncated at the first EOS.

Used by PPO rollouts (:func:`sample_responses`, token level) and by the job that generates the next
labelling round (:func:`generate_completions`, text level). :class:`HFEngine` is the Hugging Face
engine; :func:`open_sampler` takes it or, where vLLM is installed and the device is CUDA, the vLLM
engine of ``training.ml.vllm_engine`` (``rollout_engine``), and every :class:`Completion` records
the engine that produced it.

Sampling is plain ancestral sampling with ``temperature`` and ``top_p``; top-k, repetition
penalties and the like from the model's own ``generation_config`` are switched off, so that the
log-probs PPO recomputes with ``logits / temperature`` describe the distribution actually sampled.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from training.ml import device as device_lib
from training.ml.common import StopFn, check_stop, load_tokenizer
from training.ml.config import SamplingConfig
from training.ml.parallel import frozen_dtype
from training.ml.policy import Prompt, encode_prompt, load_causal_lm
from training.ml.prompts import end_of_turn_id
from training.ml.sampling import (
    EngineName,
    SampledResponses,
    SamplingSettings,
    truncate_at_eos,
)
from training.ml.vllm_engine import VLLMEngine, choose_engine, launch_vllm


@dataclass(frozen=True)
class Completion:
    """One sampled completion."""

    prompt_index: int
    """index of its prompt in the input list"""
    text: str
    """decoded response, EOS and special tokens removed"""
    token_ids: tuple[int, ...]
    """response token ids, ending with EOS when ``eos`` is true"""
    eos: bool
    """whether the policy emitted EOS within ``max_new_tokens``"""
    engine: EngineName = "hf"
    """what sampled it: ``hf`` (Hugging Face generate) or ``vllm``"""


def eos_token_ids(
    tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module | None = None
) -> set[int]:
    """The tokenizer's EOS, its chat template's end-of-turn token (``training.ml.prompts``) and
    any extra EOS ids in the model's generation config."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    end_of_turn = end_of_turn_id(tokenizer)
    if end_of_turn is not None:
        ids.add(end_of_turn)
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif extra is not None:
        ids.update(int(i) for i in extra)
    if not ids:
        raise ValueError("the tokenizer defines no EOS token")
    return ids


def _left_pad(
    queries: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(q) for q in queries)
    input_ids = torch.full((len(queries), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, query in enumerate(queries):
        if query:
            input_ids[row, width - len(query) :] = torch.tensor(list(query))
            attention_mask[row, width - len(query) :] = 1
    return input_ids, attention_mask


@torch.no_grad()
def sample_responses(
    model: torch.nn.Module,
    queries: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    eos_token_ids: Iterable[int],
    temperature: float,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int | None = None,
    should_stop: StopFn | None = None,
    synced_gpus: bool = False,
    chunk_seed: Callable[[int], int] | None = None,
    device: torch.device | None = None,
) -> SampledResponses:
    """Sample one response per query (repeat a query K times for K samples).

    Queries are left-padded per chunk of ``batch_size``; ``generate`` derives position ids from
    the attention mask. Uses torch's global RNG: seed it (``training.ml.device.seeded``) first,
    or give ``chunk_seed(start)``, the seed of the chunk starting at query ``start``, which
    makes each chunk's draws independent of what was sampled before (a resumed or
    differently-split run samples the same tokens). ``synced_gpus``: the model is sharded over
    processes (FSDP), which must then all run as many decoding steps (Hugging Face keeps a
    finished process stepping until every process is done).
    """
    eos_ids = sorted(set(eos_token_ids))
    device = device or next(model.parameters()).device
    chunk = batch_size or len(queries)
    greedy = temperature == 0
    sampling_kwargs = (
        {"do_sample": False}
        if greedy
        else {"do_sample": True, "temperature": temperature, "top_p": top_p}
    )
    out = SampledResponses()
    for start in range(0, len(queries), chunk):
        check_stop(should_stop, "stopped during generation")
        input_ids, attention_mask = _left_pad(queries[start : start + chunk], pad_token_id)
        seeded = (
            device_lib.seeded(chunk_seed(start), device)
            if chunk_seed is not None
            else contextlib.nullcontext()
        )
        with seeded, device_lib.autocast(device):
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                min_new_tokens=0,
                top_k=0,
                repetition_penalty=1.0,
                no_repeat_ngram_size=0,
                pad_token_id=pad_token_id,
                eos_token_id=eos_ids,
                synced_gpus=synced_gpus,
                **sampling_kwargs,
            )
        for row in generated[:, input_ids.shape[1] :].tolist():
            tokens, emitted = truncate_at_eos(row, eos_ids)
            out.responses.append(tokens)
            out.eos.append(emitted)
    return out


class HFEngine:
    """``model.generate`` on the trained (or loaded) model itself: nothing to sync."""

    name: EngineName = "hf"

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        pad_token_id: int,
        batch_size: int | None,
        device: torch.device | None = None,
        synced_gpus: bool = False,
    ) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
        self.batch_size = batch_size
        self.device = device
        self.synced_gpus = synced_gpus

    def describe(self) -> str:
        return "rollouts sampled by Hugging Face generate on the trained policy"

    def sample(
        self,
        queries: Sequence[Sequence[int]],
        settings: SamplingSettings,
        *,
        chunk_seed: Callable[[int], int] | None = None,
        should_stop: StopFn | None = None,
    ) -> SampledResponses:
        """One response per query (:func:`~training.ml.generation.sample_responses`)."""
        device = self.device or next(self.model.parameters()).device
        seeded = (
            device_lib.seeded(settings.seed, device)
            if settings.seed is not None
            else contextlib.nullcontext()
        )
        with seeded:
            return sample_responses(
                self.model,
                queries,
                pad_token_id=self.pad_token_id,
                eos_token_ids=settings.eos_token_ids,
                temperature=settings.temperature,
                top_p=settings.top_p,
                max_new_tokens=settings.max_new_tokens,
                batch_size=self.batch_size,
                should_stop=should_stop,
                synced_gpus=self.synced_gpus,
                chunk_seed=chunk_seed,
                device=self.device,
            )

    def sample_share(
        self,
        queries: Sequence[Sequence[int]],
        share: range,
        settings: SamplingSettings,
        *,
        seed_of: Callable[[int], int],
        should_stop: StopFn | None = None,
    ) -> SampledResponses:
        """This process's ``share`` of the global ``queries``; the chunk starting at global
        query ``i`` is seeded with ``seed_of(i)``."""
        return self.sample(
            [queries[i] for i in share],
            settings,
            chunk_seed=lambda first: seed_of(share.start + first),
            should_stop=should_stop,
        )

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Nothing: the engine samples from the trained model itself."""

    def close(self) -> None:
        """Nothing to release."""


_CONTROL_CHARACTERS = {c: None for c in range(32) if chr(c) not in "\n\t"} | {0x7F: None}


def decode_response(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int]) -> str:
    """The completion text: special tokens (EOS included) dropped, and control characters other
    than newline and tab removed (a byte-level model can emit NUL, which PostgreSQL refuses in
    text and which no labeller can read)."""
    text = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    return text.translate(_CONTROL_CHARACTERS)


def generate_with_engine(
    engine: HFEngine | VLLMEngine,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    config: SamplingConfig,
    *,
    eos_ids: Iterable[int],
    should_stop: StopFn | None = None,
) -> list[list[Completion]]:
    """K completions for each prompt from a ready engine; ``result[i]`` belongs to
    ``prompts[i]``. HF seeds torch's RNG with ``config.seed`` around the whole call; vLLM seeds
    each request from ``config.seed`` and its index."""
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    if config.max_prompt_tokens is not None:
        encoded = [ids[-config.max_prompt_tokens :] for ids in encoded]
    queries = [ids for ids in encoded for _ in range(config.num_completions)]
    settings = SamplingSettings(
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        eos_token_ids=tuple(sorted(set(eos_ids))),
        seed=config.seed,
    )
    sampled = engine.sample(queries, settings, should_stop=should_stop)
    result: list[list[Completion]] = [[] for _ in prompts]
    for i, (tokens, emitted) in enumerate(zip(sampled.responses, sampled.eos, strict=True)):
        prompt_index = i // config.num_completions
        text = decode_response(tokenizer, tokens)
        result[prompt_index].append(
            Completion(prompt_index, text, tuple(tokens), emitted, engine=engine.name)
        )
    return result


def generate_with_model(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    config: SamplingConfig,
    *,
    should_stop: StopFn | None = None,
) -> list[list[Completion]]:
    """K completions for each prompt from an already loaded model (Hugging Face generate);
    ``result[i]`` belongs to ``prompts[i]``."""
    engine = HFEngine(model, pad_token_id=tokenizer.pad_token_id, batch_size=config.batch_size)
    eos_ids = eos_token_ids(tokenizer, model)
    return generate_with_engine(
        engine, tokenizer, prompts, config, eos_ids=eos_ids, should_stop=should_stop
    )


@dataclass
class PolicySampler:
    """A policy loaded once for several draws (a job's first draw and its redraws)."""

    engine: HFEngine | VLLMEngine
    tokenizer: PreTrainedTokenizerBase
    eos_ids: set[int]
    """the EOS ids of the tokenizer, its chat template and the model's generation config"""

    @property
    def engine_name(self) -> str:
        """``hf`` or ``vllm``."""
        return self.engine.name

    def generate(
        self,
        prompts: Sequence[Prompt],
        config: SamplingConfig,
        *,
        should_stop: StopFn | None = None,
    ) -> list[list[Completion]]:
        """``config.num_completions`` completions per prompt (:func:`generate_with_engine`)."""
        return generate_with_engine(
            self.engine,
            self.tokenizer,
            prompts,
            config,
            eos_ids=self.eos_ids,
            should_stop=should_stop,
        )


def _generation_config_of(model_dir: str | Path) -> Any:
    """An object whose ``generation_config`` is the directory's (``None`` without one), for
    :func:`eos_token_ids` when no Hugging Face model is loaded."""
    try:
        config = GenerationConfig.from_pretrained(str(model_dir))
    except OSError:
        config = None
    return SimpleNamespace(generation_config=config)


@contextlib.contextmanager
def open_sampler(model_dir: str | Path, config: SamplingConfig) -> Iterator[PolicySampler]:
    """The policy in ``model_dir`` ready to sample, on the engine ``config.rollout_engine``
    chooses (``training.ml.vllm_engine.choose_engine``): vLLM tensor parallel over every
    visible GPU, or the model loaded for Hugging Face generate (bf16 on CUDA). Released on
    exit."""
    device = device_lib.pick_device(config.device)
    tokenizer = load_tokenizer(model_dir, padding_side="left")
    engine: HFEngine | VLLMEngine
    if choose_engine(config.rollout_engine, device) == "vllm":
        engine = launch_vllm(
            model_dir,
            device=device,
            dtype=frozen_dtype(device),
            gpu_memory_utilization=config.vllm_gpu_memory_utilization,
            seed=config.seed,
        )
        eos_ids = eos_token_ids(tokenizer, _generation_config_of(model_dir))
    else:
        model = load_causal_lm(model_dir, device=device, dtype=frozen_dtype(device))  # bf16 on CUDA
        engine = HFEngine(model, pad_token_id=tokenizer.pad_token_id, batch_size=config.batch_size)
        eos_ids = eos_token_ids(tokenizer, model)
    try:
        yield PolicySampler(engine, tokenizer, eos_ids)
    finally:
        engine.close()


_REUSED: contextvars.ContextVar[tuple[contextlib.ExitStack, dict[tuple, PolicySampler]] | None] = (
    contextvars.ContextVar("reused_samplers", default=None)
)
"""The samplers :func:`samplers_reused` keeps open, by model and engine settings."""


@contextlib.contextmanager
def samplers_reused() -> Iterator[None]:
    """Inside the block, :func:`generate_completions` loads each policy (starts its engine) once
    and reuses it for later calls with the same model and engine settings: a job's first draw
    and its redraws. Everything is released on exit."""
    with contextlib.ExitStack() as stack:
        token = _REUSED.set((stack, {}))
        try:
            yield
        finally:
            _REUSED.reset(token)


def generate_completions(
    model_dir: str | Path,
    prompts: Sequence[Prompt],
    config: SamplingConfig | None = None,
    *,
    should_stop: StopFn | None = None,
) -> list[list[Completion]]:
    """Load the policy in ``model_dir`` and sample ``config.num_completions`` per prompt.

    The entry point of the "generate the next labelling round" job. Chat-message prompts go
    through the tokenizer's chat template; string prompts are used as they are. The engine
    (``config.rollout_engine``) is recorded on every completion. Inside
    :func:`samplers_reused` the loaded policy is kept for the next call.
    """
    config = config or SamplingConfig()
    reused = _REUSED.get()
    if reused is None:
        with open_sampler(model_dir, config) as sampler:
            return sampler.generate(prompts, config, should_stop=should_stop)
    stack, samplers = reused
    key = (
        str(model_dir),
        config.device,
        config.rollout_engine,
        config.vllm_gpu_memory_utilization,
        config.batch_size,
    )
    if key not in samplers:
        samplers[key] = stack.enter_context(open_sampler(model_dir, config))
    return samplers[key].generate(prompts, config, should_stop=should_stop)
