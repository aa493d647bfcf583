"""Global dedup stages on Ray Data: exact groups, LSH buckets -> candidate pairs -> exact Jaccard, connected components.

No process holds the whole index. Every document is identified by a *rank key*
`"{licence rank}|{id}|{task:06d}|{row:07d}"`, whose string order is the keep order: permissive
licence first, then the smallest id, then the input position. The representative of a group or
cluster is its smallest key, so the survivors do not depend on partitioning or scheduling.

Stages (each writes Parquet files between stages, then a `.done` marker, so each reruns alone; the
files go through `loopcoder.pipelines.filesystem`, so `work` may be a local path or an object-store URI):

1. `exact`: rows `(content_sha256, key)` are shuffled into parts by a hash of `content_sha256`;
   each group of equal hashes keeps its smallest key and emits `(key, rep)` for the others.
2. `edges`: rows `(band, band_hash, content_hash, key)` are shuffled into parts by `band_hash`,
   so a bucket `(band, band_hash)` lies in one part. Copies of one content in a bucket are paired with their first copy (Jaccard 1);
   the distinct contents, in key order, are each paired with the next `bucket_window` ones (all
   pairs in buckets of up to `bucket_window + 1`), so a bucket of k costs at most k * window pairs.
   Without verification a bucket emits k - 1 star edges (smallest key -> each other).
3. `verified` (with `verify`): exact Jaccard of every distinct candidate pair, computed where the
   documents are: pairs are shuffled by the task of `u`, whose worker reads that task's documents
   and attaches u's shingle set once per task holding partners of u (duplicates of a pair from
   several bands meet there and collapse), then by the task of `v`, whose worker computes the
   Jaccard. Every candidate is kept with its
   similarity and `duplicate = jaccard >= threshold`.
4. `components`: connected components of the duplicate pairs by alternating large-star /
   small-star rounds (Kiveris et al., "Connected Components in MapReduce and Beyond", 2014),
   each round one shuffle by node; it stops when every component is a star around its smallest
   key, so the result is `(node, root)` with root = smallest key of the component.
5. `annotations`: exact removals and components, shuffled by task, written as one small file per
   task: `(row, reason, cluster)`; the final per-task stage joins it to its own shard.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from . import filesystem as fs
from .filesystem import atomic_write_json, atomic_write_parquet
from .minhash import MinhashConfig, jaccard, shingle_set

logger = logging.getLogger(__name__)

PERMISSIVE_LICENSES = {
    "mit", "apache-2.0", "bsd-2-clause", "bsd-3-clause", "isc", "psf-2.0", "zlib", "unlicense",
    "cc0-1.0", "0bsd", "bsl-1.0", "python-2.0", "mpl-2.0", "artistic-2.0",
}  # fmt: skip
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
MAX_COMPONENT_ROUNDS = 64


def rank_key(license: str | None, doc_id: str, task: int, row: int) -> str:
    licence_rank = 0 if (license or "").lower() in PERMISSIVE_LICENSES else 1
    return f"{licence_rank}|{doc_id}|{task:06d}|{row:07d}"


def key_position(key: str) -> tuple[int, int]:
    """(task, row) of a rank key."""
    _, _, task, row = key.rsplit("|", 3)
    return int(task), int(row)


def cluster_id(root_key: str) -> int:
    """Cluster id from the representative's licence rank and id (not its task), so task sizes do not change it."""
    stable = root_key.rsplit("|", 2)[0]
    return xxhash.xxh64_intdigest(stable.encode()) & 0x7FFFFFFFFFFFFFFF


def _stage(path: str, build) -> dict[str, Any]:
    """Runs `build(path) -> stats` unless the marker `path.done` exists.

    The folder counts only once its marker is written (rename is not atomic on object stores); a
    stage without a marker starts over from an empty folder, so a crash leaves nothing it reads.
    """
    marker = path + ".done"
    finished = fs.read_json_if_exists(marker)
    if finished is not None:
        return finished
    fs.delete_tree(path)
    fs.make_dirs(path)
    start = time.perf_counter()
    stats = build(path) | {"seconds": round(time.perf_counter() - start, 3)}
    atomic_write_json(marker, stats)
    return stats


