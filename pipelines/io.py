"""Shard writing: atomic Parquet files of one record schema, rolled over by row count.

A shard is written to a temporary file in the same directory and renamed into place, so a
crash never leaves a truncated `part-*.parquet` behind: a reader sees a whole shard or none.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from loopcoder.schemas import RecordSchema


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_write_parquet(table: pa.Table, path: Path, compression: str = "zstd") -> None:
    """Writes one Parquet shard atomically (temporary file in the same directory, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression=compression)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ShardWriter:
    """Buffers records of one schema and writes `part-00000.parquet`, `part-00001.parquet`, ...

    Every record is validated against the schema when its shard is built; `close()` writes the
    last partial shard and returns the paths written.
    """

    def __init__(self, directory: Path, schema: RecordSchema, rows_per_shard: int = 2000):
        if rows_per_shard <= 0:
            raise ValueError(f"rows_per_shard must be positive, got {rows_per_shard}")
        self.directory = Path(directory)
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.paths: list[Path] = []
        self.rows_written = 0
        self._buffer: list[Mapping[str, Any]] = []

    def write(self, record: Mapping[str, Any]) -> None:
        self._buffer.append(record)
        if len(self._buffer) >= self.rows_per_shard:
            self._flush()

    def write_all(self, records: Iterable[Mapping[str, Any]]) -> None:
        for record in records:
            self.write(record)

    def _flush(self) -> None:
        if not self._buffer:
            return
        table = self.schema.from_records(self._buffer)
        path = self.directory / f"part-{len(self.paths):05d}.parquet"
        atomic_write_parquet(table, path)
        self.paths.append(path)
        self.rows_written += len(self._buffer)
        self._buffer = []

    def close(self) -> list[Path]:
        self._flush()
        return self.paths

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
