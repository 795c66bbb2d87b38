"""Sampling completions from a policy: K per prompt, left padding, truncated at the first EOS.

Used by PPO rollouts (:func:`sample_responses`, token level) and by the job that generates the next
labelling round (:func:`generate_completions`, text level).

Sampling is plain ancestral sampling with ``temperature`` and ``top_p``; top-k, repetition
penalties and the like from the model's own ``generation_config`` are switched off, so that the
log-probs PPO recomputes with ``logits / temperature`` describe the distribution actually sampled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from training.ml import device as device_lib
from training.ml.common import StopFn, check_stop, load_tokenizer
from training.ml.config import SamplingConfig
from training.ml.parallel import frozen_dtype
from training.ml.policy import Prompt, encode_prompt, load_causal_lm
from training.ml.prompts import end_of_turn_id


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


@dataclass
class SampledResponses:
    """Token-level output of :func:`sample_responses`, aligned with its input queries."""

    responses: list[list[int]] = field(default_factory=list)
    """response token ids per query, truncated after the first EOS (which is kept)"""
    eos: list[bool] = field(default_factory=list)
    """whether each response ended with EOS"""


def truncate_at_eos(
    token_ids: Sequence[int], eos_token_ids: Iterable[int]
) -> tuple[list[int], bool]:
    """Cut ``token_ids`` right after the first EOS; return ``(tokens, emitted_eos)``."""
    eos_set = set(eos_token_ids)
    for i, token in enumerate(token_ids):
        if token in eos_set:
            return list(token_ids[: i + 1]), True
    return list(token_ids), False


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


_CONTROL_CHARACTERS = {c: None for c in range(32) if chr(c) not in "\n\t"} | {0x7F: None}


def decode_response(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int]) -> str:
    """The completion text: special tokens (EOS included) dropped, and control characters other
    than newline and tab removed (a byte-level model can emit NUL, which PostgreSQL refuses in
    text and which no labeller can read)."""
    text = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    return text.translate(_CONTROL_CHARACTERS)


def generate_with_model(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    config: SamplingConfig,
    *,
    should_stop: StopFn | None = None,
) -> list[list[Completion]]:
    """K completions for each prompt from an already loaded model; ``result[i]`` belongs to
    ``prompts[i]``."""
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    if config.max_prompt_tokens is not None:
        encoded = [ids[-config.max_prompt_tokens :] for ids in encoded]
    queries = [ids for ids in encoded for _ in range(config.num_completions)]
    device = next(model.parameters()).device
    with device_lib.seeded(config.seed, device):
        sampled = sample_responses(
            model,
            queries,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_ids=eos_token_ids(tokenizer, model),
            temperature=config.temperature,
            top_p=config.top_p,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
            should_stop=should_stop,
        )
    result: list[list[Completion]] = [[] for _ in prompts]
    for i, (tokens, emitted) in enumerate(zip(sampled.responses, sampled.eos, strict=True)):
        prompt_index = i // config.num_completions
        text = decode_response(tokenizer, tokens)
        result[prompt_index].append(Completion(prompt_index, text, tuple(tokens), emitted))
    return result


def generate_completions(
    model_dir: str | Path,
    prompts: Sequence[Prompt],
    config: SamplingConfig | None = None,
    *,
    should_stop: StopFn | None = None,
) -> list[list[Completion]]:
    """Load the policy in ``model_dir`` and sample ``config.num_completions`` per prompt.

    The entry point of the "generate the next labelling round" job. Chat-message prompts go
    through the tokenizer's chat template; string prompts are used as they are.
    """
    config = config or SamplingConfig()
    device = device_lib.pick_device(config.device)
    tokenizer = load_tokenizer(model_dir, padding_side="left")
    model = load_causal_lm(model_dir, device=device, dtype=frozen_dtype(device))  # bf16 on CUDA
    return generate_with_model(model, tokenizer, prompts, config, should_stop=should_stop)
