"""Silent-error detection: replicas that drift apart, and workers that do not compute the same thing twice.

Two checks, each at its own interval (`fingerprint_interval`, `recompute_interval`):

* **Replica fingerprints**, before the forward pass: every rank reduces each parameter to
  `(sum, sum of squares)` in float64 (one read of the weights, no copy) and the fingerprints are
  all-gathered. Data-parallel replicas must agree bit for bit. For each tensor that differs, the
  ranks outside the majority value are named; with two ranks there is no majority, and the rank that
  differs from the lowest rank is named (the report says the vote was tied). Under ZeRO-3 each rank
  holds a different slice of each parameter, so the gathered full tensors are fingerprinted: that
  catches a rank whose gather or copy went wrong, not a slice corrupted in its owner's memory (the
  recomputation check below covers faulty compute there).
* **Deterministic recomputation**: one micro-batch's loss is computed a second time with the same
  weights and inputs and compared with the first result: bitwise on CPU and in `deterministic` runs, within a
  relative `recompute_tolerance` (default 1e-3) on GPU, whose kernels need not be deterministic. A worker whose
  arithmetic is flaky fails it.

Both gather their results through `loopcoder.postrain.runtime.collectives`, so they run on NCCL as on gloo.

A mismatch raises `SilentDataError` (action "stop") or is logged (action "warn").
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import torch

from loopcoder.postrain.runtime import collectives

logger = logging.getLogger(__name__)


class SilentDataError(RuntimeError):
    """Replicas disagree or a recomputation differs; the message names the rank(s) and tensor(s)."""


@dataclass
class Mismatch:
    tensor: str
    ranks: list[int]  # the ranks that disagree with the majority
    values: list[tuple[float, float]]  # (sum, sum of squares) per rank
    tied: bool

    def describe(self) -> str:
        per_rank = ", ".join(f"rank {r}: sum={s!r} sumsq={q!r}" for r, (s, q) in enumerate(self.values))
        vote = " (two-way tie: named against the lowest rank)" if self.tied else ""
        return f"tensor {self.tensor!r} differs on rank(s) {self.ranks}{vote}; {per_rank}"


def fingerprint(parameters: list[torch.Tensor]) -> torch.Tensor:
    """`[N, 2]` float64: (sum, sum of squares) of each tensor."""
    rows = []
    for p in parameters:
        flat = p.detach().reshape(-1)
        rows.append(torch.stack([flat.sum(dtype=torch.float64), flat.double().square().sum()]))
    return torch.stack(rows).cpu()


def find_mismatches(names: list[str], fingerprints: torch.Tensor) -> list[Mismatch]:
    """fingerprints `[W, N, 2]` (all ranks) -> one Mismatch per tensor whose ranks disagree."""
    world = fingerprints.shape[0]
    mismatches = []
    differs = (fingerprints != fingerprints[:1]).any(-1).any(0)  # [N]; NaN != NaN counts as a difference
    for index in differs.nonzero().flatten().tolist():
        values = [tuple(fingerprints[r, index].tolist()) for r in range(world)]
        keys = [tuple(v.hex() for v in value) for value in values]
        counts = Counter(keys)
        top, top_count = counts.most_common(1)[0]
        tied = sum(1 for c in counts.values() if c == top_count) > 1
        reference = keys[0] if tied else top
        bad = [r for r in range(world) if keys[r] != reference]
        mismatches.append(Mismatch(names[index], bad, values, tied))
    return mismatches


GPU_RECOMPUTE_TOLERANCE = 1e-3


def recompute_tolerance(config, device: torch.device) -> float:
    """The configured tolerance, else 0 (bitwise) on CPU or with deterministic kernels, else the GPU default."""
    if config.recompute_tolerance is not None:
        return float(config.recompute_tolerance)
    if device.type == "cpu" or getattr(config, "deterministic", False):
        return 0.0
    return GPU_RECOMPUTE_TOLERANCE


class SilentErrorDetector:
    def __init__(self, config, rank: int, world: int, device: torch.device | None = None):
        self.config = config
        self.rank = rank
        self.world = world
        self.tolerance = recompute_tolerance(config, device or torch.device("cpu"))
        self.checks = 0

    def fingerprint_due(self, step: int) -> bool:
        interval = self.config.fingerprint_interval
        return self.world > 1 and interval > 0 and step % interval == 0

    def recompute_due(self, step: int) -> bool:
        interval = self.config.recompute_interval
        return interval > 0 and step % interval == 0

    def check_replicas(self, module: torch.nn.Module, step: int, zero_stage: int) -> list[Mismatch]:
        named = [(n, p) for n, p in module.named_parameters()]
        names = [n for n, _ in named]
        if zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
                local = fingerprint([p for _, p in named])
        else:
            local = fingerprint([p for _, p in named])
        gathered = collectives.all_gather(local)
        self.checks += 1
        mismatches = find_mismatches(names, gathered)
        if mismatches:
            self._report(
                f"step {step}: parameter replicas differ before the forward pass: "
                + "; ".join(m.describe() for m in mismatches[:5])
                + (f"; and {len(mismatches) - 5} more tensors" if len(mismatches) > 5 else "")
            )
        return mismatches

    def check_recompute(self, first: torch.Tensor, second: torch.Tensor, step: int, source: str) -> bool:
        """first/second: the loss sums of the same micro-batch; all ranks learn whether any rank failed."""
        a, b = float(first), float(second)
        tolerance = self.tolerance
        ok = a == b or (tolerance > 0 and abs(a - b) <= tolerance * max(abs(a), abs(b)))
        flags = collectives.all_gather(torch.tensor([0.0 if ok else 1.0])).flatten()
        self.checks += 1
        bad = flags.nonzero().flatten().tolist()
        if bad:
            detail = f" (this rank: first {a!r}, recomputed {b!r})" if not ok else ""
            self._report(
                f"step {step}: deterministic recomputation of micro-batch {source} differs on rank(s) {bad}: "
                f"tensor 'loss'{detail}"
            )
        return not bad

    def _report(self, message: str) -> None:
        if self.config.silent_error_action == "stop":
            raise SilentDataError(message)
        if self.rank == 0:
            logger.warning("silent error: %s", message)


__all__ = [
    "SilentDataError",
    "SilentErrorDetector",
    "Mismatch",
    "fingerprint",
    "find_mismatches",
    "recompute_tolerance",
]
