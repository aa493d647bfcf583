"""Readers: local directories, git checkouts, JSONL and Parquet tables, split into deterministic tasks.

Reading happens in two steps so that a job can resume:

1. `plan_tasks(inputs, ...)` runs on the driver and lists the work: sorted file lists (directories),
   blobs at one revision (git), line-aligned byte ranges (JSONL; a compressed file whole) and
   runs of whole row groups (Parquet). A table without a content column is an input error here. It depends only on the
   inputs and the task sizes, never on the number of workers. An input that cannot be listed at
   all (missing directory, truncated checkout, corrupt Parquet footer) becomes an entry in
   `input_errors` with a one-line message; the other inputs are still planned.
2. `read_task(task)` runs on a worker and yields documents (dicts with the `source_file` columns
   plus `raw` bytes or `content` text, and `reader_reason` for a file the reader already rejects:
   `symlink`, `unreadable`, `too_large` from its size, `bad_record` for an unparsable JSON line).

`path` is a local path or a URI that `loopcoder.pipelines.io.filesystem` serves (`s3://`, `gs://`,
`hf://datasets/...`); a git input is a local checkout. Table folders are listed by the one shard
finder (`filesystem.discover_shards`), so unmarked shards of a job output are never read.

Input kinds and their keys (YAML `inputs:` entries):

| kind | keys |
|---|---|
| `directory` | `path`, `repo` (default: folder name), `include`/`exclude` globs, `license`, `revision` |
| `git` | `path` (a checkout), `repo`, `revision` (default `HEAD`), `include`/`exclude`, `license` |
| `jsonl` | `path` (file or folder of `*.jsonl[.gz]`), `columns` (our name -> column), `repo`, `license`, `keep_vendor`, `keep_generated` |
| `parquet` | `path` (file or folder of `*.parquet`), `columns`, `repo`, `license`, `keep_vendor`, `keep_generated` |
| `warc` | `path` (file or folder of `*.warc[.gz]`, `*.wet[.gz]`), `repo`, `main_content`, `code_blocks` (see `io/warc.py`) |

Table columns default to The Stack's names where ours are absent (v1: `max_stars_repo_name`,
`max_stars_repo_path`, `lang`, `max_stars_repo_licenses`, `hexsha`; v2: `blob_id`, `repo_name`,
`detected_licenses`, `revision_id`); v2's `is_vendor` and `is_generated` reject a row as `vendor`
or `generated` unless the input sets `keep_vendor` or `keep_generated`.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from loopcoder.pipelines.io import filesystem as fs
from loopcoder.pipelines.io.decoding import DEFAULT_MAX_FILE_BYTES, Rejection
from loopcoder.pipelines.io.languages import language_of
from loopcoder.pipelines.io.warc import WARC_SUFFIXES, warc_documents
from loopcoder.pipelines.sample_corpus import file_id

GIT_TIMEOUT_SECONDS = 120
TABLE_COLUMNS = {
    "id": ("id", "blob_id"),
    "content": ("content", "text"),
    "path": ("path", "max_stars_repo_path", "file_path", "filepath"),
    "repo": ("repo", "max_stars_repo_name", "repo_name", "repository"),
    "language": ("language", "lang"),
    "license": ("license", "max_stars_repo_licenses", "licenses", "detected_licenses"),
    "revision": ("revision", "max_stars_repo_head_hexsha", "revision_id", "hexsha", "commit"),
    "is_vendor": ("is_vendor",),
    "is_generated": ("is_generated",),
}
# The Stack v2's flags: a true value is a counted rejection under this reason unless the input sets `keep_<flag>`.
FLAG_REASONS = {"is_vendor": "vendor", "is_generated": "generated"}
JSONL_LINE_PROBE_BYTES = 1 << 20  # bytes read from the head of a JSONL file to find its columns at planning
SKIPPED_DIRS = {".git", ".hg", ".svn", "__pycache__"}
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")


def _matches(relative: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(relative, p) for p in patterns)


def _selected(relative: str, spec: dict[str, Any]) -> bool:
    return _matches(relative, spec.get("include", ["*"])) and not _matches(relative, spec.get("exclude", []))


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def plan_tasks(
    inputs: list[dict[str, Any]], files_per_task: int = 500, rows_per_task: int = 2000, bytes_per_task: int = 64 << 20
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(tasks, input_errors): tasks are JSON-able dicts `{"input": i, "kind": ..., ...}` in a fixed order.

    `files_per_task` sizes directory and git tasks, `rows_per_task` Parquet tasks (whole row
    groups), `bytes_per_task` JSONL tasks (byte ranges of uncompressed files).
    """
    sizes = {"files": files_per_task, "rows": rows_per_task, "bytes": bytes_per_task}
    tasks: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    for index, spec in enumerate(inputs):
        kind = spec.get("kind")
        planner = PLANNERS.get(kind)
        if planner is None:
            raise ValueError(f"input {index}: unknown kind '{kind}'; known: {', '.join(PLANNERS)}")
        try:
            for task in planner(spec, sizes):
                tasks.append({"input": index, "kind": kind} | task)
        except (OSError, ValueError, RuntimeError, subprocess.TimeoutExpired) as error:
            errors[f"{index}:{spec.get('path')}"] = f"{type(error).__name__}: {error}"
    for number, task in enumerate(tasks):
        task["task"] = number
    return tasks, errors


