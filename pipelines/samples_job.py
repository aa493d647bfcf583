"""The samples job: cleaned code -> FIM, repository-level FIM, commit triplets, SFT -> mixture -> packed shards.

    loopcoder data samples jobs/data/samples.yaml [--output DIR]

Stages (files between stages, markers written last, a rerun skips finished work):

1. `files`: one Ray Data task per input shard (actors hold the FIM splitter's parsers and the
   tokenizer): each kept file becomes a FIM sample (`fim/part-N.parquet`) or stays left-to-right,
   and is tokenised into `_work/documents/files-N.parquet`; then `markers/files-N.done`;
2. `repo_fim`: the kept files grouped by repository (a Ray Data groupby), one repository-level
   FIM builder per group, written sorted by id to `repo_fim/part-00000.parquet` and tokenised;
3. `commits`: commit triplets of each configured git repository (`commits/part-00000.parquet`);
4. `sft`: conversations from JSONL files (`sft/part-00000.parquet`), assistant-only loss;
5. `pack`: the mixture selects documents per category to its token budgets (seeded, partition
   independent), `CategoryPacker` packs them into `packed/part-*.parquet`, and `stats.json`
   reports the realised tokens per category, the generators' counts and skips by reason.

Every sample's random choices are seeded by (seed, document key), so the output does not depend
on the number of workers or the order in which Ray runs tasks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from loopcoder.model.tokenizer.special_tokens import ENDOFTEXT, FILE_SEP, REPO_NAME
from loopcoder.schemas import COMMIT_TRIPLET, FIM_SAMPLE, PACKED_SEQUENCE, REPO_FIM_SAMPLE, SFT_CONVERSATION

from . import filesystem as fs
from .commits import CommitConfig, CommitTripletExtractor
from .filesystem import atomic_write_json, atomic_write_parquet, discover_shards
from .fim import FimConfig, FimSplitter
from .io import ShardWriter
from .job import JobFailed
from .mixture import MixtureConfig, select
from .packing import CategoryPacker, Document, PackingConfig, tokenize_conversation, tokenize_text
from .repo_fim import RepoFimBuilder, RepoFimConfig, token_counter
from .sft_data import read_conversations

logger = logging.getLogger(__name__)

DOCUMENT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("category", pa.string()),
        ("ids", pa.list_(pa.int32())),
        ("loss_mask", pa.list_(pa.int8())),
    ]
)


@dataclass
class SamplesJobConfig:
    """A samples job; every key but `name`, `output` and `input` is optional (docs/fim_and_commits.md)."""

    name: str
    output: str
    input: str  # folder or URI of cleaned shards (filtered_file: kept rows are used; source_file: every row)
    git_repositories: list[dict[str, Any]] = field(default_factory=list)  # [{path, repo}]
    sft_files: list[str] = field(default_factory=list)  # JSONL conversations
    tokenizer: str | None = None  # Hugging Face tokenizer directory; default: the bundled one
    fim: dict[str, Any] = field(default_factory=dict)
    repo_fim: dict[str, Any] = field(default_factory=dict)
    commits: dict[str, Any] = field(default_factory=dict)
    packing: dict[str, Any] = field(default_factory=dict)
    mixture: dict[str, Any] | None = None  # MixtureConfig keys; none: every document once
    rows_per_shard: int = 1000
    num_cpus: int | None = None  # local Ray only

    @classmethod
    def from_yaml(cls, path: Path, overrides: dict[str, Any] | None = None) -> SamplesJobConfig:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"job config {path} does not exist")
        raw = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) | (overrides or {})
        known = {f.name for f in dataclasses.fields(cls)}
        if set(raw) - known:
            raise ValueError(f"{path}: unknown key(s) {', '.join(sorted(set(raw) - known))}")
        for key in ("name", "output", "input"):
            if key not in raw:
                raise ValueError(f"{path}: missing key '{key}'")
        config = cls(**raw)
        config.validate()
        return config

    def validate(self) -> None:
        """Builds every part once, so a bad key fails here and not on a worker."""
        FimConfig(**self.fim)
        RepoFimConfig(**{k: v for k, v in self.repo_fim.items() if k != "fim"})
        CommitConfig(**self.commits)
        PackingConfig(**self.packing)
        if self.mixture is not None:
            MixtureConfig(**self.mixture).budgets()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        relevant = {k: v for k, v in self.to_dict().items() if k not in ("output", "num_cpus")}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def render_commit(triplet: dict[str, Any]) -> str:
    """A commit triplet as training text: repository, files before, message, patch."""
    parts = [f"{REPO_NAME}{triplet['repo']}\n"]
    for file in triplet["old_files"]:
        if file["content"] is not None:
            parts.append(f"{FILE_SEP}{file['path']}\n{file['content']}\n")
    parts.append(f"{FILE_SEP}commit message\n{triplet['message'].strip()}\n")
    parts.append(f"{FILE_SEP}patch\n{triplet['patch']}{ENDOFTEXT}")
    return "".join(parts)


def _load_tokenizer(path: str | None):
    from loopcoder.model.tokenizer import load_tokenizer

    return load_tokenizer(path)


def _write_documents(path: str, documents: list[tuple[str, Document]]) -> None:
    table = pa.table(
        {
            "key": [key for key, _ in documents],
            "category": [d.category for _, d in documents],
            "ids": [d.ids for _, d in documents],
            "loss_mask": [d.loss_mask for _, d in documents],
        },
        schema=DOCUMENT_SCHEMA,
    )
    atomic_write_parquet(table, path)


def _kept_rows(table: pa.Table) -> list[dict[str, Any]]:
    if "kept" in table.column_names:
        table = table.filter(table.column("kept"))
    return table.select(["id", "repo", "path", "language", "content"]).to_pylist()


def _kept_rows_of_shard(item: dict[str, Any]) -> list[dict[str, Any]]:
    return _kept_rows(fs.read_parquet(item["path"]))


class FilesTask:
    """Ray Data actor: FIM samples and tokenised documents for one input shard at a time."""

    def __init__(self, config: dict[str, Any], output: str, shards: list[str]):
        self.config = SamplesJobConfig(**config)
        self.output = output
        self.shards = shards
        self.splitter = FimSplitter(FimConfig(**self.config.fim))
        self.tokenizer = _load_tokenizer(self.config.tokenizer)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        summaries = [json.dumps(self.run(int(task))) for task in batch["task"]]
        return {"task": batch["task"], "summary": np.array(summaries, dtype=object)}

    def run(self, task: int) -> dict[str, Any]:
        finished = fs.read_marker(self.output, f"files-{task:05d}")
        if finished is not None:
            return _without_shards(finished)
        rows = _kept_rows(fs.read_parquet(self.shards[task]))
        samples, documents, skipped = [], [], Counter()
        for row in rows:
            sample = self.splitter(row)
            if sample is not None:
                samples.append(sample)
                documents.append((sample["id"], tokenize_text(self.tokenizer, sample["text"], "file_fim")))
            else:
                if self.splitter.last_skip_reason:
                    skipped[self.splitter.last_skip_reason] += 1
                documents.append((row["id"], tokenize_text(self.tokenizer, row["content"], "file")))
        shard = f"fim/part-{task:05d}.parquet"
        atomic_write_parquet(FIM_SAMPLE.from_records(samples), fs.join(self.output, shard))
        _write_documents(fs.join(self.output, "_work", "documents", f"files-{task:05d}.parquet"), documents)
        summary = {"task": task, "files": len(rows), "fim_samples": len(samples), "fim_skipped": dict(skipped)}
        fs.write_marker(self.output, f"files-{task:05d}", summary, shards=[shard])
        return summary


class RepoFimGroup:
    """Ray Data actor for `map_groups`: the repository-level FIM samples of one repository."""

    def __init__(self, config: dict[str, Any]):
        self.config = SamplesJobConfig(**config)
        tokenizer = _load_tokenizer(self.config.tokenizer)
        options = dict(self.config.repo_fim)
        fim = FimConfig(**({"fim_rate": 1.0} | options.pop("fim", {})))
        self.builder = RepoFimBuilder(RepoFimConfig(fim=fim, **options), count_tokens=token_counter(tokenizer))

    def __call__(self, group: pa.Table) -> pa.Table:
        files = group.to_pylist()
        samples = self.builder(files[0]["repo"], files)
        return pa.Table.from_pylist(samples, schema=REPO_FIM_SAMPLE.arrow_schema.remove_metadata())


def _stage_done(output: str, name: str) -> dict[str, Any] | None:
    finished = fs.read_marker(output, name)
    return None if finished is None else _without_shards(finished)


def _without_shards(payload: dict[str, Any]) -> dict[str, Any]:
    """A marker's summary without the shard list it carries for the shard finder."""
    return {k: v for k, v in payload.items() if k != "shards"}


