"""The samples job: cleaned code -> FIM, repository-level FIM, commit triplets, SFT -> mixture -> packed shards.

    loopcoder data samples jobs/data/samples.yaml [--output DIR]

Every stage is a set of tasks fixed by the inputs and the config, never by the number of workers;
the tasks run as Ray tasks on the job's worker processes (`executor/tasks.py`; local Ray, or the cluster
named by `RAY_ADDRESS`), and each task writes its own files, then its marker. The driver only plans tasks and
adds up their summaries: no sample, document or token passes through it.

1. `files` (one task per input shard): each kept file becomes a FIM sample (`fim/part-N.parquet`)
   or stays left-to-right, and is tokenised into `_work/documents/files-N.parquet`; the kept rows
   are also written to `_work/repos/bucket-B/files-N.parquet`, where B is a hash of the repository;
2. `repo_fim` (one task per repository bucket): every file of a repository lands in one bucket,
   whichever shard it came from, so the task sees whole repositories and writes their
   repository-level FIM samples (`repo_fim/part-B.parquet`) and documents;
3. `commits` (one task per configured git repository): commit triplets (`commits/part-R.parquet`);
4. `sft` (one task per conversation file): conversations (`sft/part-F.parquet`), assistant-only
   loss, each in the tier of its difficulty (`sft_easy`, `sft_medium`, `sft_hard`, `sft`);
5. `pack` (one task per document file): a held-out share of documents (seeded by document key)
   goes to `heldout/<category>/`, the others are repeated or sampled to the mixture's token
   budgets and packed into `packed/<category>/`. Budgets become per-category rates from the token
   counts the earlier tasks reported, so a task decides each document on its own
   (`mixture.copies`).

Every random choice is seeded by (seed, document key), so the output is the same bytes with one
worker or many, on a rerun, and after a driver killed mid-job and restarted.

Inside a stage, tasks start largest input first (`_largest_first`): a task's time follows the bytes
it reads, and a large task started last would run alone while the other workers idle. Which task
runs when changes no output, since every task writes under its own number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from loopcoder.pipelines.clean.job import JobFailed, RayConfig, _sub
from loopcoder.pipelines.dedup.minhash import MinhashConfig, MinhashSignatures
from loopcoder.pipelines.dedup.stages import run_dedup
from loopcoder.pipelines.executor.tasks import Session, job_session
from loopcoder.pipelines.io import filesystem as fs
from loopcoder.pipelines.io.filesystem import atomic_write_json, atomic_write_parquet, discover_shards
from loopcoder.pipelines.samples.commits import CommitConfig, CommitTripletExtractor
from loopcoder.pipelines.samples.conversations import ConversationConfig, DocstringExtractor, commit_conversations
from loopcoder.pipelines.samples.fim import FimConfig, FimSplitter
from loopcoder.pipelines.samples.mixture import MixtureConfig, MixtureReport, held_out, select_in_task
from loopcoder.pipelines.samples.packing import (
    CategoryPacker,
    Document,
    PackingConfig,
    tokenize_conversation,
    tokenize_texts,
)
from loopcoder.pipelines.samples.repo_fim import PLAIN, RepoFimBuilder, RepoFimConfig, token_counter
from loopcoder.pipelines.samples.sft_data import read_conversation_file
from loopcoder.pipelines.samples.sft_dedup import (
    SftDecontaminationConfig,
    SftDecontaminator,
    drop_duplicates,
    write_dedup_inputs,
)
from loopcoder.pipelines.samples.sft_difficulty import (
    DifficultyConfig,
    DifficultyScorer,
    DifficultyStats,
    tier_category,
)
from loopcoder.schemas import COMMIT_TRIPLET, FIM_SAMPLE, PACKED_SEQUENCE, REPO_FIM_SAMPLE, SFT_CONVERSATION
from loopcoder.schemas.config_file import ConfigFile, dataclass_arguments
from loopcoder.schemas.tokens import ENDOFTEXT, FILE_SEP, REPO_NAME

logger = logging.getLogger(__name__)

WORK = "_work"
DOCUMENT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("category", pa.string()),
        ("ids", pa.list_(pa.int32())),
        ("loss_mask", pa.list_(pa.int8())),
    ]
)
REPO_FILE_COLUMNS = ["id", "repo", "path", "language", "content"]


@dataclass
class SplitConfig:
    """The held-out evaluation split: a seeded share of each category's documents, never trained on."""

    heldout_fraction: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"split.heldout_fraction must be in [0, 1), got {self.heldout_fraction}")


