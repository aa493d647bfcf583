"""The file-system layer every data job reads and writes through: local paths and object-store URIs.

A location is a string: a local path (`data/out`, `/abs/path`, `file:///abs/path`) or a URI whose
scheme names a file system:

| scheme | file system | credentials (from the environment only) |
|---|---|---|
| `s3://bucket/key` | `pyarrow.fs.S3FileSystem` | the AWS chain: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_PROFILE`, instance roles; `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` for an S3-compatible server (`AWS_REQUEST_CHECKSUM_CALCULATION=when_required` for one that takes no streamed-checksum uploads); `AWS_REGION`/`AWS_DEFAULT_REGION` |
| `gs://bucket/key` | `pyarrow.fs.GcsFileSystem` | Google's default chain (`GOOGLE_APPLICATION_CREDENTIALS`, metadata server) |
| `hf://datasets/org/name/path` | `huggingface_hub.HfFileSystem` through `pyarrow.fs.PyFileSystem(FSSpecHandler(...))` | `HF_TOKEN` (or `hf auth login`); `HF_ENDPOINT` for another Hub |
| any other | the fsspec implementation registered for it, if installed | that implementation's own |

A URI carrying credentials (`s3://KEY:SECRET@bucket`) is refused: a job writes its locations into
`config.json`, logs and cards, and a secret must never reach them. A scheme no installed file system
serves is refused by `resolve` before any work starts.

Atomicity: on a local disk a file is written to a hidden temporary name in its folder, fsynced and
renamed into place, and the folder is fsynced; the trainers' checkpoint files are written the same way,
through these writers. On an object store an object appears whole when its upload completes, or not at
all; files are therefore uploaded from memory in one piece, never streamed from a half-built writer.
Rename is not atomic there, so finished work is recognised by *markers*, never by the presence of a
shard: a stage writes its shards under deterministic names, then a marker JSON (`markers/*.done`)
naming them. `discover_shards` counts a shard only when a marker of its job lists it (in folders
that have markers), so a shard left by a crashed task is ignored, and the rerun overwrites it with
the same bytes.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

MARKERS = "markers"
MARKER_SUFFIX = ".done"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SERVED = "local paths, file://, s3://, gs://, hf:// and installed fsspec protocols"


class UnsupportedLocation(ValueError):
    """A location no installed file system serves, or one that carries credentials."""


def scheme_of(location: str | Path) -> str:
    match = _SCHEME.match(str(location))
    return match.group(1).lower() if match else ""


def is_local(location: str | Path) -> bool:
    return scheme_of(location) in ("", "file")


def absolute(location: str | Path) -> str:
    """The location with a local path made absolute (workers may run in another directory)."""
    location = str(location)
    if scheme_of(location) == "file":
        location = location[len("file://") :]
    return os.path.abspath(location) if is_local(location) else location.rstrip("/")


def join(location: str | Path, *parts: str) -> str:
    base = str(location).rstrip("/") or "/"
    tail = "/".join(p.strip("/") for p in parts if p)
    if not tail:
        return base
    return base + tail if base.endswith("/") else f"{base}/{tail}"


def basename(location: str | Path) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def parent(location: str | Path) -> str:
    location = str(location).rstrip("/")
    head, _, _ = location.rpartition("/")
    if not head or head.endswith(":/"):
        return location
    return head


def resolve(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """(file system, path inside it) for a location; raises UnsupportedLocation for one nobody serves."""
    location = str(location)
    scheme = scheme_of(location)
    if scheme in ("", "file"):
        return pafs.LocalFileSystem(), absolute(location)
    rest = location.split("://", 1)[1]
    if "@" in rest.split("/", 1)[0]:
        raise UnsupportedLocation(
            f"{scheme}://... carries credentials in the URI; remove them and set them in the environment "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for s3://, HF_TOKEN for hf://)"
        )
    return _filesystem(scheme), rest.rstrip("/")


def redacted(location: str | Path) -> str:
    """The location with any credentials in it (`scheme://user:secret@host`) replaced by `***`."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1***@", str(location))


def check_location(location: str | Path, what: str) -> None:
    """Refuses, with one line naming `what`, a location whose scheme no installed file system serves."""
    try:
        resolve(location)
    except UnsupportedLocation as error:
        raise UnsupportedLocation(f"{what} {redacted(location)}: {error}") from None


