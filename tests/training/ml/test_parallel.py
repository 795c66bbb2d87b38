"""The placement helpers on one process (the world of size 1), on tiny inputs; the 2-process
runs are test_fsdp.py and test_distributed.py."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from training.ml.config import DPOConfig, PPOConfig, RewardModelConfig
from training.ml.device import World
from training.ml.parallel import (
    Placement,
    all_reduce_sum,
    decoder_layers,
    equal_shares,
    full_state_dict,
    placement_for,
    prepare_trained,
)
from training.ml.policy import (
    build_query_response_batch,
    load_causal_lm,
    response_logprobs,
)


def test_equal_shares_give_every_rank_as_many_items_padding_with_dummies():
    items = list("abcde")
    shares = [equal_shares(items, World(rank=r, size=2)) for r in range(2)]
    assert [s.items for s in shares] == [["a", "c", "e"], ["b", "d", "a"]]
    assert [s.real for s in shares] == [[True, True, True], [True, True, False]]
    blocks = [equal_shares(items, World(rank=r, size=2), contiguous=True) for r in range(2)]
    assert [b.items for b in blocks] == [["a", "b", "c"], ["d", "e", "a"]]
    assert [b.num_real for b in blocks] == [3, 2]
    one = equal_shares(items, World())
    assert one.items == items and all(one.real)


def test_one_process_is_the_world_of_size_1_with_nothing_wrapped(tiny_model_dir):
    placement = placement_for(PPOConfig(device="cpu", shard="fsdp"))
    assert placement.world.size == 1 and not placement.sharded
    assert placement.describe() == "one process on cpu"
    model = load_causal_lm(tiny_model_dir, trainable=True)
    assert prepare_trained(model, placement) is model
    assert type(model).__name__ == "LlamaForCausalLM"  # not FSDP's subclass
    assert all_reduce_sum([1.5, 2.0], placement).tolist() == [1.5, 2.0]
    state = full_state_dict(model, placement)
    assert torch.equal(state["model.norm.weight"], model.model.norm.weight)


def test_decoder_layers_are_the_blocks_the_model_names(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    layers = decoder_layers(model)
    assert len(layers) == model.config.num_hidden_layers
    assert all(type(layer).__name__ == "LlamaDecoderLayer" for layer in layers)


def test_every_trainer_has_the_scale_fields():
    for cls in (RewardModelConfig, PPOConfig, DPOConfig):
        config = cls()
        assert (config.gpus, config.shard, config.gradient_checkpointing, config.offload) == (
            0,
            "fsdp",
            False,
            False,
        )
        assert hasattr(config, "use_lora")
        with pytest.raises(ValueError, match="shard"):
            cls(shard="zero3")
        with pytest.raises(ValueError, match="offload"):
            cls(shard="none", offload=True)


def test_logits_are_computed_only_for_the_response_and_agree_with_the_full_pass(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir)
    batch = build_query_response_batch([[5, 6, 7, 8], [9, 10]], [[11, 12], [13]], pad_token_id=0)
    kept, _ = response_logprobs(model, batch, temperature=0.7)
    seen = []
    handle = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    response_logprobs(model, batch)
    handle.remove()
    assert seen == [torch.Size([2, 3, model.config.vocab_size])]  # R + 1 positions, not C + R
    with torch.no_grad():
        full = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=(batch.attention_mask.cumsum(-1) - 1).clamp(min=0),
        ).logits[:, batch.context_length - 1 : -1]
    expected = torch.log_softmax(full / 0.7, -1).gather(-1, batch.responses.unsqueeze(-1))
    torch.testing.assert_close(kept, expected.squeeze(-1) * batch.response_mask)


def test_a_detached_entropy_keeps_no_graph(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir, trainable=True)
    batch = build_query_response_batch([[5, 6, 7]], [[8, 9]], pad_token_id=0)
    logprobs, entropy = response_logprobs(model, batch, with_entropy="detached")
    assert logprobs.requires_grad and not entropy.requires_grad
    _, with_graph = response_logprobs(model, batch, with_entropy=True)
    torch.testing.assert_close(entropy, with_graph.detach())


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir):
    batch = build_query_response_batch([[5, 6, 7]], [[8, 9, 10]], pad_token_id=0)
    grads = []
    for checkpointing in (False, True):
        model = load_causal_lm(tiny_model_dir, trainable=True)
        placement = Placement(gradient_checkpointing=checkpointing)
        model = prepare_trained(model, placement)
        response_logprobs(model, batch)[0].sum().backward()
        grads.append(model.model.layers[0].mlp.up_proj.weight.grad.clone())
    assert model.model.gradient_checkpointing and model.training
    torch.testing.assert_close(grads[0], grads[1])