@dataclass
class SamplesJobConfig(ConfigFile):
    """A samples job; every key but `name`, `output` and `input` is optional (docs/fim_and_commits.md)."""

    name: str
    output: str
    input: str  # folder of cleaned shards (filtered_file: kept rows are used; source_file: every row)
    git_repositories: list[dict[str, Any]] = field(default_factory=list)  # [{path, repo}]
    sft_files: list[str] = field(default_factory=list)  # JSONL conversations
    tokenizer: str | None = None  # Hugging Face tokenizer directory; default: the bundled one
    fim: dict[str, Any] = field(default_factory=dict)
    repo_fim: dict[str, Any] = field(default_factory=dict)
    commits: dict[str, Any] = field(default_factory=dict)
    packing: dict[str, Any] = field(default_factory=dict)
    mixture: dict[str, Any] | None = None  # MixtureConfig keys; none: every document once
    split: SplitConfig = field(default_factory=SplitConfig)
    sft_from_corpus: bool = True  # docstring -> implementation and commit -> patch conversations
    conversations: dict[str, Any] = field(default_factory=dict)  # ConversationConfig keys
    difficulty: dict[str, Any] = field(default_factory=dict)  # DifficultyConfig keys (tiers of the curriculum)
    sft_decontamination: dict[str, Any] = field(default_factory=dict)  # SftDecontaminationConfig keys
    sft_dedup: dict[str, Any] | None = field(default_factory=dict)  # MinhashConfig keys; null: no SFT dedup
    repo_buckets: int = 16  # repository groups of the repo_fim stage; the output does not depend on workers
    rows_per_shard: int = 1000
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if isinstance(self.split, dict):
            self.split = _sub(SplitConfig, self.split, "split")
        if isinstance(self.ray, dict):
            self.ray = _sub(RayConfig, self.ray, "ray")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> SamplesJobConfig:
        raw = dataclass_arguments(cls, raw, source)
        raw["split"] = _sub(SplitConfig, raw.get("split"), f"{source}: split")
        raw["ray"] = _sub(RayConfig, raw.get("ray"), f"{source}: ray")
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
        ConversationConfig(**self.conversations)
        DifficultyConfig(**self.difficulty)
        SftDecontaminationConfig(**self.sft_decontamination)
        if self.sft_dedup is not None:
            MinhashConfig(**self.sft_dedup)
        if self.repo_buckets < 1:
            raise ValueError(f"repo_buckets must be at least 1, got {self.repo_buckets}")

    def fingerprint(self) -> str:
        relevant = {k: v for k, v in self.to_dict().items() if k not in ("output", "ray")}
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


def repo_bucket(repo: str, buckets: int) -> int:
    """The bucket of a repository: every file of one repository lands in the same one."""
    return int.from_bytes(hashlib.sha256(f"repo\x00{repo}".encode()).digest()[:8], "big") % buckets


def _load_tokenizer(path: str | None):
    from loopcoder.schemas.tokens import load_tokenizer

    return load_tokenizer(path)


def _git_root() -> Path:
    from loopcoder.pipelines.sample_corpus import git_root

    return Path(git_root(Path.cwd()) or Path.cwd())


def _documents_table(keys: list[str], documents: list[Document]) -> pa.Table:
    return pa.table(
        {
            "key": keys,
            "category": [d.category for d in documents],
            "ids": [d.ids for d in documents],
            "loss_mask": [d.loss_mask for d in documents],
        },
        schema=DOCUMENT_SCHEMA,
    )


def _document_summary(keys: list[str], documents: list[Document], split: SplitConfig) -> dict[str, dict[str, int]]:
    """Tokens per category in the training part and in the held-out part of one document file."""
    train: Counter = Counter()
    heldout: Counter = Counter()
    for key, document in zip(keys, documents, strict=True):
        target = heldout if held_out(key, split.heldout_fraction, split.seed) else train
        target[document.category] += len(document.ids)
    return {"train_tokens": dict(train), "heldout_tokens": dict(heldout)}


