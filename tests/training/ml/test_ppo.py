"""PPO: the math against hand-computed values, then a CPU smoke run on the tiny model."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from training.ml import ppo
from training.ml.common import TrainingCancelled, load_tokenizer
from training.ml.config import PPOConfig
from training.ml.ppo import (
    AdaptiveKLController,
    FixedKLController,
    annealed_learning_rate,
    apply_missing_eos_penalty,
    compute_rewards,
    derived_seed,
    entropy_from_logits,
    gae,
    masked_mean,
    ppo_policy_loss,
    ppo_total_loss,
    ppo_value_loss,
    prompt_batches,
    run_ppo,
    value_head_from_reward,
    whiten,
)
from training.ml.prompts import sequence_prefix
from training.ml.synthetic import gold_score


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# --- GAE ----------------------------------------------------------------------------------------


def test_gae_matches_hand_computation_with_gamma_1_lambda_095():
    # Row 0, three valid tokens: r = [1, 0, 2], V = [0.5, 1, 1.5], gamma = 1, lambda = 0.95.
    #   t=2: delta = 2 + 0   - 1.5 = 0.5          A2 = 0.5
    #   t=1: delta = 0 + 1.5 - 1.0 = 0.5          A1 = 0.5 + 0.95*0.5   = 0.975
    #   t=0: delta = 1 + 1.0 - 0.5 = 1.5          A0 = 1.5 + 0.95*0.975 = 2.42625
    #   returns = A + V = [2.92625, 1.975, 2.0]
    # Row 1, mask [1, 1, 0]: the third column is padding (its 9 and 7 must be ignored).
    #   t=2: masked                               A2 = 0
    #   t=1: delta = 1.0 + 0   - 0.4 = 0.6        A1 = 0.6
    #   t=0: delta = 0.5 + 0.4 - 0.2 = 0.7        A0 = 0.7 + 0.95*0.6 = 1.27
    #   returns = [1.47, 1.0, 0]
    rewards = t([1.0, 0.0, 2.0], [0.5, 1.0, 9.0])
    values = t([0.5, 1.0, 1.5], [0.2, 0.4, 7.0])
    mask = t([1, 1, 1], [1, 1, 0])

    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)

    torch.testing.assert_close(advantages, t([2.42625, 0.975, 0.5], [1.27, 0.6, 0.0]))
    torch.testing.assert_close(returns, t([2.92625, 1.975, 2.0], [1.47, 1.0, 0.0]))


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-5, 5), min_size=1, max_size=6),
    st.lists(st.floats(-5, 5), min_size=6, max_size=6),
)
def test_gae_with_lambda_1_returns_the_reward_to_go(rewards, values):
    # With gamma = lambda = 1 the values telescope away: returns_t = sum of rewards from t on.
    n = len(rewards)
    r = torch.tensor([rewards + [0.0] * (6 - n)])
    v = torch.tensor([values])
    mask = torch.tensor([[1.0] * n + [0.0] * (6 - n)])
    _, returns = gae(r, v, mask, gamma=1.0, lam=1.0)
    expected = torch.flip(torch.cumsum(torch.flip(r, [1]), 1), [1]) * mask
    torch.testing.assert_close(returns, expected, atol=1e-4, rtol=1e-4)


# --- whitening ----------------------------------------------------------------------------------


def test_whiten_uses_only_valid_tokens():
    # valid values 1, 2, 3: mean 2, unbiased variance ((1 + 0 + 1) / 2) = 1 -> [-1, 0, 1];
    # the padded 100 is ignored and comes out as 0.
    x = t([1.0, 2.0], [3.0, 100.0])
    mask = t([1, 1], [1, 0])
    torch.testing.assert_close(whiten(x, mask), t([-1.0, 0.0], [1.0, 0.0]))
    # without shifting, the mean (2) is added back
    torch.testing.assert_close(whiten(x, mask, shift_mean=False), t([1.0, 2.0], [3.0, 0.0]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=3, max_size=12))
def test_whitened_values_have_mean_0_and_std_1_up_to_eps(values):
    """Whitening divides by sqrt(var + eps), so the std comes out sqrt(var / (var + eps)):
    1 for spread-out values, less for nearly constant ones (e.g. [0, 0, 0.0035], var 4e-6:
    0.99875), 0 for constant ones. The property holds exactly for every input."""
    x = torch.tensor([values], dtype=torch.float64)
    eps = 1e-8
    out = whiten(x, torch.ones_like(x), eps=eps)
    var = float(x.var())
    assert abs(float(out.mean())) < 1e-9 * (1 + float(x.abs().max()) / math.sqrt(var + eps))
    assert float(out.std()) == pytest.approx(math.sqrt(var / (var + eps)), rel=1e-9, abs=1e-7)
    if var > 1e-2:
        assert float(out.std()) == pytest.approx(1.0, abs=1e-6)


def test_masked_mean_per_row_ignores_padding_and_gives_0_for_an_empty_row():
    x = t([1.0, 3.0, 50.0], [7.0, 8.0, 9.0])
    mask = t([1, 1, 0], [0, 0, 0])
    # row 0: (1 + 3) / 2; row 1 has no valid token: 0, not 0 / 0
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor(2.0))


def test_whitening_a_single_valid_token_gives_0_not_nan():
    # one value: no Bessel correction to divide by (n - 1 = 0), the variance is 0
    out = whiten(t([5.0, 9.0]), t([1, 0]))
    torch.testing.assert_close(out, t([0.0, 0.0]))


def test_whitening_nearly_constant_values_stays_finite_and_below_1():
    x = torch.tensor([[0.0, 0.0, 0.0035]], dtype=torch.float64)
    out = whiten(x, torch.ones_like(x))
    assert float(out.std()) == pytest.approx(math.sqrt(x.var().item() / (x.var().item() + 1e-8)))
    assert float(out.std()) < 1.0
    assert torch.equal(whiten(torch.ones(1, 3), torch.ones(1, 3)), torch.zeros(1, 3))


# --- clipped losses -----------------------------------------------------------------------------


def test_policy_loss_clips_as_computed_by_hand():
    # epsilon = 0.2, old log-probs 0, so ratio = exp(new log-prob):
    #   A= 1, r=1.5: -A*r = -1.5, -A*clip = -1.2 -> max -1.2  (clipped)
    #   A=-1, r=0.5: -A*r =  0.5, -A*clip =  0.8 -> max  0.8  (clipped)
    #   A= 2, r=0.9: -A*r = -1.8, -A*clip = -1.8 -> max -1.8
    #   A= 1, r=0.5: -A*r = -0.5, -A*clip = -0.8 -> max -0.5  (pessimistic: unclipped)
    #   fifth token masked out.
    # loss = (-1.2 + 0.8 - 1.8 - 0.5) / 4 = -0.675; clipfrac = 2/4.
    # approx_kl = mean((r - 1) - log r)
    #   = ((0.5 - ln 1.5) + 2*(-0.5 + ln 2) + (-0.1 - ln 0.9)) / 4
    ratios = [1.5, 0.5, 0.9, 0.5, 7.0]
    new = torch.log(t(ratios))
    old = torch.zeros(1, 5)
    advantages = t([1.0, -1.0, 2.0, 1.0, 100.0])
    mask = t([1, 1, 1, 1, 0])

    loss, stats = ppo_policy_loss(new, old, advantages, mask, clip_range=0.2)

    assert loss.item() == pytest.approx(-0.675, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    expected_kl = ((0.5 - math.log(1.5)) + 2 * (-0.5 + math.log(2.0)) + (-0.1 - math.log(0.9))) / 4
    assert stats["approx_kl"].item() == pytest.approx(expected_kl, abs=1e-6)


def test_policy_loss_gradient_vanishes_on_clipped_tokens():
    new = torch.log(t([1.5])).requires_grad_(True)  # A > 0 and r > 1 + eps: clipped, no gradient
    loss, _ = ppo_policy_loss(new, torch.zeros(1, 1), t([1.0]), t([1.0]), clip_range=0.2)
    loss.backward()
    assert new.grad.abs().item() == 0.0


def test_value_loss_clips_as_computed_by_hand():
    # epsilon_v = 0.2:
    #   V=1.0, V_old=0.5, R=1: (V-R)^2 = 0;    clipped V = 0.7, (0.7-1)^2 = 0.09 -> 0.09 (clipped)
    #   V=0.6, V_old=0.5, R=2: (V-R)^2 = 1.96; clipped V = 0.6, same          -> 1.96
    #   V=0.0, V_old=0.5, R=0: (V-R)^2 = 0;    clipped V = 0.3, 0.09          -> 0.09 (clipped)
    #   fourth token masked.
    # loss = 0.5 * (0.09 + 1.96 + 0.09) / 3 = 0.356667; clipfrac = 2/3.
    values = t([1.0, 0.6, 0.0, 50.0])
    old_values = t([0.5, 0.5, 0.5, 0.0])
    returns = t([1.0, 2.0, 0.0, -50.0])
    mask = t([1, 1, 1, 0])

    loss, clipfrac = ppo_value_loss(values, old_values, returns, mask, clip_range_value=0.2)

    assert loss.item() == pytest.approx(0.5 * 2.14 / 3, abs=1e-6)
    assert clipfrac.item() == pytest.approx(2 / 3)


# --- entropy, rewards, KL control ---------------------------------------------------------------


def test_entropy_of_known_distributions():
    # uniform over 4: ln 4;  [1/2, 1/4, 1/4]: 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2
    logits = torch.stack(
        [torch.zeros(3), torch.log(torch.tensor([0.5, 0.25, 0.25]))]
    )  # shift-invariance: any constant offset gives the same entropy
    uniform4 = entropy_from_logits(torch.full((4,), 3.0))
    assert uniform4.item() == pytest.approx(math.log(4))
    out = entropy_from_logits(logits + 10.0)
    torch.testing.assert_close(out, torch.tensor([math.log(3), 1.5 * math.log(2)]))


def test_the_entropy_term_is_a_bonus_that_gradient_descent_raises():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5).mul(3).requires_grad_()
    mask = t([1, 1, 0], [1, 0, 0])  # three valid tokens
    optimizer = torch.optim.SGD([logits], lr=0.5)
    zero = torch.zeros(())
    entropies = []
    for _ in range(5):
        entropy = entropy_from_logits(logits)
        entropies.append(float((entropy * mask).sum() / mask.sum()))
        loss, entropy_loss = ppo_total_loss(zero, zero, entropy, mask, vf_coef=0.5, ent_coef=0.1)
        assert loss.item() == pytest.approx(-0.1 * entropies[-1], rel=1e-6)
        assert entropy_loss.item() == pytest.approx(-entropies[-1], rel=1e-6)
        optimizer.zero_grad()
        loss.backward()
        assert logits.grad[1, 1:].abs().sum() == 0  # padding carries no gradient
        optimizer.step()
    assert all(later > earlier for earlier, later in itertools.pairwise(entropies))


def test_total_loss_weighs_the_value_loss_by_vf_coef():
    loss, _ = ppo_total_loss(
        torch.tensor(0.25), torch.tensor(2.0), torch.ones(1, 2), torch.ones(1, 2),
        vf_coef=0.5, ent_coef=0.0,
    )  # fmt: skip
    assert loss.item() == pytest.approx(0.25 + 0.5 * 2.0)


def test_the_learning_rate_anneals_linearly_over_the_steps():
    rates = [annealed_learning_rate(1e-3, step, 4) for step in range(1, 5)]
    assert rates == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])


def test_compute_rewards_puts_kl_on_every_token_and_the_score_on_the_last_valid_one():
    # beta = 0.1. Row 0: kl = [-1 - -1.5, -2 - -2, -3 - -2] = [0.5, 0, -1]
    #   rewards = [-0.05, 0, 0.1 + 2.0 (score)]
    # Row 1 (last column is padding): kl = [1, 1, 0]; rewards = [-0.1, -0.1 + -1.0 (score), 0]
    scores = torch.tensor([2.0, -1.0])
    logprobs = t([-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0])
    ref_logprobs = t([-1.5, -2.0, -2.0], [-2.0, -2.0, -2.0])
    mask = t([1, 1, 1], [1, 1, 0])

    rewards, kl = compute_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.1)

    torch.testing.assert_close(kl, t([0.5, 0.0, -1.0], [1.0, 1.0, 0.0]))
    torch.testing.assert_close(rewards, t([-0.05, 0.0, 2.1], [-0.1, -1.1, 0.0]))


def test_missing_eos_penalty_is_subtracted_as_in_trl_and_must_not_be_negative():
    scores = torch.tensor([0.3, 0.7])
    eos = torch.tensor([True, False])
    torch.testing.assert_close(
        apply_missing_eos_penalty(scores, eos, 1.0), torch.tensor([0.3, -0.3])
    )
    torch.testing.assert_close(apply_missing_eos_penalty(scores, eos, None), scores)
    torch.testing.assert_close(apply_missing_eos_penalty(scores, eos, 0.0), scores)
    with pytest.raises(ValueError, match=">= 0"):
        apply_missing_eos_penalty(scores, eos, -1.0)
    with pytest.raises(ValueError, match="missing_eos_penalty"):
        PPOConfig(missing_eos_penalty=-1.0)  # once "replace by -1": refused, not reinterpreted


def test_the_value_head_predicts_the_normalised_reward():
    # raw = w.h + b = 2*1 + 3*2 + 1 = 9; normalised = (9 - 5) / 2 = 2
    weight, bias = value_head_from_reward(
        torch.tensor([[2.0, 3.0]]), torch.tensor([1.0]), offset=5.0, scale=2.0
    )
    h = torch.tensor([1.0, 2.0])
    assert float(weight @ h + bias) == pytest.approx(2.0)
    weight, bias = value_head_from_reward(torch.tensor([[2.0, 3.0]]), None, offset=5.0, scale=2.0)
    assert float(weight @ h + bias) == pytest.approx((8.0 - 5.0) / 2.0)


def test_the_adaptive_kl_horizon_scales_with_the_run():
    config = PPOConfig(total_steps=100, rollout_batch_size=16)  # 1,600 episodes
    assert config.resolved_kl_horizon == 160
    # the controller can now move beta about e^(0.2 * 10) ~ 7x over the run, not 3%
    controller = AdaptiveKLController(0.05, target=6.0, horizon=config.resolved_kl_horizon)
    for _ in range(config.total_steps):
        controller.update(40.0, n_steps=16)
    assert controller.value > 0.05 * 7
    assert PPOConfig(kl_horizon=10000).resolved_kl_horizon == 10000
    assert PPOConfig(total_steps=1, rollout_batch_size=4).resolved_kl_horizon == 4


def test_derived_seeds_depend_on_where_not_on_history():
    assert derived_seed(0, 3, 8) == derived_seed(0, 3, 8)
    assert len({derived_seed(0, step, first) for step in range(4) for first in (0, 4)}) == 8


def test_adaptive_kl_controller_moves_beta_as_computed_by_hand():
    controller = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # KL 9 is 50% over target, error clipped to +0.2: beta = 0.1 * (1 + 0.2 * 100 / 10000)
    assert controller.update(9.0, n_steps=100) == pytest.approx(0.1002)
    # KL 5.4 is 10% under: beta = 0.1002 * (1 - 0.1 * 1000 / 10000) = 0.1002 * 0.99
    assert controller.update(5.4, n_steps=1000) == pytest.approx(0.1002 * 0.99)
    assert FixedKLController(0.1).update(100.0, 1000) == 0.1


def test_prompt_batches_cover_every_prompt_once_per_epoch():
    batches = prompt_batches(5, 2, seed=3)
    seen = [i for _ in range(5) for i in next(batches)]  # 10 indices = two epochs
    assert sorted(seen[:5]) == list(range(5))
    assert sorted(seen[5:]) == list(range(5))


# --- smoke run on the tiny model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def reward_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reward model from the tiny LM: a randomly initialised scalar head, no normalisation."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("rm") / "rm"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


PROMPTS = [
    "Why does bread go stale?",
    [{"role": "user", "content": "How does a kettle know when to stop?"}],
    "Tell me about houseplants.",
    [{"role": "user", "content": "Why do we yawn?"}],
]

EXPECTED_METRICS = {
    "ppo/reward_raw",
    "ppo/reward_normalized",
    "ppo/score",
    "ppo/kl_ref",
    "ppo/beta",
    "ppo/entropy",
    "ppo/clipfrac",
    "ppo/approx_kl",
    "ppo/value_loss",
    "ppo/policy_loss",
    "ppo/loss",
    "ppo/response_length",
    "ppo/eos_rate",
    "ppo/rollout_tokens_per_s",
    "ppo/update_seconds",
}


def smoke_config(**overrides) -> PPOConfig:
    values = dict(
        total_steps=2,
        rollout_batch_size=4,
        mini_batch_size=2,
        ppo_epochs=2,
        max_new_tokens=8,
        learning_rate=1e-3,
        temperature=1.0,
        ent_coef=0.01,
        device="cpu",
    )
    values.update(overrides)
    return PPOConfig(**values)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {
        k: v.clone()
        for k, v in AutoModelForCausalLM.from_pretrained(model_dir).state_dict().items()
    }


def test_ppo_smoke_run_trains_and_writes_the_policy_atomically(
    tiny_model_dir, reward_model_dir, tmp_path, monkeypatch
):
    progress = []
    output_dir = tmp_path / "policy"
    whitened = []

    def spy_whiten(x, mask, **kwargs):
        whitened.append(x.shape)
        return whiten(x, mask, **kwargs)

    monkeypatch.setattr(ppo, "whiten", spy_whiten)

    result = run_ppo(
        policy_dir=tiny_model_dir,
        reference_dir=tiny_model_dir,
        reward_model_dir=reward_model_dir,
        prompts=PROMPTS,
        output_dir=output_dir,
        config=smoke_config(),
        on_progress=lambda step, total, metrics: progress.append((step, total, metrics)),
    )

    assert [(s, n) for s, n, _ in progress] == [(1, 2), (2, 2)]
    # anneal_lr (the default): the optimizer ran step 1 at the full rate, step 2 at half
    assert [m["ppo/learning_rate"] for _, _, m in progress] == pytest.approx([1e-3, 5e-4])
    for _, _, metrics in progress:
        assert metrics.keys() >= EXPECTED_METRICS
        assert all(math.isfinite(v) for v in metrics.values())
        assert_metrics_agree(metrics)
    # whiten_advantages (the default): the advantages of each step, and only they
    assert len(whitened) == 2
    # adaptive_kl (the default): step 1's KL is 0, below the target, so beta falls by the
    # controller's largest step over the run's horizon (8 episodes / 10, at least one step's 4);
    # step 2 runs with it
    first, second = progress[0][2], progress[1][2]
    assert first["ppo/beta"] == pytest.approx(0.05)
    assert first["ppo/kl_horizon"] == 4
    assert first["ppo/beta_next"] == pytest.approx(0.05 * (1 - 0.2 * 4 / 4))
    assert second["ppo/beta"] == first["ppo/beta_next"]
    assert result.output_dir == output_dir and result.steps == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]  # no temp dir left behind
    run_info = json.loads((output_dir / "ppo_run.json").read_text())
    assert run_info["config"]["total_steps"] == 2 and len(run_info["history"]) == 2
    before, after = _weights(tiny_model_dir), _weights(output_dir)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (output_dir / "tokenizer.json").exists()


def assert_metrics_agree(metrics: dict[str, float]) -> None:
    """What one step's metrics say about each other, whatever the samples were."""
    # every token's reward is -beta * kl, and the score is added once per episode
    assert metrics["ppo/reward_total"] == pytest.approx(
        metrics["ppo/score"] - metrics["ppo/beta"] * metrics["ppo/kl_ref"], rel=1e-5, abs=1e-6
    )
    # update averages over minibatches: fractions, squares and norms stay what they are
    assert 0 <= metrics["ppo/clipfrac"] <= 1 and 0 <= metrics["ppo/value_clipfrac"] <= 1
    assert metrics["ppo/value_loss"] >= 0
    assert metrics["ppo/policy_grad_norm"] >= 0 and metrics["ppo/value_grad_norm"] >= 0
    # the timings are parts of the step, and generating is part of the rollout
    assert 0 < metrics["ppo/rollout_seconds"] < metrics["ppo/step_seconds"]
    assert 0 < metrics["ppo/update_seconds"] < metrics["ppo/step_seconds"]
    assert metrics["ppo/rollout_tokens_per_s"] >= (
        metrics["ppo/rollout_tokens"] / metrics["ppo/rollout_seconds"]
    )


