"""Global dedup stages on Ray Data: ranks, exact groups, LSH buckets -> candidate pairs -> exact Jaccard, components.

On Ray no process holds the whole index. When the stages' input is small (`ray.dedup_here_max_mb`
of keys and band rows, or a job run in this process) they run in the driver on
`executor/local.py`'s `LocalDataset`: the same functions over the same parts. The keep order of documents is permissive licence first, then
the smallest id, then the input position `(task, row)`; the representative of a group or cluster
is its first document in that order, so the survivors do not depend on partitioning or
scheduling. Every stage after the first identifies a document by its *rank*, a uint64: its
position in the keep order over the whole input. Comparing ranks is comparing keep order, and
the rows that cross a shuffle are a few fixed-width integers instead of strings.

Inputs, per task (`write_task_dedup_inputs`): `keys/task-N.parquet` with `(task, row,
licence_rank, id, content_sha256, minhash)` for every kept document, and `bands/task-N.parquet`
with `(row, band, band_hash)` for those with enough tokens for MinHash.

Stages (each writes Parquet files, then a `.done` marker, so each reruns alone; the files go
through `loopcoder.pipelines.io.filesystem`, so `work` may be a local path or an object-store URI):

1. `ranks`: the keys are range-partitioned on (licence rank, first two bytes of the id), from an
   exact histogram of those prefixes, so partition p holds a contiguous range of the keep order
   and its size is known before the shuffle; each partition sorts its rows and numbers them from
   its offset. `ranks/part-P.parquet` (rank, task, row, licence rank, id), sorted by rank, is also
   the index from a rank back to its document (`ranks/_offsets.json` says which file).
2. `exact`: rows `(content_sha256, rank)` shuffled by the hash; each group of equal hashes
   names its smallest rank as the content's representative, and a second shuffle by task writes
   `exact/task-N.parquet` (row, rank, content_rep, minhash) in row order. A document whose
   rank is not its content's representative is a copy (`exact_duplicate` with exact dedup on).
3. `edges`: band rows of content representatives only, `(band, band_hash, rank)`, shuffled by
   `band_hash`, so a bucket `(band, band_hash)` lies in one part. A bucket's members, in rank
   order, are each paired with the next `bucket_window` ones (all pairs in buckets of up to
   `bucket_window + 1`), so a bucket of k costs at most k * window pairs; each copy is paired with
   its representative (`same_content`, Jaccard 1) without a shuffle. Without verification a
   bucket emits k - 1 star edges (smallest rank -> each other).
4. `verified` (with `verify`): exact Jaccard of every distinct candidate pair, computed where the
   documents are: pairs find their documents' positions in the rank index, are shuffled by the
   task of `u`, whose worker attaches u's shingle set once per task holding partners of u
   (duplicates of a pair from several bands meet there and collapse), then by the task of `v`,
   whose worker computes the Jaccard. Every candidate is kept with its similarity and
   `duplicate = jaccard >= threshold`.
5. `components`: connected components of the duplicate pairs by alternating large-star /
   small-star rounds (Kiveris et al., "Connected Components in MapReduce and Beyond", 2014),
   each round one shuffle by node, each part processed with numpy on its edge arrays; it stops
   when every component is a star around its smallest rank, so the result is `(node, root)`.
6. `annotations`: components with their documents' positions and the cluster id of their root,
   shuffled by task: `annotations/task-N.parquet` (row, near_duplicate, cluster).

Shuffle partitions are sized from the data unless fixed (`ShuffleSizing`): each shuffle's
partition count is `max(cluster CPUs, ceil(bytes entering the shuffle / partition_bytes))`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from loopcoder.pipelines.dedup.minhash import MinhashConfig, jaccard, shingle_set
from loopcoder.pipelines.executor.local import REMOTE_PART_THREADS, LocalDataset
from loopcoder.pipelines.io import filesystem as fs
from loopcoder.pipelines.io.filesystem import atomic_write_json, atomic_write_parquet

if TYPE_CHECKING:
    from loopcoder.pipelines.executor.tasks import Session

logger = logging.getLogger(__name__)

PERMISSIVE_LICENSES = {
    "mit", "apache-2.0", "bsd-2-clause", "bsd-3-clause", "isc", "psf-2.0", "zlib", "unlicense",
    "cc0-1.0", "0bsd", "bsl-1.0", "python-2.0", "mpl-2.0", "artistic-2.0",
}  # fmt: skip
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
MAX_COMPONENT_ROUNDS = 64
DEFAULT_PARTITION_BYTES = 128 * 2**20
# Rows per group handed to one call of a part function: buckets and exact groups are hashed into
# parts of about this many rows, so the per-call cost of `map_groups` is paid per part.
ROWS_PER_PART = 1_000_000
_PREFIX_BINS = 2 * 65536  # licence rank x first two bytes of the id

KEYS_SCHEMA = pa.schema(
    [
        ("task", pa.uint32()),
        ("row", pa.uint32()),
        ("licence_rank", pa.uint8()),
        ("id", pa.string()),
        ("content_sha256", pa.binary(32)),
        ("minhash", pa.bool_()),
    ]
)
BANDS_SCHEMA = pa.schema([("row", pa.uint32()), ("band", pa.uint8()), ("band_hash", pa.uint64())])
_PAIR_SCHEMA = pa.schema([("u", pa.uint64()), ("v", pa.uint64()), ("same_content", pa.bool_())])
_EDGE_SCHEMA = pa.schema([("u", pa.uint64()), ("v", pa.uint64())])
_STAR_SCHEMA = pa.schema([("u", pa.uint64()), ("v", pa.uint64()), ("unstable", pa.int64())])
_VERIFIED_SCHEMA = pa.schema(
    [("u", pa.uint64()), ("v", pa.uint64()), ("jaccard", pa.float64()), ("duplicate", pa.bool_())]
)


def licence_rank(license: str | None) -> int:
    return 0 if (license or "").lower() in PERMISSIVE_LICENSES else 1


def cluster_id(rank_of_licence: int, doc_id: str) -> int:
    """Cluster id from the representative's licence rank and id (not its position), so task sizes do not change it."""
    return xxhash.xxh64_intdigest(f"{rank_of_licence}|{doc_id}".encode()) & 0x7FFFFFFFFFFFFFFF