def _kept_rows(table: pa.Table) -> pa.Table:
    if "kept" in table.column_names:
        table = table.filter(table.column("kept"))
    # the AST status lets the docstring extractor skip files the parser already failed on
    return table.select(REPO_FILE_COLUMNS + [c for c in ("ast_status",) if c in table.column_names])


@dataclass(frozen=True)
class Task:
    """One unit of work: its stage, its number inside the stage, and what it reads."""

    stage: str
    number: int
    source: str = ""
    conversation_task: int = -1  # the task's number among every task that builds conversations

    @property
    def name(self) -> str:
        return f"{self.stage}-{self.number:05d}"


class SamplesWorker:
    """Runs samples-job tasks; one per Ray worker process for the whole job (`executor/tasks.py`), so the tokenizer and parsers load once."""

    def __init__(self, config: dict[str, Any], output: str):
        self.config = SamplesJobConfig.from_dict(config)
        self.output = output
        self.plan: dict[str, Any] = {}
        self._shards: list[str] = []  # shards the running task wrote, relative to the output; its marker lists them
        self.tokenizer = _load_tokenizer(self.config.tokenizer)
        self._splitter: FimSplitter | None = None
        self._repo_builder: RepoFimBuilder | None = None
        self._docstrings: DocstringExtractor | None = None
        self._scorer: DifficultyScorer | None = None
        self._decontaminator: SftDecontaminator | None = None
        self._signer: MinhashSignatures | None = None

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Runs one task (`spec["task"]`) with the job's plan of the moment (`spec["plan"]`: repositories, mixture rates)."""
        self.plan = spec["plan"]
        return self.run_task(Task(**spec["task"]))

    def run_task(self, task: Task) -> dict[str, Any]:
        finished = fs.read_marker(self.output, task.name)
        if finished is not None:
            return _without_shards(finished)
        self._shards = []
        summary = {"task": task.name} | getattr(self, f"_run_{task.stage}")(task)
        fs.write_marker(self.output, task.name, summary, shards=self._shards)
        return summary

    def _write_shard(self, table: pa.Table, relative: str) -> None:
        """An output shard: counted by the shard tools once the task's marker names it."""
        atomic_write_parquet(table, fs.join(self.output, relative))
        self._shards.append(relative)

    def _write_documents(self, name: str, keys: list[str], documents: list[Document]) -> dict[str, Any]:
        location = fs.join(self.output, WORK, "documents", f"{name}.parquet")
        atomic_write_parquet(_documents_table(keys, documents), location)
        return _document_summary(keys, documents, self.config.split)

    def _tokenize(self, texts: list[str], categories: list[str]) -> list[Document]:
        return tokenize_texts(self.tokenizer, texts, categories)

    def _run_files(self, task: Task) -> dict[str, Any]:
        if self._splitter is None:
            self._splitter = FimSplitter(FimConfig(**self.config.fim))
        table = _kept_rows(fs.read_parquet(task.source))
        rows = table.to_pylist()
        table = table.select(REPO_FILE_COLUMNS)
        samples, keys, texts, categories, skipped = [], [], [], [], Counter()
        for row in rows:
            sample = self._splitter(row)
            if sample is not None:
                samples.append(sample)
                keys.append(sample["id"])
                texts.append(sample["text"])
                categories.append("file_fim")
            else:
                if self._splitter.last_skip_reason:
                    skipped[self._splitter.last_skip_reason] += 1
                keys.append(row["id"])
                texts.append(row["content"])
                categories.append("file")
        self._write_shard(FIM_SAMPLE.from_records(samples), f"fim/part-{task.number:05d}.parquet")
        buckets = np.array([repo_bucket(r, self.config.repo_buckets) for r in table.column("repo").to_pylist()])
        written_buckets = []
        for bucket in sorted(set(buckets.tolist())):
            part = table.filter(pa.array(buckets == bucket))
            path = fs.join(self.output, WORK, "repos", f"bucket-{bucket:05d}", f"files-{task.number:05d}.parquet")
            atomic_write_parquet(part, path)
            written_buckets.append(bucket)
        documents = self._tokenize(texts, categories)
        summary = {
            "files": len(rows),
            "fim_samples": len(samples),
            "fim_skipped": dict(skipped),
            "buckets": written_buckets,
            "documents": self._write_documents(task.name, keys, documents),
        }
        if self.config.sft_from_corpus:
            if self._docstrings is None:
                self._docstrings = DocstringExtractor(ConversationConfig(**self.config.conversations))
            self._docstrings.rejections = Counter()
            conversations = [c for row in rows for c in self._docstrings(row) if c is not None]
            summary["sft"] = self._conversation_candidates(task, conversations, self._docstrings.rejections)
        return summary

    def _run_repo_fim(self, task: Task) -> dict[str, Any]:
        if self._repo_builder is None:
            options = dict(self.config.repo_fim)
            fim = FimConfig(**({"fim_rate": 1.0} | options.pop("fim", {})))
            self._repo_builder = RepoFimBuilder(
                RepoFimConfig(fim=fim, **options), count_tokens=token_counter(self.tokenizer)
            )
        self._repo_builder.skipped = Counter()
        directory = fs.join(self.output, WORK, "repos", f"bucket-{task.number:05d}")
        files = pa.concat_tables(
            [fs.read_parquet(fs.join(directory, n)) for n in fs.list_files(directory, (".parquet",))]
        )
        by_repo: dict[str, list[dict[str, Any]]] = {}
        for row in files.to_pylist():
            by_repo.setdefault(row["repo"], []).append(row)
        records = []
        for repo in sorted(by_repo):
            records += self._repo_builder(repo, by_repo[repo])
        records.sort(key=lambda r: r["id"])
        self._write_shard(REPO_FIM_SAMPLE.from_records(records), f"repo_fim/part-{task.number:05d}.parquet")
        keys = [r["id"] for r in records]
        categories = ["repo" if r["mode"] == PLAIN else "repo_fim" for r in records]
        documents = self._tokenize([r["text"] for r in records], categories)
        return {
            "repositories": len(by_repo),
            "samples": len(records),
            "skipped": dict(self._repo_builder.skipped),
            "documents": self._write_documents(task.name, keys, documents),
        }

    def _run_commits(self, task: Task) -> dict[str, Any]:
        repository = self.plan["git_repositories"][task.number]
        extractor = CommitTripletExtractor(CommitConfig(**self.config.commits))
        triplets = extractor(Path(repository["path"]), repository["repo"])
        self._write_shard(COMMIT_TRIPLET.from_records(triplets), f"commits/part-{task.number:05d}.parquet")
        keys = [t["id"] for t in triplets]
        documents = self._tokenize([render_commit(t) for t in triplets], ["commit"] * len(triplets))
        summary = {
            "triplets": len(triplets),
            "rejected": dict(extractor.rejections),
            "documents": self._write_documents(task.name, keys, documents),
        }
        if self.config.sft_from_corpus:
            conversations, rejections = commit_conversations(triplets, ConversationConfig(**self.config.conversations))
            summary["sft"] = self._conversation_candidates(task, conversations, rejections)
        return summary

    def _run_sft(self, task: Task) -> dict[str, Any]:
        conversations, rejections = read_conversation_file(task.source)
        return {"sft": self._conversation_candidates(task, conversations, rejections)}

    def _conversation_candidates(
        self, task: Task, conversations: list[dict[str, Any]], rejections: Counter
    ) -> dict[str, Any]:
        """Scores and decontaminates one task's conversations, and writes them with their dedup inputs."""
        if self._scorer is None:
            self._scorer = DifficultyScorer(DifficultyConfig(**self.config.difficulty), token_counter(self.tokenizer))
            self._decontaminator = SftDecontaminator(SftDecontaminationConfig(**self.config.sft_decontamination))
            if self.config.sft_dedup is not None:
                self._signer = MinhashSignatures(MinhashConfig(**self.config.sft_dedup))
        scored, features = self._scorer(conversations)
        kept, removed = self._decontaminator(scored)
        kept_ids = {id(record) for record in kept}
        difficulty = DifficultyStats()
        difficulty.add(kept, [f for record, f in zip(scored, features, strict=True) if id(record) in kept_ids])
        number = task.conversation_task
        candidates = fs.join(self.output, WORK, "sft", f"candidates-{number:06d}.parquet")
        atomic_write_parquet(SFT_CONVERSATION.from_records(kept), candidates)
        if self.config.sft_dedup is not None:
            write_dedup_inputs(fs.join(self.output, WORK, "sft_dedup"), number, kept, self._signer)
        return {
            "built": len(conversations),
            "rejected": dict(rejections),
            "removed": dict(removed),
            "difficulty": difficulty.to_dict(),
        }

    def _run_sft_final(self, task: Task) -> dict[str, Any]:
        """A conversation task's survivors of the SFT dedup, written and tokenised in their tiers."""
        candidates = fs.join(self.output, WORK, "sft", f"candidates-{task.number:06d}.parquet")
        records = fs.read_parquet(candidates).to_pylist()
        removed: Counter = Counter()
        if self.config.sft_dedup is not None and records:
            records = drop_duplicates(records, fs.join(self.output, WORK, "sft_dedup"), task.number, removed)
        self._write_shard(SFT_CONVERSATION.from_records(records), f"sft/part-{task.number:06d}.parquet")
        keys, documents = [], []
        for record in records:
            try:
                category = tier_category(record["difficulty_tier"])
                documents.append(tokenize_conversation(self.tokenizer, record["messages"], category))
            except ValueError:
                removed["not_trainable"] += 1
                continue
            keys.append(record["id"])
        return {
            "conversations": len(keys),
            "removed": dict(removed),
            "tiers": dict(Counter(d.category for d in documents)),
            "documents": self._write_documents(task.name, keys, documents),
        }

    def _run_pack(self, task: Task) -> dict[str, Any]:
        rates: dict[str, float] = self.plan["rates"]
        mixture = MixtureConfig(**self.config.mixture) if self.config.mixture is not None else None
        split = self.config.split
        train: dict[str, dict[str, Document]] = {}
        heldout: dict[str, dict[str, Document]] = {}
        for row in fs.read_parquet(task.source).to_pylist():
            document = Document(row["ids"], row["loss_mask"], row["category"])
            target = heldout if held_out(row["key"], split.heldout_fraction, split.seed) else train
            target.setdefault(document.category, {})[row["key"]] = document
        pad_id = self.tokenizer.pad_token_id
        packing = PackingConfig(**self.config.packing)
        summary: dict[str, Any] = {"train": {}, "heldout": {}}
        for category in sorted(heldout):
            documents = [heldout[category][key] for key in sorted(heldout[category])]
            summary["heldout"][category] = self._pack_category(
                documents, packing, pad_id, f"heldout/{category}", task.number
            )
        for category in sorted(train):
            pool = train[category]
            if mixture is None or category not in rates:
                documents = [pool[key] for key in sorted(pool)]  # a category the mixture does not name: all of it
            else:
                lengths = [(key, len(pool[key].ids)) for key in sorted(pool)]
                documents = [pool[key] for key, _, _ in select_in_task(lengths, rates[category], mixture)]
            summary["train"][category] = self._pack_category(
                documents, packing, pad_id, f"packed/{category}", task.number
            )
        return summary

    def _pack_category(
        self, documents: list[Document], packing: PackingConfig, pad_id: int, directory: str, number: int
    ) -> dict[str, Any]:
        packer = CategoryPacker(packing, pad_id)
        rows = [row for document in documents for row in packer.add(document)] + list(packer.flush())
        size = self.config.rows_per_shard
        for piece, start in enumerate(range(0, len(rows), size)):
            shard = f"{directory}/part-{number:05d}-{piece:03d}.parquet"
            self._write_shard(PACKED_SEQUENCE.from_records(rows[start : start + size]), shard)
        stats = packer.stats
        return {
            "rows": stats.rows,
            "documents": sum(stats.documents.values()),
            "tokens": sum(stats.tokens.values()),
            "padding_tokens": stats.padding_tokens,
            "dropped": dict(stats.dropped),
        }