def _load_files(batch: dict) -> pa.Table:
    return pa.concat_tables([fs.read_parquet(path) for path in batch["path"]])


def _read(files: list[str]):
    """A dataset over Parquet files, each read by a worker.

    Listing is done here rather than by `ray.data.read_parquet`, whose threaded path resolution
    races on the optional fsspec HTTP import when aiohttp is not installed.
    """
    import ray.data

    if not files:
        return None
    items = [{"path": f} for f in files]
    return ray.data.from_items(items, override_num_blocks=min(len(items), 64)).map_batches(
        _load_files, batch_format="numpy", batch_size=1
    )


def _parquet_files(directory: str) -> list[str]:
    return [fs.join(directory, relative) for relative in fs.list_files(directory, (".parquet",))]


def _write_block(batch: pa.Table, directory: str) -> pa.Table:
    """Writes one block under a name derived from its content, so a retried task overwrites its own file."""
    if batch.num_rows == 0:
        return pa.table({"rows": pa.array([], pa.int64())})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_table(batch)
    name = f"block-{xxhash.xxh3_128_hexdigest(sink.getvalue().to_pybytes())}.parquet"
    atomic_write_parquet(batch, fs.join(directory, name))
    return pa.table({"rows": [batch.num_rows]})


def _write(ds, directory: str) -> int:
    """Writes `ds` as Parquet files under `directory`; returns the row count."""
    if ds is None:
        return 0
    written = ds.map_batches(_write_block, fn_args=(directory,), batch_format="pyarrow", batch_size=None)
    return sum(int(row["rows"]) for row in written.iter_rows())


# Rows per group handed to one call of a part function: buckets and exact groups are hashed into
# parts of about this many rows, so the per-group cost of `map_groups` (a Python call and a table per
# group) is paid per part, and singleton buckets, the vast majority, never reach Python.
ROWS_PER_PART = 1_000_000