def _plan_directory(spec, sizes):
    files_per_task = sizes["files"]
    if not fs.is_local(spec["path"]):
        yield from _plan_remote_directory(spec, files_per_task)
        return
    root = Path(spec["path"])
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    relatives = []
    # Symlinked directories are not followed (no loops); symlinked files are listed and rejected as `symlink`.
    for folder, dirs, files in os.walk(root, followlinks=False):
        links = [d for d in dirs if (Path(folder) / d).is_symlink()]
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and d not in links)
        base = Path(folder).relative_to(root)
        for name in files + links:
            relative = (base / name).as_posix()
            if _selected(relative, spec):
                relatives.append(relative)
    for chunk in _chunks(sorted(set(relatives)), files_per_task):
        yield {"files": chunk}


def _plan_remote_directory(spec, files_per_task):
    """A folder on an object store: every object under the prefix (no symlinks exist there).

    Sizes come from the listing and go into the task, so the size limit needs no request of its own
    (pyarrow's reader still sends a HEAD before each GET: its Python API opens objects by name only).
    """
    location = spec["path"]
    if not fs.is_dir(location):
        raise FileNotFoundError(f"{location} is not a directory (no object under this prefix)")
    sizes = fs.file_sizes(location, include_internal=True)
    relatives = [
        relative
        for relative in sorted(sizes)
        if not any(part in SKIPPED_DIRS for part in relative.split("/")[:-1]) and _selected(relative, spec)
    ]
    for chunk in _chunks(relatives, files_per_task):
        yield {"files": chunk, "sizes": [sizes[relative] for relative in chunk]}


def _git(path: Path, *args: str, input: bytes | None = None) -> bytes:
    result = subprocess.run(
        ["git", "-C", str(path), *args], capture_output=True, input=input, timeout=GIT_TIMEOUT_SECONDS
    )
    if result.returncode != 0:
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RuntimeError(f"git {args[0]} failed in {path}: {lines[-1] if lines else 'unknown error'}")
    return result.stdout


def _plan_git(spec, sizes):
    files_per_task = sizes["files"]
    if not fs.is_local(spec["path"]):
        raise ValueError(f"{spec['path']}: a git input is a local checkout, not an object-store location")
    path = Path(spec["path"])
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory")
    revision = _git(path, "rev-parse", "--verify", spec.get("revision", "HEAD") + "^{commit}").decode().strip()
    listing = _git(path, "ls-tree", "-r", "-z", "--long", "--full-tree", revision)
    entries = []
    for item in listing.split(b"\x00"):
        if not item:
            continue
        meta, name = item.split(b"\t", 1)
        mode, kind, blob, size = meta.split()
        relative = name.decode("utf-8", "surrogateescape")
        if kind != b"blob" or not _selected(relative, spec):
            continue
        # a missing object shows its size as "BAD" (truncated checkout): it is read, and counted unreadable
        entries.append([relative, blob.decode(), int(size) if size.isdigit() else 0, mode == b"120000"])
    for chunk in _chunks(entries, files_per_task):
        yield {"revision": revision, "blobs": chunk}


def _table_files(spec, suffixes) -> list[str]:
    """The table files of an input: the file itself, or every finished one under a folder (the one shard finder)."""
    location = str(spec["path"])
    if fs.is_file(location):
        return [location]
    return fs.discover_shards(location, suffixes)


