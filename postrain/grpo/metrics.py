"""The metric record of one GRPO step, from what `collect()` gathered and what the update measured.

    record = step_metrics(step=3, group_size=16, first_round_scores=..., trained=..., update_record=..., ...)

`step_metrics` is pure: the trainer gathers the values of all ranks first, so the record does not depend on the
number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from loopcoder.postrain.sandbox.runners import VERDICTS

from .loss import zero_variance_groups

PASS_RATE_BINS = (("0", 0.0, 0.0), ("0-0.5", 0.0, 0.5), ("0.5-1", 0.5, 1.0), ("1", 1.0, 1.0))


@dataclass
class Collected:
    """What one step's collection produced on one rank: the groups to train on and what the metrics need.

    `samples` are this rank's groups, group after group (refilled under dynamic sampling). The first round's
    scores are the policy's unbiased pass rates (later rounds are biased by the refill); `verdicts` counts the
    sandbox's test verdicts of every round (`runners.VERDICTS`), `reward_info` the reward functions' means of the
    first round and the failed reward calls of all rounds.
    """

    samples: list
    first_round_scores: list[float]
    first_round_shaped: list[float]
    rounds: int = 1
    filled_with_dropped: int = 0
    infra_errors: int = 0
    reward_info: dict[str, float] = field(default_factory=dict)
    verdicts: dict[str, int] = field(default_factory=dict)
    generation_seconds: float = 0.0
    reward_seconds: float = 0.0


def pass_rate_histogram(scores: torch.Tensor) -> dict[str, float]:
    """Share of scored completions in each pass-rate bin: "0" and "1" exactly, (0, 0.5) and [0.5, 1)."""
    out = {}
    for name, low, high in PASS_RATE_BINS:
        if low == high:
            hit = scores == low
        else:
            hit = (scores > low if low == 0.0 else scores >= low) & (scores < high)
        out[f"pass_rate_hist/{name}"] = float(hit.float().mean()) if scores.numel() else 0.0
    return out


def step_metrics(
    *,
    step: int,
    group_size: int,
    first_round_scores: list[float],
    first_round_shaped: list[float],
    trained: list[tuple[float, float, int, bool]],
    infra_errors: float,
    filled_with_dropped: float,
    rounds: int,
    reward_info: dict[str, float],
    verdicts: dict[str, float] | None,
    times: tuple[float, float, float],
    elapsed: float,
    update_record: dict[str, float],
) -> dict[str, Any]:
    """The step's record from the values of all ranks; `trained` holds (score, shaped reward, completion length,
    truncated) of every completion trained on.

    `verdicts` is None when the rewards do not run on the trainer's sandbox pool (no `sandbox/*` keys then).
    """
    sampled = torch.tensor(first_round_scores, dtype=torch.float32)
    scored = sampled[~torch.isnan(sampled)]
    flat = zero_variance_groups(torch.tensor(first_round_shaped, dtype=torch.float32), group_size)
    scores, shaped, lengths, truncated = (list(column) for column in zip(*trained, strict=True))
    generation_s, reward_s, update_s = times
    record: dict[str, Any] = dict(update_record)
    record.update(
        {
            "step": step,
            "reward_mean": float(scored.mean()) if scored.numel() else float("nan"),
            "reward_std": float(scored.std()) if scored.numel() > 1 else 0.0,
            "reward_mean_trained": float(torch.tensor(scores).nanmean()),
            "reward_shaped_mean": float(torch.tensor(shaped).nanmean()),
            "frac_reward_zero_std": float(flat.float().mean()),
            "reward_infra_errors": float(infra_errors),
            "completion_length/mean": sum(lengths) / len(lengths),
            "completion_length/max": float(max(lengths)),
            "completion_length/min": float(min(lengths)),
            "frac_truncated": sum(truncated) / len(truncated),
            "time/generation_s": generation_s,
            "time/reward_s": reward_s,
            "time/update_s": update_s,
            "step_time_s": elapsed,
            "rollouts_per_s": len(first_round_scores) / max(generation_s, 1e-9),
            "dynamic_sampling/rounds": float(rounds),
            "dynamic_sampling/filled_with_dropped": float(filled_with_dropped),
        }
    )
    record.update(pass_rate_histogram(scored))
    record.update(reward_info)
    if verdicts is not None:
        for name in VERDICTS:
            record[f"sandbox/{name}"] = float(verdicts.get(name, 0))
    return record


__all__ = ["Collected", "PASS_RATE_BINS", "pass_rate_histogram", "step_metrics"]
