"""Mixtures: how many tokens of each category a training set holds, decided one task at a time.

A mixture config assigns each category either a token budget or a weight (a share of
`total_tokens`). With `available` tokens of a category in the whole job, its rate is
`budget / available`, capped at `max_epochs` (at 1 without `allow_repeat`). Each task of a
distributed job then meets the rate on its own documents: every document `floor(rate)` times,
plus, walking the task's documents in an order hashed from (seed, document key), each whole
document of which at least half still fits in `rate - floor(rate)` of the task's tokens. The
realised budget is exact up to half a document per task and category, and since tasks are fixed
by the inputs (never by the workers) the choice is the same with any number of workers. Each copy
gets an order key hashed from (seed, epoch, document key), so repeated epochs are reshuffled.

    >>> config = MixtureConfig(categories={"code": {"tokens": 250}})
    >>> config.rates({"code": 100})
    {'code': 2.5}
    >>> [epoch for _, epoch, _ in select_in_task([("a", 50), ("b", 50)], 2.5, config)]
    [0, 0, 1, 1, 2]
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class MixtureConfig:
    """`categories` maps a category to `{"tokens": N}` or `{"weight": w}` (weights share `total_tokens`)."""

    categories: dict[str, dict[str, float]]
    total_tokens: int | None = None
    allow_repeat: bool = True
    max_epochs: int = 4
    seed: int = 0

    def budgets(self) -> dict[str, int]:
        budgets = {}
        weights = {c: spec["weight"] for c, spec in self.categories.items() if "weight" in spec}
        if weights and not self.total_tokens:
            raise ValueError("mixture weights need total_tokens")
        weight_sum = sum(weights.values())
        for category, spec in self.categories.items():
            if "tokens" in spec:
                budgets[category] = int(spec["tokens"])
            elif "weight" in spec:
                budgets[category] = int(self.total_tokens * spec["weight"] / weight_sum)
            else:
                raise ValueError(f"mixture category '{category}' needs `tokens` or `weight`")
        return budgets

    def rates(self, available: dict[str, int]) -> dict[str, float]:
        """Expected copies per document of each category, from the tokens each category has."""
        cap = float(self.max_epochs if self.allow_repeat else 1)
        rates = {}
        for category, budget in self.budgets().items():
            tokens = available.get(category, 0)
            rates[category] = min(budget / tokens, cap) if tokens > 0 else 0.0
        return rates


def _unit(*parts: Any) -> bytes:
    return hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()


def _uniform(*parts: Any) -> float:
    """A number in [0, 1) fixed by its parts."""
    return int.from_bytes(_unit(*parts)[:8], "big") / 2**64


def select_in_task(
    documents: list[tuple[str, int]], rate: float, config: MixtureConfig
) -> list[tuple[str, int, bytes]]:
    """(key, epoch, order key) of every copy taken from one task's documents [(key, tokens)] of a category.

    Sorted by epoch, then order key: the order in which the copies are packed.
    """
    whole = math.floor(rate)
    chosen = [(key, epoch) for epoch in range(whole) for key, _ in documents]
    target = (rate - whole) * sum(length for _, length in documents)
    taken = 0
    for key, length in sorted(documents, key=lambda item: _unit("mixture-take", config.seed, item[0])):
        # a document is taken when at least half of it fits, so each task lands within half a document
        if taken + length / 2 <= target:
            chosen.append((key, whole))
            taken += length
    copies = [(key, epoch, _unit("mixture", config.seed, epoch, key)) for key, epoch in chosen]
    return sorted(copies, key=lambda c: (c[1], c[2]))


def held_out(key: str, fraction: float, seed: int) -> bool:
    """Whether a document belongs to the held-out evaluation split (a seeded share `fraction`)."""
    return fraction > 0 and _uniform("heldout", seed, key) < fraction


@dataclass
class MixtureReport:
    """Rows of category, budget, available tokens, realised tokens and rate."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def table(self) -> str:
        lines = ["| category | budget | available | tokens | share | rate |", "|---|---|---|---|---|---|"]
        total = sum(r["tokens"] for r in self.rows) or 1
        for r in self.rows:
            lines.append(
                f"| {r['category']} | {r['budget']:,} | {r['available']:,} | {r['tokens']:,} "
                f"| {r['tokens'] / total:.1%} | {r['rate']:.3f} |"
            )
        return "\n".join(lines)
