"""Reward model: loss and metrics on known values, score position, head init, normalisation,
training that learns, and cancellation that leaves nothing behind."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config

from tests.helpers.preference_pairs import WORDS, marker_pairs
from training.ml.common import TrainingCancelled
from training.ml.config import RewardModelConfig
from training.ml.data import collate
from training.ml.records import PreferencePair
from training.ml.reward_model import (
    INFO_FILE,
    NORMALIZATION_FILE,
    disable_dropout_in_config,
    init_reward_head,
    load_reward_backbone,
    load_reward_model,
    lr_multiplier,
    pair_metrics,
    preference_loss,
    score_texts,
    sequence_scores,
    train_reward_model,
)

LOG2 = math.log(2.0)


def _softplus(x: float) -> float:  # -log sigmoid(-x)
    return math.log1p(math.exp(x))


# ---- loss ------------------------------------------------------------------------------------


def test_loss_is_mean_negative_log_sigmoid_of_the_margin():
    rc, rr = torch.tensor([1.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    expected = (_softplus(-1.0) + LOG2 + _softplus(2.0)) / 3
    assert preference_loss(rc, rr).item() == pytest.approx(expected, rel=1e-6)
    assert preference_loss(rc, rr, reduction="sum").item() == pytest.approx(3 * expected, rel=1e-6)


def test_weights_scale_each_pair_and_the_mean_divides_by_pair_count():
    rc, rr = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    loss = preference_loss(rc, rr, weights=torch.tensor([2.0, 0.5]))
    assert loss.item() == pytest.approx((2 * _softplus(-1.0) + 0.5 * LOG2) / 2, rel=1e-6)
    zero = preference_loss(rc, rr, weights=torch.tensor([0.0, 0.0]))
    assert zero.item() == 0.0


def test_tie_losses_are_symmetric_and_minimal_at_equal_scores():
    rc, rr = torch.tensor([2.0, 0.5, 1.0]), torch.tensor([0.0, 0.5, 0.0])
    ties = torch.tensor([True, True, False])
    soft = preference_loss(rc, rr, ties=ties, tie_loss="soft_label", reduction="sum")
    expected_tie = 0.5 * _softplus(-2.0) + 0.5 * _softplus(2.0)
    assert soft.item() == pytest.approx(expected_tie + LOG2 + _softplus(-1.0), rel=1e-6)
    swapped = preference_loss(rr, rc, ties=torch.tensor([True, True, True]), reduction="sum")
    same = preference_loss(rc, rr, ties=torch.tensor([True, True, True]), reduction="sum")
    assert swapped.item() == pytest.approx(same.item(), rel=1e-6)
    squared = preference_loss(rc, rr, ties=ties, tie_loss="squared", reduction="sum")
    assert squared.item() == pytest.approx(4.0 + 0.0 + _softplus(-1.0), rel=1e-6)
    dropped = preference_loss(rc, rr, ties=ties, tie_loss="drop", reduction="sum")
    assert dropped.item() == pytest.approx(_softplus(-1.0), rel=1e-6)


def test_soft_label_tie_gradient_pulls_scores_together():
    rc = torch.tensor([1.5], requires_grad=True)
    rr = torch.tensor([0.0], requires_grad=True)
    preference_loss(rc, rr, ties=torch.tensor([True])).backward()
    assert rc.grad.item() == pytest.approx(0.5 * math.tanh(0.75), rel=1e-5)
    assert rr.grad.item() == pytest.approx(-0.5 * math.tanh(0.75), rel=1e-5)


# ---- metrics ---------------------------------------------------------------------------------


def test_accuracy_is_strict_so_equal_scores_count_as_wrong():
    rc = torch.tensor([1.0, 0.5, 0.0, 2.0, 3.0])
    rr = torch.tensor([0.0, 0.5, 1.0, 1.0, 3.0])
    ties = torch.tensor([False, False, False, False, True])
    m = pair_metrics(rc, rr, ties=ties, rounds=[0, 0, 1, 1, 1], prefix="eval")
    assert m["eval/accuracy"] == pytest.approx(2 / 4)
    assert m["eval/tie_rate"] == pytest.approx(1 / 4)
    assert m["eval/margin"] == pytest.approx((1 + 0 - 1 + 1) / 4)
    assert m["eval/accuracy_round_0"] == pytest.approx(1 / 2)
    assert m["eval/accuracy_round_1"] == pytest.approx(1 / 2)
    assert m["eval/tie_pair_abs_diff"] == pytest.approx(0.0)
    assert m["eval/reward_mean"] == pytest.approx((6.5 + 5.5) / 10)
    assert m["eval/pairs"] == 5


def test_collapsed_model_with_constant_scores_gets_zero_accuracy():
    scores = torch.zeros(8)
    m = pair_metrics(scores, scores.clone())
    assert m["reward/accuracy"] == 0.0
    assert m["reward/tie_rate"] == 1.0


def test_learning_rate_anneals_to_zero():
    linear = [lr_multiplier(s, total=4, warmup=0, schedule="linear") for s in range(5)]
    assert linear == [1.0, 0.75, 0.5, 0.25, 0.0]
    cosine = [lr_multiplier(s, total=4, warmup=0, schedule="cosine") for s in range(5)]
    assert cosine[0] == 1.0
    assert cosine[2] == pytest.approx(0.5)
    assert cosine[4] == pytest.approx(0.0, abs=1e-12)
    warm = [lr_multiplier(s, total=6, warmup=2, schedule="linear") for s in range(3)]
    assert warm == [0.5, 1.0, 1.0]


# ---- the model -------------------------------------------------------------------------------


def test_head_init_has_std_one_over_sqrt_hidden_plus_one_and_zero_bias():
    class WithBias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.score = nn.Linear(4095, 1, bias=True)
            nn.init.constant_(self.score.bias, 3.0)

    model = WithBias()
    init_reward_head(model, seed=0)
    assert model.score.weight.std().item() == pytest.approx(1 / 64, rel=0.05)
    assert model.score.weight.mean().item() == pytest.approx(0.0, abs=3 / 64 / 64)
    assert model.score.bias.item() == 0.0


def test_loaded_backbone_has_seeded_head_and_no_dropout(tiny_model_dir):
    model, tokenizer, _ = load_reward_backbone(tiny_model_dir, seed=0)
    again, _, _ = load_reward_backbone(tiny_model_dir, seed=0)
    assert torch.equal(model.score.weight, again.score.weight)
    hidden = model.config.hidden_size
    assert model.score.weight.shape == (1, hidden)
    assert model.score.weight.std().item() == pytest.approx(1 / math.sqrt(hidden + 1), rel=0.3)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))


def test_disable_dropout_zeroes_every_dropout_setting():
    config = GPT2Config()
    changed = disable_dropout_in_config(config)
    assert set(changed) >= {"resid_pdrop", "embd_pdrop", "attn_pdrop"}
    assert config.resid_pdrop == config.embd_pdrop == config.attn_pdrop == 0.0
    assert config.summary_first_dropout == 0.0


@pytest.fixture(scope="module")
def backbone(tiny_model_dir):
    model, tokenizer, _ = load_reward_backbone(tiny_model_dir, seed=1)
    return model.eval(), tokenizer


def test_score_is_read_at_last_real_token_with_left_and_right_padding(backbone):
    model, tokenizer = backbone
    texts = ["A short one.", "A somewhat longer text about kettles and bread.", "Mid length"]
    rows = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    with torch.no_grad():
        alone = [sequence_scores(model, **collate([r], pad_token_id=0)).item() for r in rows]
        right = sequence_scores(model, **collate(rows, pad_token_id=tokenizer.pad_token_id))
        left = sequence_scores(
            model, **collate(rows, pad_token_id=tokenizer.pad_token_id, padding_side="left")
        )
    assert right.tolist() == pytest.approx(alone, abs=1e-5)
    assert left.tolist() == pytest.approx(alone, abs=1e-5)
    assert len(set(alone)) == 3  # the head sees different texts differently


def test_score_is_right_when_pad_equals_eos(backbone):
    model, tokenizer = backbone
    eos = tokenizer.eos_token_id
    rows = [tokenizer("one two three four")["input_ids"] + [eos], tokenizer("one")["input_ids"]]
    with torch.no_grad():
        alone = [sequence_scores(model, **collate([r], pad_token_id=eos)).item() for r in rows]
        batch = collate(rows, pad_token_id=eos)
        padded = sequence_scores(model, **batch)
        # the library's own pooling looks for the last non-PAD id, and so skips a final EOS
        model.config.pad_token_id = eos
        library = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        model.config.pad_token_id = tokenizer.pad_token_id
    assert padded.tolist() == pytest.approx(alone, abs=1e-5)
    assert library.logits[0, 0].item() != pytest.approx(alone[0], abs=1e-5)


# ---- training --------------------------------------------------------------------------------

FAST = RewardModelConfig(
    num_epochs=2,
    learning_rate=1e-3,
    lr_schedule="cosine",
    batch_size=16,
    max_length=48,
    eval_fraction=0.2,
    seed=0,
)


def test_tiny_reward_model_learns_a_marker_word(tiny_model_dir, tmp_path):
    progress = []
    out = tmp_path / "rm"
    result = train_reward_model(
        marker_pairs(240, rounds=2),
        base_model=str(tiny_model_dir),
        output_dir=out,
        config=FAST,
        on_progress=lambda step, total, metrics: progress.append((step, total, metrics)),
        metadata={"snapshot": "test"},
    )
    assert result.metrics["eval/accuracy"] > 0.9
    assert result.metrics["eval/accuracy_round_0"] > 0.9
    assert result.metrics["eval/accuracy_round_1"] > 0.9
    assert result.metrics["eval/tie_rate"] == 0.0
    assert result.counts["train_pairs"] + result.counts["eval_pairs"] == 240
    assert result.counts["eval_prompts"] == 48
    total = 2 * math.ceil(192 / 16)
    assert result.steps == total
    assert [s for s, _, _ in progress] == [*range(1, total + 1), total]
    assert all(t == total for _, t, _ in progress)
    losses = [m["reward/loss"] for _, _, m in progress[:-1]]
    assert all(math.isfinite(x) for x in losses)
    assert statistics.fmean(losses[-4:]) < statistics.fmean(losses[:4])
    assert "eval/accuracy" in progress[-1][2]

    # parameters changed, in the backbone as well as the head
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    trained = AutoModelForSequenceClassification.from_pretrained(out).state_dict()
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base[key], trained[key])

    info = json.loads((out / INFO_FILE).read_text())
    assert info["config"]["learning_rate"] == 1e-3
    assert info["seed"] == 0
    assert info["counts"] == result.counts
    assert info["metadata"] == {"snapshot": "test"}
    assert info["normalization"]["source"] == "training_completions"
    assert any("no reference samples" in note for note in result.notes)
    assert not [p for p in tmp_path.iterdir() if p.name != "rm"]  # no temp dirs left

    # scoring the saved model ranks the marker higher
    scores = score_texts(out, [("Q:", " a banana in the soup"), ("Q:", " a cat in the soup")])
    assert scores[0] > scores[1]


def test_normalisation_gives_mean_zero_std_one_on_reference_samples(tiny_model_dir, tmp_path):
    pairs = marker_pairs(48)
    reference = [(p.prompt, " " + " ".join(WORDS[i % 7 : i % 7 + 4])) for i, p in enumerate(pairs)]
    config = RewardModelConfig(learning_rate=1e-3, batch_size=16, max_length=48, eval_fraction=0)
    out = tmp_path / "rm"
    result = train_reward_model(
        pairs,
        base_model=tiny_model_dir,
        output_dir=out,
        config=config,
        reference_samples=reference,
    )
    assert result.normalization.source == "reference_samples"
    assert result.normalization.num_samples == len(reference)
    assert json.loads((out / NORMALIZATION_FILE).read_text())["scale"] == pytest.approx(
        result.normalization.scale
    )
    scores = score_texts(out, reference, batch_size=7)
    assert statistics.fmean(scores) == pytest.approx(0.0, abs=1e-4)
    assert statistics.pstdev(scores) == pytest.approx(1.0, abs=1e-4)
    reward_model = load_reward_model(out)
    raw = reward_model.score(reference[:3], normalized=False)
    norm = result.normalization
    assert [(r - norm.offset) / norm.scale for r in raw] == pytest.approx(scores[:3], abs=1e-5)


def test_long_pairs_are_truncated_and_counted_never_dropped(tiny_model_dir, tmp_path):
    pairs = [PreferencePair("Q?", " banana", " no", prompt_id=i) for i in range(20)]
    long = [
        PreferencePair("Tell me about soup. " * 40, " banana soup", " soup", prompt_id=f"L{i}")
        for i in range(6)
    ]
    huge = [PreferencePair("Q:", " banana" * 80, " no", prompt_id=f"H{i}") for i in range(3)]
    config = RewardModelConfig(batch_size=8, max_length=32, eval_fraction=0.0)
    result = train_reward_model(
        pairs + long + huge, base_model=tiny_model_dir, output_dir=tmp_path / "rm", config=config
    )
    assert result.counts["train_pairs"] == 29
    assert result.counts["train_prompt_truncated"] == 6
    assert result.counts["train_completion_truncated"] == 3


def test_tie_pairs_train_with_finite_loss_or_are_dropped_and_counted(tiny_model_dir, tmp_path):
    pairs = marker_pairs(24) + [
        PreferencePair("Same?", " soup", " rice", prompt_id=f"t{i}", tie=True, weight=0.5)
        for i in range(8)
    ]
    config = RewardModelConfig(batch_size=8, max_length=32, eval_fraction=0.25, seed=2)
    result = train_reward_model(
        pairs, base_model=tiny_model_dir, output_dir=tmp_path / "a", config=config
    )
    assert result.counts["train_tie_pairs"] + result.counts["eval_tie_pairs"] == 8
    assert math.isfinite(result.metrics["reward/loss"])
    dropped = train_reward_model(
        pairs,
        base_model=tiny_model_dir,
        output_dir=tmp_path / "b",
        config=RewardModelConfig(**{**config.to_dict(), "tie_loss": "drop"}),
    )
    assert dropped.counts["train_tie_pairs"] == 0
    assert dropped.counts["tie_pairs_dropped"] == result.counts["train_tie_pairs"]


def test_chat_prompts_are_accepted(tiny_model_dir, tmp_path):
    pairs = [
        PreferencePair([{"role": "user", "content": f"Tell me {i}"}], " banana", " no", i)
        for i in range(10)
    ]
    config = RewardModelConfig(batch_size=4, max_length=32, eval_fraction=0.2)
    out = tmp_path / "rm"
    train_reward_model(pairs, base_model=tiny_model_dir, output_dir=out, config=config)
    scores = score_texts(out, [([{"role": "user", "content": "Tell me 3"}], " banana")])
    assert math.isfinite(scores[0])


def test_cancellation_raises_and_leaves_no_directory(tiny_model_dir, tmp_path):
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    out = tmp_path / "rm"
    with pytest.raises(TrainingCancelled):
        train_reward_model(
            marker_pairs(64),
            base_model=tiny_model_dir,
            output_dir=out,
            config=RewardModelConfig(batch_size=8, max_length=32),
            should_stop=should_stop,
        )
    assert len(calls) == 3
    assert list(tmp_path.iterdir()) == []


def test_config_round_trips_and_rejects_unknown_fields():
    config = RewardModelConfig(learning_rate=1e-4, adam_betas=(0.8, 0.9))
    assert RewardModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown"):
        RewardModelConfig.from_dict({"learning_rat": 1e-4})
    with pytest.raises(ValueError):
        RewardModelConfig(eval_fraction=1.0)


def test_reference_max_samples_0_saves_the_model_with_the_identity_normalisation(
    tiny_model_dir, tmp_path
):
    config = RewardModelConfig(
        batch_size=8, max_length=32, eval_fraction=0.0, reference_max_samples=0
    )
    result = train_reward_model(
        marker_pairs(8), base_model=tiny_model_dir, output_dir=tmp_path / "rm", config=config
    )
    assert (result.normalization.offset, result.normalization.scale) == (0.0, 1.0)
    assert result.normalization.source == "none"
    assert any("reference_max_samples is 0" in note for note in result.notes)
    assert (tmp_path / "rm" / INFO_FILE).is_file()


def test_a_lora_reward_model_trains_its_head_and_saves_a_merged_model(tiny_model_dir, tmp_path):
    config = RewardModelConfig(
        learning_rate=3e-3,
        batch_size=8,
        max_length=40,
        eval_fraction=0.0,
        use_lora=True,
        lora_r=4,
        gradient_checkpointing=True,
    )
    result = train_reward_model(
        marker_pairs(32), base_model=tiny_model_dir, output_dir=tmp_path / "rm", config=config
    )
    assert any("LoRA r=4" in note for note in result.notes)
    # an ordinary directory: no adapter files, the score head saved with the merged weights
    assert not (tmp_path / "rm" / "adapter_config.json").exists()
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    fresh, _, _ = load_reward_backbone(tiny_model_dir, seed=0)
    assert not torch.equal(saved.score.weight, fresh.score.weight)  # the head was trained
    changed = ~torch.isclose(
        saved.model.layers[0].mlp.up_proj.weight, fresh.model.layers[0].mlp.up_proj.weight
    )
    assert changed.any()  # the adapter was merged into the base weights
    scores = load_reward_model(tmp_path / "rm", device="cpu").score([("Q:", " banana")])
    assert math.isfinite(scores[0])
