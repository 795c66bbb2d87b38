"""Log-probs of response tokens: padding, position ids, temperature; loading with dropout off."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from training.ml.common import load_tokenizer
from training.ml.policy import (
    build_query_response_batch,
    disable_dropout,
    encode_prompt,
    encode_response,
    entropy_from_logits,
    load_causal_lm,
    position_ids_from_attention_mask,
    response_logits,
    response_logprobs,
    sequence_logprobs,
)

PAD = 0


@pytest.fixture(scope="module")
def gpt2() -> torch.nn.Module:
    """A tiny GPT-2: absolute position embeddings, so wrong position ids change the output."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=40, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    return disable_dropout(GPT2LMHeadModel(config))


QUERIES = [[5, 6, 7, 8, 9], [11, 12]]
RESPONSES = [[13, 14], [15, 16, 17, 18]]


def test_position_ids_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    expected = torch.tensor([[0, 0, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5]])
    assert torch.equal(position_ids_from_attention_mask(mask), expected)


def test_batch_is_left_padded_queries_then_right_padded_responses():
    batch = build_query_response_batch(QUERIES, RESPONSES, pad_token_id=PAD)
    assert batch.context_length == 5
    assert batch.input_ids.tolist() == [
        [5, 6, 7, 8, 9, 13, 14, PAD, PAD],
        [PAD, PAD, PAD, 11, 12, 15, 16, 17, 18],
    ]
    assert batch.response_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


@torch.no_grad()
def test_padded_batch_gives_each_sequence_its_unpadded_logprobs(gpt2):
    batch = build_query_response_batch(QUERIES, RESPONSES, pad_token_id=PAD)
    batched, _ = response_logprobs(gpt2, batch)
    for row, (query, response) in enumerate(zip(QUERIES, RESPONSES, strict=True)):
        alone = build_query_response_batch([query], [response], pad_token_id=PAD)
        single, _ = response_logprobs(gpt2, alone)
        n = len(response)
        torch.testing.assert_close(batched[row, :n], single[0, :n], atol=1e-5, rtol=1e-5)
        assert torch.all(batched[row, n:] == 0)


@torch.no_grad()
def test_without_position_ids_left_padding_would_change_the_logprobs(gpt2):
    # The check above has teeth: the same forward with default positions 0..T-1 differs.
    batch = build_query_response_batch(QUERIES, RESPONSES, pad_token_id=PAD)
    logits = gpt2(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    naive = torch.log_softmax(logits[1, 4:-1], -1).gather(-1, batch.responses[1, :, None])[:, 0]
    correct, _ = response_logprobs(gpt2, batch)
    assert not torch.allclose(naive, correct[1], atol=1e-3)


@torch.no_grad()
def test_logprobs_are_taken_from_logits_divided_by_temperature(gpt2):
    batch = build_query_response_batch(QUERIES, RESPONSES, pad_token_id=PAD)
    logits = response_logits(gpt2, batch)  # temperature 1
    expected = torch.log_softmax(logits / 0.5, -1).gather(-1, batch.responses[..., None])[..., 0]
    hot, _ = response_logprobs(gpt2, batch, temperature=0.5)
    torch.testing.assert_close(hot, expected * batch.response_mask)
    with pytest.raises(ValueError):
        response_logprobs(gpt2, batch, temperature=0.0)


@torch.no_grad()
def test_sequence_logprob_is_the_sum_over_valid_tokens(gpt2):
    batch = build_query_response_batch(QUERIES, RESPONSES, pad_token_id=PAD)
    per_token, entropy = response_logprobs(gpt2, batch, with_entropy=True)
    torch.testing.assert_close(sequence_logprobs(gpt2, batch), per_token.sum(-1))
    assert entropy is not None and torch.all(entropy[0, 2:] == 0)
    assert torch.all(entropy[batch.response_mask.bool()] > 0)


def test_entropy_of_uniform_and_one_hot():
    logits = torch.tensor([[0.0] * 8, [0.0, -1e4, -1e4, -1e4, -1e4, -1e4, -1e4, -1e4]])
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([math.log(8), 0.0]))


def test_loaded_model_is_frozen_in_eval_mode_with_dropout_off(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    trainable = load_causal_lm(tiny_model_dir, trainable=True)
    assert all(p.requires_grad for p in trainable.parameters()) and not trainable.training


@torch.no_grad()
def test_tiny_model_padded_logprobs_match_and_chat_prompts_are_templated(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir, padding_side="left")
    model = load_causal_lm(tiny_model_dir)
    chat = encode_prompt(tokenizer, [{"role": "user", "content": "Why do we yawn?"}])
    plain = encode_prompt(tokenizer, "Why do we yawn?")
    assert chat[-len(tokenizer("<|assistant|>\n")["input_ids"]) :] == list(
        tokenizer("<|assistant|>\n")["input_ids"]
    )
    responses = [encode_response(tokenizer, "Nobody is sure."), encode_response(tokenizer, "Hi")]
    assert responses[0][-1] == tokenizer.eos_token_id
    batch = build_query_response_batch(
        [chat, plain], responses, pad_token_id=tokenizer.pad_token_id
    )
    batched, _ = response_logprobs(model, batch, temperature=0.7)
    for row, (query, response) in enumerate(zip([chat, plain], responses, strict=True)):
        alone = build_query_response_batch([query], [response], pad_token_id=tokenizer.pad_token_id)
        single, _ = response_logprobs(model, alone, temperature=0.7)
        torch.testing.assert_close(batched[row, : len(response)], single[0], atol=1e-5, rtol=1e-5)
