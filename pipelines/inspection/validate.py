"""Validating shards: readable Parquet, a known record schema at the right version, conforming data.

Every problem names the file and, where there is one, the column. Checks, per shard:

1. the footer reads (a truncated or non-Parquet file fails here);
2. the schema metadata names a known record type at the version this code reads;
3. columns and their types match that record schema, and non-nullable columns hold no null
   (from the row-group statistics when they are present, otherwise from the data);
4. unless `quick`, every data page is read and decoded, which catches corruption inside the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from loopcoder.pipelines.io.filesystem import discover_shards, parquet_file
from loopcoder.schemas import ALL_RECORD_SCHEMAS, SchemaError, schema_of


@dataclass(frozen=True)
class ShardProblem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def validate_shard(path: str | Path, expected_record: str | None = None, quick: bool = False) -> ShardProblem | None:
    """The first problem found in one shard (a local path or a URI), or None."""
    path = str(path)
    try:
        parquet = parquet_file(path)
    except (pa.ArrowInvalid, OSError) as error:
        return ShardProblem(path, f"not a readable Parquet file ({_first_line(error)}); truncated or corrupt?")
    identity = schema_of(parquet.schema_arrow)
    if identity is None:
        return ShardProblem(path, "no loopcoder record schema in its metadata (written outside the pipelines?)")
    name, _version = identity
    if expected_record is not None and name != expected_record:
        return ShardProblem(path, f"holds record type '{name}', expected '{expected_record}'")
    if name not in ALL_RECORD_SCHEMAS:
        return ShardProblem(path, f"unknown record type '{name}'; known: {', '.join(sorted(ALL_RECORD_SCHEMAS))}")
    record = ALL_RECORD_SCHEMAS[name]
    try:
        record.validate(parquet.schema_arrow)
    except SchemaError as error:
        return ShardProblem(path, str(error))
    problem = _check_nulls(path, parquet, record)
    if problem is not None or quick:
        return problem
    try:
        for _batch in parquet.iter_batches(batch_size=4096):
            pass
    except (pa.ArrowException, OSError) as error:
        return ShardProblem(path, f"data cannot be decoded ({_first_line(error)}); corrupt?")
    return None


def _check_nulls(path: str, parquet: pq.ParquetFile, record) -> ShardProblem | None:
    metadata = parquet.metadata
    top_level = {i: parquet.schema.column(i).path.split(".")[0] for i in range(metadata.num_columns)}
    required = {f.name for f in record.fields if not f.nullable}
    for group in range(metadata.num_row_groups):
        for column in range(metadata.num_columns):
            name = top_level[column]
            # only flat columns: in a list column a null element is not a null row
            if name not in required or parquet.schema.column(column).path != name:
                continue
            stats = metadata.row_group(group).column(column).statistics
            if stats is not None and stats.has_null_count and stats.null_count:
                return ShardProblem(
                    path, f"{record.name}: column '{name}' is not nullable but has {stats.null_count} null(s)"
                )
    return None


def validate_shards(path: str | Path, expected_record: str | None = None, quick: bool = False):
    """(shards checked, problems) for every shard under `path`."""
    shards = discover_shards(path)
    problems = [p for p in (validate_shard(s, expected_record, quick) for s in shards) if p is not None]
    return shards, problems


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