def _check_locations(config: SamplesJobConfig, output: str) -> None:
    """Refuses, before any work, a location no installed file system serves or one read only locally."""
    fs.check_location(output, "output")
    fs.check_location(config.input, "input")
    for path in config.sft_files:
        if not fs.is_local(path):
            raise ValueError(f"sft_files: {path} is not a local path (conversations are read from local disk)")


def _ray_session(num_cpus: int | None):
    import ray
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # the repository groupby is small: a pull-based sort shuffle over few partitions starts fastest
    context = DataContext.get_current()
    context.default_hash_shuffle_parallelism = 4
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    return True


def run_samples_job(config: SamplesJobConfig, output: str | Path | None = None) -> dict[str, Any]:
    """Runs (or resumes) the samples job into `output` (a local path or a URI); returns the statistics in `stats.json`.

    Raises JobFailed when nothing was packed (`stats.json` is written, `_SUCCESS` is not).
    """
    import ray
    import ray.data

    output = fs.absolute(output or config.output)
    _check_locations(config, output)
    fs.make_dirs(output)
    resolved = config.to_dict() | {"output": output, "fingerprint": config.fingerprint()}
    previous = fs.read_json_if_exists(fs.join(output, "config.json"))
    if previous is not None and previous.get("fingerprint") != config.fingerprint():
        raise ValueError(f"{output} holds the output of a different config; choose another output or delete it")
    atomic_write_json(fs.join(output, "config.json"), resolved)
    if fs.exists(fs.join(output, "_SUCCESS")):
        return fs.read_json(fs.join(output, "stats.json"))
    shards = discover_shards(config.input)
    if not shards:
        raise FileNotFoundError(f"no .parquet shards under {config.input} (run the clean job first)")
    timings: dict[str, float] = {}
    started = _ray_session(config.num_cpus)
    try:
        start = time.perf_counter()
        pending = [i for i in range(len(shards)) if _stage_done(output, f"files-{i:05d}") is None]
        logger.info("files stage: %d of %d task(s) to run", len(pending), len(shards))
        if pending:
            workers = max(1, min(len(pending), int(ray.cluster_resources().get("CPU", 1))))
            tasks = ray.data.from_items([{"task": i} for i in pending], override_num_blocks=len(pending))
            tasks = tasks.map_batches(
                FilesTask, fn_constructor_args=(config.to_dict(), output, shards),
                batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
            )  # fmt: skip
            for _ in tasks.iter_batches(batch_size=None):
                pass
        timings["files"] = time.perf_counter() - start
        start = time.perf_counter()
        if _stage_done(output, "repo_fim") is None:
            logger.info("repository-level FIM stage")
            # shards are read inside Ray tasks with pyarrow (`ray.data.read_parquet` imports fsspec's HTTP
            # filesystem, which fails here without aiohttp)
            files = ray.data.from_items([{"path": shard} for shard in shards], override_num_blocks=len(shards))
            files = files.flat_map(_kept_rows_of_shard)
            samples = files.groupby("repo").map_groups(
                RepoFimGroup,
                fn_constructor_args=(config.to_dict(),),
                compute=ray.data.ActorPoolStrategy(size=1),
                batch_format="pyarrow",
            )
            records = sorted(samples.take_all(), key=lambda r: r["id"])
            records = [r | {"context_paths": list(r["context_paths"])} for r in records]
            shard = "repo_fim/part-00000.parquet"
            atomic_write_parquet(REPO_FIM_SAMPLE.from_records(records), fs.join(output, shard))
            tokenizer = _load_tokenizer(config.tokenizer)
            documents = [(r["id"], tokenize_text(tokenizer, r["text"], "repo_fim")) for r in records]
            _write_documents(fs.join(output, "_work", "documents", "repo_fim.parquet"), documents)
            fs.write_marker(output, "repo_fim", {"samples": len(records)}, shards=[shard])
        timings["repo_fim"] = time.perf_counter() - start
    finally:
        if started:
            ray.shutdown()
    start = time.perf_counter()
    if _stage_done(output, "commits") is None:
        extractor = CommitTripletExtractor(CommitConfig(**config.commits))
        triplets = []
        for repository in config.git_repositories:
            path = Path(repository["path"].replace("{git_root}", str(_git_root())))
            triplets += extractor(path, repository.get("repo", path.name))
        shard = "commits/part-00000.parquet"
        atomic_write_parquet(COMMIT_TRIPLET.from_records(triplets), fs.join(output, shard))
        tokenizer = _load_tokenizer(config.tokenizer)
        documents = [(t["id"], tokenize_text(tokenizer, render_commit(t), "commit")) for t in triplets]
        _write_documents(fs.join(output, "_work", "documents", "commits.parquet"), documents)
        summary = {"triplets": len(triplets), "rejected": dict(extractor.rejections)}
        fs.write_marker(output, "commits", summary, shards=[shard])
    timings["commits"] = time.perf_counter() - start
    if config.sft_files and _stage_done(output, "sft") is None:
        rejections: Counter = Counter()
        conversations = [c for path in config.sft_files for c in read_conversations(path, rejections)]
        shard = "sft/part-00000.parquet"
        atomic_write_parquet(SFT_CONVERSATION.from_records(conversations), fs.join(output, shard))
        tokenizer = _load_tokenizer(config.tokenizer)
        documents = [(c["id"], tokenize_conversation(tokenizer, c["messages"])) for c in conversations]
        _write_documents(fs.join(output, "_work", "documents", "sft.parquet"), documents)
        summary = {"conversations": len(conversations), "rejected": dict(rejections)}
        fs.write_marker(output, "sft", summary, shards=[shard])
    start = time.perf_counter()
    stats = _pack(config, output)
    timings["pack"] = time.perf_counter() - start
    stats |= {
        "job": config.name,
        "fingerprint": config.fingerprint(),
        "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
    }
    markers = fs.list_files(fs.join(output, fs.MARKERS), suffixes=(fs.MARKER_SUFFIX,))
    for name in markers:
        if not name.startswith("files-"):
            stage = name.removesuffix(fs.MARKER_SUFFIX)
            stats.setdefault("stages", {})[stage] = _stage_done(output, stage)
    files_markers = [
        _stage_done(output, name.removesuffix(fs.MARKER_SUFFIX)) for name in markers if name.startswith("files-")
    ]
    stats["fim"] = {
        "files": sum(m["files"] for m in files_markers),
        "samples": sum(m["fim_samples"] for m in files_markers),
        "skipped": dict(sum((Counter(m["fim_skipped"]) for m in files_markers), Counter())),
    }
    atomic_write_json(fs.join(output, "stats.json"), stats)
    documents = sum(stats["packed"]["documents_by_category"].values()) + sum(stats["packed"]["dropped"].values())
    if not stats["packed"]["rows"]:
        raise JobFailed(
            f"job {config.name}: {stats['fim']['files']} input file(s) and {documents} document(s) gave no packed "
            f"sequence; see {fs.join(output, 'stats.json')}"
        )
    atomic_write_json(fs.join(output, "_SUCCESS"), {"job": config.name, "fingerprint": config.fingerprint()})
    return stats