def task_dedup_tables(
    task: int,
    rows: list[int],
    licenses: list[str | None],
    ids: list[str],
    content_sha256: list[str],
    band_hashes: list[np.ndarray | None],
) -> dict[str, pa.Table]:
    """The `keys` and `bands` tables of one task's kept documents (layout in the module docstring).

    `content_sha256` are hex digests; `band_hashes[i]` is None when document i has no MinHash bands.
    """
    keys = pa.table(
        {
            "task": pa.array(np.full(len(rows), task, dtype=np.uint32)),
            "row": pa.array(np.asarray(rows, dtype=np.uint32)),
            "licence_rank": pa.array([licence_rank(x) for x in licenses], pa.uint8()),
            "id": pa.array(ids, pa.string()),
            "content_sha256": pa.array([bytes.fromhex(h) for h in content_sha256], pa.binary(32)),
            "minhash": pa.array([h is not None for h in band_hashes], pa.bool_()),
        },
        schema=KEYS_SCHEMA,
    )
    hashed = [(row, h) for row, h in zip(rows, band_hashes, strict=True) if h is not None]
    if not hashed:
        return {"keys": keys, "bands": BANDS_SCHEMA.empty_table()}
    counts = [len(h) for _, h in hashed]
    bands = pa.table(
        {
            "row": pa.array(np.repeat(np.array([r for r, _ in hashed], dtype=np.uint32), counts)),
            "band": pa.array(np.concatenate([np.arange(c, dtype=np.uint8) for c in counts])),
            "band_hash": pa.array(np.concatenate([h for _, h in hashed]).astype(np.uint64)),
        },
        schema=BANDS_SCHEMA,
    )
    return {"keys": keys, "bands": bands}


def write_task_dedup_inputs(work: str, task: int, *columns) -> None:
    """Writes one task's `keys` and `bands` files under `work` (arguments as `task_dedup_tables`)."""
    for folder, table in task_dedup_tables(task, *columns).items():
        if table.num_rows:
            atomic_write_parquet(table, fs.join(work, folder, f"task-{task:06d}.parquet"))