def _check_content_column(names, spec: dict[str, Any], location: str) -> None:
    """A table input without a content column is an input error at planning, not a failure inside a worker."""
    if _column(list(names), spec, "content") is None:
        mapped = (spec.get("columns") or {}).get("content")
        looked_for = f"'{mapped}' (columns.content)" if mapped else ", ".join(TABLE_COLUMNS["content"])
        raise ValueError(
            f"{location}: no content column (looked for {looked_for}; found {', '.join(sorted(names)) or 'none'}); "
            "map one with `columns: {content: NAME}`, or join the file contents first (The Stack v2 lists blob ids)"
        )


def _plan_jsonl(spec, sizes):
    """Uncompressed files in byte ranges of about `bytes_per_task`; a compressed file is one task.

    A range `[start, end)` holds the lines whose first byte lies in it (see `_read_jsonl`), so
    consecutive ranges hold every line exactly once whatever the cut points.
    """
    for path in _table_files(spec, JSONL_SUFFIXES):
        columns = _jsonl_columns(path)
        if columns:  # a file whose head holds no JSON object has no columns to check
            _check_content_column(columns, spec, path)
        if path.endswith(".gz"):
            yield {"path": path}
            continue
        size = fs.size(path) or 0
        for start in range(0, max(size, 1), sizes["bytes"]):
            yield {"path": path, "bytes": [start, min(start + sizes["bytes"], size)]}


def _jsonl_columns(path: str) -> set[str]:
    """The keys of the first JSON object in a JSONL file's first megabyte."""
    with fs.open_input_file(path) as stream:
        head = stream.read(JSONL_LINE_PROBE_BYTES)
    if path.endswith(".gz"):
        head = gzip.GzipFile(fileobj=io.BytesIO(head)).read1(JSONL_LINE_PROBE_BYTES) if head else b""
    for line in head.splitlines():
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(row, dict):
            return set(row)
    return set()


def _plan_parquet(spec, sizes):
    """Whole row groups, gathered into tasks of about `rows_per_task` rows: each row group is read by one task, once."""
    for path in _table_files(spec, (".parquet",)):
        try:
            metadata = fs.parquet_file(path).metadata
        except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a corrupt footer
            raise ValueError(f"cannot read Parquet file {path}: {error}") from None
        _check_content_column(metadata.schema.to_arrow_schema().names, spec, path)
        first_group, first_row, rows = 0, 0, 0
        for index in range(metadata.num_row_groups):
            rows += metadata.row_group(index).num_rows
            if rows - first_row >= sizes["rows"] or index == metadata.num_row_groups - 1:
                yield {"path": path, "row_groups": [first_group, index + 1], "rows": [first_row, rows]}
                first_group, first_row = index + 1, rows


def _plan_warc(spec, _sizes):
    for path in _table_files(spec, WARC_SUFFIXES):
        yield {"path": str(path)}


PLANNERS = {
    "directory": _plan_directory,
    "git": _plan_git,
    "jsonl": _plan_jsonl,
    "parquet": _plan_parquet,
    "warc": _plan_warc,
}


def _doc(spec, path, *, repo, revision=None, license=None, raw=None, content=None, size=0, reason=None, **extra):
    doc = {
        "id": extra.get("id") or file_id(repo, revision, path),
        "repo": repo,
        "path": path,
        "language": extra.get("language") or language_of(path),
        "content": content,
        "raw": raw,
        "size_bytes": size,
        "license": license if license is not None else spec.get("license"),
        "revision": revision if revision is not None else spec.get("revision"),
        "reader_reason": reason,
        "licenses": extra.get("licenses"),  # every entry of a list column, for the licence step
    }
    return doc


def read_task(
    task: dict[str, Any], spec: dict[str, Any], max_bytes: int | None = DEFAULT_MAX_FILE_BYTES
) -> Iterator[dict]:
    """The documents of one planned task, in a fixed order."""
    if task["kind"] not in ("directory", "git"):
        yield from READERS[task["kind"]](task, spec, max_bytes)
        return
    # where the licence step looks for the repository's licence files (pipelines/steps/licences.py)
    source = (task["kind"], str(spec["path"]), task.get("revision"))
    for doc in READERS[task["kind"]](task, spec, max_bytes):
        doc["licence_source"] = source
        yield doc


