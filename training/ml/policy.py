"""Shared policy plumbing: loading causal LMs with dropout off, batching query+response token ids,
and per-token log-probs / entropies of the response tokens.

Conventions used by ``generation``, ``ppo`` and ``dpo``:

* A batch is ``[left-padded queries | right-padded responses]``: every query ends at column
  ``context_length - 1`` and every response starts at column ``context_length``. Responses end at
  their first EOS (included); anything after is padding.
* Position ids come from the attention mask (``cumsum - 1``, pads at 0), exactly as
  ``model.generate`` computes them for left-padded prompts, so a padded row gets the same
  log-probs as the row alone.
* Log-probs use ``logits / temperature``: the distribution the tokens were sampled from
  ("The N Implementation Details of RLHF with PPO", Huang et al.).
* A policy's tokenizer is loaded with left padding, the side ``generate`` needs:
  ``training.ml.common.load_tokenizer(model_dir, padding_side="left")``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from training.ml.device import quiet_transformers
from training.ml.prompts import Prompt, encode_prompt, encode_response, render_prompt

__all__ = ["Prompt", "encode_prompt", "encode_response", "prompt_text"]


def prompt_text(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> str:
    """The prompt as text (``training.ml.prompts.render_prompt``)."""
    return render_prompt(tokenizer, prompt)


# --- loading ------------------------------------------------------------------------------------


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Set p=0 on every ``nn.Dropout`` and put the model in eval mode (gradients still flow).

    Eval mode alone switches off the attention dropout that HF models pass to SDPA as a float
    (``dropout_p=... if self.training else 0``); the saved config is left untouched. The training
    loops here call ``.train()`` only for gradient checkpointing (Hugging Face checkpoints in
    train mode), on models :func:`load_causal_lm` loaded with every dropout of the config at 0.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.eval()
    return model


def zero_config_dropout(config: object) -> list[str]:
    """Set every dropout probability of a transformers config to 0 (before the model is built,
    since some layers copy it at init); returns the names changed."""
    changed = []
    for key, value in config.to_dict().items():  # type: ignore[attr-defined]
        if ("dropout" in key or key.endswith("pdrop")) and isinstance(value, float) and value:
            setattr(config, key, 0.0)
            changed.append(key)
    return changed


def load_causal_lm(
    model_dir: str | Path,
    *,
    device: torch.device | str = "cpu",
    trainable: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """Load a causal LM (policy or reference) with dropout off, in eval mode, on ``device``.

    ``trainable=False`` freezes every parameter (a reference model). Weights default to fp32
    (trained models keep fp32 masters; frozen ones are loaded in
    ``training.ml.parallel.frozen_dtype``: bf16 on CUDA). Every dropout of the config is 0, so
    train mode (gradient checkpointing) computes what eval mode does.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    zero_config_dropout(config)
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=dtype)
    disable_dropout(model)
    model.requires_grad_(trainable)
    return model.to(device)