def test_ppo_stops_on_a_loss_that_is_not_finite(
    tiny_model_dir, reward_model_dir, tmp_path, monkeypatch
):
    def diverged(*args, **kwargs):
        return {"ppo/loss": math.nan, "ppo/policy_loss": 0.0, "ppo/value_loss": 0.0}

    monkeypatch.setattr(ppo, "ppo_update", diverged)
    with pytest.raises(FloatingPointError, match="ppo/loss is nan at step 1"):
        run_ppo(
            policy_dir=tiny_model_dir,
            reference_dir=tiny_model_dir,
            reward_model_dir=reward_model_dir,
            prompts=PROMPTS,
            output_dir=tmp_path / "policy",
            config=smoke_config(total_steps=1),
        )
    assert list(tmp_path.iterdir()) == []


def test_ppo_with_lora_uses_the_base_as_reference_and_saves_a_merged_model(
    tiny_model_dir, reward_model_dir, tmp_path
):
    config = smoke_config(
        total_steps=1,
        use_lora=True,
        lora_r=4,
        value_init="zero",
        rollout_batch_size=2,
        samples_per_prompt=2,
        ppo_epochs=1,
        mini_batch_size=4,  # one minibatch: the update's statistics are its own
    )
    result = run_ppo(
        policy_dir=tiny_model_dir,
        reference_dir=None,
        reward_model_dir=reward_model_dir,
        prompts=PROMPTS,
        output_dir=tmp_path / "policy",
        config=config,
    )
    # step 1 samples from the unchanged policy: with the adapter at its zero init, KL is 0
    episodes = result.metrics["ppo/rollout_tokens"] / result.metrics["ppo/response_length"]
    assert episodes == pytest.approx(4)  # 2 prompts x 2 samples each
    assert result.metrics["ppo/kl_ref"] == pytest.approx(0.0, abs=1e-5)
    assert not (result.output_dir / "adapter_config.json").exists()
    before, after = _weights(tiny_model_dir), _weights(result.output_dir)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_cancelled_ppo_leaves_no_directory(tiny_model_dir, reward_model_dir, tmp_path):
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 3  # let the first rollout start, then cancel

    with pytest.raises(TrainingCancelled):
        run_ppo(
            policy_dir=tiny_model_dir,
            reference_dir=tiny_model_dir,
            reward_model_dir=reward_model_dir,
            prompts=PROMPTS,
            output_dir=tmp_path / "policy",
            config=smoke_config(),
            should_stop=should_stop,
        )
    assert list(tmp_path.iterdir()) == []


