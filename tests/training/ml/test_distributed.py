"""Data-parallel reward-model training with replicas (``shard: none``): torchrun with 2 CPU
processes (gloo) on the tiny model trains the same model as one process, relays rank 0's
progress, keeps the ranks identical, cancels cleanly and reports failures with the ranks' error.
The sharded (FSDP2) runs of all three trainers are tests/training/ml/test_fsdp.py."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest

from tests.helpers.preference_pairs import marker_pairs
from training.ml import __main__ as cli
from training.ml.common import TrainingCancelled
from training.ml.config import RewardModelConfig
from training.ml.launch import (
    DistributedTrainingError,
    parse_progress_line,
    progress_line,
    resolve_num_processes,
    train_reward_model_distributed,
)
from training.ml.reward_model import (
    INFO_FILE,
    NORMALIZATION_FILE,
    load_reward_model,
    train_reward_model,
)

CONFIG = RewardModelConfig(
    num_epochs=2,
    learning_rate=1e-3,
    lr_schedule="cosine",
    batch_size=16,
    max_length=48,
    eval_fraction=0.2,
    seed=0,
    device="cpu",
    gpus=2,
    shard="none",
)


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below ``pid``, from /proc."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append((int(entry.parent.name), fields[19]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _running(pid: int, started: str) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == started and fields[0] != "Z"


@pytest.fixture(scope="module")
def two_process_run(tiny_model_dir, tmp_path_factory):
    """One 2-process run (the expensive part, ~10 s), shared by the tests below."""
    root = tmp_path_factory.mktemp("ddp")
    progress: list[tuple[int, int, dict[str, float]]] = []
    result = train_reward_model_distributed(
        marker_pairs(240, rounds=2),
        base_model=str(tiny_model_dir),
        output_dir=root / "rm",
        config=CONFIG,
        on_progress=lambda step, total, metrics: progress.append((step, total, metrics)),
        metadata={"snapshot": "ddp-test"},
        check_replicas=True,
    )
    return root, result, progress


@pytest.mark.slow
def test_two_processes_write_one_complete_loadable_model(two_process_run):
    root, result, _ = two_process_run
    out = root / "rm"
    assert result.output_dir == out
    assert sorted(p.name for p in root.iterdir()) == ["rm"]  # no run or staging dirs left
    for name in ("config.json", "model.safetensors", "tokenizer.json", INFO_FILE):
        assert (out / name).is_file()
    info = json.loads((out / INFO_FILE).read_text())
    assert info["metadata"] == {"snapshot": "ddp-test"}
    assert info["config"]["gpus"] == 2
    assert any(
        "data parallel on 2 processes" in note and "(gloo)" in note for note in info["notes"]
    )
    assert json.loads((out / NORMALIZATION_FILE).read_text())["scale"] == pytest.approx(
        result.normalization.scale
    )
    reward_model = load_reward_model(out, device="cpu")
    banana, cat = reward_model.score(
        [("Q:", " a banana in the soup"), ("Q:", " a cat in the soup")]
    )
    assert banana > cat


@pytest.mark.slow
def test_two_processes_learn_the_marker_word_like_one_process(
    two_process_run, tiny_model_dir, tmp_path
):
    _, result, progress = two_process_run
    assert result.metrics["eval/accuracy"] > 0.9
    assert result.counts["eval_pairs"] == 48

    single_progress: list[tuple[int, int, dict[str, float]]] = []
    single = train_reward_model(
        marker_pairs(240, rounds=2),
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "rm",
        config=CONFIG,
        on_progress=lambda step, total, metrics: single_progress.append((step, total, metrics)),
    )
    # Same seed, same global batches: the same optimisation up to float summation order.
    assert result.counts == single.counts
    assert result.steps == single.steps
    assert result.metrics["eval/accuracy"] == single.metrics["eval/accuracy"]
    for key in ("eval/loss", "eval/margin", "reward/norm_offset", "reward/norm_scale"):
        assert result.metrics[key] == pytest.approx(single.metrics[key], rel=1e-3, abs=1e-5)
    for (_, _, ddp), (_, _, one) in zip(progress[:4], single_progress[:4], strict=True):
        assert ddp["reward/loss"] == pytest.approx(one["reward/loss"], rel=1e-4)
        assert ddp["reward/pairs"] == one["reward/pairs"] == 16  # metrics of the global batch
        assert ddp["reward/grad_norm"] == pytest.approx(one["reward/grad_norm"], rel=1e-4)


@pytest.mark.slow
def test_rank_zero_progress_is_relayed_in_order(two_process_run):
    _, result, progress = two_process_run
    total = 2 * math.ceil(192 / 16)
    assert result.steps == total
    assert [s for s, _, _ in progress] == [*range(1, total + 1), total]
    assert all(t == total for _, t, _ in progress)
    assert all(math.isfinite(m["reward/loss"]) for _, _, m in progress[:-1])
    assert progress[-1][2]["eval/accuracy"] == result.metrics["eval/accuracy"]


@pytest.mark.slow
def test_ranks_end_with_identical_parameters(two_process_run):
    _, result, _ = two_process_run
    assert len(result.replica_checksums) == 2
    assert len(set(result.replica_checksums)) == 1


@pytest.mark.slow
def test_cancelling_stops_both_ranks_and_writes_nothing(tiny_model_dir, tmp_path):
    seen: list[int] = []
    processes: list[tuple[int, str]] = []

    def should_stop() -> bool:
        if seen and not processes:  # training is under way: note torchrun and its ranks
            processes.extend(_descendants(os.getpid()))
        return bool(seen)

    config = RewardModelConfig(**{**CONFIG.to_dict(), "num_epochs": 50})  # far longer than this
    with pytest.raises(TrainingCancelled):
        train_reward_model_distributed(
            marker_pairs(240),
            base_model=str(tiny_model_dir),
            output_dir=tmp_path / "rm",
            config=config,
            on_progress=lambda step, total, metrics: seen.append(step),
            should_stop=should_stop,
        )
    assert len(processes) >= 3  # torchrun and two ranks
    deadline = time.monotonic() + 10
    while any(_running(*p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in processes if _running(*p)]
    assert list(tmp_path.iterdir()) == []
    assert seen and seen[-1] < 50 * 12


@pytest.mark.slow
def test_failed_run_raises_with_the_ranks_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(DistributedTrainingError) as failure:
        train_reward_model_distributed(
            marker_pairs(16),
            base_model=str(missing),
            output_dir=tmp_path / "rm",
            config=CONFIG,
        )
    message = str(failure.value)
    assert "failed (exit 1)" in message
    assert "Error" in message.splitlines()[0]  # the first exception a rank printed
    assert str(missing) in message
    assert list(tmp_path.iterdir()) == []


# ---- the cheap parts: one process, the protocol, the config -----------------------------------


def test_one_process_trains_in_this_process(tiny_model_dir, tmp_path):
    progress = []
    config = RewardModelConfig(batch_size=8, max_length=32, eval_fraction=0.0, device="cpu")
    result = train_reward_model_distributed(
        marker_pairs(16),
        base_model=tiny_model_dir,
        output_dir=tmp_path / "rm",
        config=config,
        nproc=1,
        on_progress=lambda *report: progress.append(report),
        check_replicas=True,
    )
    assert (tmp_path / "rm" / INFO_FILE).is_file()
    assert [step for step, _, _ in progress] == [1, 2, 2]
    assert len(result.replica_checksums) == 1
    assert not any("data parallel" in note for note in result.notes)


def test_cli_prints_json_progress_and_writes_the_result(tiny_model_dir, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
            for p in marker_pairs(16)
        )
    )
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"batch_size": 8, "max_length": 32, "eval_fraction": 0.0}))
    args = ["train-reward", "--pairs", str(pairs), "--base", str(tiny_model_dir), "--device"]
    args += ["cpu", "--out", str(tmp_path / "rm"), "--config", str(config), "--progress", "json"]
    code = cli.main([*args, "--result", str(tmp_path / "result.json")])
    assert code == 0
    reports = [parse_progress_line(line) for line in capsys.readouterr().out.splitlines()]
    assert [r[0] for r in reports if r] == [1, 2, 2]
    assert len(reports) == 3  # nothing else on stdout
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["steps"] == 2
    assert result["counts"]["train_pairs"] == 16


def test_progress_lines_round_trip_and_other_lines_are_ignored():
    line = progress_line(3, 10, {"reward/loss": 0.5})
    assert "\n" not in line
    assert parse_progress_line(line) == (3, 10, {"reward/loss": 0.5})
    assert parse_progress_line("[3/10] reward/loss=0.5") is None
    assert parse_progress_line('{"unrelated": 1}') is None


def test_gpus_defaults_to_one_process_on_cpu_and_round_trips():
    assert resolve_num_processes(RewardModelConfig(device="cpu")) == 1
    assert resolve_num_processes(RewardModelConfig(device="cpu", gpus=3)) == 3
    config = RewardModelConfig(gpus=2)
    assert RewardModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert RewardModelConfig().gpus == 0
    with pytest.raises(ValueError, match="gpus"):
        RewardModelConfig(gpus=-1)
    # a job stored before ``gpus`` existed still reads back
    assert RewardModelConfig.from_dict({"num_processes": 2}).gpus == 2
