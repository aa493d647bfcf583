"""Packed shards in, micro-batches out: discovery and validation, a seeded row order, collation.

Every shard set (a directory of `packed_sequence` shards, `*.parquet` or `*.arrow`) becomes one
`ShardStream`: an endless sequence of its rows. Row `i` of a stream is found without reading the
others: epoch `e = i // N` (N rows in the set), the shards in an order permuted by `(seed, set, e)`,
and inside a shard its rows permuted by `(seed, set, e, shard)`. A stream keeps one decoded shard in
memory at a time, so a set of any size streams in the memory of its largest shard.

Positions are global counters (`stream name -> rows consumed`), identical on every rank: a batch
plan (see `plan.py`) says which stream indices form each global batch, and each data-parallel rank
reads only its share. The data position saved in a checkpoint is those counters.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import torch

from loopcoder.pipelines.io.filesystem import discover_shards as finished_shards
from loopcoder.schemas import PACKED_SEQUENCE
from loopcoder.schemas.base import SchemaError

logger = logging.getLogger(__name__)

SHARD_SUFFIXES = (".parquet", ".arrow")
COLUMNS = ["input_ids", "cu_seqlens", "loss_mask", "category", "num_documents"]


class ShardError(ValueError):
    """A shard set or shard cannot be trained on; the message names the file and the problem."""


@dataclass(frozen=True)
class Shard:
    path: Path
    num_rows: int


@dataclass
class Row:
    """One packed row and where it came from (for error reports)."""

    input_ids: np.ndarray  # [T] int
    cu_seqlens: np.ndarray  # [S + 1] int, S segments (documents, then maybe one padding segment)
    loss_mask: np.ndarray  # [T] int8
    category: str
    num_documents: int
    source: str  # "path#row"


def _open_arrow(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        try:
            return ipc.open_file(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            return ipc.open_stream(source).read_all()


def inspect_shard(path: Path) -> Shard:
    """Reads a shard's schema and row count (the Parquet footer only) and checks it is a `packed_sequence`."""
    try:
        if path.suffix == ".parquet":
            handle = pq.ParquetFile(path)
            schema, num_rows = handle.schema_arrow, handle.metadata.num_rows
        else:
            table = _open_arrow(path)
            schema, num_rows = table.schema, table.num_rows
    except (OSError, pa.ArrowException) as error:
        raise ShardError(f"corrupt shard {path}: {error}") from error
    try:
        PACKED_SEQUENCE.validate(schema)
    except SchemaError as error:
        raise ShardError(f"shard {path} is not a packed_sequence shard: {error}") from error
    return Shard(path, num_rows)