def test_ppo_refuses_an_existing_output_dir(tiny_model_dir, reward_model_dir, tmp_path):
    (tmp_path / "policy").mkdir()
    with pytest.raises(FileExistsError):
        run_ppo(
            policy_dir=tiny_model_dir,
            reference_dir=tiny_model_dir,
            reward_model_dir=reward_model_dir,
            prompts=PROMPTS,
            output_dir=tmp_path / "policy",
            config=smoke_config(),
        )


def test_config_rejects_a_zero_temperature():
    with pytest.raises(ValueError, match="temperature"):
        PPOConfig(temperature=0.0)


def test_ppo_needs_exactly_one_source_of_reward(tiny_model_dir, reward_model_dir, tmp_path):
    for rm_dir, fn in [(None, None), (reward_model_dir, lambda prompts, completions: [0.0])]:
        with pytest.raises(ValueError, match="exactly one"):
            run_ppo(
                policy_dir=tiny_model_dir,
                reference_dir=None,
                reward_model_dir=rm_dir,
                reward_fn=fn,
                prompts=PROMPTS,
                output_dir=tmp_path / "policy",
                config=smoke_config(),
            )


@pytest.mark.slow
def test_ppo_raises_the_synthetic_gold_score(tiny_model_dir, tmp_path):
    # The tiny model is untrained and almost never emits EOS, so the no-EOS penalty is off here;
    # the reward is the hidden gold score itself (no reward model): PPO must climb it.
    config = smoke_config(
        total_steps=20,
        rollout_batch_size=16,
        mini_batch_size=8,
        ppo_epochs=4,
        max_new_tokens=16,
        learning_rate=1e-2,
        anneal_lr=False,
        ent_coef=0.0,
        kl_coef=0.01,
        value_init="zero",
        missing_eos_penalty=None,
    )
    result = run_ppo(
        policy_dir=tiny_model_dir,
        reference_dir=None,
        reward_model_dir=None,
        reward_fn=lambda prompts, completions: [gold_score(c) for c in completions],
        prompts=PROMPTS * 4,
        output_dir=tmp_path / "policy",
        config=config,
    )
    scores = [m["ppo/score"] for m in result.history]
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    # How far it climbs in 20 steps depends on the sampled tokens, so on the CPU's float
    # arithmetic: seeds 0-5 went 0.1 -> 0.24..0.80 on an AMD EPYC, 0.1 -> 0.9..1.1 on an Intel
    # Xeon. A climb is a steady trend: a policy that learned nothing gives rank correlation ~0.
    trend = np.corrcoef(np.arange(len(scores)), np.argsort(np.argsort(scores)))[0, 1]
    assert last > first + 0.1 and trend > 0.6, (trend, scores)
    assert result.history[-1]["ppo/kl_ref"] > 0