def _read_directory(task, spec, max_bytes):
    if not fs.is_local(spec["path"]):
        yield from _read_remote_directory(task, spec, max_bytes)
        return
    root = Path(spec["path"])
    repo = spec.get("repo", root.name)
    for relative in task["files"]:
        path = root / relative
        try:
            info = path.lstat()
        except OSError:
            yield _doc(spec, relative, repo=repo, reason=Rejection.UNREADABLE)
            continue
        if stat.S_ISLNK(info.st_mode):
            yield _doc(spec, relative, repo=repo, reason="symlink")
        elif not stat.S_ISREG(info.st_mode):
            yield _doc(spec, relative, repo=repo, reason=Rejection.UNREADABLE)
        elif max_bytes is not None and info.st_size > max_bytes:
            yield _doc(spec, relative, repo=repo, size=info.st_size, reason=Rejection.TOO_LARGE)
        else:
            try:
                raw = path.read_bytes()
            except OSError:
                yield _doc(spec, relative, repo=repo, size=info.st_size, reason=Rejection.UNREADABLE)
                continue
            yield _doc(spec, relative, repo=repo, raw=raw, size=len(raw))


# Objects fetched at once by one task: an object store answers each GET after tens of milliseconds,
# so a task that read its objects one by one would spend most of its time waiting.
REMOTE_READ_CONCURRENCY = 16


def _fetch_object(
    location: str, size: int | None, max_bytes: int | None
) -> tuple[bytes | None, int | None, str | None]:
    """(content, size, rejection) of one object; `size` from the plan, or asked for when the plan predates sizes."""
    try:
        if size is None:
            size = fs.size(location)
        if max_bytes is not None and size is not None and size > max_bytes:
            return None, size, Rejection.TOO_LARGE
        raw = fs.read_bytes(location)
    except OSError:
        return None, None, Rejection.UNREADABLE
    return raw, len(raw), None


def _read_remote_directory(task, spec, max_bytes):
    repo = spec.get("repo", fs.basename(spec["path"]))
    files = task["files"]
    sizes = task.get("sizes") or [None] * len(files)
    with ThreadPoolExecutor(REMOTE_READ_CONCURRENCY) as pool:
        for start in range(0, len(files), REMOTE_READ_CONCURRENCY * 4):  # a window, so memory stays bounded
            window = files[start : start + REMOTE_READ_CONCURRENCY * 4]
            fetched = pool.map(
                _fetch_object,
                [fs.join(spec["path"], relative) for relative in window],
                sizes[start : start + len(window)],
                [max_bytes] * len(window),
            )
            for relative, (raw, size, reason) in zip(window, fetched, strict=True):
                if reason is not None:
                    yield _doc(spec, relative, repo=repo, size=size or 0, reason=reason)
                else:
                    yield _doc(spec, relative, repo=repo, raw=raw, size=size)


def _read_git(task, spec, max_bytes):
    root = Path(spec["path"])
    repo = spec.get("repo", root.resolve().name)
    revision = task["revision"]
    wanted = [entry for entry in task["blobs"] if not entry[3] and (max_bytes is None or entry[2] <= max_bytes)]
    contents: dict[str, bytes | None] = {}
    if wanted:
        request = "".join(f"{blob}\n" for _, blob, _, _ in wanted).encode()
        try:
            contents = _parse_cat_file(_git(root, "cat-file", "--batch", input=request))
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            contents = {}
    for relative, blob, size, is_link in task["blobs"]:
        common = {"repo": repo, "revision": revision, "size": size}
        if is_link:
            yield _doc(spec, relative, reason="symlink", **common)
        elif max_bytes is not None and size > max_bytes:
            yield _doc(spec, relative, reason=Rejection.TOO_LARGE, **common)
        elif contents.get(blob) is None:
            yield _doc(spec, relative, reason=Rejection.UNREADABLE, **common)
        else:
            yield _doc(spec, relative, raw=contents[blob], **common)


def _parse_cat_file(output: bytes) -> dict[str, bytes | None]:
    """`git cat-file --batch` output: `<oid> blob <size>\\n<bytes>\\n` or `<oid> missing\\n` per object."""
    contents, position = {}, 0
    while position < len(output):
        end = output.index(b"\n", position)
        header = output[position:end].split()
        position = end + 1
        if len(header) < 3:
            contents[header[0].decode()] = None
            continue
        size = int(header[2])
        contents[header[0].decode()] = output[position : position + size]
        position += size + 1
    return contents


def _column(names: list[str], spec: dict[str, Any], field: str) -> str | None:
    mapped = (spec.get("columns") or {}).get(field)
    if mapped:
        return mapped if mapped in names else None
    return next((c for c in TABLE_COLUMNS[field] if c in names), None)