def _run_stage(
    session: Session,
    config: SamplesJobConfig,
    output: str,
    tasks: list[Task],
    plan: dict[str, Any],
    meanwhile: Callable[[], None] | None = None,
    input_bytes: dict[str, int] | None = None,
) -> None:
    """Runs the unfinished tasks of one stage (while this process runs `meanwhile()`, if given);
    each task writes its files, then its marker. `input_bytes` (by task name) orders the tasks."""
    pending = [t for t in tasks if not fs.exists(fs.marker(output, t.name))]
    if input_bytes is not None:
        pending = _largest_first(pending, input_bytes)
    label = "+".join(dict.fromkeys(t.stage for t in tasks))
    if tasks:
        logger.info("%s stage: %d of %d task(s) to run", label, len(pending), len(tasks))
    specs = [{"task": dataclasses.asdict(t), "plan": plan} for t in pending]
    arguments = (config.to_dict(), output)
    if meanwhile is None:
        session.run_tasks(label, SamplesWorker, arguments, specs)
    else:
        session.run_tasks_meanwhile(label, SamplesWorker, arguments, specs, meanwhile)


def _largest_first(tasks: list[Task], input_bytes: dict[str, int]) -> list[Task]:
    """Tasks by the bytes they read, largest first (spec order among equals); tasks not in
    `input_bytes` keep their order after them (commits and conversation files, queued behind the files)."""
    return sorted(tasks, key=lambda t: (t.name not in input_bytes, -input_bytes.get(t.name, 0)))


