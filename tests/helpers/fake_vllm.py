"""A stand-in for the ``vllm`` package on the CPU: the surface ``training.ml.vllm_engine`` uses.

``LLM(model=..., tensor_parallel_size=..., dtype=..., gpu_memory_utilization=...,
enable_sleep_mode=..., ...)``, ``LLM.generate(prompts, sampling_params, use_tqdm=...)`` returning
objects shaped like vLLM's ``RequestOutput`` (``.prompt_token_ids``, ``.outputs[0].token_ids``,
``.text``, ``.finish_reason``, ``.stop_reason``), ``SamplingParams`` with vLLM's keyword names and
checks, ``LLM.collective_rpc`` (a callable gets the worker first, whose
``model_runner.model.load_weights(weights=...)`` takes Hugging Face names), ``sleep(level=)``,
``wake_up(tags=)`` and ``reset_prefix_cache()``.

Underneath, a Hugging Face model loaded from the same directory generates, so the outputs are
real tokens; each request is seeded with its ``SamplingParams.seed``. Generating or loading
weights while the engine sleeps raises, as it would crash a real one. Install it with
:func:`install` (``sys.modules["vllm"]``); every ``LLM`` built is kept in ``module.instances``.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


class SamplingParams:
    """vLLM's keyword names (those the project uses, and a few neighbours) and its checks."""

    def __init__(
        self,
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        max_tokens: int | None = 16,
        min_tokens: int = 0,
        seed: int | None = None,
        stop_token_ids: list[int] | None = None,
        ignore_eos: bool = False,
        skip_special_tokens: bool = True,
        logprobs: int | None = None,
    ) -> None:
        if temperature < 0.0:
            raise ValueError(f"temperature must be non-negative, got {temperature}.")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
        if top_k < -1:
            raise ValueError(f"top_k must be 0 (disable), or at least 1, got {top_k}.")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}.")
        self.n = n
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.min_p = min_p
        self.repetition_penalty = repetition_penalty
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self.seed = seed
        self.stop_token_ids = list(stop_token_ids or [])
        self.ignore_eos = ignore_eos
        self.skip_special_tokens = skip_special_tokens
        self.logprobs = logprobs


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True


@dataclass
class FakeModel:
    """What ``worker.model_runner.model`` is: ``load_weights`` by Hugging Face name."""

    hf_model: torch.nn.Module
    llm: LLM
    loads: list[dict[str, torch.Tensor]] = field(default_factory=list)
    """the weights of every ``load_weights`` call, by name (copies)"""

    def load_weights(self, weights: Any) -> set[str]:
        if "weights" in self.llm.asleep:
            raise RuntimeError("load_weights while the weights sleep")
        state = self.hf_model.state_dict()
        loaded = {}
        for name, tensor in weights:
            if name not in state:
                raise KeyError(f"no parameter {name!r} in the model")
            state[name].copy_(tensor)
            loaded[name] = tensor.detach().clone()
        self.loads.append(loaded)
        return set(loaded)


class LLM:
    """``vllm.LLM`` generating with a Hugging Face model on the CPU."""

    def __init__(self, model: str, **kwargs: Any) -> None:
        self.init_kwargs = {"model": model, **kwargs}
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs.get("tokenizer") or model)
        self.hf_model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.model = FakeModel(self.hf_model, self)
        self.worker = SimpleNamespace(model_runner=SimpleNamespace(model=self.model))
        self.asleep: set[str] = set()
        self.calls: list[tuple[str, Any]] = []
        """``("generate", [SamplingParams, ...])``, ``("sleep", level)``, ``("wake_up", tags)``,
        ``("collective_rpc", method)``, ``("reset_prefix_cache", None)`` in order"""
        sys.modules["vllm"].instances.append(self)

    def generate(
        self, prompts: Any, sampling_params: Any = None, *, use_tqdm: bool = True
    ) -> list[RequestOutput]:
        if self.asleep:
            raise RuntimeError(f"generate while asleep: {sorted(self.asleep)}")
        prompts = list(prompts)
        params = sampling_params or SamplingParams()
        params = list(params) if isinstance(params, list | tuple) else [params] * len(prompts)
        self.calls.append(("generate", params))
        return [
            self._one(str(i), prompt["prompt_token_ids"], p)
            for i, (prompt, p) in enumerate(zip(prompts, params, strict=True))
        ]

    def _one(self, request_id: str, ids: list[int], params: SamplingParams) -> RequestOutput:
        stops = set(params.stop_token_ids)
        if not params.ignore_eos and self.tokenizer.eos_token_id is not None:
            stops.add(self.tokenizer.eos_token_id)
        sampling = (
            {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
            if params.temperature > 0
            else {"do_sample": False}
        )
        with torch.random.fork_rng(devices=[]):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            generated = self.hf_model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=params.max_tokens,
                top_k=params.top_k,
                repetition_penalty=params.repetition_penalty,
                eos_token_id=sorted(stops),
                pad_token_id=self.tokenizer.pad_token_id or 0,
                **sampling,
            )[0, len(ids) :].tolist()
        tokens, finish, stop_reason = [], "length", None
        for token in generated:
            tokens.append(token)
            if token in stops:
                finish = "stop"
                stop_reason = token if token in params.stop_token_ids else None
                break
        text = self.tokenizer.decode(tokens, skip_special_tokens=params.skip_special_tokens)
        output = CompletionOutput(0, text, tokens, finish_reason=finish, stop_reason=stop_reason)
        return RequestOutput(request_id, None, list(ids), [output])

    def collective_rpc(
        self,
        method: Any,
        timeout: float | None = None,
        args: tuple = (),
        kwargs: dict[str, Any] | None = None,
    ) -> list[Any]:
        self.calls.append(("collective_rpc", method))
        call = getattr(self.worker, method) if isinstance(method, str) else method
        prefix = () if isinstance(method, str) else (self.worker,)
        return [call(*prefix, *args, **(kwargs or {}))]

    def sleep(self, level: int = 1) -> None:
        if not self.init_kwargs.get("enable_sleep_mode"):
            raise ValueError("sleep mode is not enabled")
        self.calls.append(("sleep", level))
        self.asleep = {"weights", "kv_cache"}

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(("wake_up", tags))
        self.asleep -= set(tags or ("weights", "kv_cache"))

    def reset_prefix_cache(self) -> bool:
        self.calls.append(("reset_prefix_cache", None))
        return True


def module() -> types.ModuleType:
    """A fresh ``vllm`` module object (with a spec, so ``importlib.util.find_spec`` finds it)."""
    fake = types.ModuleType("vllm")
    fake.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    fake.__version__ = "0.32.0+stand-in"
    fake.LLM = LLM
    fake.SamplingParams = SamplingParams
    fake.RequestOutput = RequestOutput
    fake.CompletionOutput = CompletionOutput
    fake.instances = []
    return fake


def install(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Put the stand-in in ``sys.modules["vllm"]`` for one test; returns it."""
    fake = module()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # restored after the test
    return fake
