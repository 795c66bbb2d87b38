"""The tiny local model: loads with the Auto classes, sane tokenizer, cached atomic builds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from training.ml.tiny import (
    EOS_TOKEN,
    MARKER_FILE,
    PAD_TOKEN,
    build_tiny_model,
    bundled_corpus_files,
    chat_documents,
    collect_pretrain_files,
    pretrain_documents,
    read_text_file,
    strip_html,
)

HTML_PAGE = """<html><head><title>Ignored title</title><style>p {color: red}</style></head>
<body><nav>menu menu</nav><h1>Lists &amp; loops</h1>
<p>A <b>list</b> keeps items in order.</p><script>var x = 1;</script>
<pre>for item in items:
    print(item)</pre></body></html>"""


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(directory).state_dict()


def test_bundled_corpus_is_tens_of_kilobytes_of_text():
    files = bundled_corpus_files()
    assert len(files) >= 3
    assert 20_000 < sum(f.stat().st_size for f in files) < 200_000


def test_tiny_model_loads_with_auto_classes(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    causal = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    classifier = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    assert causal.config.vocab_size == len(tokenizer)
    assert classifier.config.num_labels == 1
    assert causal.config.num_hidden_layers == 2
    assert 64 <= causal.config.hidden_size <= 128
    assert causal.config.attention_dropout == 0.0


def test_tokenizer_special_tokens_and_pad_distinct_from_eos(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = AutoModelForCausalLM.from_pretrained(tiny_model_dir).config
    assert tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.eos_token == EOS_TOKEN
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.padding_side == "right"
    assert (config.pad_token_id, config.eos_token_id, config.bos_token_id) == (
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        tokenizer.bos_token_id,
    )
    # Byte-level: any text round-trips, including characters absent from the corpus.
    text = "Grüße, 東京! <tag> \t tabs"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    # No BOS/EOS added implicitly.
    ids = tokenizer("hello")["input_ids"]
    assert tokenizer.bos_token_id not in ids
    assert tokenizer.eos_token_id not in ids


def test_chat_template_ends_turns_with_eos_and_opens_assistant_turn(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "How do I boil an egg?"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|system|>\nBe brief.<|eos|><|user|>\nHow do I boil an egg?<|eos|><|assistant|>\n"
    )
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids.count(tokenizer.eos_token_id) == 2
    assert tokenizer.convert_ids_to_tokens(ids[-2]) == "<|assistant|>"


def test_generation_runs_with_left_padding(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = tokenizer(["Why is the sky blue?", "Hi"], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 5)


def test_same_seed_gives_identical_build_and_cache_skips_work(tiny_model_dir, tmp_path):
    marker = tiny_model_dir / MARKER_FILE
    mtime = marker.stat().st_mtime_ns
    assert build_tiny_model(tiny_model_dir, seed=0) == tiny_model_dir
    assert marker.stat().st_mtime_ns == mtime  # cached: nothing rewritten

    again = build_tiny_model(tmp_path / "again", seed=0)
    assert (again / "tokenizer.json").read_text() == (tiny_model_dir / "tokenizer.json").read_text()
    a, b = _weights(tiny_model_dir), _weights(again)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_changed_parameters_rebuild_in_place_without_leftovers(tmp_path):
    out = tmp_path / "model"
    build_tiny_model(out, seed=1, hidden_size=64)
    before = _weights(out)
    build_tiny_model(out, seed=2, hidden_size=64)
    after = _weights(out)
    assert json.loads((out / MARKER_FILE).read_text())["params"]["seed"] == 2
    assert not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_failed_build_leaves_nothing_behind(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("Some text to pretrain on. " * 50)
    out = tmp_path / "models" / "model"

    def explode(step, total, metrics):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        build_tiny_model(out, pretrain_files=[text], pretrain_steps=2, on_progress=explode)
    assert list((tmp_path / "models").iterdir()) == []


def test_brief_pretraining_on_html_changes_weights_and_reports_progress(tiny_model_dir, tmp_path):
    page = tmp_path / "docs" / "page.html"
    page.parent.mkdir()
    page.write_text(HTML_PAGE * 20)
    progress = []
    out = build_tiny_model(
        tmp_path / "pretrained",
        seed=0,
        pretrain_files=collect_pretrain_files(page.parent),
        pretrain_steps=3,
        on_progress=lambda step, total, metrics: progress.append((step, total, metrics)),
    )
    assert [(s, t) for s, t, _ in progress] == [(1, 3), (2, 3), (3, 3)]
    assert all(math.isfinite(m["pretrain/loss"]) for _, _, m in progress)
    marker = json.loads((out / MARKER_FILE).read_text())
    assert marker["params"]["pretrain_steps"] == 3
    base, trained = _weights(tiny_model_dir), _weights(out)
    assert not torch.equal(base["model.embed_tokens.weight"], trained["model.embed_tokens.weight"])


def test_strip_html_keeps_visible_text_only(tmp_path):
    text = strip_html(HTML_PAGE)
    assert "Lists & loops" in text
    assert "A list keeps items in order." in text
    assert "    print(item)" in text
    for hidden in ("Ignored title", "color: red", "var x", "menu", "<b>"):
        assert hidden not in text
    page = tmp_path / "p.html"
    page.write_text(HTML_PAGE)
    assert read_text_file(page) == text


def test_collect_pretrain_files_prefers_html_over_sphinx_sources(tmp_path):
    (tmp_path / "_sources").mkdir()
    (tmp_path / "_sources" / "a.rst.txt").write_text("source")
    (tmp_path / "a.html").write_text("<p>page</p>")
    assert collect_pretrain_files(tmp_path) == [tmp_path / "a.html"]
    (tmp_path / "a.html").unlink()
    assert collect_pretrain_files(tmp_path) == [tmp_path / "_sources" / "a.rst.txt"]


def test_dialogues_are_rendered_with_the_chat_template_for_pretraining(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "User: Hi?\nAssistant: Hello.\nSecond line.\n\nUser: Bye\nAssistant: See you.\n"
    assert chat_documents(text, tokenizer) == [
        "<|user|>\nHi?<|eos|><|assistant|>\nHello.\nSecond line.<|eos|>",
        "<|user|>\nBye<|eos|><|assistant|>\nSee you.<|eos|>",
    ]
    page = tmp_path / "doc.txt"
    page.write_text("Some documentation text.")
    documents, chars = pretrain_documents([page], tokenizer)
    assert chars == len("Some documentation text.")
    assert documents[0] == "Some documentation text."
    assert any(d.startswith("<|user|>\n") and d.endswith("<|eos|>") for d in documents)