def _sizes_under(location: str) -> dict[str, int]:
    """Bytes of every file under a folder by full location, from one listing (no request per file)."""
    if not fs.is_dir(location):
        return {}
    return {fs.join(location, relative): size for relative, size in fs.file_sizes(location).items()}


def _without_shards(payload: dict[str, Any]) -> dict[str, Any]:
    """A marker's summary without the shard list it carries for the shard finder."""
    return {k: v for k, v in payload.items() if k != "shards"}


def _summaries(output: str, tasks: list[Task]) -> Iterator[dict[str, Any]]:
    for task in tasks:
        yield _without_shards(fs.read_marker(output, task.name))


def _check_locations(config: SamplesJobConfig, output: str) -> None:
    """Refuses, before any work, a location no installed file system serves or one read only locally."""
    fs.check_location(output, "output")
    fs.check_location(config.input, "input")
    for path in config.sft_files:
        if not fs.is_local(path):
            raise ValueError(f"sft_files: {path} is not a local path (conversations are read from local disk)")


def _mixture_rates(config: SamplesJobConfig, train_tokens: Counter) -> dict[str, float]:
    """Per-category sampling rates that meet the mixture's budgets in expectation."""
    if config.mixture is None:
        return {category: 1.0 for category in train_tokens}
    return MixtureConfig(**config.mixture).rates(dict(train_tokens))


