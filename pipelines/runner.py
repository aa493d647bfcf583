"""Running a job on Ray Data: plan, documents stage, dedup stages, write stage, stats.

    loopcoder data run jobs/data/clean_dedup.yaml                       # local Ray, sized to the machine
    RAY_ADDRESS=ray://head:10001 loopcoder data run jobs/data/clean_dedup.yaml   # an existing cluster
    ray job submit --working-dir . -- loopcoder data run jobs/data/clean_dedup.yaml

Stages (datatrove-style: files between stages, markers written last, a rerun skips marked work):

1. plan: inputs -> numbered tasks (`_work/plan.json`), fixed for the life of the output folder;
2. documents: per task, read -> decode -> per-document steps; writes the task's rows with every
   decision (`_work/documents/task-N.parquet`), its exact-dedup keys and LSH band rows, its step
   statistics, then `task-N.done`;
3. dedup: the global stages of `loopcoder.pipelines.dedup` (exact, edges, components, annotations);
4. write: per task, the kept rows as zstd Parquet shards `files/part-N-of-M.parquet` (rolled over at
   `writer.max_shard_bytes`), rejected rows with their reason in `rejected/`, then
   `stats/task-N.json`, then `markers/task-N.done` naming the shards (only then do they count);
5. `stats.json` (everything merged) and `_SUCCESS`.

The output, the inputs and `_work/` may be local paths or object-store URIs: every read and write
goes through `loopcoder.pipelines.filesystem`, and nothing relies on rename being atomic.

Each per-task stage is one Ray Data `map_batches` over the pending task numbers with an actor
per worker (steps, parsers and permutations built once per actor). Ray restarts a killed actor
and retries its task; a task writes only under deterministic names, atomically, so a retry or a
rerun after a crash produces the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np

from loopcoder.schemas import FILTERED_FILE

from . import filesystem as fs
from .dedup import EXACT_DUPLICATE, NEAR_DUPLICATE, rank_key, read_annotations, run_dedup
from .filesystem import atomic_write_json, atomic_write_parquet
from .job import GLOBAL_STEPS, JobConfig, JobFailed, RayConfig
from .minhash import MinhashSignatures, tokens
from .readers import plan_tasks, read_task
from .stats import StepStats, merge_stats, shard_stats

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
    """A Ray Data actor running one stage (`documents` or `write`) for a batch of task numbers."""

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

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        run = self.run_documents if self.stage == "documents" else self.run_write
        summaries = [json.dumps(run(json.loads(spec))) for spec in batch["spec"]]
        return {"task": batch["task"], "summary": np.array(summaries, dtype=object)}

    def run_documents(self, task: dict[str, Any]) -> dict[str, Any]:
        number = task["task"]
        base = fs.join(self.work, "documents", f"task-{number:06d}")
        if fs.exists(base + ".done"):
            return fs.read_json(base + ".json")
        _inject_worker_fault(number)
        for step in self.steps:
            step.stats = StepStats(step.name)
        records, keys, bands = [], [], []
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
                key = rank_key(doc["license"], doc["id"], number, row)
                keys.append((record["content_sha256"], key))
                if self.signer is not None:
                    token_list = tokens(content)
                    if len(token_list) >= self.signer.config.min_tokens:
                        hashes = self.signer.band_hashes(self.signer.signature_from_tokens(token_list))
                        content_hash = int(record["content_sha256"][:16], 16)
                        bands.extend((band, value, content_hash, key) for band, value in enumerate(hashes.tolist()))
        import pyarrow as pa

        if keys:
            table = pa.table({"content_sha256": [k[0] for k in keys], "key": [k[1] for k in keys]})
            atomic_write_parquet(table, fs.join(self.work, "keys", f"task-{number:06d}.parquet"))
        if bands:
            table = pa.table(
                {
                    "band": pa.array([b[0] for b in bands], pa.int32()),
                    "band_hash": pa.array([b[1] for b in bands], pa.uint64()),
                    "content_hash": pa.array([b[2] for b in bands], pa.uint64()),
                    "key": pa.array([b[3] for b in bands], pa.string()),
                }
            )
            atomic_write_parquet(table, fs.join(self.work, "bands", f"task-{number:06d}.parquet"))
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
        rows = fs.read_parquet(fs.join(self.work, "documents", f"task-{number:06d}.parquet")).to_pylist()
        global_steps = [name for name in self.job.step_names() if name in GLOBAL_STEPS]
        annotations = read_annotations(self.work, number) if global_steps else {}
        step_stats = {name: StepStats(name) for name in global_steps}
        for index, row in enumerate(rows):
            if not row["kept"]:
                continue
            reason, cluster = annotations.get(index, (None, None))
            row["near_dup_cluster"] = cluster
            for name in global_steps:
                expected = EXACT_DUPLICATE if name == "exact_dedup" else NEAR_DUPLICATE
                step_reason = reason if reason == expected else None
                step_stats[name].record(row["size_bytes"], step_reason)
                row["decisions"].append({"step": name, "kept": step_reason is None, "reason": step_reason})
                if step_reason is not None:
                    row["kept"], row["rejection_reason"] = False, step_reason
                    break
        kept = [r for r in rows if r["kept"]]
        rejected = [r for r in rows if not r["kept"]]
        shards = {}
        for folder, part in (("files", kept), ("rejected", rejected if self.job.writer.write_rejected else [])):
            for name, piece in self._pieces(number, part):
                shard = fs.join(self.output, folder, name)
                atomic_write_parquet(FILTERED_FILE.from_records(piece), shard, self.job.writer.compression)
                shards[f"{folder}/{name}"] = shard_stats(piece)
        by_reason: dict[str, int] = {}
        for r in rejected:
            by_reason[r["rejection_reason"]] = by_reason.get(r["rejection_reason"], 0) + 1
        summary = {
            "task": number,
            "steps": {name: s.to_dict() for name, s in step_stats.items()},
            "shards": shards,
            "rejected": {"rows": len(rejected), "by_reason": by_reason},
        }
        atomic_write_json(stats_path, summary)
        # the marker lists the task's shards: only now do readers and the shard tools count them
        fs.write_marker(self.output, f"task-{number:06d}", {"task": number}, shards=list(shards))
        return summary

    def _pieces(self, number: int, rows: list[dict]) -> Iterator[tuple[str, list[dict]]]:
        """Deterministic shard names; a new piece starts when content bytes would pass the cap."""
        piece: list[dict] = []
        size, index = 0, 0
        for row in rows:
            row_bytes = len(row["content"].encode("utf-8", "surrogatepass"))
            if piece and size + row_bytes > self.job.writer.max_shard_bytes:
                yield self._shard_name(number, index), piece
                piece, size, index = [], 0, index + 1
            piece.append(row)
            size += row_bytes
        if piece:
            yield self._shard_name(number, index), piece

    def _shard_name(self, number: int, piece: int) -> str:
        suffix = f"-{piece:02d}" if piece else ""
        return f"part-{number:05d}-of-{self.num_tasks:05d}{suffix}.parquet"


def _inject_worker_fault(task: int) -> None:
    """Fault injection for tests: `LOOPCODER_FAULT_KILL_TASK=N` and `LOOPCODER_FAULT_MARKER=path` make the
    worker process running task N die once (the marker records that it did), as a killed worker would."""
    if os.environ.get("LOOPCODER_FAULT_KILL_TASK") != str(task):
        return
    marker = Path(os.environ["LOOPCODER_FAULT_MARKER"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)


@contextmanager
def ray_session(settings: RayConfig):
    """Connects to the cluster named by RAY_ADDRESS, or starts local Ray sized to the machine (the `ray:` block)."""
    import ray
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = False
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        else:
            # address="local": a new instance for this job, never a cluster some other `ray start` left running
            ray.init(
                address="local",
                num_cpus=settings.num_cpus or os.cpu_count(),
                include_dashboard=False,
                log_to_driver=False,
            )
        started = True
    context = DataContext.get_current()
    context.default_hash_shuffle_parallelism = settings.shuffle_partitions
    strategies = {"sort": ShuffleStrategy.SORT_SHUFFLE_PULL_BASED, "hash": ShuffleStrategy.HASH_SHUFFLE}
    if settings.shuffle_strategy not in strategies:
        raise ValueError(
            f"ray.shuffle_strategy must be one of {', '.join(strategies)}, got '{settings.shuffle_strategy}'"
        )
    context.shuffle_strategy = strategies[settings.shuffle_strategy]
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _run_stage(stage: str, tasks: list[dict], job: JobConfig, output: str, num_tasks: int) -> None:
    import ray
    import ray.data

    if not tasks:
        return
    cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = max(1, min(len(tasks), job.ray.workers or cpus))
    items = [{"task": t["task"], "spec": json.dumps(t)} for t in tasks]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        TaskRunner,
        fn_constructor_args=(stage, job.to_dict(), output, num_tasks),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=1,
    )
    for _ in ds.iter_batches(batch_size=None):
        pass


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
        return fs.read_json(fs.join(output, "stats.json"))
    _clean_temporaries(output)
    work = fs.join(output, WORK)
    plan_path = fs.join(work, "plan.json")
    plan = fs.read_json_if_exists(plan_path)
    if plan is None:
        tasks, errors = plan_tasks(job.inputs, job.tasks.files_per_task, job.tasks.rows_per_task)
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
    with ray_session(job.ray):
        start = time.perf_counter()
        finished = set(fs.list_files(fs.join(work, "documents"), suffixes=(".done",)))
        pending = [t for t in tasks if f"task-{t['task']:06d}.done" not in finished]
        logger.info("documents stage: %d of %d task(s) to run", len(pending), num_tasks)
        _run_stage("documents", pending, job, output, num_tasks)
        timings["documents"] = time.perf_counter() - start
        start = time.perf_counter()
        dedup_stats = {}
        if "exact_dedup" in names or "minhash_dedup" in names:
            logger.info("dedup stages")
            dedup_stats = run_dedup(work, "exact_dedup" in names, job.minhash_config(), job.ray.shuffle_partitions)
        timings["dedup"] = time.perf_counter() - start
        start = time.perf_counter()
        finished = set(fs.list_files(fs.join(output, fs.MARKERS), suffixes=(fs.MARKER_SUFFIX,)))
        pending = [t for t in tasks if f"task-{t['task']:06d}{fs.MARKER_SUFFIX}" not in finished]
        logger.info("write stage: %d of %d task(s) to run", len(pending), num_tasks)
        _run_stage("write", pending, job, output, num_tasks)
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
    return stats


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
