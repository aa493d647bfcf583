"""Mergeable statistics: per step (documents and bytes in, kept, dropped by reason) and per shard.

Everything here is a plain dict of ints so that task statistics can be written as JSON beside
each shard and summed into one job JSON (`merge_stats`) in any order with the same result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Upper bounds (in characters) of the length-histogram buckets; the last bucket is open.
LENGTH_BUCKETS = (100, 1_000, 10_000, 100_000, 1_000_000)


class StepStats:
    """Counters of one step: `docs_in`, `bytes_in`, `kept`, `bytes_kept`, `dropped[reason]`, `dropped_bytes[reason]`."""

    def __init__(self, name: str):
        self.name = name
        self.docs_in = 0
        self.bytes_in = 0
        self.kept = 0
        self.bytes_kept = 0
        self.dropped: dict[str, int] = {}
        self.dropped_bytes: dict[str, int] = {}
        self.extra: dict[str, int] = {}

    def record(self, size: int, reason: str | None) -> None:
        self.docs_in += 1
        self.bytes_in += size
        if reason is None:
            self.kept += 1
            self.bytes_kept += size
        else:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
            self.dropped_bytes[reason] = self.dropped_bytes.get(reason, 0) + size

    def count(self, key: str, n: int = 1) -> None:
        """A step-specific counter (hits per benchmark, parse statuses, ...)."""
        self.extra[key] = self.extra.get(key, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return {
            "docs_in": self.docs_in,
            "bytes_in": self.bytes_in,
            "kept": self.kept,
            "bytes_kept": self.bytes_kept,
            "dropped": dict(sorted(self.dropped.items())),
            "dropped_bytes": dict(sorted(self.dropped_bytes.items())),
            "extra": dict(sorted(self.extra.items())),
        }


def merge_stats(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sums nested dicts of numbers key by key (order-independent)."""
    merged: dict[str, Any] = {}
    for part in parts:
        _merge_into(merged, part)
    return _sorted(merged)


def _merge_into(target: dict[str, Any], part: Mapping[str, Any]) -> None:
    for key, value in part.items():
        if isinstance(value, Mapping):
            _merge_into(target.setdefault(key, {}), value)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            target.setdefault(key, value)
        else:
            target[key] = target.get(key, 0) + value


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    return value


def shard_stats(table: pa.Table) -> dict[str, Any]:
    """rows, bytes (UTF-8 of `content`), files and bytes by language, histograms of chars and lines, from Arrow kernels."""
    content = table.column("content")
    sizes = pc.binary_length(content).to_numpy(zero_copy_only=False).astype(np.int64)
    by_language = (
        pa.table({"language": table.column("language"), "bytes": sizes})
        .group_by("language", use_threads=False)
        .aggregate([("bytes", "count"), ("bytes", "sum")])
        .to_pydict()
    )
    stats: dict[str, Any] = {
        "rows": table.num_rows,
        "bytes": int(sizes.sum()),
        "languages": dict(zip(by_language["language"], by_language["bytes_count"], strict=True)),
        "language_bytes": dict(zip(by_language["language"], by_language["bytes_sum"], strict=True)),
    }
    lines = pc.add(pc.count_substring(content, "\n"), 1)
    for key, values in (("chars_histogram", pc.utf8_length(content)), ("lines_histogram", lines)):
        buckets = np.searchsorted(LENGTH_BUCKETS, values.to_numpy(zero_copy_only=False), side="right")
        labels = [f"<{bound}" for bound in LENGTH_BUCKETS] + [f">={LENGTH_BUCKETS[-1]}"]
        counts = np.bincount(buckets, minlength=len(labels))
        stats[key] = {labels[i]: int(counts[i]) for i in np.flatnonzero(counts)}
    return stats
