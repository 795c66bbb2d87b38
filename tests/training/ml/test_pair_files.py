"""The training CLI reads TRL's data shapes (standard, conversational, implicit prompt as in the
raw HH files) and the project's exports, reports a bad line by number, and trains (reward model
with a fixed evaluation file, DPO, PPO) and generates from files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from training.ml.__main__ import main
from training.ml.pair_files import (
    PairFileError,
    read_pairs,
    read_prompts,
    split_implicit_prompt,
)

HH = Path(__file__).resolve().parents[3].parent / "shared/data/anthropic-hh-rlhf"
HH_TEST = HH / "harmless-base-test.jsonl.gz"


def write(path: Path, *rows) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_split_implicit_prompt_on_the_last_shared_assistant_turn():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant: No."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant: Sure: ..."
    prompt, a, b = split_implicit_prompt(chosen, rejected)
    assert prompt == "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant:"
    assert (a, b) == (" No.", " Sure: ...")
    # Dialogues that part before the last turn: the completions hold the later turns.
    parted = split_implicit_prompt(
        "\n\nHuman: A\n\nAssistant: x\n\nHuman: B\n\nAssistant: y",
        "\n\nHuman: A\n\nAssistant: z\n\nHuman: C\n\nAssistant: w",
    )
    assert parted == (
        "\n\nHuman: A\n\nAssistant:",
        " x\n\nHuman: B\n\nAssistant: y",
        " z\n\nHuman: C\n\nAssistant: w",
    )
    assert split_implicit_prompt("no markers", "none here") is None


@pytest.mark.skipif(not HH_TEST.exists(), reason="shared/data not beside the checkout")
def test_reads_the_raw_hh_test_split_with_its_implicit_prompts():
    pairs = read_pairs(HH_TEST)
    assert len(pairs) == 2312
    assert all(p.prompt.endswith("\n\nAssistant:") for p in pairs)
    assert all(p.chosen != p.rejected for p in pairs)
    with gzip.open(HH_TEST, "rt") as handle:
        first = json.loads(handle.readline())
    assert pairs[0].prompt + pairs[0].chosen == first["chosen"]
    assert pairs[0].prompt + pairs[0].rejected == first["rejected"]


def test_reads_standard_conversational_and_exported_rows(tmp_path):
    messages = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi?"}]
    path = write(
        tmp_path / "pairs.jsonl",
        {"prompt": "Q?", "chosen": "a", "rejected": "b", "margin": 1.0},
        {
            "prompt": messages,
            "chosen": [{"role": "assistant", "content": "c"}],
            "rejected": [{"role": "assistant", "content": "d"}],
            "rlhf_prompt_id": 7,
            "rlhf_round": 2,
        },
        {
            "chosen": [*messages, {"role": "assistant", "content": "e"}],
            "rejected": [*messages, {"role": "assistant", "content": "f"}],
        },
        {"prompt": "Q?", "messages": None, "chosen": "a", "rejected": "b", "tie": True},
    )
    pairs = read_pairs(path)
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("a", "b"),
        ("c", "d"),
        ("e", "f"),
        ("a", "b"),
    ]
    assert pairs[1].prompt == messages and pairs[1].prompt_id == 7 and pairs[1].round == 2
    assert pairs[2].prompt == messages
    assert pairs[3].tie and pairs[0].prompt_id == "Q?"
    assert read_prompts(path) == ["Q?", messages]


@pytest.mark.parametrize(
    ("row", "where"),
    [
        ({"prompt": "p", "chosen": "a"}, "rejected: is missing"),
        ({"chosen": "plain", "rejected": "texts"}, "chosen: no prompt"),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, "prompt: must be a string"),
        ({"prompt": "p", "completion_a": "a", "completion_b": "b"}, "completion_a: a file of tie"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "weight": "x"}, "weight: must be"),
        ("{broken", "line: not valid JSON"),
    ],
)
def test_a_bad_line_is_named_by_number_not_a_traceback(tmp_path, capsys, row, where):
    path = write(tmp_path / "pairs.jsonl", {"prompt": "p", "chosen": "a", "rejected": "b"}, "", row)
    with pytest.raises(PairFileError) as info:
        read_pairs(path)
    assert str(info.value) == f"{path}:3: {where}" or str(info.value).startswith(
        f"{path}:3: {where}"
    )
    code = main(["dpo", "--pairs", str(path), "--policy", "x", "--out", str(tmp_path / "o")])
    assert code == 2 and capsys.readouterr().err.startswith(f"{path}:3: {where.split(':')[0]}:")


def _pairs_file(tmp_path: Path) -> Path:
    rows = []
    for i in range(8):
        rows.append(
            {
                "chosen": f"\n\nHuman: question {i}\n\nAssistant: a helpful answer number {i}",
                "rejected": f"\n\nHuman: question {i}\n\nAssistant: no",
            }
        )
    return write(tmp_path / "hh.jsonl", *rows)


@pytest.mark.slow
def test_cli_trains_and_generates_from_files(tiny_model_dir, tmp_path, capsys):
    pairs = _pairs_file(tmp_path)
    eval_pairs = write(
        tmp_path / "eval.jsonl",
        {"prompt": "Q?", "chosen": "a long good answer", "rejected": "no"},
        {"prompt": "R?", "chosen": "another good answer", "rejected": "no"},
    )
    reward_dir = tmp_path / "rm"
    code = main(
        [
            "train-reward",
            "--pairs",
            str(pairs),
            "--eval-pairs",
            str(eval_pairs),
            "--base",
            str(tiny_model_dir),
            "--out",
            str(reward_dir),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--max-length",
            "64",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    summary = capsys.readouterr().out
    assert '"fixed_eval/pairs": 2.0' in summary and "fixed_eval/accuracy" in summary
    # The normalisation also in config.json, as OpenRLHF reads it.
    config = json.loads((reward_dir / "config.json").read_text())
    normalization = json.loads((reward_dir / "reward_normalization.json").read_text())
    assert (config["mean"], config["std"]) == (normalization["offset"], normalization["scale"])
    assert config["normalize_reward"] is True

    dpo_config = write(
        tmp_path / "dpo.json", {"max_completion_tokens": 16, "max_prompt_tokens": 32}
    )
    code = main(
        [
            "dpo",
            "--pairs",
            str(pairs),
            "--policy",
            str(tiny_model_dir),
            "--out",
            str(tmp_path / "dpo"),
            "--config",
            str(dpo_config),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--device",
            "cpu",
        ]
    )
    assert code == 0 and (tmp_path / "dpo").is_dir()

    ppo_config = write(
        tmp_path / "ppo.json",
        {"rollout_batch_size": 2, "mini_batch_size": 2, "samples_per_prompt": 1},
    )
    code = main(
        [
            "ppo",
            "--prompts",
            str(pairs),
            "--policy",
            str(tiny_model_dir),
            "--reward-model",
            str(reward_dir),
            "--out",
            str(tmp_path / "ppo"),
            "--config",
            str(ppo_config),
            "--steps",
            "1",
            "--max-new-tokens",
            "4",
            "--device",
            "cpu",
        ]
    )
    assert code == 0 and (tmp_path / "ppo").is_dir()

    out = tmp_path / "generated.jsonl"
    code = main(
        [
            "generate",
            "--prompts",
            str(pairs),
            "--model",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--num-completions",
            "2",
            "--max-new-tokens",
            "4",
            "--device",
            "cpu",
        ]
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0 and len(lines) == 8
    assert all(len(line["completions"]) == 2 and "prompt" in line for line in lines)
