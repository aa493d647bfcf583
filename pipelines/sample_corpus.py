"""The sample corpus: real code every machine with this stack installed already has.

    loopcoder data sample-corpus [--config jobs/data/sample_corpus.yaml] [--out data/sample]

Three kinds of source (see `jobs/data/sample_corpus.yaml`):
* `directory`: files under a directory matching glob patterns (the Python standard library);
* `installed_packages`: the files each installed distribution lists in its RECORD, with its
  licence from the package metadata;
* `git_history`: commit triplets (files before, patch, files after) from a git checkout.

Output, in Parquet shards written atomically:

    OUT/source_files/part-00000.parquet ...   record type `source_file`
    OUT/commits/part-00000.parquet ...        record type `commit_triplet`
    OUT/manifest.json                         resolved config, counts, rejections by reason
    OUT/markers/corpus.done                   written last: the shards that count

OUT may be a local path or an object-store URI (`s3://bucket/sample`, see docs/pipelines.md).
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import shutil
import subprocess
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

from loopcoder.pipelines.io import filesystem as fs
from loopcoder.pipelines.io.decoding import DEFAULT_MAX_FILE_BYTES, Rejection, decode_source
from loopcoder.pipelines.io.filesystem import atomic_write_json
from loopcoder.pipelines.io.languages import language_of
from loopcoder.pipelines.io.writers import ShardWriter
from loopcoder.pipelines.samples.commits import CommitConfig, CommitTripletExtractor
from loopcoder.schemas import COMMIT_TRIPLET, SOURCE_FILE
from loopcoder.schemas.config_file import ConfigFile

logger = logging.getLogger(__name__)

GIT_TIMEOUT_SECONDS = 60


@dataclass
class SampleCorpusConfig(ConfigFile):
    """Where the sample corpus comes from and where it goes (fields mirror the YAML file)."""

    output: str = "data/sample"
    sources: list[dict[str, Any]] = field(default_factory=list)
    rows_per_shard: int = 2000
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES


@dataclass
class CorpusStats:
    files_by_language: Counter = field(default_factory=Counter)
    bytes_by_language: Counter = field(default_factory=Counter)
    files_by_repo: Counter = field(default_factory=Counter)
    rejections: Counter = field(default_factory=Counter)
    commits: int = 0

    def reject(self, reason: str, where: str) -> None:
        self.rejections[reason] += 1
        logger.debug("rejected %s: %s", where, reason)


def default_config_path() -> Path:
    """The packaged `jobs/data/sample_corpus.yaml`."""
    return Path(__file__).resolve().parent.parent / "jobs" / "data" / "sample_corpus.yaml"


def resolve_placeholders(value: str) -> str:
    paths = sysconfig.get_paths()
    replacements = {"{stdlib}": paths["stdlib"], "{site_packages}": paths["purelib"]}
    if "{git_root}" in value:
        replacements["{git_root}"] = git_root(Path.cwd()) or str(Path.cwd())
    for key, replacement in replacements.items():
        value = value.replace(key, replacement)
    return value


def git_root(start: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(start), "rev-parse", "--show-toplevel"],
            capture_output=True, text=True, timeout=GIT_TIMEOUT_SECONDS,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def file_id(repo: str, revision: str | None, path: str) -> str:
    return hashlib.sha256(f"{repo}\x00{revision or ''}\x00{path}".encode()).hexdigest()[:32]


def _source_record(repo, path, raw, max_bytes, stats, license=None, revision=None) -> dict[str, Any] | None:
    text, reason = decode_source(raw, max_bytes)
    if reason is not None:
        stats.reject(reason, f"{repo}:{path}")
        return None
    language = language_of(path)
    stats.files_by_language[language] += 1
    stats.bytes_by_language[language] += len(raw)
    stats.files_by_repo[repo] += 1
    return {
        "id": file_id(repo, revision, path),
        "repo": repo,
        "path": path,
        "language": language,
        "content": text,
        "size_bytes": len(raw),
        "license": license,
        "revision": revision,
    }


def _matches(relative: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(relative, pattern) for pattern in patterns)


def read_directory(source: dict[str, Any], max_bytes: int, stats: CorpusStats) -> Iterator[dict[str, Any]]:
    root = Path(resolve_placeholders(source["path"]))
    if not root.is_dir() and source.get("optional", False):
        logger.warning("optional directory source '%s' not found at %s, skipped", source.get("repo"), root)
        stats.reject("optional_source_missing", str(root))
        return
    if not root.is_dir():
        raise FileNotFoundError(f"directory source '{source.get('repo', root)}': {root} is not a directory")
    include, exclude = source.get("include", ["*"]), source.get("exclude", [])
    max_files = source.get("max_files")
    relatives = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    selected = [r for r in relatives if _matches(r, include) and not _matches(r, exclude)][:max_files]
    repo = source.get("repo", root.name)
    for relative in tqdm(selected, desc=f"{repo} files", unit="file", leave=False):
        try:
            raw = (root / relative).read_bytes()
        except OSError:
            stats.reject(Rejection.UNREADABLE, f"{repo}:{relative}")
            continue
        record = _source_record(repo, relative, raw, max_bytes, stats, source.get("license"), source.get("revision"))
        if record is not None:
            yield record


def read_installed_packages(source: dict[str, Any], max_bytes: int, stats: CorpusStats) -> Iterator[dict[str, Any]]:
    per_package = source.get("max_files_per_package")
    for name in source.get("packages", []):
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            logger.warning("installed_packages: '%s' is not installed, skipped", name)
            stats.reject("package_not_installed", name)
            continue
        license = distribution.metadata.get("License-Expression") or distribution.metadata.get("License")
        if license and len(license) > 64:  # some packages paste the whole licence text here
            license = None
        files = sorted(
            str(f) for f in (distribution.files or [])
            if not str(f).endswith((".pyc", ".so", ".dist-info/RECORD")) and ".dist-info/" not in str(f)
        )  # fmt: skip
        repo = f"pypi/{distribution.metadata['Name']}"
        for relative in tqdm(files[:per_package], desc=f"{repo} files", unit="file", leave=False):
            path = Path(distribution.locate_file(relative))
            try:
                raw = path.read_bytes()
            except OSError:
                stats.reject(Rejection.UNREADABLE, f"{repo}:{relative}")
                continue
            record = _source_record(repo, relative, raw, max_bytes, stats, license, distribution.version)
            if record is not None:
                yield record


def read_git_history(source: dict[str, Any], max_bytes: int, stats: CorpusStats) -> Iterator[dict[str, Any]]:
    """Commit triplets of a git checkout, by the extractor of the commit pipeline (pipelines/samples/commits.py)."""
    repo_path = Path(resolve_placeholders(source["path"]))
    repo = source.get("repo", repo_path.name)
    config = CommitConfig(
        lifecycle=tuple(source.get("lifecycle", (0.0, 1.0))),
        triplets_per_repo=source.get("max_triplets", 500),
        max_files=source.get("max_files", 20),
        max_file_bytes=max_bytes,
        min_diff_lines=source.get("min_diff_lines", 1),
        max_diff_lines=source.get("max_diff_lines", 2000),
    )
    extractor = CommitTripletExtractor(config)
    triplets = extractor(repo_path, repo)
    for reason, count in extractor.rejections.items():
        stats.rejections[f"commit_{reason}"] += count
    stats.commits += len(triplets)
    yield from sorted(triplets, key=lambda t: t["lifecycle_percentile"])


FILE_READERS = {"directory": read_directory, "installed_packages": read_installed_packages}


def build_sample_corpus(config: SampleCorpusConfig, output: str | Path | None = None) -> dict[str, Any]:
    """Reads every source of `config` into shards under `output` (a local path or a URI); returns the manifest.

    On a local disk the corpus is built beside the destination and swapped in whole, so a rerun never
    mixes old and new shards and an interrupted build leaves the previous corpus untouched. An object
    store has no atomic rename: the previous corpus is deleted first, and the new one counts once its
    marker (`markers/corpus.done`, written last, naming every shard) exists.
    """
    output = fs.absolute(output or config.output)
    fs.check_location(output, "output")
    kinds = {source.get("kind") for source in config.sources}
    if kinds - set(FILE_READERS) - {"git_history"}:
        known = ", ".join([*FILE_READERS, "git_history"])
        raise ValueError(
            f"unknown source kind(s) {sorted(kinds - set(FILE_READERS) - {'git_history'})}; known: {known}"
        )
    local = fs.is_local(output)
    staging = fs.join(fs.parent(output), f".{fs.basename(output)}.building") if local else output
    fs.delete_tree(staging)
    stats = CorpusStats()
    with ShardWriter(fs.join(staging, "source_files"), SOURCE_FILE, config.rows_per_shard) as files:
        for source in config.sources:
            if source["kind"] in FILE_READERS:
                files.write_all(FILE_READERS[source["kind"]](source, config.max_file_bytes, stats))
    with ShardWriter(fs.join(staging, "commits"), COMMIT_TRIPLET, config.rows_per_shard) as commits:
        for source in config.sources:
            if source["kind"] == "git_history":
                commits.write_all(read_git_history(source, config.max_file_bytes, stats))
    source_shards = [fs.basename(p) for p in files.paths]
    commit_shards = [fs.basename(p) for p in commits.paths]
    manifest = {
        "config": asdict(config) | {"output": output},
        "python": sys.version.split()[0],
        "source_files": {"rows": files.rows_written, "shards": source_shards},
        "commits": {"rows": commits.rows_written, "shards": commit_shards},
        "files_by_language": dict(stats.files_by_language.most_common()),
        "bytes_by_language": dict(stats.bytes_by_language.most_common()),
        "files_by_repo": dict(stats.files_by_repo.most_common()),
        "rejections": dict(stats.rejections.most_common()),
    }
    atomic_write_json(fs.join(staging, "manifest.json"), manifest)
    shards = [f"source_files/{name}" for name in source_shards] + [f"commits/{name}" for name in commit_shards]
    fs.write_marker(staging, "corpus", {"rows": files.rows_written + commits.rows_written}, shards=shards)
    if local:
        previous = Path(fs.parent(output)) / f".{fs.basename(output)}.previous"
        shutil.rmtree(previous, ignore_errors=True)
        if Path(output).exists():
            Path(output).rename(previous)
        Path(staging).rename(output)
        shutil.rmtree(previous, ignore_errors=True)
    return manifest