def _num_parts(files: list[str], partitions: int) -> int:
    rows = sum(fs.parquet_file(f).metadata.num_rows for f in files)
    return max(partitions, -(-rows // ROWS_PER_PART))


def _with_part(batch: pa.Table, column: str, parts: int) -> pa.Table:
    """Adds `part`, a hash of `column` modulo `parts`, so that equal values share a part."""
    values = batch.column(column)
    if pa.types.is_unsigned_integer(values.type):
        part = values.to_numpy() % np.uint64(parts)
    else:
        part = np.array([int(v[:15], 16) % parts for v in values.to_pylist()], dtype=np.uint64)
    return batch.append_column("part", pa.array(part.astype(np.int64)))


def _shared_groups(table: pa.Table, columns: list[str]) -> Iterator[pa.Table]:
    """The groups of rows equal on `columns` that have two or more rows, each sorted by key."""
    if table.num_rows < 2:
        return
    table = table.sort_by([(c, "ascending") for c in [*columns, "key"]])
    change = np.zeros(table.num_rows, dtype=bool)
    change[0] = True
    for column in columns:
        values = table.column(column).to_numpy(zero_copy_only=False)
        change[1:] |= values[1:] != values[:-1]
    starts = np.flatnonzero(change)
    for start, end in zip(starts.tolist(), [*starts[1:].tolist(), table.num_rows], strict=True):
        if end - start >= 2:
            yield table.slice(start, end - start)


def _exact_part(part: pa.Table) -> pa.Table:
    keys, reps = [], []
    for group in _shared_groups(part, ["content_sha256"]):
        members = group.column("key").to_pylist()
        keys += members[1:]
        reps += [members[0]] * (len(members) - 1)
    return pa.table({"key": keys, "rep": reps}, schema=_PAIR_SCHEMA_EXACT)


def _bucket_part(part: pa.Table, window: int, verify: bool) -> pa.Table:
    """Candidate pairs of every bucket of a part (stage 2); without `verify`, star edges."""
    if not verify:
        u, v = [], []
        for group in _shared_groups(part, ["band", "band_hash"]):
            keys = sorted(set(group.column("key").to_pylist()))
            u += keys[1:]
            v += [keys[0]] * (len(keys) - 1)
        return pa.table({"u": u, "v": v}, schema=_EDGE_SCHEMA)
    pairs = []
    for group in _shared_groups(part, ["band", "band_hash"]):
        pairs += bucket_pairs(group.column("key").to_pylist(), group.column("content_hash").to_pylist(), window)
    return pa.table(
        {"u": [p[0] for p in pairs], "v": [p[1] for p in pairs], "same_content": [p[2] for p in pairs]},
        schema=_PAIR_SCHEMA,
    )


def bucket_pairs(keys: list[str], content_hashes: list[int], window: int) -> list[tuple[str, str, bool]]:
    """Candidate pairs `(u, v, same_content)` with u < v from one LSH bucket (see stage 2)."""
    first_copy: dict[int, str] = {}
    pairs, distinct = [], []
    for key, content in sorted(set(zip(keys, content_hashes, strict=True))):
        if content in first_copy:
            pairs.append((first_copy[content], key, True))
        else:
            first_copy[content] = key
            distinct.append(key)
    for i, u in enumerate(distinct):
        pairs.extend((u, v, False) for v in distinct[i + 1 : i + 1 + window])
    return pairs


def _with_task_of(batch: pa.Table, column: str) -> pa.Table:
    tasks = [key_position(key)[0] for key in batch.column(column).to_pylist()]
    return batch.append_column("task", pa.array(tasks, pa.int64()))


def _shingle_sets(work: str, ngram: int, task: int, keys: list[str]) -> dict[str, np.ndarray]:
    """key -> shingle set, for some rows of one task, computed from the task's documents file."""
    rows = sorted({key_position(key)[1] for key in keys})
    if not rows:
        return {}
    table = fs.read_parquet(fs.join(work, "documents", f"task-{task:06d}.parquet"), columns=["content"])
    contents = table.column("content").take(pa.array(rows, pa.int64())).to_pylist()
    by_row = {row: shingle_set(content, ngram) for row, content in zip(rows, contents, strict=True)}
    return {key: by_row[key_position(key)[1]] for key in keys}


def _attach_first_sets(group: pa.Table, work: str, ngram: int) -> pa.Table:
    """Pairs grouped by the task of `u` -> one row per (u, task of v): u's shingle set and its partners there.

    A pair found in several bands arrives several times and is kept once. u's set travels once to
    each task holding partners of u, not once per pair.
    """
    task = group.column("task")[0].as_py()
    same: dict[tuple[str, str], bool] = {}
    for u, v, flag in zip(*(group.column(c).to_pylist() for c in ("u", "v", "same_content")), strict=True):
        same[(u, v)] = same.get((u, v), False) or flag
    partners: dict[tuple[str, int], list[str]] = {}
    for u, v in sorted(same):
        partners.setdefault((u, key_position(v)[0]), []).append(v)
    needs_set = {u for (u, _), flag in same.items() if not flag}
    sets = _shingle_sets(work, ngram, task, sorted(needs_set))
    rows = sorted(partners)
    return pa.table(
        {
            "u": [u for u, _ in rows],
            "task": pa.array([v_task for _, v_task in rows], pa.int64()),
            "v": pa.array([partners[r] for r in rows], pa.list_(pa.string())),
            "same_content": pa.array([[same[(r[0], v)] for v in partners[r]] for r in rows], pa.list_(pa.bool_())),
            "u_set": pa.array([sets[u].tobytes() if u in needs_set else b"" for u, _ in rows], pa.large_binary()),
        }
    )


def _verify_pairs(group: pa.Table, work: str, ngram: int, threshold: float) -> pa.Table:
    """Rows grouped by the task of `v`: exact Jaccard of each pair and whether it reaches the threshold."""
    task = group.column("task")[0].as_py()
    rows = list(zip(*(group.column(c).to_pylist() for c in ("u", "v", "same_content", "u_set")), strict=True))
    needed = {v for _, partners, flags, _ in rows for v, flag in zip(partners, flags, strict=True) if not flag}
    sets = _shingle_sets(work, ngram, task, sorted(needed))
    us, vs, similarity = [], [], []
    for u, partners, flags, u_set in rows:
        u_shingles = np.frombuffer(u_set, dtype=np.uint32)
        for v, flag in zip(partners, flags, strict=True):
            us.append(u)
            vs.append(v)
            similarity.append(1.0 if flag else jaccard(u_shingles, sets[v]))
    return pa.table(
        {
            "u": us,
            "v": vs,
            "jaccard": pa.array(similarity, pa.float64()),
            "duplicate": [s >= threshold for s in similarity],
        },
        schema=_VERIFIED_SCHEMA,
    )


def _duplicate_edges(batch: pa.Table) -> pa.Table:
    return batch.filter(batch.column("duplicate")).select(["u", "v"])


def _jaccard_histogram(batch: pa.Table) -> pa.Table:
    bins = np.minimum((batch.column("jaccard").to_numpy() * 10).astype(np.int64), 9)
    duplicate = batch.column("duplicate").to_numpy(zero_copy_only=False)
    return pa.table(
        {
            "bin": np.arange(10),
            "count": np.bincount(bins, minlength=10),
            "duplicates": np.bincount(bins, weights=duplicate, minlength=10).astype(np.int64),
        }
    )


_PAIR_SCHEMA_EXACT = pa.schema([("key", pa.string()), ("rep", pa.string())])
_EDGE_SCHEMA = pa.schema([("u", pa.string()), ("v", pa.string())])
_PAIR_SCHEMA = pa.schema([("u", pa.string()), ("v", pa.string()), ("same_content", pa.bool_())])
_VERIFIED_SCHEMA = pa.schema(
    [("u", pa.string()), ("v", pa.string()), ("jaccard", pa.float64()), ("duplicate", pa.bool_())]
)
_STAR_SCHEMA = pa.schema([("u", pa.string()), ("v", pa.string()), ("unstable", pa.int64())])


def _both_directions(batch: pa.Table) -> pa.Table:
    u, v = batch.column("u"), batch.column("v")
    return pa.table({"u": pa.concat_arrays([u.combine_chunks(), v.combine_chunks()]),
                     "v": pa.concat_arrays([v.combine_chunks(), u.combine_chunks()])})  # fmt: skip


def _large_star(group: pa.Table) -> pa.Table:
    """Node u with neighbours N: m = min(N + u); connect every larger neighbour v > u to m.

    `unstable` is 1 when u is not a local minimum yet has several neighbours: the graph is not
    yet a set of stars around their minima. A self-loop carries the flag when no edge is emitted.
    """
    u = group.column("u")[0].as_py()
    neighbours = set(group.column("v").to_pylist()) - {u}
    if not neighbours:
        return _STAR_SCHEMA.empty_table()
    m = min(min(neighbours), u)
    unstable = int(m != u and len(neighbours) > 1)
    larger = sorted(v for v in neighbours if v > u)
    if not larger:
        return (
            pa.table({"u": [u], "v": [u], "unstable": [unstable]}, schema=_STAR_SCHEMA)
            if unstable
            else _STAR_SCHEMA.empty_table()
        )
    return pa.table({"u": larger, "v": [m] * len(larger), "unstable": [unstable] * len(larger)}, schema=_STAR_SCHEMA)


def _drop_self_loops(batch: pa.Table) -> pa.Table:
    batch = batch.select(["u", "v"])
    return batch.filter(pc.not_equal(batch.column("u"), batch.column("v")))


def _orient_down(batch: pa.Table) -> pa.Table:
    """Each edge as (larger, smaller), self-loops dropped."""
    u, v = batch.column("u").to_pylist(), batch.column("v").to_pylist()
    pairs = [(a, b) if a > b else (b, a) for a, b in zip(u, v, strict=True) if a != b]
    return pa.table({"u": [p[0] for p in pairs], "v": [p[1] for p in pairs]}, schema=_EDGE_SCHEMA)


def _small_star(group: pa.Table) -> pa.Table:
    """Node u with smaller neighbours N: m = min(N + u); connect every node of N + u except m to m."""
    u = group.column("u")[0].as_py()
    nodes = set(group.column("v").to_pylist()) | {u}
    m = min(nodes)
    others = sorted(nodes - {m})
    return pa.table({"u": others, "v": [m] * len(others)}, schema=_EDGE_SCHEMA)


def connected_components(edges, partitions: int) -> tuple[Any, int]:
    """(dataset of star edges (u, v=root of u's component), rounds) from an edge dataset (u, v)."""
    rounds = 0
    while True:
        rounds += 1
        star = (
            edges.map_batches(_both_directions, batch_format="pyarrow")
            .groupby("u", num_partitions=partitions)
            .map_groups(_large_star, batch_format="pyarrow")
            .materialize()
        )
        unstable = star.sum("unstable") if star.count() else 0
        if not unstable or rounds >= MAX_COMPONENT_ROUNDS:
            if unstable:
                raise RuntimeError(f"connected components did not converge in {MAX_COMPONENT_ROUNDS} rounds")
            return star.map_batches(_drop_self_loops, batch_format="pyarrow"), rounds
        edges = (
            star.select_columns(["u", "v"])
            .map_batches(_orient_down, batch_format="pyarrow")
            .groupby("u", num_partitions=partitions)
            .map_groups(_small_star, batch_format="pyarrow")
            .materialize()
        )


def _annotation_rows(batch: pa.Table, reason: str) -> pa.Table:
    """(key, rep) -> (task, row, reason, cluster) for the removed key, plus the representative's own row."""
    keys, reps = batch.column(0).to_pylist(), batch.column(1).to_pylist()
    rows = []
    for key, rep in zip(keys, reps, strict=True):
        cluster = cluster_id(rep) if reason == NEAR_DUPLICATE else None
        rows.append((*key_position(key), reason, cluster))
        if reason == NEAR_DUPLICATE:
            rows.append((*key_position(rep), None, cluster))
    return pa.table(
        {
            "task": pa.array([r[0] for r in rows], pa.int64()),
            "row": pa.array([r[1] for r in rows], pa.int64()),
            "reason": pa.array([r[2] for r in rows], pa.string()),
            "cluster": pa.array([r[3] for r in rows], pa.int64()),
        }
    )


def _write_task_annotations(group: pa.Table, directory: str) -> pa.Table:
    """One Parquet file per task: its rows' dedup reason and cluster (exact removal wins)."""
    task = group.column("task")[0].as_py()
    merged: dict[int, tuple[str | None, int | None]] = {}
    for row, reason, cluster in zip(
        group.column("row").to_pylist(),
        group.column("reason").to_pylist(),
        group.column("cluster").to_pylist(),
        strict=True,
    ):
        old_reason, old_cluster = merged.get(row, (None, None))
        new_reason = EXACT_DUPLICATE if EXACT_DUPLICATE in (reason, old_reason) else (reason or old_reason)
        merged[row] = (new_reason, cluster if cluster is not None else old_cluster)
    rows = sorted(merged)
    table = pa.table(
        {
            "row": pa.array(rows, pa.int64()),
            "reason": pa.array([merged[r][0] for r in rows], pa.string()),
            "cluster": pa.array([merged[r][1] for r in rows], pa.int64()),
        }
    )
    atomic_write_parquet(table, fs.join(directory, f"task-{task:06d}.parquet"))
    return pa.table({"task": [task], "rows": [len(rows)]})


def run_dedup(work: str, exact: bool, minhash: MinhashConfig | None, partitions: int) -> dict[str, Any]:
    """Runs the enabled global stages over the stage-1 files under `work` (a path or URI); returns their statistics."""
    work = str(work)
    dedup = fs.join(work, "dedup")
    fs.make_dirs(dedup)
    stats: dict[str, Any] = {}

    def grouped_by_part(files: list[str], column: str, function, args: tuple):
        parts = _num_parts(files, partitions)
        return (
            _read(files)
            .map_batches(_with_part, fn_args=(column, parts), batch_format="pyarrow")
            .groupby("part", num_partitions=partitions)
            .map_groups(function, fn_args=args, batch_format="pyarrow")
        )

    def build_exact(tmp: str) -> dict[str, Any]:
        files = _parquet_files(fs.join(work, "keys"))
        if not files:
            return {"removed": 0}
        return {"removed": _write(grouped_by_part(files, "content_sha256", _exact_part, ()), tmp)}

    def build_edges(tmp: str) -> dict[str, Any]:
        files = _parquet_files(fs.join(work, "bands"))
        if not files:
            return {"pair_rows": 0}
        edges = grouped_by_part(files, "band_hash", _bucket_part, (minhash.bucket_window, minhash.verify))
        # a pair sharing several bands is written once per band (`verified` counts distinct pairs)
        return {"pair_rows": _write(edges, tmp)}

    def verified_stats(candidates: int, duplicates: int, histogram: list[int]) -> dict[str, Any]:
        return {
            "threshold": minhash.threshold,
            "candidate_pairs": candidates,
            "duplicate_pairs": duplicates,
            "below_threshold": candidates - duplicates,
            "jaccard_histogram": {f"{b / 10:.1f}-{(b + 1) / 10:.1f}": n for b, n in enumerate(histogram)},
        }

    def build_verified(tmp: str) -> dict[str, Any]:
        pairs = _read(_parquet_files(fs.join(dedup, "edges")))
        if pairs is None:  # no bucket holds two documents
            return verified_stats(0, 0, [0] * 10)
        verified = (
            pairs.map_batches(_with_task_of, fn_args=("u",), batch_format="pyarrow")
            .groupby("task", num_partitions=partitions)
            .map_groups(_attach_first_sets, fn_args=(work, minhash.ngram), batch_format="pyarrow")
            .groupby("task", num_partitions=partitions)
            .map_groups(_verify_pairs, fn_args=(work, minhash.ngram, minhash.threshold), batch_format="pyarrow")
        )
        written = _write(verified, tmp)
        scored = _read(_parquet_files(tmp))
        histogram, duplicates = [0] * 10, 0
        if scored is not None:
            for row in scored.map_batches(_jaccard_histogram, batch_format="pyarrow").iter_rows():
                histogram[int(row["bin"])] += int(row["count"])
                duplicates += int(row["duplicates"])
        return verified_stats(written, duplicates, histogram)

    def build_components(tmp: str) -> dict[str, Any]:
        if minhash.verify:
            pairs = _read(_parquet_files(fs.join(dedup, "verified")))
            edges = None if pairs is None else pairs.map_batches(_duplicate_edges, batch_format="pyarrow")
        else:
            edges = _read(_parquet_files(fs.join(dedup, "edges")))
        if edges is None:
            return {"rounds": 0, "removed": 0}
        components, rounds = connected_components(edges, partitions)
        return {"rounds": rounds, "removed": _write(components, tmp)}

    def build_annotations(tmp: str) -> dict[str, Any]:
        parts = []
        if exact and (files := _parquet_files(fs.join(dedup, "exact"))):
            parts.append(
                _read(files).map_batches(_annotation_rows, fn_args=(EXACT_DUPLICATE,), batch_format="pyarrow")
            )
        if minhash and (files := _parquet_files(fs.join(dedup, "components"))):
            parts.append(_read(files).map_batches(_annotation_rows, fn_args=(NEAR_DUPLICATE,), batch_format="pyarrow"))
        if not parts:
            return {"tasks": 0}
        rows = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
        written = rows.groupby("task", num_partitions=partitions).map_groups(
            _write_task_annotations, fn_args=(tmp,), batch_format="pyarrow"
        )
        return {"tasks": written.count()}

    if exact:
        stats["exact"] = _stage(fs.join(dedup, "exact"), build_exact)
    if minhash:
        stats["edges"] = _stage(fs.join(dedup, "edges"), build_edges)
        if minhash.verify:
            stats["verified"] = _stage(fs.join(dedup, "verified"), build_verified)
        stats["components"] = _stage(fs.join(dedup, "components"), build_components)
    stats["annotations"] = _stage(fs.join(dedup, "annotations"), build_annotations)
    return stats


def read_annotations(work: str, task: int) -> dict[int, tuple[str | None, int | None]]:
    """row -> (reason, cluster) for one task (empty when no row of the task is in a group)."""
    path = fs.join(work, "dedup", "annotations", f"task-{task:06d}.parquet")
    if not fs.exists(path):
        return {}
    table = fs.read_parquet(path)
    return {
        row: (reason, cluster)
        for row, reason, cluster in zip(
            table.column("row").to_pylist(),
            table.column("reason").to_pylist(),
            table.column("cluster").to_pylist(),
            strict=True,
        )
    }