# --- what the reward model and the critic see ----------------------------------------------------


def test_the_critic_starts_on_the_normalised_reward_scale(
    tiny_model_dir, reward_model_dir, tmp_path
):
    import shutil

    from transformers import AutoModelForSequenceClassification

    rm_dir = tmp_path / "rm"
    shutil.copytree(reward_model_dir, rm_dir)
    (rm_dir / "reward_normalization.json").write_text(
        json.dumps({"offset": 0.7, "scale": 4.0, "source": "test", "num_samples": 3})
    )
    tokenizer = load_tokenizer(tiny_model_dir, padding_side="left")
    value, how = ppo.load_value_model(
        smoke_config(), policy_dir=tiny_model_dir, reward_model_dir=rm_dir, tokenizer=tokenizer
    )
    assert "offset 0.7" in how and "scale 4" in how
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir)
    hidden = torch.randn(3, rm.config.hidden_size)
    with torch.no_grad():
        expected = (rm.score(hidden).squeeze(-1) - 0.7) / 4.0
        torch.testing.assert_close(value.head(hidden).squeeze(-1), expected)


def test_the_reward_model_scores_the_truncated_query_the_policy_saw(
    tiny_model_dir, reward_model_dir, monkeypatch
):
    from training.ml.parallel import Placement
    from training.ml.reward_model import RewardModel

    config = smoke_config(max_prompt_tokens=4, max_new_tokens=3, missing_eos_penalty=None)
    models = ppo.load_models(
        config,
        policy_dir=tiny_model_dir,
        reference_dir=None,
        reward_model_dir=reward_model_dir,
        placement=Placement(),
    )
    assert models.reward_shares_vocab
    seen = []
    original = RewardModel.raw_scores_of_ids

    def spy(self, sequences, batch_size):
        seen.extend(sequences)
        return original(self, sequences, batch_size)

    monkeypatch.setattr(RewardModel, "raw_scores_of_ids", spy)
    long_prompt = "Tell me about " + "kettles and bread " * 40
    roll = ppo.rollout(models, [long_prompt] * 4, config, step=1)
    query = roll.batch.input_ids[0, : roll.batch.context_length].tolist()
    assert len(query) == 4  # the prompt's last 4 tokens: what the policy saw
    assert len(seen) == 4
    start = 1 if sequence_prefix(models.reward.tokenizer) is not None else 0
    for sequence in seen:
        # [BOS] + those 4 tokens + the response (+ EOS): never the prompt's 160 tokens and more
        assert sequence[start : start + 4] == query
        assert len(sequence) <= start + 4 + 3 + 1
