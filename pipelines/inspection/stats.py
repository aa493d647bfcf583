"""Statistics of a set of shards, from Parquet footers first and from row data only where needed.

What comes from where:

| figure | source |
|---|---|
| shards, rows, bytes on disk, record types | Parquet footers |
| tokens of packed sequences | footers: the value count of the `input_ids` leaf column |
| rejections by reason | the job's stats files (`manifest.json`, `stats.json`); without one, the `rejection_reason` column |
| languages, categories, FIM kinds, kept/dropped, dedup clusters, lengths | one small column each, read alone |

Only the few small columns named above are ever read; text columns (`content`, `text`,
`patch`, `input_ids`) never are.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loopcoder.pipelines.io.filesystem import (
    discover_shards,
    is_file,
    join,
    list_files,
    open_input_file,
    parent,
    read_json,
)
from loopcoder.schemas import schema_of

PERCENTILES = (50, 90, 99)
# small columns worth reading when present: column -> the Counter it feeds
COUNTED_COLUMNS = {
    "language": "languages",
    "category": "categories",
    "split_kind": "fim_split_kinds",
    "mode": "fim_modes",
    "rejection_reason": "filter_rejections",
}
STATS_FILE_NAMES = ("manifest.json", "stats.json")


@dataclass
class ShardStats:
    path: str
    shards: int = 0
    rows: int = 0
    bytes_on_disk: int = 0
    records: dict[str, dict[str, int]] = field(default_factory=dict)
    tokens: int | None = None
    documents: int | None = None
    languages: Counter = field(default_factory=Counter)
    categories: Counter = field(default_factory=Counter)
    tokens_by_category: Counter = field(default_factory=Counter)
    fim_split_kinds: Counter = field(default_factory=Counter)
    fim_modes: Counter = field(default_factory=Counter)
    filter_rejections: Counter = field(default_factory=Counter)
    job_rejections: Counter = field(default_factory=Counter)
    # the one rejection count shown (`shards stats`, charts, cards): the job's own count when its stats files
    # have one (it includes rejections not written as rows), else the shards' `rejection_reason` column; the
    # two describe the same rows and are never added together
    rejections: Counter = field(default_factory=Counter)
    rejections_source: str | None = None
    kept: int | None = None
    dedup_clusters: int | None = None
    # near-dedup candidate pairs by exact Jaccard (bins "0.6-0.7", ...) and the threshold, from the job's stats
    candidate_pairs_by_jaccard: Counter = field(default_factory=Counter)
    near_duplicate_threshold: float | None = None
    length_unit: str | None = None
    length_percentiles: dict[str, float] = field(default_factory=dict)
    lengths: list[int] = field(default_factory=list, repr=False)
    stats_files: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        payload = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name != "lengths":
                payload[item.name] = dict(value.most_common()) if isinstance(value, Counter) else value
        return payload


def collect_stats(path: str | Path, keep_lengths: bool = False) -> ShardStats:
    """Statistics of every shard under `path`, plus the rejections recorded in its stats files."""
    root = str(path)
    shards = discover_shards(root)
    stats = ShardStats(path=root, shards=len(shards))
    lengths: list[np.ndarray] = []
    clusters: set[int] | None = None
    for shard in shards:
        handle = open_input_file(shard)
        parquet = pq.ParquetFile(handle)
        metadata = parquet.metadata
        identity = schema_of(parquet.schema_arrow)
        record = identity[0] if identity else "unknown"
        entry = stats.records.setdefault(record, {"shards": 0, "rows": 0, "bytes": 0})
        size = handle.size()
        entry["shards"] += 1
        entry["rows"] += metadata.num_rows
        entry["bytes"] += size
        stats.rows += metadata.num_rows
        stats.bytes_on_disk += size
        names = set(parquet.schema_arrow.names)
        if "input_ids" in names:
            stats.tokens = (stats.tokens or 0) + _leaf_value_count(parquet, "input_ids")
        wanted = [c for c in COUNTED_COLUMNS if c in names]
        wanted += [c for c in ("kept", "near_dup_cluster", "size_bytes", "num_documents", "cu_seqlens") if c in names]
        if not wanted or metadata.num_rows == 0:
            continue
        table = parquet.read(columns=wanted)
        for column, counter_name in COUNTED_COLUMNS.items():
            if column in names:
                values = table.column(column).drop_null()
                counts = pc.value_counts(values).to_pylist()
                getattr(stats, counter_name).update({c["values"]: c["counts"] for c in counts})
        if "kept" in names:
            stats.kept = (stats.kept or 0) + int(pc.sum(table.column("kept").cast("int64")).as_py() or 0)
        if "near_dup_cluster" in names:
            clusters = clusters if clusters is not None else set()
            clusters.update(table.column("near_dup_cluster").drop_null().to_pylist())
        if "num_documents" in names:
            stats.documents = (stats.documents or 0) + int(pc.sum(table.column("num_documents")).as_py() or 0)
        if "size_bytes" in names:
            stats.length_unit = "bytes per file"
            lengths.append(table.column("size_bytes").to_numpy())
        elif "cu_seqlens" in names:
            stats.length_unit = "tokens per document"
            offsets = table.column("cu_seqlens").to_pylist()
            lengths.append(np.concatenate([np.diff(o) for o in offsets if len(o) > 1] or [np.zeros(0)]))
            if "category" in names:
                for category, row_offsets in zip(table.column("category").to_pylist(), offsets, strict=True):
                    stats.tokens_by_category[category] += row_offsets[-1] if row_offsets else 0
    if clusters is not None:
        stats.dedup_clusters = len(clusters)
    if lengths:
        merged = np.concatenate(lengths)
        if merged.size:
            stats.length_percentiles = {f"p{p}": float(np.percentile(merged, p)) for p in PERCENTILES}
            stats.length_percentiles["max"] = float(merged.max())
            stats.length_percentiles["mean"] = float(merged.mean())
            if keep_lengths:
                stats.lengths = merged.astype(int).tolist()
    _read_stats_files(root if not is_file(root) else parent(root), stats)
    if stats.job_rejections:
        stats.rejections, stats.rejections_source = Counter(stats.job_rejections), "job stats files"
    elif stats.filter_rejections:
        stats.rejections, stats.rejections_source = Counter(stats.filter_rejections), "rejection_reason column"
    return stats


def _leaf_value_count(parquet: pq.ParquetFile, column: str) -> int:
    """Values in a list column, from the footer: the leaf column's value count per row group."""
    metadata = parquet.metadata
    leaves = [i for i in range(metadata.num_columns) if parquet.schema.column(i).path.split(".")[0] == column]
    total = 0
    for group in range(metadata.num_row_groups):
        chunk = metadata.row_group(group).column(leaves[0])
        nulls = chunk.statistics.null_count if chunk.statistics is not None and chunk.statistics.has_null_count else 0
        total += chunk.num_values - nulls
    return total


def _read_stats_files(root: str, stats: ShardStats) -> None:
    """Rejections by reason from the stats files a job wrote beside its shards."""
    names = [r for r in list_files(root, suffixes=(".json",)) if r.rsplit("/", 1)[-1] in STATS_FILE_NAMES]
    for name in STATS_FILE_NAMES:
        for relative in [r for r in names if r.rsplit("/", 1)[-1] == name]:
            stats_file = join(root, relative)
            try:
                payload = read_json(stats_file)
            except (OSError, json.JSONDecodeError):
                continue
            if not isinstance(payload, dict):
                continue
            # the sample corpus's manifest and the samples job say `rejections`; the clean job `rejected.by_reason`
            rejections = payload.get("rejections") or (payload.get("rejected") or {}).get("by_reason")
            if isinstance(rejections, dict):
                stats.job_rejections.update({k: int(v) for k, v in rejections.items()})
                stats.stats_files.append(str(stats_file))
            verified = (payload.get("dedup") or {}).get("verified") or {}
            if isinstance(verified.get("jaccard_histogram"), dict):
                stats.candidate_pairs_by_jaccard.update({k: int(v) for k, v in verified["jaccard_histogram"].items()})
                stats.near_duplicate_threshold = verified.get("threshold")