def run_samples_job(config: SamplesJobConfig, output: str | Path | None = None) -> dict[str, Any]:
    """Runs (or resumes) the samples job into `output` (a local path or a URI); returns the statistics in `stats.json`.

    Raises JobFailed when nothing was packed (`stats.json` is written, `_SUCCESS` is not).
    """
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
    repositories = [
        {"path": str(r["path"]).replace("{git_root}", str(_git_root())), "repo": r.get("repo")}
        for r in config.git_repositories
    ]
    repositories = [r | {"repo": r["repo"] or Path(r["path"]).name} for r in repositories]
    plan: dict[str, Any] = {"git_repositories": repositories, "rates": {}}
    timings: dict[str, float] = {}
    stages: dict[str, list[Task]] = {}
    shard_bytes = _sizes_under(config.input)  # one listing: sizes `executor: auto` and the task order use
    with job_session(config.ray, lambda limit: _input_at_most(config, shards, limit, shard_bytes)) as session:
        start = time.perf_counter()
        number = iter(range(1 << 30))  # conversation tasks, numbered in a fixed order across stages
        stages["files"] = [Task("files", i, shard, next(number)) for i, shard in enumerate(shards)]
        stages["commits"] = [Task("commits", i, "", next(number)) for i in range(len(repositories))]
        stages["sft"] = [Task("sft", i, str(path), next(number)) for i, path in enumerate(config.sft_files)]
        # commits and conversation files need nothing from the files stage: queued behind it, they
        # take the workers its last tasks leave idle
        file_bytes = {t.name: shard_bytes.get(t.source, 0) for t in stages["files"]}
        _run_stage(
            session, config, output, stages["files"] + stages["commits"] + stages["sft"], plan, input_bytes=file_bytes
        )
        timings["samples"] = time.perf_counter() - start
        start = time.perf_counter()
        buckets = sorted({b for s in _summaries(output, stages["files"]) for b in s["buckets"]})
        stages["repo_fim"] = [Task("repo_fim", b) for b in buckets]
        conversation_tasks = [t for name in ("files", "commits", "sft") for t in stages[name]]
        if not config.sft_from_corpus:
            conversation_tasks = stages["sft"]
        stages["sft_final"] = [Task("sft_final", t.conversation_task) for t in conversation_tasks]

        def conversations() -> None:
            _sft_dedup(session, config, output)
            candidate_bytes = _sizes_under(fs.join(output, WORK, "sft"))
            candidates = {
                t.name: candidate_bytes.get(fs.join(output, WORK, "sft", f"candidates-{t.number:06d}.parquet"), 0)
                for t in stages["sft_final"]
            }
            _run_stage(session, config, output, stages["sft_final"], plan, input_bytes=candidates)

        bucket_bytes: Counter = Counter()
        for path, size in _sizes_under(fs.join(output, WORK, "repos")).items():
            bucket_bytes[fs.basename(fs.parent(path))] += size
        repo_files = {t.name: bucket_bytes[f"bucket-{t.number:05d}"] for t in stages["repo_fim"]}
        # repository-level FIM and the conversations need nothing from each other: the workers run
        # the repo_fim tasks while this process deduplicates the conversations, then both stages' tasks
        _run_stage(session, config, output, stages["repo_fim"], plan, meanwhile=conversations, input_bytes=repo_files)
        timings["repo_fim_and_sft"] = time.perf_counter() - start
        start = time.perf_counter()
        producing = [t for name in ("files", "repo_fim", "commits", "sft_final") for t in stages[name]]
        train_tokens: Counter = Counter()
        for summary in _summaries(output, producing):
            train_tokens.update(summary["documents"]["train_tokens"])
        plan["rates"] = _mixture_rates(config, train_tokens)
        stages["pack"] = [
            Task("pack", i, fs.join(output, WORK, "documents", f"{t.name}.parquet")) for i, t in enumerate(producing)
        ]
        document_bytes = _sizes_under(fs.join(output, WORK, "documents"))
        _run_stage(
            session,
            config,
            output,
            stages["pack"],
            plan,
            input_bytes={t.name: document_bytes.get(t.source, 0) for t in stages["pack"]},
        )
        timings["pack"] = time.perf_counter() - start
    stats = merge_stats(config, output, stages, train_tokens, plan["rates"])
    stats["timings_seconds"] = {k: round(v, 3) for k, v in timings.items()}
    atomic_write_json(fs.join(output, "stats.json"), stats)
    if not stats["packed"]["rows"]:
        raise JobFailed(
            f"job {config.name}: {stats['fim']['files']} input file(s) gave no packed sequence; "
            f"see {fs.join(output, 'stats.json')}"
        )
    atomic_write_json(fs.join(output, "_SUCCESS"), {"job": config.name, "fingerprint": config.fingerprint()})
    return stats