@functools.cache
def _filesystem(scheme: str) -> pafs.FileSystem:
    if scheme in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        options: dict[str, Any] = {}
        if endpoint:
            options["endpoint_override"] = endpoint
        if region:
            options["region"] = region
        # delayed open: a file written in one piece is one PUT, not three requests of a multipart upload
        # (still atomic: the object appears when the PUT completes; errors are raised at close)
        return pafs.S3FileSystem(allow_delayed_open=True, **options)
    if scheme in ("gs", "gcs"):
        return pafs.GcsFileSystem()
    if scheme == "hf":
        from huggingface_hub import HfFileSystem

        handler = HfFileSystem(endpoint=os.environ.get("HF_ENDPOINT") or None, skip_instance_cache=True)
        return pafs.PyFileSystem(pafs.FSSpecHandler(handler))
    try:
        import fsspec

        implementation = fsspec.get_filesystem_class(scheme)
        return pafs.PyFileSystem(pafs.FSSpecHandler(implementation()))
    except (ImportError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnsupportedLocation(
            f"no installed file system serves '{scheme}://' ({reason}); served: {_SERVED}"
        ) from None


def info(location: str | Path) -> pafs.FileInfo:
    fs, path = resolve(location)
    return fs.get_file_info(path)


def exists(location: str | Path) -> bool:
    return info(location).type != pafs.FileType.NotFound


def is_file(location: str | Path) -> bool:
    return info(location).type == pafs.FileType.File


def is_dir(location: str | Path) -> bool:
    """A folder; on an object store, a prefix that holds at least one object."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        return True
    if is_local(location):
        return False
    # some stores report an empty-marker-less prefix as missing: list it instead
    return bool(fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False)))


def size(location: str | Path) -> int:
    return info(location).size


def read_bytes(location: str | Path) -> bytes:
    fs, path = resolve(location)
    with fs.open_input_stream(path) as handle:
        return handle.read()


def read_json(location: str | Path) -> Any:
    return json.loads(read_bytes(location).decode("utf-8"))


def read_json_if_exists(location: str | Path) -> Any | None:
    try:
        return read_json(location)
    except FileNotFoundError:
        return None


def open_input_file(location: str | Path):
    """A seekable handle (for Parquet footers and row groups)."""
    fs, path = resolve(location)
    return fs.open_input_file(path)


def parquet_file(location: str | Path) -> pq.ParquetFile:
    return pq.ParquetFile(open_input_file(location))


def read_parquet(location: str | Path, columns: list[str] | None = None) -> pa.Table:
    fs, path = resolve(location)
    return pq.read_table(path, filesystem=fs, columns=columns)


def atomic_write_bytes(location: str | Path, data: bytes) -> None:
    """Writes `data` so that a reader sees the old file, no file or all of `data`; never a part."""
    if is_local(location):
        _write_local_atomically(resolve(location)[1], lambda tmp: Path(tmp).write_bytes(data))
        return
    fs, path = resolve(location)
    # an object appears when its upload completes; the bytes are all in hand before it starts
    with fs.open_output_stream(path) as handle:
        handle.write(data)


def atomic_write_json(location: str | Path, payload: Any) -> None:
    atomic_write_bytes(location, (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_write_parquet(table: pa.Table, location: str | Path, compression: str = "zstd") -> None:
    """Writes one Parquet file atomically: a local temporary file renamed into place, or one upload."""
    if is_local(location):
        _write_local_atomically(resolve(location)[1], lambda tmp: pq.write_table(table, tmp, compression=compression))
        return
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=compression)
    atomic_write_bytes(location, sink.getvalue().to_pybytes())


def _write_local_atomically(path: str, write) -> None:
    """`write(temporary_path)` into a hidden file beside `path`, then fsync, rename into place and fsync the folder:
    after a crash the file is the old one or the whole new one, and a completed write survives it."""
    directory = Path(path).parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".tmp", dir=directory)
    try:
        try:
            write(tmp)
            os.fsync(fd)  # any descriptor of the file flushes what was written through another
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(directory)


def fsync_directory(path: str | Path) -> None:
    """Makes the names in a local folder durable (a rename into it survives a crash once this returns)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(location: str | Path) -> None:
    """Creates a local folder; object stores have no folders to create."""
    if is_local(location):
        Path(resolve(location)[1]).mkdir(parents=True, exist_ok=True)


def delete_tree(location: str | Path) -> None:
    """Removes a folder (every object under a prefix) if it exists."""
    fs, path = resolve(location)
    if is_local(location):
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            fs.delete_dir(path)
        return
    try:
        fs.delete_dir_contents(path, missing_dir_ok=True)
    except FileNotFoundError:
        return
    except OSError:
        # pyarrow's batch delete also names the folder-marker keys (`a/b/`); S3-compatible servers that
        # keep objects as files (rclone's, for one) refuse those keys, so what is left goes one by one
        _delete_objects(fs, [f"{path}/{relative}" for relative in file_sizes(location, include_internal=True)])
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        try:
            fs.delete_dir(path)
        except OSError:  # the marker of an emptied folder, on such a server
            if file_sizes(location, include_internal=True):
                raise


def _delete_objects(fs: pafs.FileSystem, paths: list[str]) -> None:
    """Deletes objects one request each, a few dozen at a time (object stores serve deletes in parallel)."""

    def delete(path: str) -> None:
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            pass

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(delete, paths))


