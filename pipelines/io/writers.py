"""Shard writing: atomic Parquet files of one record schema, rolled over by row count.

A shard is written through `loopcoder.pipelines.io.filesystem` (a local temporary file renamed into
place, or one upload to an object store), so a crash never leaves a truncated `part-*.parquet`
behind: a reader sees a whole shard or none. The atomic writers are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from loopcoder.pipelines.io.filesystem import atomic_write_bytes, atomic_write_json, atomic_write_parquet, join
from loopcoder.schemas import RecordSchema

__all__ = ["ShardWriter", "atomic_write_bytes", "atomic_write_json", "atomic_write_parquet"]


class ShardWriter:
    """Buffers records of one schema and writes `part-00000.parquet`, `part-00001.parquet`, ...

    Every record is validated against the schema when its shard is built; `close()` writes the
    last partial shard and returns the locations written (local paths or URIs).
    """

    def __init__(self, directory: str | Path, schema: RecordSchema, rows_per_shard: int = 2000):
        if rows_per_shard <= 0:
            raise ValueError(f"rows_per_shard must be positive, got {rows_per_shard}")
        self.directory = str(directory)
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.paths: list[str] = []
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
        path = join(self.directory, f"part-{len(self.paths):05d}.parquet")
        atomic_write_parquet(table, path)
        self.paths.append(path)
        self.rows_written += len(self._buffer)
        self._buffer = []

    def close(self) -> list[str]:
        self._flush()
        return self.paths

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