def discover_shards(name: str, directory: str | Path) -> list[Shard]:
    """Every shard under `directory` (sorted by path), each validated; raises ShardError before any training."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ShardError(f"shard set {name!r}: directory {directory} does not exist")
    # the pipelines' shard finder: a job's `_work/` and shards its markers do not list are not training data
    paths = [Path(p) for p in finished_shards(directory, suffixes=SHARD_SUFFIXES)]
    if not paths:
        raise ShardError(f"shard set {name!r}: no *.parquet or *.arrow shards under {directory}")
    shards = [inspect_shard(p) for p in paths]
    if not any(s.num_rows for s in shards):
        raise ShardError(f"shard set {name!r}: every shard under {directory} is empty")
    return [s for s in shards if s.num_rows]


def _seed(*parts: int | str) -> int:
    """A stable 64-bit seed from parts (Python's `hash` of a str changes from process to process)."""
    text = "\x00".join(str(p) for p in parts).encode()
    return (zlib.crc32(text) << 32) | zlib.crc32(text[::-1])


class _DecodedShard:
    """A shard's columns as flat numpy arrays plus offsets (no Python object per token)."""

    def __init__(self, shard: Shard):
        self.path = shard.path
        try:
            if shard.path.suffix == ".parquet":
                table = pq.read_table(shard.path, columns=COLUMNS)
            else:
                table = _open_arrow(shard.path).select(COLUMNS)
        except (OSError, pa.ArrowException) as error:
            raise ShardError(f"corrupt shard {shard.path}: {error}") from error
        if table.num_rows != shard.num_rows:
            raise ShardError(f"shard {shard.path} changed while training: {table.num_rows} rows, was {shard.num_rows}")
        self.lists = {}
        for column in ("input_ids", "cu_seqlens", "loss_mask"):
            array = table.column(column).combine_chunks()
            self.lists[column] = (array.values.to_numpy(zero_copy_only=False), array.offsets.to_numpy())
        self.category = table.column("category").to_pylist()
        self.num_documents = table.column("num_documents").to_numpy()

    def row(self, index: int) -> Row:
        parts = {}
        for column, (values, offsets) in self.lists.items():
            parts[column] = values[offsets[index] : offsets[index + 1]]
        row = Row(
            parts["input_ids"],
            parts["cu_seqlens"],
            parts["loss_mask"],
            self.category[index],
            int(self.num_documents[index]),
            f"{self.path}#{index}",
        )
        _check_row(row)
        return row


def _check_row(row: Row) -> None:
    length = len(row.input_ids)
    bounds = row.cu_seqlens
    if (
        length == 0
        or len(row.loss_mask) != length
        or len(bounds) < 2
        or bounds[0] != 0
        or bounds[-1] != length
        or np.any(np.diff(bounds) <= 0)
        or not 0 < row.num_documents <= len(bounds) - 1
    ):
        raise ShardError(
            f"malformed packed row {row.source}: {length} tokens, {len(row.loss_mask)} mask values, "
            f"cu_seqlens {bounds.tolist()[:8]}..., num_documents {row.num_documents}"
        )


class ShardStream:
    """The endless, seeded row order of one shard set; `row(i)` decodes at most one new shard."""

    def __init__(self, name: str, shards: list[Shard], seed: int):
        self.name = name
        self.shards = shards
        self.seed = seed
        self.num_rows = sum(s.num_rows for s in shards)
        self._epoch_order: tuple[int, np.ndarray, np.ndarray] | None = None
        self._decoded: tuple[int, _DecodedShard] | None = None
        self._row_order: tuple[int, int, np.ndarray] | None = None

    def locate(self, index: int) -> tuple[int, int]:
        """Stream index -> (shard number in `shards`, row in that shard)."""
        epoch, position = divmod(index, self.num_rows)
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            order = np.random.default_rng(_seed(self.seed, self.name, epoch)).permutation(len(self.shards))
            ends = np.cumsum([self.shards[i].num_rows for i in order])
            self._epoch_order = (epoch, order, ends)
        _, order, ends = self._epoch_order
        slot = int(np.searchsorted(ends, position, side="right"))
        shard_number = int(order[slot])
        offset = position - (int(ends[slot - 1]) if slot else 0)
        key = (epoch, shard_number)
        if self._row_order is None or self._row_order[:2] != key:
            rows = self.shards[shard_number].num_rows
            permutation = np.random.default_rng(_seed(self.seed, self.name, epoch, shard_number)).permutation(rows)
            self._row_order = (*key, permutation)
        return shard_number, int(self._row_order[2][offset])

    def row(self, index: int) -> Row:
        shard_number, row = self.locate(index)
        if self._decoded is None or self._decoded[0] != shard_number:
            self._decoded = None  # free the previous shard before decoding the next
            self._decoded = (shard_number, _DecodedShard(self.shards[shard_number]))
        return self._decoded[1].row(row)


@dataclass
class MicroBatch:
    """Model inputs of a few packed rows, padded to one length `T`.

    `position_ids` restart at 0 at every document (and padding segment), which is how the model
    finds the boundaries: attention and the cross-loop history never cross them.
    """

    input_ids: torch.Tensor  # [B, T] long
    position_ids: torch.Tensor  # [B, T] long
    targets: torch.Tensor  # [B, T] long, the next token
    weights: torch.Tensor  # [B, T] float, 1 where targets[t] is trained on
    real: torch.Tensor  # [B, T] bool, token inside a document (not padding)
    categories: list[str]
    sources: list[str]

    @property
    def num_loss_tokens(self) -> int:
        return int(self.weights.sum().item())


def collate(rows: list[Row], mode: str, pad_id: int = 0) -> MicroBatch:
    """Rows -> a `MicroBatch`. The target of token t is token t + 1 of the same document, trained on when the
    row's loss mask is 1 there (`mode="sft"`) or always (`mode="pretrain"`); a document's first token is never a
    target, so no loss crosses a boundary, and padding is never trained on."""
    length = max(len(r.input_ids) for r in rows)
    batch = len(rows)
    input_ids = np.full((batch, length), pad_id, dtype=np.int64)
    position_ids = np.zeros((batch, length), dtype=np.int64)
    trainable = np.zeros((batch, length), dtype=bool)  # token t may be predicted
    real = np.zeros((batch, length), dtype=bool)
    for b, row in enumerate(rows):
        n = len(row.input_ids)
        input_ids[b, :n] = row.input_ids
        bounds = row.cu_seqlens
        starts = np.repeat(bounds[:-1], np.diff(bounds))
        position_ids[b, :n] = np.arange(n) - starts
        if n < length:
            position_ids[b, n:] = np.arange(length - n)
        document_end = int(bounds[row.num_documents])
        real[b, :document_end] = True
        inside = real[b].copy()
        inside[position_ids[b] == 0] = False  # a document's first token has nothing before it
        if mode == "sft":
            inside[:n] &= row.loss_mask.astype(bool)
        trainable[b] = inside
    weights = np.zeros((batch, length), dtype=np.float32)
    weights[:, :-1] = trainable[:, 1:]
    targets = np.zeros((batch, length), dtype=np.int64)
    targets[:, :-1] = input_ids[:, 1:]
    return MicroBatch(
        input_ids=torch.from_numpy(input_ids),
        position_ids=torch.from_numpy(position_ids),
        targets=torch.from_numpy(targets),
        weights=torch.from_numpy(weights),
        real=torch.from_numpy(real),
        categories=[r.category for r in rows],
        sources=[r.source for r in rows],
    )


__all__ = ["ShardError", "Shard", "Row", "ShardStream", "MicroBatch", "inspect_shard", "discover_shards", "collate"]