@dataclass(frozen=True)
class ShuffleSizing:
    """Partitions of a shuffle: `partitions` when fixed, else max(min_partitions, ceil(bytes / partition_bytes))."""

    partitions: int | None = None
    partition_bytes: int = DEFAULT_PARTITION_BYTES
    min_partitions: int = 1

    def for_bytes(self, nbytes: int) -> int:
        if self.partitions:
            return self.partitions
        return max(self.min_partitions, -(-nbytes // self.partition_bytes), 1)


class _Shuffles:
    """Groups datasets by a computed `part` column and counts what crosses each shuffle."""

    def __init__(self, sizing: ShuffleSizing):
        self.sizing = sizing
        self.bytes = 0
        self.rows = 0
        self.partitions: list[int] = []

    def group(
        self,
        ds,
        part_of: Callable,
        part_args: tuple,
        function,
        args: tuple = (),
        parts: int | None = None,
        size: tuple[int, int] | None = None,
    ):
        """`function(part_table, *args)` on each part; `part_of(batch, parts, *part_args)` names a row's part.

        The input is materialized first, unless its `size` (rows, bytes) is given: its size in bytes
        sizes the shuffle, and is what is counted.
        """
        if size is None:
            ds = ds.materialize()
            size = ds.count(), ds.size_bytes()
        rows, nbytes = size
        partitions = self.sizing.for_bytes(nbytes)
        parts = parts or max(partitions, -(-rows // ROWS_PER_PART))
        self.rows += rows
        self.bytes += nbytes + 4 * rows  # and the int32 part column
        self.partitions.append(partitions)
        return (
            ds.map_batches(_with_part, fn_args=(part_of, parts, part_args), batch_format="pyarrow")
            .groupby("part", num_partitions=partitions)
            .map_groups(function, fn_args=args, batch_format="pyarrow")
        )

    def stats(self) -> dict[str, Any]:
        stats = {
            "shuffled_rows": self.rows,
            "shuffled_bytes": self.bytes,
            "partitions": max(self.partitions, default=0),
        }
        self.rows, self.bytes, self.partitions = 0, 0, []
        return stats


def _with_part(batch: pa.Table, part_of: Callable, parts: int, part_args: tuple) -> pa.Table:
    return batch.append_column("part", pa.array(part_of(batch, parts, *part_args).astype(np.int32)))


def _part_by_hash(batch: pa.Table, parts: int, column: str) -> np.ndarray:
    """A uniform hash of `column` (uint64, or the first 8 bytes of a fixed-size binary) modulo `parts`."""
    values = batch.column(column).combine_chunks()
    if pa.types.is_fixed_size_binary(values.type):
        width = values.type.byte_width
        raw = np.frombuffer(values.buffers()[1], dtype=np.uint8)[
            values.offset * width : (values.offset + len(values)) * width
        ]
        values = raw.reshape(-1, width)[:, :8].copy().view(np.uint64).ravel()
    else:
        values = values.to_numpy()
    return (values % np.uint64(parts)).astype(np.int64)


def _part_by_value(batch: pa.Table, _parts: int, column: str) -> np.ndarray:
    return batch.column(column).to_numpy().astype(np.int64)


def _part_by_rank(batch: pa.Table, _parts: int, column: str, offsets: list[int]) -> np.ndarray:
    """The rank partition holding `column`'s rank (the file to look it up in)."""
    ranks = batch.column(column).to_numpy()
    return np.searchsorted(np.asarray(offsets, dtype=np.uint64), ranks, side="right") - 1


def _id_prefix_bins(batch: pa.Table) -> np.ndarray:
    """licence_rank * 65536 + the first two UTF-8 bytes of the id (0 when absent): monotone in the keep order."""
    ids = batch.column("id").combine_chunks()
    offset_type = np.int64 if pa.types.is_large_string(ids.type) else np.int32
    offsets = np.frombuffer(ids.buffers()[1], dtype=offset_type)[ids.offset : ids.offset + len(ids) + 1]
    data = ids.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    padded = np.concatenate([data, np.zeros(2, np.uint8)]).astype(np.int64)
    starts, lengths = offsets[:-1], np.diff(offsets)
    first = np.where(lengths > 0, padded[starts], 0)
    second = np.where(lengths > 1, padded[np.minimum(starts + 1, len(padded) - 1)], 0)
    return batch.column("licence_rank").to_numpy().astype(np.int64) * 65536 + first * 256 + second


def _part_by_prefix(batch: pa.Table, _parts: int, part_of_bin: np.ndarray) -> np.ndarray:
    return part_of_bin[_id_prefix_bins(batch)]


def _prefix_histogram(batch: pa.Table) -> pa.Table:
    counts = np.bincount(_id_prefix_bins(batch), minlength=_PREFIX_BINS)
    bins = np.flatnonzero(counts)
    return pa.table({"bin": bins.astype(np.int64), "count": counts[bins].astype(np.int64)})


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


def _load_files(batch: dict, columns: list[str] | None) -> pa.Table:
    return pa.concat_tables([fs.read_parquet(path, columns=columns) for path in batch["path"]])


def _ray_from_items(items: list[dict[str, Any]], override_num_blocks: int):
    import ray.data

    return ray.data.from_items(items, override_num_blocks=override_num_blocks)


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


def _runs(*columns: np.ndarray) -> np.ndarray:
    """Start flags of the runs of equal values in sorted columns."""
    n = len(columns[0])
    start = np.zeros(n, dtype=bool)
    start[:1] = True
    for values in columns:
        if values.ndim == 2:
            start[1:] |= (values[1:] != values[:-1]).any(axis=1)
        else:
            start[1:] |= values[1:] != values[:-1]
    return start


def _rank_partition(part: pa.Table, offsets: list[int], directory: str) -> pa.Table:
    """Sorts one range of the keep order and numbers it from the range's offset (stage 1)."""
    number = int(part.column("part")[0].as_py())
    part = part.sort_by(
        [("licence_rank", "ascending"), ("id", "ascending"), ("task", "ascending"), ("row", "ascending")]
    )
    ranks = np.uint64(offsets[number]) + np.arange(part.num_rows, dtype=np.uint64)
    table = pa.table(
        {
            "rank": pa.array(ranks),
            "task": part.column("task"),
            "row": part.column("row"),
            "licence_rank": part.column("licence_rank"),
            "id": part.column("id"),
            "content_sha256": part.column("content_sha256"),
            "minhash": part.column("minhash"),
        }
    )
    atomic_write_parquet(table, fs.join(directory, f"part-{number:05d}.parquet"))
    return pa.table({"part": [number], "rows": [part.num_rows]})


def _sha_words(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    raw = np.frombuffer(values.buffers()[1], dtype=np.uint8)[values.offset * 32 : (values.offset + len(values)) * 32]
    return raw.reshape(-1, 32).copy().view(np.uint64)


def _content_groups(part: pa.Table) -> pa.Table:
    """Each document with the smallest rank of its content (stage 2)."""
    words = _sha_words(part.column("content_sha256"))
    ranks = part.column("rank").to_numpy()
    order = np.lexsort((ranks, words[:, 3], words[:, 2], words[:, 1], words[:, 0]))
    words, ranks = words[order], ranks[order]
    start = _runs(words)
    first = np.maximum.accumulate(np.where(start, np.arange(len(ranks)), 0))
    return pa.table(
        {
            "task": part.column("task").take(order),
            "row": part.column("row").take(order),
            "rank": pa.array(ranks),
            "content_rep": pa.array(ranks[first]),
            "minhash": part.column("minhash").take(order),
        }
    )


def _write_task_ranks(group: pa.Table, directory: str) -> pa.Table:
    task = int(group.column("task")[0].as_py())
    table = group.sort_by("row").select(["row", "rank", "content_rep", "minhash"])
    atomic_write_parquet(table, fs.join(directory, f"task-{task:06d}.parquet"))
    copies = int(pc.sum(pc.not_equal(table.column("rank"), table.column("content_rep"))).as_py() or 0)
    return pa.table({"task": [task], "copies": [copies]})


def _representative_bands(batch: dict, work: str) -> pa.Table:
    """A task's band rows keyed by rank, for content representatives only (stage 3)."""
    tables = []
    for path in batch["path"]:
        bands = fs.read_parquet(path)
        ranked = fs.read_parquet(fs.join(work, "dedup", "exact", fs.basename(path)))
        rank = np.zeros(int(pc.max(ranked.column("row")).as_py()) + 1, dtype=np.uint64)
        representative = np.zeros(len(rank), dtype=bool)
        rows = ranked.column("row").to_numpy()
        rank[rows] = ranked.column("rank").to_numpy()
        representative[rows] = ranked.column("rank").to_numpy() == ranked.column("content_rep").to_numpy()
        band_rows = bands.column("row").to_numpy()
        keep = representative[band_rows]
        tables.append(
            pa.table(
                {
                    "band": bands.column("band").filter(pa.array(keep)),
                    "band_hash": bands.column("band_hash").filter(pa.array(keep)),
                    "key": pa.array(rank[band_rows[keep]]),
                }
            )
        )
    return pa.concat_tables(tables)


def _copy_edges(batch: dict, verify: bool) -> pa.Table:
    """Each MinHash-sized copy paired with its content's representative (Jaccard 1, no shuffle)."""
    tables = []
    for path in batch["path"]:
        ranked = fs.read_parquet(path)
        copies = ranked.filter(
            pc.and_(ranked.column("minhash"), pc.not_equal(ranked.column("rank"), ranked.column("content_rep")))
        )
        columns = {"u": copies.column("content_rep"), "v": copies.column("rank")}
        if verify:
            columns["same_content"] = pa.array(np.ones(copies.num_rows, dtype=bool))
        tables.append(pa.table(columns, schema=_PAIR_SCHEMA if verify else _EDGE_SCHEMA))
    return pa.concat_tables(tables)


def bucket_pairs(
    band: np.ndarray, band_hash: np.ndarray, key: np.ndarray, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs `(u, v)`, u < v, of every bucket: each member with the next `window` members in rank order."""
    members, start = _shared_buckets(band, band_hash, key)
    if not len(members):
        return np.empty(0, np.uint64), np.empty(0, np.uint64)
    bucket = np.cumsum(start) - 1
    ends = np.append(np.flatnonzero(start)[1:], len(members))[bucket]
    positions = np.arange(len(members))
    us, vs = [], []
    for distance in range(1, window + 1):
        ok = positions + distance < ends
        if not ok.any():
            break
        us.append(members[positions[ok]])
        vs.append(members[positions[ok] + distance])
    return np.concatenate(us), np.concatenate(vs)


def _shared_buckets(band: np.ndarray, band_hash: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys of the buckets with two or more members, sorted by bucket then key, and the bucket start flags."""
    order = np.lexsort((key, band_hash, band))
    band, band_hash, key = band[order], band_hash[order], key[order]
    start = _runs(band, band_hash)
    bucket = np.cumsum(start) - 1
    sizes = np.bincount(bucket)
    shared = sizes[bucket] >= 2
    return key[shared], start[shared]


def _bucket_part(part: pa.Table, window: int, verify: bool) -> pa.Table:
    """Candidate pairs of every bucket of a part (stage 3); without `verify`, star edges."""
    band, band_hash = part.column("band").to_numpy(), part.column("band_hash").to_numpy()
    key = part.column("key").to_numpy()
    if not verify:
        members, start = _shared_buckets(band, band_hash, key)
        first = np.maximum.accumulate(np.where(start, np.arange(len(members)), 0))
        return pa.table({"u": members[~start], "v": members[first][~start]}, schema=_EDGE_SCHEMA)
    u, v = bucket_pairs(band, band_hash, key, window)
    return pa.table({"u": u, "v": v, "same_content": np.zeros(len(u), dtype=bool)}, schema=_PAIR_SCHEMA)


def _attach_positions(
    group: pa.Table, column: str, ranks_dir: str, offsets: list[int], with_cluster: bool
) -> pa.Table:
    """Adds `{column}_task` and `{column}_row` (and `{column}_cluster`) from the rank index file of this part."""
    number = int(group.column("part")[0].as_py())
    wanted = ["task", "row"] + (["licence_rank", "id"] if with_cluster else [])
    index = fs.read_parquet(fs.join(ranks_dir, f"part-{number:05d}.parquet"), columns=wanted)
    at = pa.array((group.column(column).to_numpy() - np.uint64(offsets[number])).astype(np.int64))
    group = group.drop_columns(["part"])
    group = group.append_column(f"{column}_task", index.column("task").take(at))
    group = group.append_column(f"{column}_row", index.column("row").take(at))
    if with_cluster:
        distinct, inverse = np.unique(at.to_numpy(), return_inverse=True)
        picked = index.select(["licence_rank", "id"]).take(pa.array(distinct))
        clusters = np.array(
            [
                cluster_id(lr, doc_id)
                for lr, doc_id in zip(
                    picked.column("licence_rank").to_pylist(), picked.column("id").to_pylist(), strict=True
                )
            ],
            dtype=np.int64,
        )
        group = group.append_column(f"{column}_cluster", pa.array(clusters[inverse]))
    return group


def _shingle_sets(work: str, ngram: int, task: int, rows: np.ndarray) -> dict[int, np.ndarray]:
    """row -> shingle set, for some rows of one task, computed from the task's documents file."""
    rows = np.unique(rows)
    if not len(rows):
        return {}
    table = fs.read_parquet(fs.join(work, "documents", f"task-{task:06d}.parquet"), columns=["content"])
    contents = table.column("content").take(pa.array(rows.astype(np.int64))).to_pylist()
    return {row: shingle_set(content, ngram) for row, content in zip(rows.tolist(), contents, strict=True)}


def _attach_first_sets(group: pa.Table, work: str, ngram: int) -> pa.Table:
    """Pairs grouped by the task of `u` -> one row per (u, task of v): u's shingle set and its partners there.

    A pair found in several bands arrives several times and is kept once. u's set travels once to
    each task holding partners of u, not once per pair.
    """
    task = int(group.column("u_task")[0].as_py())
    u, v = group.column("u").to_numpy(), group.column("v").to_numpy()
    same = group.column("same_content").to_numpy(zero_copy_only=False)
    u_row, v_task, v_row = (group.column(c).to_numpy().astype(np.int64) for c in ("u_row", "v_task", "v_row"))
    order = np.lexsort((v, v_task, u))
    u, v, same, u_row, v_task, v_row = (a[order] for a in (u, v, same, u_row, v_task, v_row))
    pair_start = _runs(u, v)
    pair = np.cumsum(pair_start) - 1
    same = np.bincount(pair, weights=same, minlength=pair[-1] + 1 if len(pair) else 0) > 0
    u, v, u_row, v_task, v_row = (a[pair_start] for a in (u, v, u_row, v_task, v_row))
    sets = _shingle_sets(work, ngram, task, u_row[~same])
    row_start = _runs(u, v_task)
    starts = np.flatnonzero(row_start)
    offsets = pa.array(np.append(starts, len(u)).astype(np.int32))
    # u's set is needed when one of its pairs in this row is not a copy
    needs = np.logical_or.reduceat(~same, starts) if len(starts) else np.zeros(0, bool)
    u_sets = [
        sets[r].tobytes() if need else b"" for r, need in zip(u_row[starts].tolist(), needs.tolist(), strict=True)
    ]
    return pa.table(
        {
            "u": pa.array(u[starts]),
            "task": pa.array(v_task[starts]),
            "v": pa.ListArray.from_arrays(offsets, pa.array(v)),
            "v_row": pa.ListArray.from_arrays(offsets, pa.array(v_row)),
            "same_content": pa.ListArray.from_arrays(offsets, pa.array(same)),
            "u_set": pa.array(u_sets, pa.large_binary()),
        }
    )


def _verify_pairs(group: pa.Table, work: str, ngram: int, threshold: float) -> pa.Table:
    """Rows grouped by the task of `v`: exact Jaccard of each pair and whether it reaches the threshold."""
    task = int(group.column("task")[0].as_py())
    partners = group.column("v").combine_chunks()
    parent = pc.list_parent_indices(partners).to_numpy()
    v = pc.list_flatten(partners).to_numpy()
    v_row = pc.list_flatten(group.column("v_row").combine_chunks()).to_numpy()
    same = pc.list_flatten(group.column("same_content").combine_chunks()).to_numpy(zero_copy_only=False)
    u = group.column("u").to_numpy()[parent]
    sets = _shingle_sets(work, ngram, task, v_row[~same])
    u_sets = [np.frombuffer(s, dtype=np.uint32) for s in group.column("u_set").to_pylist()]
    similarity = np.array(
        [
            1.0 if flag else jaccard(u_sets[p], sets[r])
            for p, r, flag in zip(parent.tolist(), v_row.tolist(), same.tolist(), strict=True)
        ],
        dtype=np.float64,
    )
    return pa.table(
        {"u": pa.array(u), "v": pa.array(v), "jaccard": similarity, "duplicate": similarity >= threshold},
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


def _both_directions(batch: pa.Table) -> pa.Table:
    u, v = batch.column("u").combine_chunks(), batch.column("v").combine_chunks()
    return pa.table({"u": pa.concat_arrays([u, v]), "v": pa.concat_arrays([v, u])}, schema=_EDGE_SCHEMA)


def _neighbourhoods(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct edges without self-loops sorted by (u, v), each edge's node index, and each node's first edge."""
    keep = u != v
    u, v = u[keep], v[keep]
    order = np.lexsort((v, u))
    u, v = u[order], v[order]
    distinct = _runs(u, v)
    u, v = u[distinct], v[distinct]
    start = _runs(u) if len(u) else np.zeros(0, bool)
    return u, v, np.cumsum(start) - 1, np.flatnonzero(start)


def _large_star(group: pa.Table) -> pa.Table:
    """Node u with neighbours N: m = min(N + u); connect every larger neighbour v > u to m.

    `unstable` is 1 when u is not a local minimum yet has several neighbours: the graph is not
    yet a set of stars around their minima. A self-loop carries the flag when no edge is emitted.
    """
    u, v, node, first = _neighbourhoods(group.column("u").to_numpy(), group.column("v").to_numpy())
    if not len(u):
        return _STAR_SCHEMA.empty_table()
    nodes = u[first]
    degree = np.diff(np.append(first, len(u)))
    smallest = np.minimum(v[first], nodes)  # neighbours are sorted: the first is the smallest
    unstable = ((smallest != nodes) & (degree > 1)).astype(np.int64)
    larger = v > u
    lone = (unstable == 1) & (np.bincount(node[larger], minlength=len(nodes)) == 0)
    return pa.table(
        {
            "u": np.concatenate([v[larger], nodes[lone]]),
            "v": np.concatenate([smallest[node[larger]], nodes[lone]]),
            "unstable": np.concatenate([unstable[node[larger]], unstable[lone]]),
        },
        schema=_STAR_SCHEMA,
    )


def _drop_self_loops(batch: pa.Table) -> pa.Table:
    batch = batch.select(["u", "v"])
    return batch.filter(pc.not_equal(batch.column("u"), batch.column("v")))


def _orient_down(batch: pa.Table) -> pa.Table:
    """Each edge as (larger, smaller), self-loops dropped."""
    u, v = batch.column("u").to_numpy(), batch.column("v").to_numpy()
    keep = u != v
    u, v = u[keep], v[keep]
    return pa.table({"u": np.maximum(u, v), "v": np.minimum(u, v)}, schema=_EDGE_SCHEMA)


def _small_star(group: pa.Table) -> pa.Table:
    """Node u with smaller neighbours N: m = min(N + u); connect every node of N + u except m to m."""
    u, v, node, first = _neighbourhoods(group.column("u").to_numpy(), group.column("v").to_numpy())
    if not len(u):
        return _EDGE_SCHEMA.empty_table()
    smallest = v[first]
    others = v != smallest[node]
    return pa.table(
        {"u": np.concatenate([v[others], u[first]]), "v": np.concatenate([smallest[node[others]], smallest])},
        schema=_EDGE_SCHEMA,
    )


def connected_components(edges, shuffles: _Shuffles | ShuffleSizing) -> tuple[Any, int]:
    """(dataset of star edges (u, v=root of u's component), rounds) from an edge dataset (u, v) of uint64 nodes."""
    if isinstance(shuffles, ShuffleSizing):
        shuffles = _Shuffles(shuffles)
    rounds = 0
    edges = edges.materialize()
    edge_count = edges.count()
    while True:
        rounds += 1
        # both directions of every edge: twice the rows and bytes of the (materialized) edges
        star = shuffles.group(
            edges.map_batches(_both_directions, batch_format="pyarrow"),
            _part_by_hash,
            ("u",),
            _large_star,
            size=(2 * edge_count, 2 * 16 * edge_count),
        ).materialize()
        star_count = star.count()
        unstable = star.sum("unstable") if star_count else 0
        if not unstable or rounds >= MAX_COMPONENT_ROUNDS:
            if unstable:
                raise RuntimeError(f"connected components did not converge in {MAX_COMPONENT_ROUNDS} rounds")
            return star.map_batches(_drop_self_loops, batch_format="pyarrow"), rounds
        edges = shuffles.group(
            star.select_columns(["u", "v"]).map_batches(_orient_down, batch_format="pyarrow"),
            _part_by_hash,
            ("u",),
            _small_star,
            size=(star_count, 16 * star_count),
        ).materialize()
        edge_count = edges.count()


def _annotation_rows(batch: pa.Table) -> pa.Table:
    """(node, root) with positions -> (task, row, near_duplicate, cluster) for the node and for its root."""
    cluster = batch.column("v_cluster")
    return pa.table(
        {
            "task": pa.concat_arrays(
                [batch.column("u_task").combine_chunks(), batch.column("v_task").combine_chunks()]
            ),
            "row": pa.concat_arrays([batch.column("u_row").combine_chunks(), batch.column("v_row").combine_chunks()]),
            "near_duplicate": np.repeat([True, False], batch.num_rows),
            "cluster": pa.concat_arrays([cluster.combine_chunks(), cluster.combine_chunks()]),
        }
    )


def _write_task_annotations(group: pa.Table, directory: str) -> pa.Table:
    """One Parquet file per task: its rows in near-duplicate clusters, removed or representative."""
    task = int(group.column("task")[0].as_py())
    rows = group.column("row").to_numpy().astype(np.int64)
    order = np.lexsort((~group.column("near_duplicate").to_numpy(zero_copy_only=False), rows))
    rows = rows[order]
    first = _runs(rows)
    table = pa.table(
        {
            "row": pa.array(rows[first]),
            "near_duplicate": group.column("near_duplicate").take(order).filter(pa.array(first)),
            "cluster": group.column("cluster").take(order).filter(pa.array(first)),
        }
    )
    atomic_write_parquet(table, fs.join(directory, f"task-{task:06d}.parquet"))
    return pa.table({"task": [task], "rows": [table.num_rows]})


def dedup_input_bytes(work: str) -> int:
    """Bytes of the dedup stages' input files (keys and band rows) under `work`."""
    return sum(size for folder in ("keys", "bands") for size in fs.file_sizes(fs.join(work, folder)).values())


def run_dedup(
    work: str,
    exact: bool,
    minhash: MinhashConfig | None,
    partitions: int | ShuffleSizing | None = None,
    session: Session | None = None,
) -> dict[str, Any]:
    """Runs the enabled global stages over the per-task files under `work` (a path or URI); returns their statistics.

    `partitions`: a fixed partition count for every shuffle, or a `ShuffleSizing`; None sizes them
    from the data. `session`: where the job runs; its `dedup_here` decides whether the stages run
    on Ray Data or in this process (`executor/local.py`). Without one they run on the Ray this
    process has started.
    """
    input_bytes = dedup_input_bytes(work) if session is not None else 0
    here = session is not None and session.dedup_here(input_bytes)
    if not isinstance(partitions, ShuffleSizing):
        partition_bytes = DEFAULT_PARTITION_BYTES
        if session is not None:
            partitions = partitions or session.settings.shuffle_partitions
            partition_bytes = session.settings.shuffle_partition_bytes
        if here:
            cpus = 1
        elif session is not None:
            cpus = session.cpus
        else:
            import ray

            cpus = int(ray.cluster_resources().get("CPU", 1))
        partitions = ShuffleSizing(partitions=partitions, partition_bytes=partition_bytes, min_partitions=cpus)
    if here:
        logger.info("dedup stages in this process (input %.1f MB)", input_bytes / 2**20)
        threads = 1 if fs.is_local(work) else REMOTE_PART_THREADS
        from_items = functools.partial(LocalDataset.from_items, threads=threads)
    else:
        if session is not None:
            from loopcoder.pipelines.executor.tasks import configure_ray_data

            configure_ray_data(session.settings)
        from_items = _ray_from_items
    return DedupStages(str(work), exact, minhash, partitions, from_items).run()


class DedupStages:
    """The global stages, each a method named after the folder it writes under `work/dedup/` (module docstring).

    `run` calls the enabled ones in order through `_stage`, which skips a stage whose marker exists.
    """

    def __init__(
        self,
        work: str,
        remove_exact: bool,
        minhash: MinhashConfig | None,
        sizing: ShuffleSizing,
        from_items: Callable = _ray_from_items,
    ):
        self.from_items = from_items  # Ray Data's, or `LocalDataset`'s in this process
        self.work = work
        self.remove_exact = remove_exact
        self.minhash = minhash
        self.sizing = sizing
        self.shuffles = _Shuffles(sizing)
        self.dedup = fs.join(work, "dedup")
        self.ranks_dir = fs.join(self.dedup, "ranks")

    def run(self) -> dict[str, Any]:
        names: list[str] = []
        if self.remove_exact or self.minhash:
            names += ["ranks", "exact"]
        if self.minhash:
            names += ["edges", *(["verified"] if self.minhash.verify else []), "components", "annotations"]
        fs.make_dirs(self.dedup)
        return {name: _stage(fs.join(self.dedup, name), getattr(self, name)) for name in names}

    def ranks(self, out: str) -> dict[str, Any]:
        files = _parquet_files(fs.join(self.work, "keys"))
        histogram = np.zeros(_PREFIX_BINS, dtype=np.int64)
        if files:
            for batch in (
                self._read(files, ["licence_rank", "id"])
                .map_batches(_prefix_histogram, batch_format="pyarrow")
                .iter_batches(batch_format="numpy", batch_size=None)
            ):
                np.add.at(histogram, batch["bin"], batch["count"])
        total = int(histogram.sum())
        if not total:
            atomic_write_json(fs.join(out, "_offsets.json"), [0])
            return {"documents": 0}
        keys = self._read(files).materialize()
        count = min(self.sizing.for_bytes(keys.size_bytes()), total)
        before = np.cumsum(histogram) - histogram
        part_of_bin = np.minimum(before * count // total, count - 1)
        sizes = np.bincount(part_of_bin, weights=histogram, minlength=count).astype(np.int64)
        starts = (np.cumsum(sizes) - sizes).tolist()
        atomic_write_json(fs.join(out, "_offsets.json"), starts)
        ranked = self.shuffles.group(
            keys, _part_by_prefix, (part_of_bin,), _rank_partition, (starts, out), parts=count
        )
        ranked.materialize()
        return {"documents": total, "rank_partitions": count} | self.shuffles.stats()

    def exact(self, out: str) -> dict[str, Any]:
        files = _parquet_files(self.ranks_dir)
        if not files:
            return {"removed": 0, "copies": 0}
        rows = self._read(files, ["rank", "task", "row", "content_sha256", "minhash"])
        grouped = self.shuffles.group(rows, _part_by_hash, ("content_sha256",), _content_groups)
        written = self.shuffles.group(grouped, _part_by_value, ("task",), _write_task_ranks, (out,), parts=1)
        copies = sum(int(row["copies"]) for row in written.iter_rows())
        return {"removed": copies if self.remove_exact else 0, "copies": copies} | self.shuffles.stats()

    def edges(self, out: str) -> dict[str, Any]:
        band_files = _parquet_files(fs.join(self.work, "bands"))
        ranked_files = _parquet_files(fs.join(self.dedup, "exact"))
        copies = 0
        if ranked_files:
            copies = _write(self._per_file(ranked_files, _copy_edges, (self.minhash.verify,)), out)
        pairs = 0
        if band_files:
            bands = self._per_file(band_files, _representative_bands, (self.work,))
            grouped = self.shuffles.group(
                bands, _part_by_hash, ("band_hash",), _bucket_part, (self.minhash.bucket_window, self.minhash.verify)
            )
            pairs = _write(grouped, out)
        # a pair sharing several bands is written once per band (`verified` counts distinct pairs)
        return {"pair_rows": pairs + copies, "copy_pairs": copies} | self.shuffles.stats()

    def verified(self, out: str) -> dict[str, Any]:
        pairs = self._read(_parquet_files(fs.join(self.dedup, "edges")))
        if pairs is None:  # no bucket holds two documents
            return self._verified_stats(0, 0, [0] * 10)
        located = self._with_positions(self._with_positions(pairs, "u"), "v")
        ngram, threshold = self.minhash.ngram, self.minhash.threshold
        attached = self.shuffles.group(
            located, _part_by_value, ("u_task",), _attach_first_sets, (self.work, ngram), parts=1
        )
        verified = self.shuffles.group(
            attached, _part_by_value, ("task",), _verify_pairs, (self.work, ngram, threshold), parts=1
        )
        written = _write(verified, out)
        scored = self._read(_parquet_files(out))
        histogram, duplicates = [0] * 10, 0
        if scored is not None:
            for row in scored.map_batches(_jaccard_histogram, batch_format="pyarrow").iter_rows():
                histogram[int(row["bin"])] += int(row["count"])
                duplicates += int(row["duplicates"])
        return self._verified_stats(written, duplicates, histogram) | self.shuffles.stats()

    def components(self, out: str) -> dict[str, Any]:
        if self.minhash.verify:
            pairs = self._read(_parquet_files(fs.join(self.dedup, "verified")))
            edges = None if pairs is None else pairs.map_batches(_duplicate_edges, batch_format="pyarrow")
        else:
            edges = self._read(_parquet_files(fs.join(self.dedup, "edges")))
        if edges is None:
            return {"rounds": 0, "removed": 0}
        components, rounds = connected_components(edges, self.shuffles)
        return {"rounds": rounds, "removed": _write(components, out)} | self.shuffles.stats()

    def annotations(self, out: str) -> dict[str, Any]:
        files = _parquet_files(fs.join(self.dedup, "components"))
        if not files:
            return {"tasks": 0}
        located = self._with_positions(self._with_positions(self._read(files), "u"), "v", with_cluster=True)
        rows = located.map_batches(_annotation_rows, batch_format="pyarrow")
        written = self.shuffles.group(rows, _part_by_value, ("task",), _write_task_annotations, (out,), parts=1)
        return {"tasks": written.count()} | self.shuffles.stats()

    def _read(self, files: list[str], columns: list[str] | None = None):
        """A dataset over Parquet files, each read by a worker (None without files).

        Listing is done here rather than by `ray.data.read_parquet`, whose threaded path resolution
        races on the optional fsspec HTTP import when aiohttp is not installed.
        """
        return self._per_file(files, _load_files, (columns,)) if files else None

    def _per_file(self, files: list[str], function, args: tuple):
        """A dataset of `function({"path": [file]}, *args)` over files, one file per call."""
        items = [{"path": f} for f in files]
        return self.from_items(items, override_num_blocks=min(len(items), 64)).map_batches(
            function, fn_args=args, batch_format="numpy", batch_size=1
        )

    def _with_positions(self, ds, column: str, with_cluster: bool = False):
        """Rows of `ds` with the task and row of the document whose rank is in `column` (from the rank index)."""
        starts = fs.read_json(fs.join(self.ranks_dir, "_offsets.json"))
        return self.shuffles.group(
            ds,
            _part_by_rank,
            (column, starts),
            _attach_positions,
            (column, self.ranks_dir, starts, with_cluster),
            parts=len(starts),
        )

    def _verified_stats(self, candidates: int, duplicates: int, histogram: list[int]) -> dict[str, Any]:
        return {
            "threshold": self.minhash.threshold,
            "candidate_pairs": candidates,
            "duplicate_pairs": duplicates,
            "below_threshold": candidates - duplicates,
            "jaccard_histogram": {f"{b / 10:.1f}-{(b + 1) / 10:.1f}": n for b, n in enumerate(histogram)},
        }


@dataclass
class TaskAnnotations:
    """Per row of one task: removed as an exact copy, removed as a near duplicate, near-duplicate cluster (or null)."""

    exact_duplicate: np.ndarray
    near_duplicate: np.ndarray
    cluster: pa.Array


def read_annotations(work: str, task: int, num_rows: int, exact: bool = True) -> TaskAnnotations:
    """The dedup outcome of every row of one task, as arrays of `num_rows` (rows in no group: False, null)."""
    exact_duplicate = np.zeros(num_rows, dtype=bool)
    near_duplicate = np.zeros(num_rows, dtype=bool)
    cluster = np.zeros(num_rows, dtype=np.int64)
    clustered = np.zeros(num_rows, dtype=bool)
    ranked = fs.join(work, "dedup", "exact", f"task-{task:06d}.parquet")
    if exact and fs.exists(ranked):
        table = fs.read_parquet(ranked)
        copy = table.column("rank").to_numpy() != table.column("content_rep").to_numpy()
        exact_duplicate[table.column("row").to_numpy()[copy]] = True
    annotated = fs.join(work, "dedup", "annotations", f"task-{task:06d}.parquet")
    if fs.exists(annotated):
        table = fs.read_parquet(annotated)
        rows = table.column("row").to_numpy()
        near_duplicate[rows] = table.column("near_duplicate").to_numpy(zero_copy_only=False)
        cluster[rows] = table.column("cluster").to_numpy()
        clustered[rows] = True
    return TaskAnnotations(exact_duplicate, near_duplicate, pa.array(cluster, mask=~clustered))
