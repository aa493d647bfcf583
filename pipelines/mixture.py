"""Mixtures: how many tokens of each category a training set holds.

A mixture config assigns each category either a token budget or a weight (a share of
`total_tokens`). `select` walks each category's documents in a seeded, partition-independent
order (by a hash of seed and document key) and takes them until the budget is met; a category
smaller than its budget is repeated for whole further epochs (each epoch reshuffled) when
`allow_repeat` is on, otherwise it contributes what it has. The realised table reports budget,
tokens taken, share and epochs per category.
"""

from __future__ import annotations

import hashlib
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


@dataclass
class MixtureReport:
    rows: list[dict[str, Any]] = field(default_factory=list)

    def table(self) -> str:
        lines = ["| category | budget | tokens | share | epochs |", "|---|---|---|---|---|"]
        total = sum(r["tokens"] for r in self.rows) or 1
        for r in self.rows:
            lines.append(
                f"| {r['category']} | {r['budget']:,} | {r['tokens']:,} | {r['tokens'] / total:.1%} | {r['epochs']} |"
            )
        return "\n".join(lines)


def _order_key(seed: int, epoch: int, key: str) -> bytes:
    return hashlib.sha256(f"mixture\x00{seed}\x00{epoch}\x00{key}".encode()).digest()


def select(
    documents: dict[str, list[tuple[str, int]]], config: MixtureConfig
) -> tuple[dict[str, list[str]], MixtureReport]:
    """documents: category -> [(document key, tokens)]. Returns category -> chosen keys (with repeats) and the report."""
    budgets = config.budgets()
    chosen: dict[str, list[str]] = {}
    report = MixtureReport()
    for category, budget in budgets.items():
        pool = documents.get(category, [])
        taken: list[str] = []
        tokens, epoch = 0, 0
        while pool and tokens < budget and epoch < (config.max_epochs if config.allow_repeat else 1):
            for key, length in sorted(pool, key=lambda item: _order_key(config.seed, epoch, item[0])):
                if tokens >= budget:
                    break
                taken.append(key)
                tokens += length
            epoch += 1
        chosen[category] = taken
        report.rows.append({"category": category, "budget": budget, "tokens": tokens, "epochs": epoch})
    return chosen, report