def provenance() -> dict[str, str | None]:
    """What a checkpoint records about the code that made it: git commit and library versions."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return {
        "git_sha": sha or None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


# --- tokenising ---------------------------------------------------------------------------------


# --- batching -----------------------------------------------------------------------------------


@dataclass
class QueryResponseBatch:
    """``[left-padded queries | right-padded responses]`` as tensors (see the module docstring)."""

    input_ids: torch.Tensor
    """(B, C + R) token ids; padding positions hold ``pad_token_id``"""
    attention_mask: torch.Tensor
    """(B, C + R) 1 on real query and response tokens, 0 on padding"""
    response_mask: torch.Tensor
    """(B, R) 1 on real response tokens (up to and including the first EOS)"""
    context_length: int
    """C: the column where every response starts"""

    @property
    def responses(self) -> torch.Tensor:
        """(B, R) the response columns of ``input_ids``."""
        return self.input_ids[:, self.context_length :]

    def to(self, device: torch.device | str) -> QueryResponseBatch:
        return QueryResponseBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.response_mask.to(device),
            self.context_length,
        )

    def select(self, index: torch.Tensor | Sequence[int]) -> QueryResponseBatch:
        """The rows in ``index`` (columns unchanged)."""
        return QueryResponseBatch(
            self.input_ids[index],
            self.attention_mask[index],
            self.response_mask[index],
            self.context_length,
        )


def build_query_response_batch(
    queries: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    context_length: int | None = None,
    response_length: int | None = None,
) -> QueryResponseBatch:
    """Left-pad ``queries`` to ``context_length`` (default: the longest) and right-pad
    ``responses`` to ``response_length`` (default: the longest, at least 1)."""
    if len(queries) != len(responses):
        raise ValueError("queries and responses must have the same length")
    context = max(len(q) for q in queries) if context_length is None else context_length
    longest = max((len(r) for r in responses), default=0)
    width = max(longest, 1) if response_length is None else response_length
    batch = len(queries)
    input_ids = torch.full((batch, context + width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, context + width), dtype=torch.long)
    for row, (query, response) in enumerate(zip(queries, responses, strict=True)):
        if len(query) > context or len(response) > width:
            raise ValueError("a query or response is longer than the batch allows")
        if query:
            input_ids[row, context - len(query) : context] = torch.tensor(list(query))
            attention_mask[row, context - len(query) : context] = 1
        if response:
            input_ids[row, context : context + len(response)] = torch.tensor(list(response))
            attention_mask[row, context : context + len(response)] = 1
    return QueryResponseBatch(
        input_ids, attention_mask, attention_mask[:, context:].clone(), context
    )


def position_ids_from_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (``cumsum - 1``); padding positions get 0."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


# --- log-probs and entropy ----------------------------------------------------------------------


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits)`` over the last dimension, computed in fp32:
    ``H = logsumexp(z) - sum(softmax(z) * z)``."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (F.softmax(logits, dim=-1) * logits).sum(dim=-1)


def response_logits(
    model: torch.nn.Module, batch: QueryResponseBatch, *, temperature: float = 1.0
) -> torch.Tensor:
    """(B, R, V) fp32 logits / temperature predicting each response token.

    The logit at column ``t`` predicts token ``t + 1``, so the response tokens (columns
    ``C .. C+R-1``) are predicted by columns ``C-1 .. C+R-2``.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0 to compute log-probs")
    width = batch.input_ids.shape[1] - batch.context_length + 1  # R + 1 positions, not C + R
    kwargs = {"logits_to_keep": width} if accepts_logits_to_keep(model) else {}
    output = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position_ids_from_attention_mask(batch.attention_mask),
        use_cache=False,
        **kwargs,
    )
    logits = output.logits[:, -width:-1].float()
    return logits / temperature


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the (possibly peft- or FSDP-wrapped) causal LM computes logits only for its last
    positions when told ``logits_to_keep`` (Hugging Face's decoders do): the LM head then runs
    on the response columns only, not on the whole prompt."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] for each position: (B, R, V), (B, R) -> (B, R)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def response_logprobs(
    model: torch.nn.Module,
    batch: QueryResponseBatch,
    *,
    temperature: float = 1.0,
    with_entropy: bool | str = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of the response tokens (and optionally entropies), both (B, R) fp32.

    Padding positions are set to 0 (multiply by ``batch.response_mask`` before summing anyway).
    ``with_entropy="detached"``: the entropy is computed outside the autograd graph (a metric
    only: no (B, R, V) softmax kept for backward when its loss coefficient is 0).
    """
    logits = response_logits(model, batch, temperature=temperature)
    mask = batch.response_mask.to(logits.dtype)
    logprobs = logprobs_from_logits(logits, batch.responses) * mask
    entropy = None
    if with_entropy == "detached":
        with torch.no_grad():
            entropy = entropy_from_logits(logits.detach()) * mask
    elif with_entropy:
        entropy = entropy_from_logits(logits) * mask
    return logprobs, entropy


def sequence_logprobs(
    model: torch.nn.Module, batch: QueryResponseBatch, *, temperature: float = 1.0
) -> torch.Tensor:
    """(B,) sum of the response tokens' log-probs: log π(response | query)."""
    logprobs, _ = response_logprobs(model, batch, temperature=temperature)
    return logprobs.sum(dim=-1)
