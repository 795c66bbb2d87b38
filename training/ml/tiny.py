"""A tiny local causal LM, built from scratch with no model hub: the default model of the project.

:func:`build_tiny_model` trains a byte-level BPE tokenizer on the bundled English corpus
(``training/ml/corpus/*.txt``), builds a 2-layer Llama-style decoder, optionally pretrains it
briefly on local text/HTML (e.g. Debian's ``python3-doc``), and saves both as an ordinary
Hugging Face model directory:

    AutoModelForCausalLM.from_pretrained(dir)
    AutoModelForSequenceClassification.from_pretrained(dir, num_labels=1)
    AutoTokenizer.from_pretrained(dir)

Tokenizer conventions (what callers may rely on):
    * special tokens ``<|pad|>``, ``<|bos|>``, ``<|eos|>`` (PAD != EOS) and the chat role markers
      ``<|system|>``, ``<|user|>``, ``<|assistant|>``;
    * ``encode`` adds no BOS/EOS by itself (like GPT-2); the chat template ends every message with
      ``<|eos|>``, so a policy trained on templated data learns to stop with EOS;
    * ``padding_side == "right"`` (training and scoring). Generation needs left padding: callers
      load the tokenizer with ``training.ml.common.load_tokenizer(dir, padding_side="left")``
      (and pass position ids / attention mask) themselves.

Chat format produced by ``apply_chat_template(messages, add_generation_prompt=True)``::

    <|user|>\\nHow do I boil an egg?<|eos|><|assistant|>\\n

The build is atomic (written to a hidden sibling temp directory, renamed into place when complete)
and cached: ``tiny_build.json`` records the build parameters, and a later call with the same
parameters returns at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import html.parser
import json
import math
import os
import random
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from training.ml.common import ProgressFn, publish_dir, staging_dir_for
from training.ml.config import RECOMMENDED_FILE
from training.ml.device import autocast, pick_device, quiet_transformers, seeded

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, *ROLE_TOKENS)

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
MARKER_FILE = "tiny_build.json"
# Bump when the build procedure changes in a way that changes the output for the same parameters.
BUILD_FORMAT_VERSION = 2

MAX_POSITION_EMBEDDINGS = 1024
# Pretraining plumbing: fixed so the cache key stays small. A few CPU minutes at the demo's steps.
PRETRAIN_BLOCK_SIZE = 128
PRETRAIN_BATCH_SIZE = 16
PRETRAIN_LR = 3e-3
PRETRAIN_WARMUP_FRACTION = 0.05
PRETRAIN_MAX_CHARS = 12_000_000
PRETRAIN_BUNDLED_FRACTION = 0.05


# --------------------------------------------------------------------------------------------
# Reading text
# --------------------------------------------------------------------------------------------


class _TextExtractor(html.parser.HTMLParser):
    """Collects the visible text of an HTML page.

    Skips scripts, styles, the head, and navigation chrome: ``<nav>``, anything with
    ``role="navigation"``, and Sphinx's sidebars, footers and pilcrow header links.
    """

    _SKIP_TAGS = frozenset({"script", "style", "head", "nav"})
    _SKIP_CLASSES = frozenset({"sphinxsidebar", "related", "footer", "headerlink"})
    _VOID = frozenset({"br", "img", "hr", "meta", "link", "input", "wbr", "source", "col"})
    _BREAKS = frozenset({"p", "div", "br", "li", "pre", "h1", "h2", "h3", "h4", "tr", "dt", "dd"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_tag: str | None = None
        self._skip_depth = 0

    def _skips(self, tag: str, attrs: list[tuple[str, str | None]]) -> bool:
        if tag in self._SKIP_TAGS:
            return True
        values = dict(attrs)
        classes = set((values.get("class") or "").split())
        return values.get("role") == "navigation" or bool(classes & self._SKIP_CLASSES)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth += 1
        elif tag not in self._VOID and self._skips(tag, attrs):
            self._skip_tag, self._skip_depth = tag, 1
        elif tag in self._BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if self._skip_tag is not None and tag == self._skip_tag:
            self._skip_depth -= 1
            if self._skip_depth == 0:
                self._skip_tag = None

    def handle_data(self, data: str) -> None:
        if self._skip_tag is None:
            self.parts.append(data)


def strip_html(markup: str) -> str:
    """The visible text of an HTML document, with runs of blank lines collapsed."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    lines = [line.rstrip() for line in "".join(parser.parts).splitlines()]
    out: list[str] = []
    for line in lines:
        if line.strip() or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip() + "\n"