def delete_file(location: str | Path) -> None:
    fs, path = resolve(location)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def hidden_or_internal(relative: str) -> bool:
    """A name starting with `.` (temporary, hidden) or `_` (a job's internal state) anywhere in the path."""
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def list_files(
    location: str | Path, suffixes: tuple[str, ...] | None = None, include_internal: bool = False
) -> list[str]:
    """Relative POSIX paths of every file under a folder, sorted; `.`/`_` names skipped unless asked."""
    return sorted(file_sizes(location, suffixes, include_internal))


def file_sizes(
    location: str | Path, suffixes: tuple[str, ...] | None = None, include_internal: bool = False
) -> dict[str, int]:
    """Size in bytes of every file under a folder by relative POSIX path, from one listing (no request per file)."""
    fs, path = resolve(location)
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    prefix = path.rstrip("/") + "/"
    sizes = {}
    for entry in fs.get_file_info(selector):
        if entry.type != pafs.FileType.File or not entry.path.startswith(prefix):
            continue
        relative = entry.path[len(prefix) :]
        if suffixes is not None and not relative.endswith(suffixes):
            continue
        if not include_internal and hidden_or_internal(relative):
            continue
        sizes[relative] = entry.size
    return sizes


def marker(root: str | Path, name: str) -> str:
    return join(root, MARKERS, f"{name}{MARKER_SUFFIX}")


def read_marker(root: str | Path, name: str) -> dict[str, Any] | None:
    """The payload of a stage's marker, or None when the stage has not finished."""
    return read_json_if_exists(marker(root, name))


def write_marker(root: str | Path, name: str, payload: dict[str, Any], shards: list[str] | None = None) -> None:
    """Marks a stage finished; `shards` (paths relative to `root`) are the shards it wrote, now counted."""
    if shards is not None:
        payload = payload | {"shards": sorted(shards)}
    atomic_write_json(marker(root, name), payload)


def _marked_shards(root: str, relatives: list[str]) -> dict[str, set[str]]:
    """job root (relative to `root`, "" for itself) -> shards its markers list (relative to `root`)."""
    roots: dict[str, set[str]] = {}
    for relative in relatives:
        parts = relative.split("/")
        if len(parts) < 2 or parts[-2] != MARKERS or not relative.endswith(MARKER_SUFFIX):
            continue
        job_root = "/".join(parts[:-2])
        payload = read_json_if_exists(join(root, relative))
        if isinstance(payload, dict) and isinstance(payload.get("shards"), list):
            roots.setdefault(job_root, set()).update(
                "/".join(p for p in (job_root, shard) if p) for shard in payload["shards"]
            )
    return roots


def discover_shards(location: str | Path, suffixes: tuple[str, ...] = (".parquet",)) -> list[str]:
    """Every finished shard at or under `location`, sorted: the one shard finder of every job and tool.

    Skipped: names starting with `.` (a write in progress, hidden) or `_` (`_work/`, a job's files
    between stages), and, inside a job output whose markers list shards, every shard no marker
    lists (written by a task that did not finish). `location` may be the job output or a folder
    in it (`out/files`). A single file is returned as it is.
    """
    location = str(location)
    fs, path = resolve(location)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.File:
        if not location.endswith(suffixes):
            raise ValueError(f"{location} is not a {'/'.join(suffixes)} shard (expected a shard file or a folder)")
        return [location]
    everything = list_files(location)
    if not everything and not is_dir(location):
        raise FileNotFoundError(f"{location} does not exist")
    shards = [r for r in everything if r.endswith(suffixes)]
    marked = _marked_shards(location, everything)
    up = parent(location)
    if "" not in marked and up != location.rstrip("/"):
        # pointed at a folder of a job output (`out/files`): the job's markers are one level up
        name = basename(location)
        above = _marked_shards(up, [f"{MARKERS}/{m}" for m in list_files(join(up, MARKERS))])
        if "" in above:
            marked[""] = {s[len(name) + 1 :] for s in above[""] if s.startswith(name + "/")}
    kept = []
    for shard in shards:
        owners = [r for r in marked if r == "" or shard.startswith(r + "/")]
        if owners and shard not in marked[max(owners, key=len)]:
            continue
        kept.append(shard)
    return [join(location, shard) for shard in kept]
