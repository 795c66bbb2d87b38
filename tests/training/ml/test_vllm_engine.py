"""The rollout/generation engines: which one is chosen, what vLLM is asked, the weights it gets
after a PPO update, and the engine recorded with each completion.

vLLM cannot run on these CPU machines: the vLLM path runs against a stand-in with vLLM's
``LLM``/``SamplingParams`` surface (``tests/helpers/fake_vllm.py``) that generates with the tiny
model underneath, and the CUDA check is forced.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import fake_vllm
from training.ml import ppo, vllm_engine
from training.ml.config import PPOConfig, SamplingConfig
from training.ml.generation import generate_completions
from training.ml.parallel import Placement
from training.ml.sampling import SamplingSettings
from training.ml.vllm_engine import (
    choose_engine,
    group_range,
    policy_weights,
    response_tokens,
    sampling_params_kwargs,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
PROMPTS = ["Why does bread go stale?", [{"role": "user", "content": "Why do we yawn?"}]]


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setattr(vllm_engine, "vllm_installed", lambda: False)


@pytest.fixture
def fake(monkeypatch):
    """The stand-in installed as ``vllm`` and every device taken for a CUDA one."""
    module = fake_vllm.install(monkeypatch)
    monkeypatch.setattr(vllm_engine, "device_supports_vllm", lambda device: True)
    return module


def length_reward(prompts, completions):
    return [float(len(c)) for c in completions]


# --- choosing ------------------------------------------------------------------------------------


def test_auto_picks_hf_on_the_cpu_or_without_vllm_and_vllm_with_both(no_vllm, monkeypatch):
    assert choose_engine("auto", CPU) == "hf"
    assert choose_engine(None, CUDA) == "hf"  # no vLLM installed
    assert choose_engine("hf", CUDA) == "hf"
    fake_vllm.install(monkeypatch)
    monkeypatch.setattr(vllm_engine, "vllm_installed", lambda: True)
    assert choose_engine("auto", CPU) == "hf"
    assert choose_engine("auto", CUDA) == "vllm"


def test_vllm_asked_for_without_cuda_or_without_vllm_is_a_clear_error(no_vllm, tiny_model_dir):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        choose_engine("vllm", CPU)
    with pytest.raises(ValueError, match=r"not installed.*\[vllm\]"):
        choose_engine("vllm", CUDA)
    with pytest.raises(ValueError, match="unknown rollout_engine"):
        choose_engine("sglang", CUDA)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        generate_completions(tiny_model_dir, PROMPTS, SamplingConfig(rollout_engine="vllm"))


def test_configs_refuse_an_unknown_engine():
    with pytest.raises(ValueError, match="rollout_engine"):
        SamplingConfig(rollout_engine="sglang")
    with pytest.raises(ValueError, match="vllm_gpu_memory_utilization"):
        PPOConfig(vllm_gpu_memory_utilization=0.0)


# --- what vLLM is asked ------------------------------------------------------------------------


def test_sampling_params_get_the_projects_sampling_settings():
    settings = SamplingSettings(
        temperature=0.7, top_p=0.9, max_new_tokens=12, eos_token_ids=(9, 2), seed=4
    )
    params = fake_vllm.SamplingParams(**sampling_params_kwargs(settings, seed=123))
    assert (params.temperature, params.top_p, params.top_k) == (0.7, 0.9, 0)
    assert (params.max_tokens, params.min_tokens, params.seed) == (12, 0, 123)
    assert params.stop_token_ids == [2, 9] and params.repetition_penalty == 1.0
    assert params.n == 1 and not params.ignore_eos
    greedy = sampling_params_kwargs(dataclasses.replace(settings, temperature=0.0), seed=None)
    assert greedy["temperature"] == 0.0 and greedy["top_p"] == 1.0


def test_a_stop_token_reported_only_as_stop_reason_is_put_back():
    def output(tokens, finish, stop):
        return SimpleNamespace(token_ids=tokens, finish_reason=finish, stop_reason=stop)

    assert response_tokens(output([5, 6], "stop", 9), [2, 9]) == ([5, 6, 9], True)
    assert response_tokens(output([5, 9], "stop", 9), [2, 9]) == ([5, 9], True)
    assert response_tokens(output([5, 2], "stop", None), [2, 9]) == ([5, 2], True)
    assert response_tokens(output([5, 6], "length", None), [2, 9]) == ([5, 6], False)


def test_a_tensor_parallel_group_submits_the_episodes_of_all_its_ranks():
    world = vllm_engine.device_lib.World(rank=3, size=4)
    assert group_range(8, world, group_size=4) == range(0, 8)  # one node of 4 GPUs
    assert group_range(8, world, group_size=2) == range(4, 8)  # two groups of 2
    assert group_range(8, world, group_size=1) == range(6, 8)


def test_generation_on_vllm_uses_its_interface_and_records_the_engine(fake, tiny_model_dir):
    config = SamplingConfig(num_completions=2, max_new_tokens=6, temperature=1.0, seed=3)

    first = generate_completions(tiny_model_dir, PROMPTS, config)
    again = generate_completions(tiny_model_dir, PROMPTS, config)

    assert [[c.engine for c in row] for row in first] == [["vllm"] * 2] * 2
    assert [[c.token_ids for c in r] for r in first] == [[c.token_ids for c in r] for r in again]
    for completion in (c for row in first for c in row):
        assert 0 < len(completion.token_ids) <= 6
    llm = fake.instances[0]
    assert llm.init_kwargs["model"] == str(tiny_model_dir)
    assert llm.init_kwargs["tensor_parallel_size"] == 1  # every visible GPU: none here
    assert llm.init_kwargs["dtype"] == "float32" and not llm.init_kwargs["enable_sleep_mode"]
    assert llm.init_kwargs["gpu_memory_utilization"] == 0.9
    assert llm.init_kwargs["generation_config"] == "vllm"
    (kind, params), *_ = llm.calls
    assert kind == "generate" and len(params) == 4  # K per prompt, one request each
    assert len({p.seed for p in params}) == 4  # each request its own seed
    assert all(p.temperature == 1.0 and p.max_tokens == 6 and p.top_k == 0 for p in params)


def test_the_generate_job_starts_one_engine_for_a_draw_and_its_redraws(fake, tiny_model_dir):
    from training.jobs import generate

    config = SamplingConfig(num_completions=2, max_new_tokens=1, temperature=0.0, seed=1)
    rows, _ = generate.sample(str(tiny_model_dir), PROMPTS, config, should_stop=lambda: False)

    assert len(fake.instances) == 1  # greedy: duplicates, drawn again from the same engine
    assert len([c for c in fake.instances[0].calls if c[0] == "generate"]) == 3
    assert {c.engine for row in rows for c in row} == {"vllm"}


# --- PPO ------------------------------------------------------------------------------------------


def ppo_config(**overrides) -> PPOConfig:
    values = dict(
        total_steps=2,
        rollout_batch_size=2,
        mini_batch_size=2,
        ppo_epochs=1,
        max_new_tokens=4,
        value_init="zero",
        learning_rate=1e-3,
        rollout_engine="vllm",
    )
    return PPOConfig(**{**values, **overrides})


def test_ppo_rollouts_on_vllm_get_the_updated_weights_under_hf_names(
    fake, tiny_model_dir, tmp_path, monkeypatch
):
    after_update = []
    update = ppo.ppo_update

    def recording_update(models, *args, **kwargs):
        stats = update(models, *args, **kwargs)
        after_update.append({k: v.detach().clone() for k, v in models.policy.state_dict().items()})
        return stats

    monkeypatch.setattr(ppo, "ppo_update", recording_update)
    result = ppo.run_ppo(
        policy_dir=tiny_model_dir,
        reference_dir=None,
        reward_model_dir=None,
        reward_fn=length_reward,
        prompts=PROMPTS,
        output_dir=tmp_path / "policy",
        config=ppo_config(),
    )

    (llm,) = fake.instances
    assert llm.init_kwargs["enable_sleep_mode"] and llm.init_kwargs["gpu_memory_utilization"] == 0.3
    (loaded,) = llm.model.loads  # one sync: after step 1 (none after the last update)
    expected = after_update[0]
    assert list(loaded) == list(expected)  # every parameter, under its Hugging Face name
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert any(not torch.equal(loaded[k], v) for k, v in after_update[1].items())
    kinds = [kind for kind, _ in llm.calls]
    assert kinds == [
        "sleep",  # at start: the GPU is the trainer's until the first rollout
        "wake_up",
        "generate",
        "sleep",  # step 1's update
        "wake_up",  # the weights, for the sync
        "collective_rpc",
        "reset_prefix_cache",
        "wake_up",  # the KV cache
        "generate",
        "sleep",
    ]
    (_, first_params), (_, second_params) = (c for c in llm.calls if c[0] == "generate")
    assert [p.seed for p in first_params] == [ppo.derived_seed(0, 1, i) for i in range(2)]
    assert [p.seed for p in second_params] == [ppo.derived_seed(0, 2, i) for i in range(2)]
    run_info = json.loads((tmp_path / "policy" / "ppo_run.json").read_text())
    assert run_info["rollout_engine"] == "vllm"
    assert any("rollouts sampled by vLLM" in note for note in result.notes)
    assert "ppo/weight_sync_seconds" in result.history[0]


def test_ppo_on_the_cpu_says_it_sampled_with_hf(tiny_model_dir, tmp_path):
    result = ppo.run_ppo(
        policy_dir=tiny_model_dir,
        reference_dir=None,
        reward_model_dir=None,
        reward_fn=length_reward,
        prompts=PROMPTS,
        output_dir=tmp_path / "policy",
        config=ppo_config(total_steps=1, rollout_engine="auto"),
    )
    run_info = json.loads((tmp_path / "policy" / "ppo_run.json").read_text())
    assert run_info["rollout_engine"] == "hf"
    assert any("Hugging Face generate" in note for note in result.notes)


def test_a_lora_policy_reaches_vllm_merged(tiny_model_dir, fake):
    config = ppo_config(use_lora=True, lora_r=2, lora_alpha=4)
    models = ppo.load_models(
        config,
        policy_dir=tiny_model_dir,
        reference_dir=None,
        reward_model_dir=None,
        reward_fn=length_reward,
        placement=Placement(),
    )
    with torch.no_grad():
        for name, param in models.policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    expected = copy.deepcopy(models.policy).merge_and_unload().state_dict()

    got = dict(policy_weights(models.policy))

    assert list(got) == list(expected)
    assert all(torch.allclose(got[k], expected[k], atol=1e-6) for k in expected)
    engine = ppo.rollout_engine(models, config, policy_dir=tiny_model_dir)
    engine.sync_weights(models.policy)
    state = fake.instances[0].hf_model.state_dict()
    assert all(torch.allclose(state[k], expected[k], atol=1e-6) for k in expected)
