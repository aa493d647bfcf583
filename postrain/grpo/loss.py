"""The GRPO / DAPO objective as pure tensor functions (docs/grpo.md states the formulas).

    adv = group_advantages(rewards, group_size=16)                        # [N]
    per_token, clipped_low, clipped_high = clipped_surrogate(logp, old_logp, adv, 0.2, 0.28)   # [N, T]
    loss = aggregate_loss(per_token, mask, "dapo")                          # token mean over the batch

Over several micro-batches or processes, the trainer sums `loss_numerator` and divides by the
`loss_denominator` of the whole optimizer mini-batch, so that the token-level mean is exact.
"""

from __future__ import annotations

import torch

from loopcoder.postrain.runtime.logprobs import scores_from_hidden


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", epsilon: float = 1e-4
) -> torch.Tensor:
    """Â_i = (R_i - mean_group) / (std_group + ε) for rewards laid out group after group.

    `std` is Bessel-corrected (as TRL and verl). NaN rewards (not scored) are left out of their group's mean
    and std and get advantage 0. `scale="none"` (Dr. GRPO) skips the division.

    >>> group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2, epsilon=0.0).tolist()
    [0.7071067690849304, -0.7071067690849304, -0.7071067690849304, 0.7071067690849304]
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.reshape(-1, group_size).to(torch.float64)
    valid = ~torch.isnan(grouped)
    count = valid.sum(-1, keepdim=True)
    filled = torch.where(valid, grouped, torch.zeros_like(grouped))
    mean = filled.sum(-1, keepdim=True) / count.clamp_min(1)
    centred = torch.where(valid, grouped - mean, torch.zeros_like(grouped))
    advantages = centred
    if scale == "group":
        std = torch.sqrt((centred**2).sum(-1, keepdim=True) / (count - 1).clamp_min(1))
        advantages = centred / (std + epsilon)
    elif scale != "none":
        raise ValueError(f"scale must be 'group' or 'none', got {scale!r}")
    return advantages.reshape(-1).to(rewards.dtype)


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[num_groups] bool: groups whose scored rewards are all equal (they carry no gradient)."""
    grouped = rewards.reshape(-1, group_size)
    valid = ~torch.isnan(grouped)
    high = torch.where(valid, grouped, torch.full_like(grouped, -torch.inf)).amax(-1)
    low = torch.where(valid, grouped, torch.full_like(grouped, torch.inf)).amin(-1)
    return ~(high > low)


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO soft overlong punishment: 0 up to L_max - L_cache, then linear down to -factor at L_max.

    >>> overlong_penalty(torch.tensor([10, 15, 20]), max_length=20, buffer=10).tolist()
    [0.0, -0.5, -1.0]
    """
    if buffer <= 0:
        return torch.zeros(lengths.shape, dtype=torch.float32)
    start = max_length - buffer
    over = (lengths.to(torch.float32) - start).clamp(min=0.0)
    return -(over / buffer).clamp(max=1.0) * factor


def clipped_surrogate(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, epsilon_low: float, epsilon_high: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token loss -min(r Â, clip(r, 1 - ε_low, 1 + ε_high) Â) with r = exp(logp - old_logp).

    Args:
        logp, old_logp: [N, T] log-probabilities of the sampled tokens under the current and the rollout policy.
        advantages: [N] one advantage per completion (every token of a completion shares it).
    Returns:
        (loss [N, T], clipped_low [N, T] bool, clipped_high [N, T] bool). `clipped_low` marks tokens with Â < 0
        and r < 1 - ε_low, `clipped_high` tokens with Â > 0 and r > 1 + ε_high: where the clip is active and the
        token gives no gradient.
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high) * adv
    loss = -torch.min(unclipped, clipped)
    clipped_low = (ratio < 1.0 - epsilon_low) & (adv < 0)
    clipped_high = (ratio > 1.0 + epsilon_high) & (adv > 0)
    return loss, clipped_low, clipped_high


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π_θ || π_ref): exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1.0


def loss_numerator(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, max_length: int) -> torch.Tensor:
    """The sum that, divided by `loss_denominator` over the whole mini-batch, gives the aggregated loss.

    dapo: Σ_{i,t} m ℓ; grpo: Σ_i Σ_t m ℓ / |o_i|; dr_grpo: Σ_{i,t} m ℓ / L_max.
    """
    mask = mask.to(per_token.dtype)
    summed = (per_token * mask).sum(-1)
    if loss_type == "dapo":
        return summed.sum()
    if loss_type == "grpo":
        return (summed / mask.sum(-1).clamp_min(1.0)).sum()
    if loss_type == "dr_grpo":
        return summed.sum() / max_length
    raise ValueError(f"unknown loss_type {loss_type!r}")


def loss_denominator(mask: torch.Tensor, loss_type: str) -> float:
    """dapo: Σ_{i,t} m (all completion tokens); grpo and dr_grpo: the number of completions N."""
    if loss_type == "dapo":
        return float(mask.sum())
    if loss_type in ("grpo", "dr_grpo"):
        return float(mask.shape[0])
    raise ValueError(f"unknown loss_type {loss_type!r}")


def aggregate_loss(
    per_token: torch.Tensor, mask: torch.Tensor, loss_type: str = "dapo", max_length: int | None = None
):
    """The loss of one batch: `loss_numerator / loss_denominator` (`max_length` defaults to T)."""
    max_length = per_token.shape[-1] if max_length is None else max_length
    return loss_numerator(per_token, mask, loss_type, max_length) / max(loss_denominator(mask, loss_type), 1.0)


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[B, T] log π(token) from [B, T, V] logits (fp32; divided by the sampling temperature). The trainer scores
    from hidden states a chunk at a time (`runtime.logprobs`); this is the same computation on given logits."""
    return scores_from_hidden(torch.nn.Identity(), logits, tokens, 0, temperature).log_probs


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[B, T] entropy of the sampling distribution at each position (no gradient)."""
    targets = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
    return scores_from_hidden(torch.nn.Identity(), logits, targets, 0, temperature, entropy=True).entropy


__all__ = [
    "aggregate_loss",
    "clipped_surrogate",
    "group_advantages",
    "kl_k3",
    "loss_denominator",
    "loss_numerator",
    "overlong_penalty",
    "token_entropy",
    "token_log_probs",
    "zero_variance_groups",
]
