"""Stages in this process, for data too small to repay starting Ray: per-task stages and the dedup datasets.

A local Ray costs seconds before the first task runs (starting the head and its workers), and
Ray Data pays about a second per stage and more for the first shuffle of a session; a job over a
few megabytes, or the dedup stages over a few thousand documents, spends most of its time there.
`LocalDataset` is the part of Ray Data's `Dataset` API that `dedup/stages.py` calls
(`map_batches`, `groupby(...).map_groups`, `materialize`, `count`, `size_bytes`, `sum`,
`select_columns`, `iter_rows`, `iter_batches`), run eagerly on Arrow tables in this process, so
the stages run the same functions on the same parts with either. Ray Data offers no in-process
mode (its local mode was removed), so this is ours; `tests/pipelines/test_executor.py` checks
that both give the same files.

Rows within a group come in input order (Ray Data gives no order); every part function of the
dedup stages is order-free, which is what makes their output independent of partitioning. When the
dedup's work folder is on an object store, `REMOTE_PART_THREADS` parts run at once, since each
reads or writes a file or two at a few round trips each; on a local disk, one at a time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECONDS = 10.0


def _as_table(output: Any) -> pa.Table:
    if isinstance(output, pa.Table):
        return output
    if isinstance(output, dict):
        return pa.table({name: pa.array(values) for name, values in output.items()})
    raise TypeError(f"a batch function returned {type(output).__name__}; expected a pyarrow Table or a dict")


def _as_batch(table: pa.Table, batch_format: str) -> Any:
    if batch_format == "pyarrow":
        return table
    if batch_format == "numpy":
        return {
            name: column.to_numpy(zero_copy_only=False)
            for name, column in zip(table.column_names, table.columns, strict=True)
        }
    raise ValueError(f"batch_format must be 'pyarrow' or 'numpy', got '{batch_format}'")


# Parts at once when the work folder is on an object store: a part function reads or writes a file or two,
# a few round trips each, and pyarrow's I/O, Arrow's and numpy's work release the GIL. On a local disk there
# is no wait to hide, and each part in flight holds its files in memory, so parts run one at a time there.
REMOTE_PART_THREADS = 8


def _map_in_threads(call: Callable[[pa.Table], Any], pieces: list[pa.Table], threads: int) -> list[pa.Table]:
    """`call` on every piece, `threads` at a time; the outputs in input order."""
    if threads <= 1 or len(pieces) <= 1:
        return [_as_table(call(piece)) for piece in pieces]
    with ThreadPoolExecutor(min(threads, len(pieces)), thread_name_prefix="local-parts") as pool:
        return [_as_table(output) for output in pool.map(call, pieces)]


class LocalDataset:
    """Arrow blocks in this process with the Ray Data methods the dedup stages use, each run at once."""

    def __init__(self, blocks: list[pa.Table], threads: int = 1):
        self.blocks = [b for b in blocks if b.num_rows]
        self.threads = threads  # parts run at once by map_batches and map_groups

    @classmethod
    def from_items(
        cls, items: list[dict[str, Any]], override_num_blocks: int | None = None, threads: int = 1
    ) -> LocalDataset:
        return cls([pa.Table.from_pylist(items)] if items else [], threads)

    def map_batches(
        self,
        function: Callable,
        fn_args: tuple = (),
        batch_format: str = "pyarrow",
        batch_size: int | None = None,
    ) -> LocalDataset:
        pieces = []
        for block in self.blocks:
            step = batch_size or block.num_rows
            pieces += [block.slice(start, step) for start in range(0, block.num_rows, step)]
        outputs = _map_in_threads(
            lambda piece: function(_as_batch(piece, batch_format), *fn_args), pieces, self.threads
        )
        return LocalDataset(outputs, self.threads)

    def groupby(self, key: str, num_partitions: int | None = None) -> _LocalGroups:
        return _LocalGroups(self, key)

    def materialize(self) -> LocalDataset:
        return self

    def count(self) -> int:
        return sum(block.num_rows for block in self.blocks)

    def size_bytes(self) -> int:
        return sum(block.nbytes for block in self.blocks)

    def sum(self, column: str) -> Any:
        return sum(pc.sum(block.column(column)).as_py() or 0 for block in self.blocks)

    def select_columns(self, columns: list[str]) -> LocalDataset:
        return LocalDataset([block.select(columns) for block in self.blocks], self.threads)

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        for block in self.blocks:
            yield from block.to_pylist()

    def iter_batches(self, batch_format: str = "numpy", batch_size: int | None = None) -> Iterator[Any]:
        for block in self.blocks:
            yield _as_batch(block, batch_format)


class _LocalGroups:
    def __init__(self, dataset: LocalDataset, key: str):
        self.dataset = dataset
        self.key = key

    def map_groups(self, function: Callable, fn_args: tuple = (), batch_format: str = "pyarrow") -> LocalDataset:
        if not self.dataset.blocks:
            return LocalDataset([], self.dataset.threads)
        table = pa.concat_tables(self.dataset.blocks, promote_options="default")
        keys = table.column(self.key).to_numpy()
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        table = table.take(pa.array(order))
        starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        ends = np.append(starts[1:], len(keys))
        groups = [table.slice(start, end - start) for start, end in zip(starts.tolist(), ends.tolist(), strict=True)]
        outputs = _map_in_threads(
            lambda group: function(_as_batch(group, batch_format), *fn_args), groups, self.dataset.threads
        )
        return LocalDataset(outputs, self.dataset.threads)


class WarmWorker:
    """The one worker object a process keeps: rebuilt only when the class or its arguments change.

    A Ray worker process keeps one between tasks (`executor/tasks.py`), `TasksHere` one between
    stages; the previous worker is closed when another is built, so a process never holds two
    jobs' steps.
    """

    def __init__(self):
        self._key: str | None = None
        self._worker: Any = None

    def get(self, worker_class: type, arguments: tuple) -> Any:
        key = f"{worker_class.__module__}.{worker_class.__qualname__}:" + json.dumps(
            arguments, sort_keys=True, default=str
        )
        if key != self._key:
            self.close()
            self._worker, self._key = worker_class(*arguments), key
        return self._worker

    def close(self) -> None:
        close = getattr(self._worker, "close", None)
        if close is not None:
            close()
        self._worker = self._key = None


class TasksHere:
    """Per-task stages in this process, one task after another.

    The worker built for a stage is kept for the next stage with the same class and arguments
    (the samples job's stages share one, with its tokenizer), as a Ray worker process keeps its
    own (`executor/tasks.py`); `close` ends it with the session.
    """

    def __init__(self):
        self._worker = WarmWorker()

    def run(
        self, stage: str, worker_class: type, arguments: tuple, specs: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """`worker_class(*arguments).run(spec)` for every spec in order; the summaries in spec order."""
        if not specs:
            return []
        worker = self._worker.get(worker_class, arguments)
        summaries = []
        start = last_report = time.monotonic()
        for done, spec in enumerate(specs, 1):
            summaries.append(worker.run(spec))
            now = time.monotonic()
            if done == len(specs) or now - last_report >= PROGRESS_INTERVAL_SECONDS:
                logger.info("%s stage: %d of %d task(s) done (%.1f s)", stage, done, len(specs), now - start)
                last_report = now
        return summaries

    def close(self) -> None:
        self._worker.close()
