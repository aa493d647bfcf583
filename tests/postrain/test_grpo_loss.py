"""The GRPO / DAPO objective on hand-computed examples."""

import math

import pytest
import torch

from loopcoder.postrain.grpo import GRPOConfig
from loopcoder.postrain.grpo.loss import (
    aggregate_loss,
    clipped_surrogate,
    group_advantages,
    kl_k3,
    loss_denominator,
    loss_numerator,
    overlong_penalty,
    token_log_probs,
    zero_variance_groups,
)


def test_group_advantages_by_hand():
    # group 1: rewards 1, 0, 0, 0.5 -> mean 0.375, Bessel std sqrt((0.390625 + 3 * 0.140625 + 0.015625) / 3)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.2, 0.2, 0.2, 0.2])
    adv = group_advantages(rewards, group_size=4, epsilon=1e-4)
    std = math.sqrt((0.625**2 + 2 * 0.375**2 + 0.125**2) / 3)
    expected = [(r - 0.375) / (std + 1e-4) for r in (1.0, 0.0, 0.0, 0.5)]
    assert adv[:4].tolist() == pytest.approx(expected, rel=1e-6)
    # all-equal group: no signal
    assert adv[4:].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert zero_variance_groups(rewards, 4).tolist() == [False, True]


def test_group_advantages_dr_grpo_and_excluded():
    rewards = torch.tensor([1.0, 0.0, float("nan"), 0.5])
    adv = group_advantages(rewards, group_size=4, scale="none")
    # NaN is left out of the mean (0.5) and gets advantage 0
    assert adv.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(5), group_size=4)


def test_clipped_surrogate_positive_advantage_clips_high_at_1_plus_eps_high():
    ratios = torch.tensor([[0.5, 0.9, 1.1, 1.25, 1.5]])
    logp = torch.log(ratios)
    old = torch.zeros_like(logp)
    loss, low, high = clipped_surrogate(logp, old, torch.tensor([2.0]), epsilon_low=0.2, epsilon_high=0.28)
    # Â > 0: min(r Â, clip(r) Â) -> r below 1 - ε_low is NOT clipped (min keeps r Â); above 1.28 capped at 1.28
    assert (-loss).tolist()[0] == pytest.approx([1.0, 1.8, 2.2, 2.5, 2.56])
    assert high.tolist()[0] == [False, False, False, False, True]
    assert not low.any()
    # 1.25 is inside [0.8, 1.28] with ε_high = 0.28 but would be clipped with a symmetric 0.2
    symmetric, _, high_sym = clipped_surrogate(logp, old, torch.tensor([2.0]), 0.2, 0.2)
    assert (-symmetric)[0, 3].item() == pytest.approx(2.4)
    assert high_sym.tolist()[0] == [False, False, False, True, True]


def test_clipped_surrogate_negative_advantage_clips_low_at_1_minus_eps_low():
    ratios = torch.tensor([[0.5, 0.9, 1.1, 1.5]])
    logp = torch.log(ratios)
    loss, low, high = clipped_surrogate(logp, torch.zeros_like(logp), torch.tensor([-1.0]), 0.2, 0.28)
    # Â < 0: below 0.8 the objective is capped at -0.8; above 1.28 r Â is kept (more negative, pessimistic)
    assert (-loss).tolist()[0] == pytest.approx([-0.8, -0.9, -1.1, -1.5])
    assert low.tolist()[0] == [True, False, False, False]
    assert not high.any()


def test_clipped_tokens_give_no_gradient():
    logp = torch.log(torch.tensor([[0.5, 1.0, 1.5]])).requires_grad_(True)
    loss, _, _ = clipped_surrogate(logp, torch.zeros(1, 3), torch.tensor([1.0]), 0.2, 0.28)
    loss.sum().backward()
    # r = 0.5 with Â > 0: unclipped branch (gradient -r); r = 1.5: clipped (0)
    assert logp.grad.tolist()[0] == pytest.approx([-0.5, -1.0, 0.0])


def test_ratio_one_never_clips():
    logp = torch.randn(3, 5)
    _, low, high = clipped_surrogate(logp, logp.clone(), torch.tensor([1.0, -1.0, 0.5]), 0.2, 0.28)
    assert not low.any() and not high.any()


def test_token_level_aggregation_across_lengths():
    # two completions: 1 token with loss 4, 3 tokens with loss 1 each
    per_token = torch.tensor([[4.0, 9.0, 9.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # DAPO token mean: (4 + 3) / 4 tokens
    assert aggregate_loss(per_token, mask, "dapo").item() == pytest.approx(7 / 4)
    # GRPO sequence mean of token means: (4 + 1) / 2
    assert aggregate_loss(per_token, mask, "grpo").item() == pytest.approx(5 / 2)
    # Dr. GRPO: token sum / (N * L_max) with L_max = 8
    assert aggregate_loss(per_token, mask, "dr_grpo", max_length=8).item() == pytest.approx(7 / 16)


def test_token_mean_split_into_micro_batches_equals_whole_batch():
    per_token = torch.rand(6, 7)
    mask = (torch.rand(6, 7) > 0.3).float()
    mask[:, 0] = 1
    whole = aggregate_loss(per_token, mask, "dapo")
    denominator = loss_denominator(mask, "dapo")
    parts = sum(loss_numerator(per_token[i : i + 2], mask[i : i + 2], "dapo", 7) for i in (0, 2, 4)) / denominator
    assert parts.item() == pytest.approx(whole.item(), rel=1e-6)


def test_overlong_penalty_and_kl():
    assert overlong_penalty(torch.tensor([5, 12, 16, 30]), 16, 8, 0.5).tolist() == pytest.approx(
        [0.0, -0.25, -0.5, -0.5]
    )
    assert overlong_penalty(torch.tensor([100]), 16, 0).tolist() == [0.0]
    same = torch.randn(4)
    assert kl_k3(same, same).abs().max().item() == 0.0
    assert (kl_k3(torch.zeros(3), torch.tensor([-1.0, 0.5, 2.0])) > 0).all()


def test_token_log_probs_match_log_softmax():
    logits = torch.randn(2, 3, 11)
    tokens = torch.randint(0, 11, (2, 3))
    expected = torch.log_softmax(logits / 0.7, -1).gather(-1, tokens[..., None]).squeeze(-1)
    assert torch.allclose(token_log_probs(logits, tokens, 0.7), expected)


def test_config_defaults_are_the_recipe():
    config = GRPOConfig()
    assert (config.beta, config.epsilon, config.epsilon_high, config.loss_type) == (0.0, 0.2, 0.28, "dapo")
    assert config.num_generations == 16 and config.prompts_per_step * config.num_generations == 1024
    assert config.optimizer_steps_per_generation > 1
    with pytest.raises(ValueError, match="loss_type"):
        GRPOConfig(loss_type="mean")
    with pytest.raises(ValueError, match=r"unknown key\(s\) kl_coef; valid keys: .*\bbeta\b"):
        GRPOConfig.from_dict({"kl_coef": 0.1})
