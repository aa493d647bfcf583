"""What each optimizer step trains on and at which learning rate.

Learning rate at step s (0-based) of S, peak `lr`, warm-up `w`, tail `a`, floor `m * lr`:

    s < w:               lr * (s + 1) / w
    w <= s < S - a:      m*lr + (lr - m*lr) * (1 + cos(pi * (s - w) / (S - a - w))) / 2
    s >= S - a:          m*lr + (e*lr - m*lr) * (s - (S - a) + 1) / a      (e = anneal_lr_ratio, default m)

Batch plan of step s (global batch of G rows): `r(s) = floor((s+1) f G) - floor(s f G)` rows come
from the replay sets (f = replay_fraction, so the long-run share is exactly f), the other G - r(s)
from the mixture of the curriculum phase that holds step s. Inside a mixture each row goes to the
set furthest below its weighted share so far (deterministic, no sampling noise); each chosen row is
the set's next stream index. The G rows are then put in a seeded order, so replay rows and sets are
spread over ranks and micro-batches. The plan depends only on the step and on counters every rank
holds, never on the number of processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .data import _seed


def learning_rate(
    step: int,
    total_steps: int,
    peak: float,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.1,
    anneal_steps: int = 0,
    anneal_lr_ratio: float | None = None,
) -> float:
    """Warm-up, cosine to a floor, then a linear low-rate tail (formula in the module docstring)."""
    floor = peak * min_lr_ratio
    end = floor if anneal_lr_ratio is None else peak * anneal_lr_ratio
    cosine_end = max(total_steps - anneal_steps, warmup_steps)
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if step < cosine_end:
        span = max(cosine_end - warmup_steps, 1)
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / span))
    if anneal_steps <= 0:
        return floor
    done = min(step - cosine_end + 1, anneal_steps)
    return floor + (end - floor) * done / anneal_steps


def phase_at(phases: list[dict[str, Any]], step: int) -> dict[str, Any]:
    """The curriculum phase holding `step`; past the last phase, the last one."""
    start = 0
    for phase in phases:
        start += int(phase["steps"])
        if step < start:
            return phase
    return phases[-1]


def _allocate(weights: dict[str, float], counts: dict[str, int], n: int) -> list[str]:
    """n picks, each to the set furthest below its share `w / sum(w)` of all picks so far; updates `counts`."""
    names = [k for k, w in weights.items() if w > 0]
    total_weight = sum(weights[k] for k in names)
    picks = []
    for _ in range(n):
        done = sum(counts.get(k, 0) for k in names) + 1
        best = max(names, key=lambda k: weights[k] / total_weight * done - counts.get(k, 0))
        counts[best] = counts.get(best, 0) + 1
        picks.append(best)
    return picks


@dataclass
class BatchPlanner:
    """Turns a step into the list of (set, stream index) forming its global batch; its state is the data position."""

    phases: list[dict[str, Any]]
    replay: dict[str, float]
    replay_fraction: float
    global_batch_size: int
    seed: int
    consumed: dict[str, int] = field(default_factory=dict)  # stream name -> rows handed out
    phase_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # phase -> set -> rows
    replay_counts: dict[str, int] = field(default_factory=dict)

    def replay_rows(self, step: int) -> int:
        if self.replay_fraction <= 0:
            return 0
        share = self.replay_fraction * self.global_batch_size
        # the small epsilon keeps exact products (0.25 * 8 * 2 = 4.0) from flooring to 3.999...
        return math.floor((step + 1) * share + 1e-9) - math.floor(step * share + 1e-9)

    def plan(self, step: int) -> list[tuple[str, int]]:
        """The global batch of `step`; advances the counters (call once per step, in order)."""
        phase = phase_at(self.phases, step)
        n_replay = self.replay_rows(step)
        names = _allocate(
            phase["mixture"], self.phase_counts.setdefault(phase["name"], {}), self.global_batch_size - n_replay
        )
        names += _allocate(self.replay, self.replay_counts, n_replay)
        batch = []
        for name in names:
            index = self.consumed.get(name, 0)
            self.consumed[name] = index + 1
            batch.append((name, index))
        order = np.random.default_rng(_seed(self.seed, "batch", step)).permutation(len(batch))
        return [batch[i] for i in order]

    def state_dict(self) -> dict[str, Any]:
        return {
            "consumed": dict(self.consumed),
            "phase_counts": {k: dict(v) for k, v in self.phase_counts.items()},
            "replay_counts": dict(self.replay_counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consumed = dict(state["consumed"])
        self.phase_counts = {k: dict(v) for k, v in state["phase_counts"].items()}
        self.replay_counts = dict(state["replay_counts"])


def rank_share(batch: list, rank: int, world: int, micro_batch_size: int) -> list[list]:
    """This rank's micro-batches of a global batch: micro k of rank r = rows `(k W + r) m ... (k W + r + 1) m`."""
    per_micro = world * micro_batch_size
    if len(batch) % per_micro:
        raise ValueError(f"global batch of {len(batch)} rows does not split into {world} x {micro_batch_size}")
    return [
        batch[k * per_micro + rank * micro_batch_size : k * per_micro + (rank + 1) * micro_batch_size]
        for k in range(len(batch) // per_micro)
    ]


__all__ = ["learning_rate", "phase_at", "BatchPlanner", "rank_share"]