def _table_docs(rows: list[dict[str, Any]], names: list[str], spec: dict[str, Any], max_bytes, source: str):
    columns = {field: _column(names, spec, field) for field in TABLE_COLUMNS}
    if columns["content"] is None and names:  # a range of only unparsable lines has no columns: bad records
        raise ValueError(f"{source}: no content column (looked for {', '.join(TABLE_COLUMNS['content'])})")
    default_repo = spec.get("repo", Path(fs.basename(spec["path"])).stem)
    for number, row in enumerate(rows):
        if row is None:
            # named like a row without a path column: where the input lives is not part of the record
            yield _doc(spec, f"{fs.basename(source)}#{number}", repo=default_repo, reason="bad_record")
            continue
        value = {field: row.get(column) if column else None for field, column in columns.items()}
        path = str(value["path"] or f"{fs.basename(source)}#{number}")
        license = value["license"]
        licenses = [str(x) for x in license] if isinstance(license, list | tuple) else None
        if isinstance(license, list | tuple):
            license = license[0] if license else None
        content = value["content"]
        if not isinstance(content, str):
            yield _doc(spec, path, repo=str(value["repo"] or default_repo), reason="bad_record")
            continue
        size = len(content.encode("utf-8", "surrogatepass"))
        flagged = next(
            (reason for flag, reason in FLAG_REASONS.items() if value[flag] and not spec.get(f"keep_{flag[3:]}")), None
        )
        yield _doc(
            spec,
            path,
            repo=str(value["repo"] or default_repo),
            revision=value["revision"],
            license=license,
            content=content,
            size=size,
            id=value["id"],
            language=value["language"],
            licenses=licenses,
            reason=flagged,
        )


def _jsonl_range(path: str, start: int, end: int) -> bytes:
    """The lines whose first byte lies in `[start, end)`: from the first line start at or after `start`
    (the byte before it is a newline, or it is 0) through the end of the line holding byte `end - 1`."""
    chunk = 1 << 20
    with fs.open_input_file(path) as stream:
        if start > 0:
            stream.seek(start - 1)
            while True:  # skip the rest of the line the previous range holds
                block = stream.read(chunk)
                newline = block.find(b"\n")
                if not block:
                    return b""
                if newline >= 0:
                    stream.seek(stream.tell() - len(block) + newline + 1)
                    break
        begin = stream.tell()
        if begin >= end:
            return b""
        data = bytearray(stream.read(end - begin))
        while data and not data.endswith(b"\n"):  # finish the last line started in the range
            block = stream.read(chunk)
            if not block:
                break
            newline = block.find(b"\n")
            data += block if newline < 0 else block[: newline + 1]
            if newline >= 0:
                break
        return bytes(data)


def _read_jsonl(task, spec, max_bytes):
    path = task["path"]
    if "bytes" in task:
        start, end = task["bytes"]
        data = _jsonl_range(path, start, end)
    else:
        start, data = 0, fs.read_bytes(path)
        if path.endswith(".gz"):
            data = gzip.decompress(data)
    rows, names = [], set()
    # a text stream splits lines as reading the file did (\n, \r, \r\n), not on every Unicode separator
    for line in io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            names.update(row)
        else:
            row = None
        rows.append(row)
    # rows without a path are named `file#n`; a later range of the file is `file@offset#n`
    source = path if not start else f"{path}@{start}"
    yield from _table_docs(rows, sorted(names), spec, max_bytes, source)


def _read_parquet(task, spec, max_bytes):
    path = task["path"]
    handle = fs.parquet_file(path)
    names = handle.schema_arrow.names
    wanted = sorted({c for f in TABLE_COLUMNS if (c := _column(names, spec, f))})
    if "row_groups" in task:
        first, last = task["row_groups"]
        table = handle.read_row_groups(list(range(first, last)), columns=wanted)
    else:  # a plan written before tasks were whole row groups: the row groups overlapping its rows
        start, stop = task["rows"]
        groups, offset = [], 0
        for index in range(handle.num_row_groups):
            size = handle.metadata.row_group(index).num_rows
            if offset < stop and offset + size > start:
                groups.append((index, offset))
            offset += size
        if not groups:
            return
        table = handle.read_row_groups([g for g, _ in groups], columns=wanted)
        table = table.slice(start - groups[0][1], stop - start)
    yield from _table_docs(table.to_pylist(), names, spec, max_bytes, path)


def _read_warc(task, spec, max_bytes):
    with fs.open_input_file(task["path"]) as stream:
        yield from warc_documents(stream, spec, _doc, fs.basename(task["path"]), max_bytes)


READERS = {
    "directory": _read_directory,
    "git": _read_git,
    "jsonl": _read_jsonl,
    "parquet": _read_parquet,
    "warc": _read_warc,
}