def _git_root() -> Path:
    from .sample_corpus import git_root

    return Path(git_root(Path.cwd()) or Path.cwd())


def _pack(config: SamplesJobConfig, output: str) -> dict[str, Any]:
    """Mixture selection over every tokenised document, then category-pure packing."""
    finished = _stage_done(output, "pack")
    if finished is not None:
        return finished
    documents_folder = fs.join(output, "_work", "documents")
    document_files = [fs.join(documents_folder, name) for name in fs.list_files(documents_folder, (".parquet",))]
    lengths: dict[str, list[tuple[str, int]]] = {}
    for path in document_files:
        table = fs.read_parquet(path, columns=["key", "category", "ids"])
        counts = pc.list_value_length(table.column("ids")).to_pylist()
        for key, category, count in zip(
            table.column("key").to_pylist(), table.column("category").to_pylist(), counts, strict=True
        ):
            lengths.setdefault(category, []).append((key, count))
    if config.mixture is not None:
        chosen, report = select(lengths, MixtureConfig(**config.mixture))
        mixture_table = report.table()
    else:
        chosen = {category: sorted(key for key, _ in items) for category, items in lengths.items()}
        mixture_table = None
    wanted = {(category, key) for category, keys in chosen.items() for key in keys}
    documents: dict[tuple[str, str], Document] = {}
    for path in document_files:
        for row in fs.read_parquet(path).to_pylist():
            if (row["category"], row["key"]) in wanted:
                documents[(row["category"], row["key"])] = Document(row["ids"], row["loss_mask"], row["category"])
    tokenizer = _load_tokenizer(config.tokenizer)
    packer = CategoryPacker(PackingConfig(**config.packing), pad_id=tokenizer.pad_token_id)
    with ShardWriter(fs.join(output, "packed"), PACKED_SEQUENCE, config.rows_per_shard) as writer:
        for category in sorted(chosen):
            for key in chosen[category]:
                writer.write_all(packer.add(documents[(category, key)]))
        writer.write_all(packer.flush())
    packing = packer.stats
    stats = {
        "packed": {
            "rows": packing.rows,
            "documents_by_category": dict(packing.documents),
            "tokens_by_category": dict(packing.tokens),
            "padding_tokens": packing.padding_tokens,
            "dropped": dict(packing.dropped),
            "seq_len": PackingConfig(**config.packing).seq_len,
        },
        "mixture": mixture_table,
        "rejections": {f"packing_{k}": v for k, v in packing.dropped.items()},
    }
    fs.write_marker(output, "pack", stats, shards=[f"packed/{fs.basename(path)}" for path in writer.paths])
    return stats
