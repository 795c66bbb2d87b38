"""Weights of the trained models, shared by the trainers: LoRA adapters, dtypes, and the Hugging
Face directory rank 0 writes from (possibly sharded) parameters.

* :func:`apply_lora` wraps a model with peft adapters (dropout 0); on CUDA the frozen base stays
  in the dtype it was loaded in (bf16) while the adapters and saved modules train in fp32.
* :func:`source_dtype`: the dtype a checkpoint was published in (``config.json``'s ``dtype``),
  which the trained model is written back in: a bf16 8B model stays a 16 GB directory.
* :func:`save_full_model`: gathers the full parameters on rank 0 (FSDP2's
  ``get_model_state_dict(full_state_dict=True, cpu_offload=True)``, see
  :func:`training.ml.parallel.full_state_dict`), assigns them to a copy of the architecture built
  on the meta device (no second copy in memory), merges a LoRA adapter in and calls
  ``save_pretrained``: ``from_pretrained`` loads the result like any model.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.ml.common import publish_dir, staging_dir_for
from training.ml.device import quiet_transformers
from training.ml.parallel import Placement, full_state_dict, load_into_meta, strip_prefix


def lora_config(fields: Any, task_type: str) -> Any:
    """peft's ``LoraConfig`` from a config with :class:`~training.ml.config.LoraFields`.
    ``SEQ_CLS`` (reward and value models) trains the ``score`` head in full."""
    from peft import LoraConfig  # peft: only for LoRA runs

    return LoraConfig(
        r=fields.lora_r,
        lora_alpha=fields.lora_alpha,
        lora_dropout=0.0,
        target_modules=fields.lora_target_modules,
        task_type=task_type,
        modules_to_save=["score"] if task_type == "SEQ_CLS" else None,
    )


def apply_lora(model: nn.Module, fields: Any, task_type: str) -> nn.Module:
    """``model`` with LoRA adapters (peft), dropout off; trainable parameters in fp32."""
    from peft import get_peft_model

    model = get_peft_model(model, lora_config(fields, task_type))
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "get_base_model") and hasattr(model, "peft_config")


def source_dtype(config: Any) -> torch.dtype:
    """The dtype a model directory was saved in (``dtype``/``torch_dtype`` of its config), fp32
    when it does not say."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype):
        return getattr(torch, value)
    return torch.float32


def save_full_model(
    module: nn.Module,
    placement: Placement,
    *,
    directory: Path,
    build_template: Callable[[], nn.Module],
    prefix: str = "",
    dtype: torch.dtype | None = None,
) -> None:
    """Write ``module``'s full weights as a Hugging Face directory in ``directory`` (rank 0;
    every process must call this, since gathering shards is collective).

    ``build_template()`` returns the same architecture as the trained model (peft-wrapped when
    it is), built under ``torch.device("meta")``; ``prefix`` is the path of that model inside
    ``module`` (``"model."`` for a wrapper such as the reward model's scorer). The weights are
    written in ``dtype`` (default: as trained) with any LoRA adapter merged in.
    """
    state = full_state_dict(module, placement)
    if not placement.world.is_main:
        return
    if prefix:
        state = strip_prefix(state, prefix)
    with torch.device("meta"), quiet_transformers():
        template = build_template()
    model = load_into_meta(template, state)
    if is_peft(model):
        model = model.merge_and_unload()
    if dtype is not None:
        model.to(dtype)
        model.config.dtype = dtype
    with quiet_transformers():
        model.save_pretrained(directory)


def policy_template(policy_dir: str | Path, fields: object | None) -> torch.nn.Module:
    """The policy's architecture (peft-wrapped when ``fields.use_lora``), for
    :func:`training.ml.weights.save_full_model` to build on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(policy_dir)))
    if fields is not None and getattr(fields, "use_lora", False):
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(fields, "CAUSAL_LM"))
    return model


def save_policy(
    policy: torch.nn.Module,
    placement: Placement,
    *,
    policy_dir: str | Path,
    output_dir: Path,
    fields: object | None,
    run_info: dict,
    run_file: str,
) -> None:
    """Rank 0 writes the policy (gathered from its shards, LoRA merged, in the dtype the
    starting model was published in), the tokenizer as shipped and ``run_file`` to a temp
    sibling of ``output_dir``, then renames it into place. Every process calls this."""
    from transformers import AutoConfig, AutoTokenizer

    tmp = staging_dir_for(output_dir) if placement.world.is_main else None
    try:
        save_full_model(
            policy,
            placement,
            directory=tmp,
            build_template=lambda: policy_template(policy_dir, fields),
            dtype=source_dtype(AutoConfig.from_pretrained(str(policy_dir))),
        )
        if tmp is None:
            return
        # the tokenizer as shipped (its own padding side), not our left-padded copy
        AutoTokenizer.from_pretrained(policy_dir).save_pretrained(tmp)
        (tmp / run_file).write_text(json.dumps(run_info, indent=2, sort_keys=True) + "\n")
        publish_dir(tmp, output_dir)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
