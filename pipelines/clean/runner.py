"""Running a job on Ray Data: plan, documents stage, dedup stages, write stage, stats.

    loopcoder data run jobs/data/clean_dedup.yaml                       # local Ray, sized to the machine
    RAY_ADDRESS=ray://head:10001 loopcoder data run jobs/data/clean_dedup.yaml   # an existing cluster
    ray job submit --working-dir . -- loopcoder data run jobs/data/clean_dedup.yaml

Stages (datatrove-style: files between stages, markers written last, a rerun skips marked work):

1. plan: inputs -> numbered tasks (`_work/plan.json`), fixed for the life of the output folder;
2. documents: per task, read -> decode -> per-document steps; writes the task's rows with every
   decision (`_work/documents/task-N.parquet`), its exact-dedup keys and LSH band rows, its step
   statistics, then `task-N.done`;
3. dedup: the global stages of `loopcoder.pipelines.dedup.stages` (ranks, exact, edges, verified, components,
   annotations);
4. write: per task, the dedup outcome joined to the task's rows in Arrow (`apply_dedup`), the kept
   rows as zstd Parquet shards `files/part-N-of-M.parquet` (rolled over at
   `writer.max_shard_bytes`), rejected rows with their reason in `rejected/`, then
   `stats/task-N.json`, then `markers/task-N.done` naming the shards (only then do they count);
5. `stats.json` (everything merged) and `_SUCCESS`; then `_work/` is deleted unless `keep_work`.

The output, the inputs and `_work/` may be local paths or object-store URIs: every read and write
goes through `loopcoder.pipelines.io.filesystem`, and nothing relies on rename being atomic.

Each per-task stage runs its pending tasks as Ray tasks (`executor/tasks.py`): a worker process builds
the job's steps, parsers and permutations once and keeps them for its next task. Ray retries a
task whose process was killed; a task writes only under deterministic names, atomically, so a
retry or a rerun after a crash produces the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loopcoder.pipelines.clean.job import GLOBAL_STEPS, JobConfig, JobFailed
from loopcoder.pipelines.dedup.minhash import MinhashSignatures, tokens
from loopcoder.pipelines.dedup.stages import (
    EXACT_DUPLICATE,
    NEAR_DUPLICATE,
    read_annotations,
    run_dedup,
    write_task_dedup_inputs,
)
from loopcoder.pipelines.executor.stats import StepStats, merge_stats, shard_stats
from loopcoder.pipelines.executor.tasks import Session, job_session
from loopcoder.pipelines.io import filesystem as fs
from loopcoder.pipelines.io.filesystem import atomic_write_json, atomic_write_parquet
from loopcoder.pipelines.io.readers import plan_tasks, read_task
from loopcoder.schemas import FILTERED_FILE

logger = logging.getLogger(__name__)

WORK = "_work"
# Reasons whose content is not kept in the rejected side output (unreadable or not text).
CONTENT_DROPPED_REASONS = {"too_large", "binary", "not_utf8", "unreadable", "symlink", "bad_record", "empty"}
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)


def normalised_sha256(content: str) -> str:
    """Exact-dedup key: CRLF -> LF, trailing spaces and tabs stripped per line, case kept."""
    text = content.replace("\r\n", "\n")
    if " \n" in text or "\t\n" in text or text.endswith((" ", "\t")):
        text = _TRAILING_SPACE.sub("", text)
    return sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class TaskRunner:
    """The worker of one per-task stage (`documents` or `write`); one per Ray worker process (`executor/tasks.py`)."""

    def __init__(self, stage: str, job: dict[str, Any], output: str, num_tasks: int):
        self.stage = stage
        self.job = JobConfig.from_dict(job)
        self.output = output
        self.work = fs.join(output, WORK)
        self.num_tasks = num_tasks
        if stage == "documents":
            self.steps = self.job.build_steps()
            self.max_bytes = self.steps[0].max_bytes
            minhash = self.job.minhash_config()
            self.signer = MinhashSignatures(minhash) if minhash else None

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        return self.run_documents(task) if self.stage == "documents" else self.run_write(task)

    def close(self) -> None:
        for step in getattr(self, "steps", []):
            close = getattr(step, "close", None)
            if close is not None:
                close()

    def run_documents(self, task: dict[str, Any]) -> dict[str, Any]:
        number = task["task"]
        base = fs.join(self.work, "documents", f"task-{number:06d}")
        if fs.exists(base + ".done"):
            return fs.read_json(base + ".json")
        _inject_worker_fault(number)
        for step in self.steps:
            step.stats = StepStats(step.name)
        records: list[dict[str, Any]] = []
        dedup_inputs: tuple[list, ...] = ([], [], [], [], [])  # rows, licences, ids, hashes, band hashes
        spec = self.job.inputs[task["input"]]
        for row, doc in enumerate(read_task(task, spec, self.max_bytes)):
            doc["decisions"], doc["ast_status"] = [], None
            reason = None
            for step in self.steps:
                reason = step.run(doc)
                if reason is not None:
                    break
            content = doc.get("content") or ""
            if reason in CONTENT_DROPPED_REASONS:
                content = ""
            record = {
                "id": doc["id"],
                "repo": doc["repo"],
                "path": doc["path"],
                "language": doc["language"],
                "content": content,
                "size_bytes": doc["size_bytes"],
                "license": doc["license"],
                "revision": doc["revision"],
                "kept": reason is None,
                "rejection_reason": reason,
                "decisions": doc["decisions"],
                "content_sha256": normalised_sha256(content),
                "near_dup_cluster": None,
                "ast_status": doc["ast_status"],
                "quality_scores": doc.get("quality_scores"),
            }
            records.append(record)
            if reason is None:
                band_hashes = None
                if self.signer is not None:
                    token_list = tokens(content)
                    if len(token_list) >= self.signer.config.min_tokens:
                        band_hashes = self.signer.band_hashes(self.signer.signature_from_tokens(token_list))
                for column, value in zip(
                    dedup_inputs, (row, doc["license"], doc["id"], record["content_sha256"], band_hashes), strict=True
                ):
                    column.append(value)
        if dedup_inputs[0]:
            write_task_dedup_inputs(self.work, number, *dedup_inputs)
        atomic_write_parquet(FILTERED_FILE.from_records(records), base + ".parquet")
        summary = {"task": number, "rows": len(records), "steps": {s.name: s.stats.to_dict() for s in self.steps}}
        atomic_write_json(base + ".json", summary)
        atomic_write_json(base + ".done", {"task": number})
        return summary

    def run_write(self, task: dict[str, Any]) -> dict[str, Any]:
        number = task["task"]
        stats_path = fs.join(self.output, "stats", f"task-{number:06d}.json")
        if fs.read_marker(self.output, f"task-{number:06d}") is not None:
            return fs.read_json(stats_path)
        table = fs.read_parquet(fs.join(self.work, "documents", f"task-{number:06d}.parquet"))
        global_steps = [name for name in self.job.step_names() if name in GLOBAL_STEPS]
        table, step_stats = apply_dedup(table, self.work, number, global_steps)
        kept_mask = table.column("kept")
        kept = table.filter(kept_mask)
        rejected = table.filter(pc.invert(kept_mask))
        shards = {}
        for folder, part in (("files", kept), ("rejected", rejected if self.job.writer.write_rejected else None)):
            if part is None:
                continue
            for name, piece in self._pieces(number, part):
                shard = fs.join(self.output, folder, name)
                atomic_write_parquet(FILTERED_FILE.attach(piece), shard, self.job.writer.compression)
                shards[f"{folder}/{name}"] = shard_stats(piece)
        reasons = pc.value_counts(rejected.column("rejection_reason")).to_pylist() if rejected.num_rows else []
        summary = {
            "task": number,
            "steps": {name: s.to_dict() for name, s in step_stats.items()},
            "shards": shards,
            "rejected": {"rows": rejected.num_rows, "by_reason": {r["values"]: r["counts"] for r in reasons}},
        }
        atomic_write_json(stats_path, summary)
        # the marker lists the task's shards: only now do readers and the shard tools count them
        fs.write_marker(self.output, f"task-{number:06d}", {"task": number}, shards=list(shards))
        return summary

    def _pieces(self, number: int, table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
        """Deterministic shard names; a new piece starts when content bytes would pass the cap."""
        sizes = pc.binary_length(table.column("content")).to_numpy(zero_copy_only=False).astype(np.int64)
        cap = self.job.writer.max_shard_bytes
        starts = [0]
        if sizes.sum() > cap:  # greedy roll-over, only walked when the task's output exceeds one shard
            size = 0
            for index, row_bytes in enumerate(sizes.tolist()):
                if index > starts[-1] and size + row_bytes > cap:
                    starts.append(index)
                    size = 0
                size += row_bytes
        ends = [*starts[1:], table.num_rows]
        for piece, (start, end) in enumerate(zip(starts, ends, strict=True)):
            if end > start:
                yield self._shard_name(number, piece), table.slice(start, end - start)

    def _shard_name(self, number: int, piece: int) -> str:
        suffix = f"-{piece:02d}" if piece else ""
        return f"part-{number:05d}-of-{self.num_tasks:05d}{suffix}.parquet"


def apply_dedup(
    table: pa.Table, work: str, task: int, global_steps: list[str]
) -> tuple[pa.Table, dict[str, StepStats]]:
    """One task's documents with the dedup outcome joined in as columns, and each global step's statistics.

    Every row kept by the per-document steps goes through the global steps in order (`exact_dedup`
    then `minhash_dedup`); a removed row stops there. `kept`, `rejection_reason`, `decisions` and
    `near_dup_cluster` are rebuilt from boolean masks and Arrow kernels, with no Python object per row.
    """
    step_stats = {name: StepStats(name) for name in global_steps}
    if not global_steps:
        return table, step_stats
    notes = read_annotations(work, task, table.num_rows, exact="exact_dedup" in global_steps)
    passed = table.column("kept").to_numpy(zero_copy_only=False)
    active = passed.copy()
    sizes = table.column("size_bytes").to_numpy(zero_copy_only=False).astype(np.int64)
    rejection = table.column("rejection_reason").combine_chunks()
    outcomes = []
    for name in global_steps:
        reason = EXACT_DUPLICATE if name == "exact_dedup" else NEAR_DUPLICATE
        removed = active & (notes.exact_duplicate if name == "exact_dedup" else notes.near_duplicate)
        _record_masks(step_stats[name], sizes, active, removed, reason)
        outcomes.append((name, reason, active.copy(), removed))
        rejection = pc.if_else(pa.array(removed), pa.scalar(reason), rejection)
        active &= ~removed
    cluster = pc.if_else(pa.array(passed), notes.cluster, pa.nulls(table.num_rows, pa.int64()))
    decisions = _append_decisions(table.column("decisions").combine_chunks(), outcomes)
    for name, column in (
        ("kept", pa.array(active)),
        ("rejection_reason", rejection),
        ("decisions", decisions),
        ("near_dup_cluster", cluster),
    ):
        index = table.schema.get_field_index(name)
        table = table.set_column(index, table.schema.field(index), column)
    return table, step_stats


def _record_masks(stats: StepStats, sizes: np.ndarray, recorded: np.ndarray, removed: np.ndarray, reason: str) -> None:
    """`StepStats.record` for every row of `recorded` at once."""
    kept = recorded & ~removed
    stats.docs_in, stats.bytes_in = int(recorded.sum()), int(sizes[recorded].sum())
    stats.kept, stats.bytes_kept = int(kept.sum()), int(sizes[kept].sum())
    if removed.any():
        stats.dropped[reason], stats.dropped_bytes[reason] = int(removed.sum()), int(sizes[removed].sum())


def _append_decisions(
    decisions: pa.ListArray, outcomes: list[tuple[str, str, np.ndarray, np.ndarray]]
) -> pa.ListArray:
    """Appends `{step, kept, reason}` to the decision list of every row a global step saw, in step order."""
    rows = len(decisions)
    old_offsets = decisions.offsets.to_numpy().astype(np.int64)
    old_lengths = np.diff(old_offsets)
    added = sum(recorded.astype(np.int64) for _, _, recorded, _ in outcomes)
    offsets = np.zeros(rows + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(old_lengths + added)
    take = np.empty(offsets[-1], dtype=np.int64)
    owner = np.repeat(np.arange(rows), old_lengths)
    old = np.arange(old_offsets[0], old_offsets[-1])
    take[offsets[owner] + old - old_offsets[owner]] = old
    cursor = offsets[:-1] + old_lengths
    values, base = [decisions.values], len(decisions.values)
    for name, reason, recorded, removed in outcomes:
        seen = np.flatnonzero(recorded)
        take[cursor[seen]] = base + np.arange(len(seen))
        cursor = cursor + recorded
        dropped = pa.array(removed[seen])
        values.append(
            pa.StructArray.from_arrays(
                [
                    pa.repeat(pa.scalar(name), len(seen)),
                    pc.invert(dropped),
                    pc.if_else(dropped, pa.scalar(reason), pa.scalar(None, pa.string())),
                ],
                fields=list(decisions.type.value_type),
            )
        )
        base += len(seen)
    entries = pa.concat_arrays(values).take(pa.array(take))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), entries, type=decisions.type)


def _inject_worker_fault(task: int) -> None:
    """Fault injection for tests: `LOOPCODER_FAULT_KILL_TASK=N` and `LOOPCODER_FAULT_MARKER=path` make the
    worker process running task N die once (the marker records that it did), as a killed worker would."""
    if os.environ.get("LOOPCODER_FAULT_KILL_TASK") != str(task):
        return
    marker = Path(os.environ["LOOPCODER_FAULT_MARKER"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)


def _run_stage(session: Session, stage: str, tasks: list[dict], job: JobConfig, output: str, num_tasks: int) -> None:
    session.run_tasks(stage, TaskRunner, (stage, job.to_dict(), output, num_tasks), tasks)


def planned_bytes_at_most(job: JobConfig, tasks: list[dict[str, Any]], limit: int) -> bool:
    """Whether the planned tasks read at most `limit` bytes; stops looking once past it (a large input costs little)."""
    total = 0
    for task in tasks:
        total += _task_bytes(job.inputs[task["input"]], task)
        if total > limit:
            return False
    return True


def _task_bytes(spec: dict[str, Any], task: dict[str, Any]) -> int:
    if "sizes" in task:  # an object-store folder: sizes from its listing
        return sum(task["sizes"])
    if "blobs" in task:  # a git revision: sizes from `git ls-tree --long`
        return sum(blob[2] for blob in task["blobs"])
    if "files" in task:
        root = Path(spec["path"])
        return sum((root / relative).lstat().st_size for relative in task["files"])
    if "bytes" in task:  # a byte range of a JSONL file
        return task["bytes"][1] - task["bytes"][0]
    if "row_groups" in task:
        metadata = fs.parquet_file(task["path"]).metadata
        return sum(metadata.row_group(i).total_byte_size for i in range(*task["row_groups"]))
    return fs.size(task["path"]) or 0


def _clean_temporaries(output: str) -> None:
    """Temporary files of local writes interrupted by a crash (never read: they start with a dot).

    Object stores have none: an interrupted upload leaves no object.
    """
    if fs.is_local(output):
        for path in Path(output).rglob(".*.tmp"):
            path.unlink(missing_ok=True)


def check_locations(job: JobConfig, output: str) -> None:
    """Refuses, before any work, an input or output whose scheme no installed file system serves."""
    fs.check_location(output, "output")
    for index, spec in enumerate(job.inputs):
        if "path" in spec:
            fs.check_location(str(spec["path"]), f"input {index}")


def run_job(job: JobConfig, output: str | Path | None = None) -> dict[str, Any]:
    """Runs (or resumes) `job` into `output` (a local path or a URI); returns the statistics in `stats.json`.

    Raises JobFailed when every input fails, when the inputs list nothing, or when documents were
    read and none was kept; `stats.json` is still written in the last case, `_SUCCESS` is not.
    """
    output = fs.absolute(output or job.output)
    check_locations(job, output)
    fs.make_dirs(output)
    resolved = job.to_dict() | {"output": output, "fingerprint": job.fingerprint()}
    config_path = fs.join(output, "config.json")
    previous = fs.read_json_if_exists(config_path)
    if previous is not None and previous.get("fingerprint") != job.fingerprint():
        raise ValueError(
            f"{output} holds the output of a different config (fingerprint {previous.get('fingerprint')}, "
            f"this config {job.fingerprint()}); choose another output or delete it"
        )
    atomic_write_json(config_path, resolved)
    if fs.exists(fs.join(output, "_SUCCESS")):
        _remove_work(job, output)  # a crash may have come between `_SUCCESS` and the removal
        return fs.read_json(fs.join(output, "stats.json"))
    _clean_temporaries(output)
    work = fs.join(output, WORK)
    plan_path = fs.join(work, "plan.json")
    plan = fs.read_json_if_exists(plan_path)
    if plan is None:
        tasks, errors = plan_tasks(
            job.inputs, job.tasks.files_per_task, job.tasks.rows_per_task, job.tasks.bytes_per_task
        )
        if not tasks:
            # not saved as the plan: a rerun after the inputs are fixed plans again
            if errors:
                raise JobFailed(f"job {job.name}: every input failed, nothing was processed: {_one_line(errors)}")
            raise JobFailed(f"job {job.name}: the inputs list no file to process ({_input_paths(job)})")
        plan = {"tasks": tasks, "input_errors": errors}
        atomic_write_json(plan_path, plan)
    for name, error in plan["input_errors"].items():
        logger.error("input %s could not be read: %s", name, error)
    tasks, num_tasks = plan["tasks"], len(plan["tasks"])
    timings: dict[str, float] = {}
    names = job.step_names()
    with job_session(job.ray, lambda limit: planned_bytes_at_most(job, tasks, limit)) as session:
        start = time.perf_counter()
        finished = set(fs.list_files(fs.join(work, "documents"), suffixes=(".done",)))
        pending = [t for t in tasks if f"task-{t['task']:06d}.done" not in finished]
        logger.info("documents stage: %d of %d task(s) to run", len(pending), num_tasks)
        _run_stage(session, "documents", pending, job, output, num_tasks)
        timings["documents"] = time.perf_counter() - start
        start = time.perf_counter()
        dedup_stats = {}
        if "exact_dedup" in names or "minhash_dedup" in names:
            logger.info("dedup stages")
            dedup_stats = run_dedup(work, "exact_dedup" in names, job.minhash_config(), session=session)
        timings["dedup"] = time.perf_counter() - start
        start = time.perf_counter()
        finished = set(fs.list_files(fs.join(output, fs.MARKERS), suffixes=(fs.MARKER_SUFFIX,)))
        pending = [t for t in tasks if f"task-{t['task']:06d}{fs.MARKER_SUFFIX}" not in finished]
        logger.info("write stage: %d of %d task(s) to run", len(pending), num_tasks)
        _run_stage(session, "write", pending, job, output, num_tasks)
        timings["write"] = time.perf_counter() - start
    stats = merge_job_stats(job, output, num_tasks, plan["input_errors"], dedup_stats, timings)
    atomic_write_json(fs.join(output, "stats.json"), stats)
    documents = stats["steps"][0].get("docs_in", 0) if stats["steps"] else 0
    if documents and not stats["output"].get("rows"):
        reasons = ", ".join(
            f"{reason} {count}" for reason, count in sorted(stats["rejected"].get("by_reason", {}).items())
        )
        raise JobFailed(
            f"job {job.name}: {documents} document(s) read and none kept (rejected: {reasons or 'none'}); "
            f"see {fs.join(output, 'stats.json')}"
        )
    atomic_write_json(fs.join(output, "_SUCCESS"), {"job": job.name, "fingerprint": job.fingerprint()})
    _remove_work(job, output)
    return stats


def _remove_work(job: JobConfig, output: str) -> None:
    """Deletes `_work/` (a copy of the whole corpus and the dedup index) once the job succeeded, unless `keep_work`."""
    if not job.keep_work:
        fs.delete_tree(fs.join(output, WORK))


def _one_line(errors: dict[str, str]) -> str:
    return "; ".join(f"input {name}: {' '.join(str(error).split())}" for name, error in errors.items())


def _input_paths(job: JobConfig) -> str:
    return ", ".join(str(spec.get("path")) for spec in job.inputs)


def merge_job_stats(job, output, num_tasks, input_errors, dedup_stats, timings) -> dict[str, Any]:
    """One JSON for the job: steps in order, output shards, rejections, dedup and timings."""
    document_parts, write_parts = [], []
    for number in range(num_tasks):
        document_parts.append(fs.read_json(fs.join(output, WORK, "documents", f"task-{number:06d}.json")))
        write_parts.append(fs.read_json(fs.join(output, "stats", f"task-{number:06d}.json")))
    step_totals = merge_stats([p["steps"] for p in document_parts] + [p["steps"] for p in write_parts])
    shards = {name: s for part in write_parts for name, s in part["shards"].items()}
    return {
        "job": job.name,
        "fingerprint": job.fingerprint(),
        "tasks": num_tasks,
        "input_errors": input_errors,
        "steps": [{"step": name} | step_totals.get(name, {}) for name in job.step_names()],
        "output": merge_stats(s for name, s in shards.items() if name.startswith("files/")),
        "rejected": merge_stats(p["rejected"] for p in write_parts),
        "shards": dict(sorted(shards.items())),
        "dedup": dedup_stats,
        "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
    }
