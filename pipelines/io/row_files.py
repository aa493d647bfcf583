"""Rows of the data files people hand to a job: JSON Lines (optionally gzipped), JSON, Parquet, Arrow.

One reader for conversation files (`samples/sft_data.py`) and problem sets (`postrain/grpo/public_sets.py`).
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ROW_FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".arrow")
PARQUET_BATCH_ROWS = 1024


def read_rows(path: str | Path, rejected: Counter | None = None) -> Iterator[Any]:
    """Rows of one file, by suffix (`ROW_FILE_SUFFIXES`).

    A JSON Lines line that is not JSON is counted as `not_json` in `rejected` and skipped; bytes that
    are not UTF-8 become U+FFFD rather than failing the file. A `.json` file is one document (a list
    of rows or one row) or, when it does not parse as one, JSON Lines. Arrow files may be IPC files or
    streams (what `datasets`' `save_to_disk` writes).
    """
    path = Path(path)
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz")):
        yield from _json_lines(path, rejected)
    elif name.endswith((".json", ".json.gz")):
        try:
            data = json.loads(_text(path))
        except json.JSONDecodeError:
            yield from _json_lines(path, rejected)
            return
        yield from data if isinstance(data, list) else [data]
    elif name.endswith(".parquet"):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
            yield from batch.to_pylist()
    elif name.endswith(".arrow"):
        with pa.memory_map(str(path)) as source:
            try:
                table = pa.ipc.open_file(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                table = pa.ipc.open_stream(source).read_all()
        yield from table.to_pylist()
    else:
        raise ValueError(f"{path}: unsupported file type (expected {', '.join(ROW_FILE_SUFFIXES)})")


def _opener(path: Path):
    return gzip.open if path.name.endswith(".gz") else open


def _text(path: Path) -> str:
    with _opener(path)(path, "rt", encoding="utf-8", errors="replace") as handle:
        return handle.read()


def _json_lines(path: Path, rejected: Counter | None) -> Iterator[Any]:
    with _opener(path)(path, "rt", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                if rejected is not None:
                    rejected["not_json"] += 1
