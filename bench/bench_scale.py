"""Throughput of the trainers at real sizes: tokens/s per GPU and MFU for the reward model, DPO,
and PPO's rollout and update, on random-initialised models built from published configs (no
download), through the project's own code (``training.ml.parallel`` placement, FSDP2 under
torchrun, the trainers' step functions).

    # one GPU (0.5B and 1B fit; 8B needs --lora on one GPU, or FSDP over several)
    .venv/bin/python bench/bench_scale.py --model 1b
    .venv/bin/python bench/bench_scale.py --model 8b --lora --gradient-checkpointing
    # every GPU of the node, sharded with FSDP2 (figures are per GPU)
    torchrun --standalone --nproc_per_node 8 bench/bench_scale.py --model 8b
    # PPO rollout: Hugging Face generate against vLLM (when installed, CUDA only)
    .venv/bin/python bench/bench_scale.py --model 1b --phases rollout --engines hf,vllm
    # the CPU figures of bench/README.md (a 30M model; no GPU there)
    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_scale.py --model cpu-30m --device cpu

Tokens are those a phase processes: the reward model's and DPO's sequences (prompt and
completion), the rollout's generated tokens, the update's minibatch sequences (policy and
critic). FLOPs per token: 6 N for a trained forward and backward (2 N forward), plus the
attention's 12 L h T (Kaplan et al.; Chinchilla's appendix); PPO's update counts the policy and
the critic, the rollout 2 N per generated token. MFU = achieved FLOP/s / the GPU's dense bf16
peak (``--peak-tflops``; 989 for H100/H200 SXM, 312 for A100); none on a CPU. The first
``--warmup`` steps are not timed; the figure is the median of ``--steps``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from training.ml.config import DPOConfig, PPOConfig, RewardModelConfig
from training.ml.data import EncodedPair, EncodedSequence
from training.ml.device import device_name, process_group
from training.ml.dpo import EncodedDPOPair, dpo_step
from training.ml.generation import sample_responses
from training.ml.parallel import Placement, all_reduce_sum, placement_for, prepare_trained
from training.ml.policy import build_query_response_batch
from training.ml.ppo import PPOModels, Rollout, TokenValues, ppo_update
from training.ml.reward_model import LastTokenScorer, train_step

CONFIGS = {
    # Qwen2-0.5B, Llama 3.2 1B and Llama 3 8B as published (config.json on the Hub)
    "0.5b": lambda: Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "1b": lambda: LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        tie_word_embeddings=True,
    ),
    "8b": lambda: LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    ),
    # what a 2-core CPU can time in a minute
    "cpu-30m": lambda: LlamaConfig(
        vocab_size=16000,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    ),
}

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def build(config, *, causal: bool, placement: Placement, lora: bool, args) -> torch.nn.Module:
    """A random-initialised model placed as a trainer would place it."""
    config.pad_token_id = 0
    config.num_labels = 1
    dtype = torch.bfloat16 if lora and placement.device.type == "cuda" else torch.float32
    with torch.device("cpu" if placement.sharded else placement.device):
        if causal:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        else:
            from transformers import AutoModelForSequenceClassification

            model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    model.eval()
    if lora:
        from training.ml.weights import apply_lora

        model = apply_lora(model, args, "CAUSAL_LM" if causal else "SEQ_CLS")
    return model


def timed(step, *, steps: int, warmup: int, device: torch.device) -> float:
    """Median seconds of ``step()`` over ``steps`` runs after ``warmup``."""
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def flops_per_token(config, params: int, length: int, *, trained: bool) -> float:
    layers, hidden = config.num_hidden_layers, config.hidden_size
    return (6 if trained else 2) * params + (12 if trained else 4) * layers * hidden * length


def report(name, *, tokens, seconds, flops, placement, peak, extra=None) -> dict:
    world = placement.world.size
    total = all_reduce_sum([tokens], placement)[0].item()
    row = {
        "phase": name,
        "tokens_per_s_per_gpu": round(total / seconds / world, 1),
        "seconds_per_step": round(seconds, 4),
        "tflops_per_gpu": round(flops * total / seconds / world / 1e12, 3),
        "mfu": round(flops * total / seconds / world / (peak * 1e12), 4) if peak else None,
        **(extra or {}),
    }
    if placement.world.is_main:
        print(json.dumps(row), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="1b")
    parser.add_argument("--device", default=None, help="auto (default), cuda, cpu")
    parser.add_argument("--phases", default="reward_model,dpo,rollout,update")
    parser.add_argument("--engines", default="hf", help="rollout engines: hf, vllm (CUDA)")
    parser.add_argument("--batch", type=int, default=8, help="sequences (pairs) per step")
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--completion", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--shard", choices=("fsdp", "none"), default="fsdp")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    args.use_lora, args.lora_r, args.lora_alpha = args.lora, 16, 32
    args.lora_target_modules = "all-linear"
    phases = set(args.phases.split(","))

    config_of = CONFIGS[args.model]
    scale = {"shard": args.shard, "gradient_checkpointing": args.gradient_checkpointing}
    scale.update(device=args.device, use_lora=args.lora)
    with process_group(args.device):
        placement = placement_for(RewardModelConfig(**scale))
        device = placement.device
        peak = args.peak_tflops
        if peak is None and device.type == "cuda":
            name = torch.cuda.get_device_name(device)
            peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        if placement.world.is_main:
            head = {"model": args.model, "device": device_name(device)}
            head.update(processes=placement.world.size, placement=placement.describe())
            head.update(peak_tflops=peak, torch=torch.__version__)
            print(json.dumps(head), flush=True)
        length = args.prompt + args.completion
        generator = torch.Generator().manual_seed(0)
        vocab = config_of().vocab_size

        def ids(n: int) -> list[int]:
            return torch.randint(3, vocab, (n,), generator=generator).tolist()

        if "reward_model" in phases:
            config = config_of()
            model = build(config, causal=False, placement=placement, lora=args.lora, args=args)
            params = sum(p.numel() for p in model.parameters())
            scorer = prepare_trained(LastTokenScorer(model), placement)
            optimizer = torch.optim.AdamW([p for p in scorer.parameters() if p.requires_grad])
            rm_config = RewardModelConfig(batch_size=args.batch, **scale)
            pairs = [
                EncodedPair(EncodedSequence(ids(length)), EncodedSequence(ids(length)), 1.0,
                            False, 0, i)
                for i in range(args.batch)
            ]  # fmt: skip
            seconds = timed(
                lambda: train_step(scorer, optimizer, pairs, config=rm_config, pad_token_id=0,
                                   device=device, placement=placement),
                steps=args.steps, warmup=args.warmup, device=device,
            )  # fmt: skip
            local = 2 * args.batch * length / placement.world.size
            report("reward_model", tokens=local, seconds=seconds, placement=placement, peak=peak,
                   flops=flops_per_token(config, params, length, trained=True))  # fmt: skip
            del model, scorer, optimizer

        if phases & {"dpo", "rollout", "update"}:
            config = config_of()
            policy = build(config, causal=True, placement=placement, lora=args.lora, args=args)
            params = sum(p.numel() for p in policy.parameters())
            policy = prepare_trained(policy, placement)

        if "dpo" in phases:
            optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad])
            batch = [
                EncodedDPOPair(ids(args.prompt), ids(args.completion), ids(args.completion), 1.0,
                               False)
                for _ in range(args.batch)
            ]  # fmt: skip
            zeros = torch.zeros(args.batch)
            dpo_config = DPOConfig(batch_size=args.batch, **scale)
            seconds = timed(
                lambda: dpo_step(policy, optimizer, batch, zeros, zeros, config=dpo_config,
                                 pad_token_id=0, placement=placement),
                steps=args.steps, warmup=args.warmup, device=device,
            )  # fmt: skip
            local = 2 * args.batch * length / placement.world.size
            report("dpo", tokens=local, seconds=seconds, placement=placement, peak=peak,
                   flops=flops_per_token(config, params, length, trained=True))  # fmt: skip
            del optimizer

        if "rollout" in phases:
            queries = [ids(args.prompt) for _ in range(max(1, args.batch // placement.world.size))]
            for engine in args.engines.split(","):
                if engine == "hf":

                    def generate() -> None:
                        sample_responses(policy, queries, pad_token_id=0, eos_token_ids=[1],
                                         temperature=1.0, max_new_tokens=args.completion,
                                         synced_gpus=placement.sharded, device=device)  # fmt: skip

                    seconds = timed(generate, steps=args.steps, warmup=args.warmup, device=device)
                elif engine == "vllm":
                    seconds = vllm_rollout(policy, queries, args, placement)
                    if seconds is None:
                        continue
                else:
                    raise SystemExit(f"unknown engine {engine!r}")
                report(f"rollout_{engine}", tokens=len(queries) * args.completion,
                       seconds=seconds, placement=placement, peak=peak,
                       flops=flops_per_token(config, params, length, trained=False),
                       extra={"engine": engine})  # fmt: skip

        if "update" in phases:
            critic_config = config_of()
            critic_model = build(critic_config, causal=False, placement=placement,
                                 lora=args.lora, args=args)  # fmt: skip
            backbone = getattr(critic_model, critic_model.base_model_prefix)
            head = torch.nn.Linear(critic_config.hidden_size, 1)
            value = prepare_trained(TokenValues(backbone, head), placement)
            optimizer = torch.optim.Adam(
                [{"params": [p for p in policy.parameters() if p.requires_grad]},
                 {"params": [p for p in value.parameters() if p.requires_grad]}]
            )  # fmt: skip
            episodes = max(placement.world.size, args.batch)
            local = episodes // placement.world.size
            batch = build_query_response_batch(
                [ids(args.prompt) for _ in range(local)],
                [ids(args.completion) for _ in range(local)],
                pad_token_id=0,
            ).to(device)
            zeros = torch.zeros(local, args.completion, device=device)
            roll = Rollout(batch, zeros, zeros, zeros, zeros, torch.zeros(local), None, None,
                           torch.ones(local, dtype=torch.bool), 0, 0.0)  # fmt: skip
            ppo_config = PPOConfig(mini_batch_size=episodes, ppo_epochs=1,
                                   rollout_batch_size=episodes, **scale)  # fmt: skip
            models = PPOModels(policy, None, value, None, None, None, placement)
            seconds = timed(
                lambda: ppo_update(models, optimizer, roll, zeros, zeros, ppo_config),
                steps=args.steps, warmup=args.warmup, device=device,
            )  # fmt: skip
            report("ppo_update", tokens=local * length, seconds=seconds, placement=placement,
                   peak=peak, flops=2 * flops_per_token(config, params, length, trained=True),
                   extra={"note": "policy + critic"})  # fmt: skip
    return 0


def vllm_rollout(policy, queries, args, placement) -> float | None:
    """Seconds for vLLM to generate the same tokens (the policy saved in bf16 and loaded by
    vLLM's ``LLM``); None where vLLM or CUDA is missing."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        if placement.world.is_main:
            print(json.dumps({"phase": "rollout_vllm", "skipped": "vllm is not installed"}))
        return None
    if placement.device.type != "cuda" or placement.world.size > 1:
        print(json.dumps({"phase": "rollout_vllm", "skipped": "needs one CUDA process"}))
        return None
    with tempfile.TemporaryDirectory() as directory:
        policy.to(torch.bfloat16).save_pretrained(directory)
        llm = LLM(model=directory, dtype="bfloat16", gpu_memory_utilization=0.4,
                  skip_tokenizer_init=True)  # fmt: skip
        params = SamplingParams(temperature=1.0, max_tokens=args.completion, ignore_eos=True)
        prompts = [{"prompt_token_ids": q} for q in queries]

        def generate() -> None:
            llm.generate(prompts, params, use_tqdm=False)

        return timed(generate, steps=args.steps, warmup=args.warmup, device=placement.device)


if __name__ == "__main__":
    raise SystemExit(main())
