"""Sampling: truncation at the first EOS, the EOS flag, K completions per prompt."""

from __future__ import annotations

import torch

from training.ml.common import load_tokenizer
from training.ml.config import SamplingConfig
from training.ml.generation import (
    Completion,
    generate_completions,
    sample_responses,
    truncate_at_eos,
)

EOS, PAD = 2, 0


def test_truncate_keeps_everything_up_to_and_including_the_first_eos():
    assert truncate_at_eos([5, 6, EOS, 7, EOS, PAD], [EOS]) == ([5, 6, EOS], True)
    assert truncate_at_eos([EOS, 5], [EOS]) == ([EOS], True)
    assert truncate_at_eos([5, 6, 7], [EOS]) == ([5, 6, 7], False)
    assert truncate_at_eos([5, 9, 6], [EOS, 9]) == ([5, 9], True)  # any of several EOS ids


class ScriptedModel(torch.nn.Module):
    """Stands in for a causal LM: ``generate`` appends fixed continuations to its input."""

    def __init__(self, continuations: list[list[int]]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.continuations = continuations
        self.calls: list[dict] = []

    def generate(self, *, input_ids, attention_mask, **kwargs):
        self.calls.append({"input_ids": input_ids, "attention_mask": attention_mask, **kwargs})
        rows = self.continuations[: input_ids.shape[0]]
        self.continuations = self.continuations[input_ids.shape[0] :]
        return torch.cat([input_ids, torch.tensor(rows)], dim=1)


def test_sample_responses_truncates_each_row_and_flags_eos():
    model = ScriptedModel([[7, EOS, 8, PAD], [7, 8, 9, 10], [EOS, PAD, PAD, PAD]])
    out = sample_responses(
        model,
        [[3, 4, 5], [3], [4, 4]],
        pad_token_id=PAD,
        eos_token_ids=[EOS],
        temperature=0.7,
        top_p=0.9,
        max_new_tokens=4,
    )
    assert out.responses == [[7, EOS], [7, 8, 9, 10], [EOS]]
    assert out.eos == [True, False, True]
    call = model.calls[0]
    # left padding, plain sampling: no top-k, temperature and top-p as given
    assert call["input_ids"].tolist() == [[3, 4, 5], [PAD, PAD, 3], [PAD, 4, 4]]
    assert call["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert call["do_sample"] and call["temperature"] == 0.7 and call["top_p"] == 0.9
    assert call["top_k"] == 0 and call["max_new_tokens"] == 4


def test_sample_responses_generates_in_chunks():
    model = ScriptedModel([[EOS]] * 5)
    out = sample_responses(
        model, [[3]] * 5, pad_token_id=PAD, eos_token_ids=[EOS], temperature=1.0, batch_size=2
    )
    assert len(model.calls) == 3 and out.eos == [True] * 5


def test_generate_completions_gives_k_per_prompt_and_is_seeded(tiny_model_dir):
    prompts = ["Why does bread go stale?", [{"role": "user", "content": "Why do we yawn?"}]]
    config = SamplingConfig(num_completions=3, max_new_tokens=6, temperature=1.0, seed=1)

    first = generate_completions(tiny_model_dir, prompts, config)
    again = generate_completions(tiny_model_dir, prompts, config)

    eos_id = load_tokenizer(tiny_model_dir, padding_side="left").eos_token_id
    assert [len(c) for c in first] == [3, 3]
    for index, completions in enumerate(first):
        for completion in completions:
            assert isinstance(completion, Completion) and completion.prompt_index == index
            assert 1 <= len(completion.token_ids) <= 6
            assert completion.eos == (completion.token_ids[-1] == eos_id)
            assert eos_id not in completion.token_ids[:-1]
            assert "<|eos|>" not in completion.text
    assert first == again
    distinct = {c.token_ids for c in first[0]}
    assert len(distinct) > 1  # sampling, not greedy
