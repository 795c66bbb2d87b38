"""One prompt format everywhere: base models without a chat template, chat templates that end
turns with their own token, and encoders that frame with [CLS]/[SEP]."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, BertTokenizerFast

from training.ml.config import DPOConfig
from training.ml.data import encode_sequences
from training.ml.dpo import encode_pairs as dpo_encode_pairs
from training.ml.generation import eos_token_ids
from training.ml.prompts import (
    encode_prompt,
    encode_response,
    end_of_turn_id,
    render_prompt,
    sequence_prefix,
)
from training.ml.records import PreferencePair
from training.ml.reward_model import sequence_format_notes

CHAT = [{"role": "user", "content": "How do kettles work?"}]

LLAMA3_LIKE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@pytest.fixture
def base_tokenizer(tiny_model_dir):
    """The tiny tokenizer without its chat template: a base model."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    return tokenizer


@pytest.fixture
def eot_tokenizer(tiny_model_dir):
    """The tiny tokenizer with a Llama-3-like template ending turns with <|eot_id|>."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    )
    tokenizer.chat_template = LLAMA3_LIKE
    return tokenizer


def test_a_base_model_renders_chat_prompts_in_one_layout_for_every_trainer(base_tokenizer):
    text = render_prompt(base_tokenizer, CHAT)
    assert text == "\n\nUser: How do kettles work?\n\nAssistant:"
    # the policy (PPO, DPO, generation) encodes what the reward model renders: no exception
    ids = encode_prompt(base_tokenizer, CHAT)
    assert base_tokenizer.decode(ids, skip_special_tokens=True) == text
    scored = encode_sequences(base_tokenizer, [CHAT], [" By heat."], max_length=64)[0]
    assert base_tokenizer.decode(scored.input_ids, skip_special_tokens=True) == text + " By heat."


def test_the_end_of_turn_token_is_the_templates_not_eos(eot_tokenizer, tiny_model_dir):
    eot = eot_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert end_of_turn_id(eot_tokenizer) == eot != eot_tokenizer.eos_token_id
    assert encode_response(eot_tokenizer, " hi")[-1] == eot
    # the reward model's sequences, DPO's completions and generation's stop tokens agree
    scored = encode_sequences(eot_tokenizer, [CHAT], [" By heat."], max_length=64)[0]
    assert scored.input_ids[-1] == eot
    pair = PreferencePair(prompt=CHAT, chosen=" a", rejected=" b", prompt_id=0)
    encoded, _ = dpo_encode_pairs(eot_tokenizer, [pair], DPOConfig())
    assert encoded[0].chosen[-1] == encoded[0].rejected[-1] == eot
    assert {eot, eot_tokenizer.eos_token_id} <= eos_token_ids(eot_tokenizer)
    # a tokenizer whose template closes turns with EOS (the tiny one) keeps EOS
    tiny = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert end_of_turn_id(tiny) == tiny.eos_token_id


def test_an_encoder_is_framed_with_cls_and_sep_and_the_log_says_so(tmp_path):
    (tmp_path / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "q", "a", "cat", "soup"])
    )
    tokenizer = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    assert tokenizer.bos_token_id is None and tokenizer.eos_token_id is None
    assert sequence_prefix(tokenizer) == tokenizer.cls_token_id
    ids = encode_sequences(tokenizer, ["q " * 40], [" a cat"], max_length=12)[0].input_ids
    # left truncation of the prompt keeps [CLS] first, where the encoder pools the score
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert len(ids) == 12
    (note,) = sequence_format_notes(tokenizer)
    assert "[CLS]" in note and "[SEP]" in note
