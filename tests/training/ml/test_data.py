"""Preference data: truncation (counted, never dropped), the split by prompt, collation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from training.ml.data import (
    collate,
    encode_pairs,
    encode_sequences,
    fit_sequence,
    last_token_index,
    render_prompt,
    split_by_prompt,
)
from training.ml.records import PreferencePair


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


# ---- truncation ------------------------------------------------------------------------------


def test_short_sequence_is_joined_unchanged():
    seq = fit_sequence([1, 2, 3], [4, 5], max_length=10, prefix=[0], suffix=[9])
    assert seq.input_ids == [0, 1, 2, 3, 4, 5, 9]
    assert not seq.prompt_truncated
    assert not seq.completion_truncated


def test_long_prompt_loses_tokens_from_its_left_keeping_completion_and_prompt_end():
    prompt, completion = list(range(100, 120)), [1, 2, 3]
    seq = fit_sequence(prompt, completion, max_length=10, prefix=[0], suffix=[9])
    # budget 8 = 5 prompt tokens (the LAST five) + 3 completion tokens
    assert seq.input_ids == [0, 115, 116, 117, 118, 119, 1, 2, 3, 9]
    assert seq.prompt_truncated
    assert not seq.completion_truncated


def test_completion_too_long_alone_is_cut_on_its_right_and_keeps_a_prompt_tail():
    prompt, completion = list(range(100, 120)), list(range(1, 30))
    seq = fit_sequence(prompt, completion, max_length=18, suffix=[9])
    # budget 17: prompt keeps its last 17 // 4 = 4 tokens, completion its first 13
    assert seq.input_ids == [116, 117, 118, 119, *range(1, 14), 9]
    assert len(seq.input_ids) == 18
    assert seq.prompt_truncated
    assert seq.completion_truncated


def test_completion_truncation_with_short_prompt_keeps_whole_prompt():
    seq = fit_sequence([7], list(range(1, 30)), max_length=8)
    assert seq.input_ids == [7, 1, 2, 3, 4, 5, 6, 7]
    assert not seq.prompt_truncated
    assert seq.completion_truncated


@given(
    prompt_len=st.integers(0, 60),
    completion_len=st.integers(0, 60),
    max_length=st.integers(8, 40),
)
@settings(max_examples=200, deadline=None)
def test_fit_sequence_never_exceeds_max_length_and_keeps_both_ends(
    prompt_len, completion_len, max_length
):
    prompt = [1000 + i for i in range(prompt_len)]
    completion = [i for i in range(completion_len)]
    seq = fit_sequence(prompt, completion, max_length=max_length, prefix=[-1], suffix=[-2])
    ids = seq.input_ids
    assert len(ids) <= max_length
    assert ids[0] == -1
    assert ids[-1] == -2
    kept_prompt = [t for t in ids if t >= 1000]
    kept_completion = [t for t in ids if 0 <= t < 1000]
    assert kept_prompt == prompt[len(prompt) - len(kept_prompt) :]  # a suffix of the prompt
    assert kept_completion == completion[: len(kept_completion)]  # a prefix of the completion
    assert seq.prompt_truncated == (len(kept_prompt) < prompt_len)
    assert seq.completion_truncated == (len(kept_completion) < completion_len)
    if prompt_len + completion_len <= max_length - 2:
        assert not seq.prompt_truncated
        assert not seq.completion_truncated


def test_encode_pairs_counts_truncations_and_drops_nothing(tokenizer):
    long_prompt = "Tell me everything about bread. " * 30
    pairs = [
        PreferencePair("Short question?", " Yes.", " No.", prompt_id=1),
        PreferencePair(long_prompt, " Bake it.", " Buy it.", prompt_id=2),
        PreferencePair("Q?", " word" * 100, " fine", prompt_id=3),
    ]
    encoded, counts = encode_pairs(tokenizer, pairs, max_length=32)
    assert len(encoded) == 3
    assert counts.to_dict() == {"items": 3, "prompt_truncated": 1, "completion_truncated": 1}
    assert encoded[1].prompt_truncated and not encoded[1].completion_truncated
    assert encoded[2].completion_truncated
    assert all(len(s.input_ids) <= 32 for e in encoded for s in (e.chosen, e.rejected))
    # the end of the prompt and the whole completion survive left truncation
    tail = tokenizer.decode(encoded[1].chosen.input_ids, skip_special_tokens=True)
    assert tail.endswith("about bread.  Bake it.")


def test_encoded_sequence_is_prompt_then_completion_then_eos_without_bos(tokenizer):
    (seq,) = encode_sequences(tokenizer, ["Hello there."], [" General."], max_length=64)
    prompt_ids = tokenizer("Hello there.", add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(" General.", add_special_tokens=False)["input_ids"]
    assert seq.input_ids == [*prompt_ids, *completion_ids, tokenizer.eos_token_id]
    (no_eos,) = encode_sequences(tokenizer, ["Hi"], [" yo"], max_length=64, append_eos=False)
    assert tokenizer.eos_token_id not in no_eos.input_ids


def test_chat_prompt_is_rendered_with_the_template(tokenizer):
    messages = [{"role": "user", "content": "Hi"}]
    assert render_prompt(tokenizer, messages) == "<|user|>\nHi<|eos|><|assistant|>\n"
    assert render_prompt(tokenizer, "plain") == "plain"

    class NoTemplate:
        chat_template = None

    assert render_prompt(NoTemplate(), messages) == "\n\nUser: Hi\n\nAssistant:"


# ---- split -----------------------------------------------------------------------------------


def _pairs(prompt_ids):
    return [PreferencePair(f"p{p}", "a", "b", prompt_id=p) for p in prompt_ids]


def test_split_never_puts_a_prompt_on_both_sides():
    pairs = _pairs([i % 37 for i in range(300)])
    train, held_out = split_by_prompt(pairs, eval_fraction=0.2, seed=3)
    assert len(train) + len(held_out) == 300
    assert not {p.prompt_id for p in train} & {p.prompt_id for p in held_out}
    assert len({p.prompt_id for p in held_out}) == round(0.2 * 37)


def test_split_is_seeded_and_independent_of_input_order():
    pairs = _pairs([i % 50 for i in range(200)])
    a = split_by_prompt(pairs, eval_fraction=0.3, seed=7)
    b = split_by_prompt(list(reversed(pairs)), eval_fraction=0.3, seed=7)
    c = split_by_prompt(pairs, eval_fraction=0.3, seed=8)
    ids = lambda side: {p.prompt_id for p in side}  # noqa: E731
    assert ids(a[1]) == ids(b[1])
    assert ids(a[1]) != ids(c[1])


def test_split_keeps_at_least_one_prompt_on_each_side_and_handles_mixed_id_types():
    train, held_out = split_by_prompt(_pairs([1, "1", 2]), eval_fraction=0.01, seed=0)
    assert len({p.prompt_id for p in held_out}) == 1
    train, held_out = split_by_prompt(_pairs([1, 2]), eval_fraction=0.99, seed=0)
    assert len(train) == 1 and len(held_out) == 1
    train, held_out = split_by_prompt(_pairs([5, 5]), eval_fraction=0.5, seed=0)
    assert len(train) == 2 and held_out == []
    train, held_out = split_by_prompt(_pairs([1, 2, 3]), eval_fraction=0.0, seed=0)
    assert len(train) == 3 and held_out == []


@given(
    ids=st.lists(st.integers(0, 20), min_size=1, max_size=60),
    fraction=st.floats(0.0, 0.9),
    seed=st.integers(0, 10),
)
@settings(max_examples=100, deadline=None)
def test_split_property_disjoint_and_complete(ids, fraction, seed):
    pairs = _pairs(ids)
    train, held_out = split_by_prompt(pairs, eval_fraction=fraction, seed=seed)
    assert sorted(map(id, train + held_out)) == sorted(map(id, pairs))
    assert not {p.prompt_id for p in train} & {p.prompt_id for p in held_out}
    assert train  # something to train on


# ---- collation -------------------------------------------------------------------------------


def test_collate_right_padding():
    batch = collate([[5, 6, 7], [8]], pad_token_id=0, padding_side="right")
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert last_token_index(batch["attention_mask"]).tolist() == [2, 0]


def test_collate_left_padding_gives_positions_counting_real_tokens():
    batch = collate([[5, 6, 7], [8]], pad_token_id=0, padding_side="left")
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert last_token_index(batch["attention_mask"]).tolist() == [2, 2]


def test_last_token_index_ignores_token_ids_when_pad_equals_eos():
    eos = 2
    batch = collate([[5, 6, eos], [7, eos]], pad_token_id=eos, padding_side="right")
    assert batch["input_ids"].tolist() == [[5, 6, eos], [7, eos, eos]]
    assert last_token_index(batch["attention_mask"]).tolist() == [2, 1]


def test_collate_rejects_empty_rows_and_bad_side():
    with pytest.raises(ValueError):
        collate([[1], []], pad_token_id=0)
    with pytest.raises(ValueError):
        collate([[1]], pad_token_id=0, padding_side="middle")
    assert last_token_index(torch.tensor([[1, 1, 0, 0]])).tolist() == [1]


def test_bos_is_added_once_for_tokenizers_that_add_it_by_default(tokenizer):
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    backend = tokenizer.backend_tokenizer.__class__.from_str(tokenizer.backend_tokenizer.to_str())
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    backend.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, bos_id)])
    llama_like = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=tokenizer.eos_token, pad_token="<|pad|>"
    )
    assert llama_like("a")["input_ids"][0] == bos_id
    plain, templated = encode_sequences(
        llama_like, ["Hello", f"{bos}Hello"], [" there", " there"], max_length=64
    )
    assert plain.input_ids == templated.input_ids
    assert plain.input_ids.count(bos_id) == 1
    assert plain.input_ids[0] == bos_id
    long_prompt = encode_sequences(llama_like, ["word " * 100], [" end"], max_length=16)[0]
    assert long_prompt.input_ids[0] == bos_id  # BOS survives left truncation
    assert len(long_prompt.input_ids) == 16