def _input_at_most(
    config: SamplesJobConfig, shards: list[str], limit: int, sizes: dict[str, int] | None = None
) -> bool:
    """Whether the cleaned shards and the conversation files hold at most `limit` bytes (what `executor:
    auto` sizes the job by). A shard's size comes from `sizes` (a listing) when it is there; others are
    asked for it, and only until the sum passes the limit."""
    sizes = sizes or {}
    total = sum(Path(p).stat().st_size for p in config.sft_files)
    for shard in shards:
        total += sizes[shard] if shard in sizes else fs.size(shard) or 0
        if total > limit:
            return False
    return total <= limit


def _sft_dedup(session: Session, config: SamplesJobConfig, output: str) -> None:
    """Exact and near-duplicate conversations across every conversation task, on the clean job's dedup stages."""
    work = fs.join(output, WORK, "sft_dedup")
    if config.sft_dedup is None or fs.read_marker(output, "sft_dedup") is not None:
        return
    if not fs.is_dir(fs.join(work, "documents")):
        return
    logger.info("SFT dedup stage")
    stats = run_dedup(work, True, MinhashConfig(**config.sft_dedup), session=session)
    fs.write_marker(output, "sft_dedup", stats)


def _add_nested(total: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            _add_nested(total.setdefault(key, {}), value)
        else:
            total[key] = total.get(key, 0) + value


def merge_stats(
    config: SamplesJobConfig,
    output: str,
    stages: dict[str, list[Task]],
    train_tokens: Counter,
    rates: dict[str, float],
) -> dict[str, Any]:
    """The job's statistics from its task markers (small dictionaries, never the data)."""
    files = list(_summaries(output, stages["files"]))
    stats: dict[str, Any] = {
        "job": config.name,
        "fingerprint": config.fingerprint(),
        "fim": {
            "files": sum(s["files"] for s in files),
            "samples": sum(s["fim_samples"] for s in files),
            "skipped": dict(sum((Counter(s["fim_skipped"]) for s in files), Counter())),
        },
        "stages": {},
    }
    for name, keys in (
        ("repo_fim", ("repositories", "samples", "skipped")),
        ("commits", ("triplets", "rejected")),
    ):
        merged: dict[str, Any] = {}
        for summary in _summaries(output, stages[name]):
            _add_nested(merged, {k: summary[k] for k in keys})
        if stages[name]:
            stats["stages"][name] = merged
    stats["sft"] = _sft_stats(output, stages)
    packed: dict[str, Any] = {"train": {}, "heldout": {}}
    for summary in _summaries(output, stages["pack"]):
        _add_nested(packed, {"train": summary["train"], "heldout": summary["heldout"]})
    seq_len = PackingConfig(**config.packing).seq_len
    train = packed["train"]
    stats["packed"] = {
        "rows": sum(c["rows"] for c in train.values()),
        "documents_by_category": {c: v["documents"] for c, v in sorted(train.items())},
        "tokens_by_category": {c: v["tokens"] for c, v in sorted(train.items())},
        "padding_tokens": sum(c["padding_tokens"] for c in train.values()),
        "dropped": dict(sum((Counter(c["dropped"]) for c in train.values()), Counter())),
        "seq_len": seq_len,
        "directories": {c: f"packed/{c}" for c in sorted(train) if train[c]["rows"]},
    }
    stats["heldout"] = {
        "fraction": config.split.heldout_fraction,
        "rows_by_category": {c: v["rows"] for c, v in sorted(packed["heldout"].items())},
        "tokens_by_category": {c: v["tokens"] for c, v in sorted(packed["heldout"].items())},
        "directories": {c: f"heldout/{c}" for c in sorted(packed["heldout"]) if packed["heldout"][c]["rows"]},
    }
    stats["mixture"] = None
    if config.mixture is not None:
        mixture = MixtureConfig(**config.mixture)
        report = MixtureReport()
        for category, budget in mixture.budgets().items():
            report.rows.append(
                {
                    "category": category,
                    "budget": budget,
                    "available": int(train_tokens.get(category, 0)),
                    "tokens": stats["packed"]["tokens_by_category"].get(category, 0),
                    "rate": rates.get(category, 0.0),
                }
            )
        stats["mixture"] = report.table()
    stats["rejections"] = {f"packing_{k}": v for k, v in stats["packed"]["dropped"].items()}
    return stats


def _sft_stats(output: str, stages: dict[str, list[Task]]) -> dict[str, Any]:
    """Conversations built, removed by reason (rejections, benchmarks, duplicates) and kept per tier, with why."""
    built, rejected, removed = 0, Counter(), Counter()
    difficulty = DifficultyStats()
    for name in ("files", "commits", "sft"):
        for summary in _summaries(output, stages[name]):
            if "sft" not in summary:
                continue
            built += summary["sft"]["built"]
            rejected.update(summary["sft"]["rejected"])
            removed.update(summary["sft"]["removed"])
            difficulty = difficulty.merge(DifficultyStats.from_dict(summary["sft"]["difficulty"]))
    kept, tiers = 0, Counter()
    for summary in _summaries(output, stages["sft_final"]):
        kept += summary["conversations"]
        removed.update(summary["removed"])
        tiers.update(summary["tiers"])
    return {
        "built": built,
        "rejected": dict(sorted(rejected.items())),
        "removed": dict(sorted(removed.items())),
        "conversations": kept,
        "tiers": dict(sorted(tiers.items())),
        "difficulty": difficulty.report(),
    }