def read_text_file(path: Path) -> str:
    """Read a ``.txt`` file as is, or an ``.html``/``.htm`` file with its tags stripped."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if Path(path).suffix.lower() in {".html", ".htm"}:
        return strip_html(text)
    return text


def bundled_corpus_files() -> list[Path]:
    """The English text files shipped with the package, in a stable order."""
    return sorted(CORPUS_DIR.glob("*.txt"))


def collect_pretrain_files(directory: str | Path) -> list[Path]:
    """The files to pretrain on under ``directory`` (recursive), sorted.

    HTML pages (``*.html``/``*.htm``) if there are any, else ``*.txt`` files: a Sphinx build such
    as ``/usr/share/doc/python3/html`` ships both the pages and their sources (``_sources``), and
    reading both would see every page twice.
    """
    directory = Path(directory)
    pages = sorted(p for p in directory.rglob("*") if p.suffix.lower() in {".html", ".htm"})
    return pages or sorted(directory.rglob("*.txt"))


_DIALOGUE = re.compile(r"User: (.*?)\nAssistant: (.*?)(?=\n\nUser: |\Z)", re.DOTALL)


def chat_documents(text: str, tokenizer) -> list[str]:
    """``User: ...`` / ``Assistant: ...`` exchanges rendered with the chat template (EOS-ended)."""
    return [
        tokenizer.apply_chat_template(
            [
                {"role": "user", "content": user.strip()},
                {"role": "assistant", "content": assistant.strip()},
            ],
            tokenize=False,
        )
        for user, assistant in _DIALOGUE.findall(text)
    ]


def pretrain_documents(paths: Sequence[Path], tokenizer) -> tuple[list[str], int]:
    """Texts to pretrain on: ``paths`` (capped at ``PRETRAIN_MAX_CHARS``) plus the bundled corpus.

    The bundled corpus is repeated to make about ``PRETRAIN_BUNDLED_FRACTION`` of the characters,
    its dialogues (``*conversations*.txt``) rendered with the chat template, so the pretrained
    model has seen everyday English and assistant turns that end with EOS, not only the docs.
    Returns (documents, characters read from ``paths``).
    """
    texts, total = [], 0
    for path in paths:
        text = read_text_file(path)
        texts.append(text)
        total += len(text)
        if total >= PRETRAIN_MAX_CHARS:
            break
    bundled: list[str] = []
    for path in bundled_corpus_files():
        text = read_text_file(path)
        bundled += chat_documents(text, tokenizer) if "conversations" in path.name else [text]
    bundled_chars = sum(len(t) for t in bundled)
    repeats = max(1, round(PRETRAIN_BUNDLED_FRACTION * total / max(1, bundled_chars)))
    return texts + bundled * repeats, total


def _digest_files(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).name.encode())
        h.update(b"\0")
        h.update(Path(path).read_bytes())
        h.update(b"\0")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Tokenizer and model
# --------------------------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], *, vocab_size: int):
    """Train a byte-level BPE tokenizer and wrap it as a ``PreTrainedTokenizerFast``."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        padding_side="right",
        truncation_side="left",
        model_max_length=MAX_POSITION_EMBEDDINGS,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer, *, seed: int, hidden_size: int, num_layers: int):
    """A freshly initialised (seeded) Llama-style decoder sized for ``tokenizer``."""
    num_heads = max(1, hidden_size // 16)
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} must be a multiple of {num_heads}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        rms_norm_eps=1e-5,
        attention_dropout=0.0,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with seeded(seed):
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def pretrain(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    steps: int,
    seed: int,
    on_progress: ProgressFn | None = None,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Brief causal-LM pretraining on random windows of the concatenated ``texts``.

    Documents are joined with EOS. Returns the final metrics (``pretrain/loss`` is a moving
    average). The model is left on CPU in eval mode.
    """
    device = device or pick_device()
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for encoding in tokenizer.backend_tokenizer.encode_batch(list(texts)):
        ids.extend(encoding.ids)
        ids.append(eos)
    block = PRETRAIN_BLOCK_SIZE
    if len(ids) < block:
        raise ValueError(f"pretraining text too short: {len(ids)} tokens, need {block}")
    data = torch.tensor(ids, dtype=torch.long)
    rng = random.Random(seed)
    model.to(device)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=PRETRAIN_LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0
    )
    warmup = max(1, int(PRETRAIN_WARMUP_FRACTION * steps))

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    smoothed = float("nan")
    start = time.perf_counter()
    with seeded(seed, device):
        for step in range(steps):
            starts = [rng.randrange(0, len(data) - block + 1) for _ in range(PRETRAIN_BATCH_SIZE)]
            batch = torch.stack([data[s : s + block] for s in starts]).to(device)
            with autocast(device):
                out = model(input_ids=batch, labels=batch)  # the model shifts the labels
            loss = out.loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            value = float(loss.detach())
            smoothed = value if math.isnan(smoothed) else 0.98 * smoothed + 0.02 * value
            if on_progress is not None:
                on_progress(
                    step + 1,
                    steps,
                    {
                        "pretrain/loss": value,
                        "pretrain/loss_smoothed": smoothed,
                        "pretrain/lr": scheduler.get_last_lr()[0],
                        "pretrain/elapsed_s": time.perf_counter() - start,
                    },
                )
    model.eval()
    model.to("cpu")
    return {"pretrain/loss": smoothed, "pretrain/seconds": time.perf_counter() - start}


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------


def _read_marker(directory: Path) -> dict | None:
    try:
        return json.loads((directory / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


RECOMMENDED: dict[str, dict] = {
    "RewardModelConfig": {"num_epochs": 3, "learning_rate": 1e-3, "batch_size": 16,
                          "max_length": 256},
    "PPOConfig": {"total_steps": 20, "learning_rate": 1e-4, "max_new_tokens": 32,
                  "missing_eos_penalty": None},
}  # fmt: skip
"""The hyper-parameters this model recommends (``training_defaults.json``, prefilled on the
dashboard's forms), where the defaults, meant for pretrained models of millions of parameters
and more, train nothing in a 64-wide model: its reward model needs a learning rate of 1e-3 and a
few epochs (with the defaults it stays at chance, ~0.45 held-out accuracy on the demo), PPO
1e-4. The rest keeps a CPU round on the demo to a few minutes: 20 PPO steps of 32 tokens, and
no penalty for a completion without EOS, which the tiny model rarely writes within 32 tokens
(with it PPO learns to stop early, and shorter answers score lower). Measured on the demo
campaign (README "Training")."""


def write_recommended(model_dir: Path) -> None:
    """Write :data:`RECOMMENDED` as the model's ``training_defaults.json`` (atomically; left
    alone when it already says that)."""
    path = model_dir / RECOMMENDED_FILE
    text = json.dumps(RECOMMENDED, indent=2, sort_keys=True) + "\n"
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8") == text:
            return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build_tiny_model(
    output_dir: str | Path,
    *,
    seed: int = 0,
    corpus_files: Sequence[Path] | None = None,
    vocab_size: int = 2048,
    hidden_size: int = 64,
    num_layers: int = 2,
    pretrain_files: Sequence[Path] | None = None,
    pretrain_steps: int = 0,
    on_progress: ProgressFn | None = None,
) -> Path:
    """Build (or reuse) the tiny model + tokenizer in ``output_dir`` and return its path.

    ``vocab_size`` is an upper bound: a small corpus may yield fewer merges, and the model's
    embedding matrix is sized to the tokenizer actually trained. ``pretrain_files`` are ``.txt``
    or ``.html`` files (tags stripped; see :func:`collect_pretrain_files`); ``pretrain_steps=0``
    leaves the model at its random initialisation. ``on_progress(step, total, metrics)`` reports
    pretraining steps.
    """
    output_dir = Path(output_dir).resolve()
    corpus = [*bundled_corpus_files(), *(Path(p) for p in corpus_files or ())]
    pretrain_paths = [Path(p) for p in pretrain_files or ()] if pretrain_steps > 0 else []
    if pretrain_steps > 0 and not pretrain_paths:
        raise ValueError("pretrain_steps > 0 needs pretrain_files")
    params = {
        "format_version": BUILD_FORMAT_VERSION,
        "seed": seed,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "corpus_sha256": _digest_files(corpus),
        "pretrain_steps": pretrain_steps,
        "pretrain_files_sha256": _digest_files(pretrain_paths) if pretrain_paths else None,
        "pretrain_files_count": len(pretrain_paths),
    }
    existing = _read_marker(output_dir)
    if existing is not None and existing.get("params") == params:
        write_recommended(output_dir)  # a model built before the file existed gets it too
        return output_dir

    tmp = staging_dir_for(output_dir)
    try:
        tokenizer = train_tokenizer((read_text_file(p) for p in corpus), vocab_size=vocab_size)
        model = build_model(tokenizer, seed=seed, hidden_size=hidden_size, num_layers=num_layers)
        metrics: dict[str, float] = {}
        if pretrain_steps > 0:
            texts, total_chars = pretrain_documents(pretrain_paths, tokenizer)
            metrics = pretrain(
                model, tokenizer, texts, steps=pretrain_steps, seed=seed, on_progress=on_progress
            )
            metrics["pretrain/chars"] = float(total_chars)
        with quiet_transformers():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        marker = {"params": params, "vocab_size_actual": len(tokenizer), "metrics": metrics}
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        write_recommended(tmp)
        # A concurrent builder may have finished first with the same parameters: keep theirs.
        existing = _read_marker(output_dir)
        if existing is not None and existing.get("params") == params:
            shutil.rmtree(tmp, ignore_errors=True)
            return output_dir
        publish_dir(tmp, output_dir)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return output_dir
