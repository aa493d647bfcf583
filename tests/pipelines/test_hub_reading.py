"""`hf://` inputs read through huggingface_hub's HfFileSystem, against a local stand-in of the Hub's HTTP API.

The stand-in serves one folder as the dataset repository `org/corpus` with the four endpoints the
file system calls: revision info, tree listing, paths-info and `resolve/` downloads with ranges. The
real HfFileSystem (and pyarrow on top of it) runs unchanged; only the server is local.
"""

import hashlib
import json
import shutil
import sysconfig
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pyarrow.parquet as pq
import pytest

from loopcoder.pipelines.inspection.stats import collect_stats
from loopcoder.pipelines.io import filesystem as fs
from loopcoder.pipelines.io.readers import plan_tasks, read_task
from loopcoder.schemas import SOURCE_FILE

REPO = "org/corpus"
TOKEN = "hf_test_token_for_the_local_stand_in"
STDLIB = Path(sysconfig.get_paths()["stdlib"])


class HubStandIn(BaseHTTPRequestHandler):
    root: Path
    authorizations: list

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json", extra: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _entry(self, relative: str) -> dict:
        path = self.root / relative
        oid = hashlib.sha1(relative.encode()).hexdigest()
        if path.is_dir():
            return {"type": "directory", "path": relative, "oid": oid}
        return {"type": "file", "path": relative, "size": path.stat().st_size, "oid": oid}

    def _not_found(self) -> None:
        self._send(404, b'{"error": "Entry not found"}', extra={"X-Error-Code": "EntryNotFound"})

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.authorizations.append((self.path, self.headers.get("Authorization")))
        url = urlparse(self.path)
        path = unquote(url.path)
        api = f"/api/datasets/{REPO}/"
        if path.rstrip("/") == api.rstrip("/") or path.startswith(api + "revision/"):
            return self._send(200, json.dumps({"id": REPO, "sha": "0" * 40, "private": False}).encode())
        if path.startswith(api + "tree/main"):
            relative = path[len(api + "tree/main") :].strip("/")
            folder = self.root / relative
            if not folder.is_dir():
                return self._not_found()
            recursive = parse_qs(url.query).get("recursive", ["False"])[0].lower() == "true"
            children = folder.rglob("*") if recursive else folder.iterdir()
            entries = [self._entry(p.relative_to(self.root).as_posix()) for p in sorted(children)]
            return self._send(200, json.dumps(entries).encode())
        resolve = f"/datasets/{REPO}/resolve/main/"
        if path.startswith(resolve):
            file = self.root / path[len(resolve) :]
            if not file.is_file():
                return self._not_found()
            data = file.read_bytes()
            spec = self.headers.get("Range")
            if spec:
                start, _, end = spec.removeprefix("bytes=").partition("-")
                start, end = int(start), min(int(end) if end else len(data) - 1, len(data) - 1)
                headers = {"Content-Range": f"bytes {start}-{end}/{len(data)}", "Accept-Ranges": "bytes"}
                return self._send(206, data[start : end + 1], "application/octet-stream", headers)
            return self._send(200, data, "application/octet-stream", {"Accept-Ranges": "bytes"})
        self._not_found()

    def do_POST(self) -> None:
        self.authorizations.append((self.path, self.headers.get("Authorization")))
        path = unquote(urlparse(self.path).path)
        if not path.startswith(f"/api/datasets/{REPO}/paths-info/"):
            return self._not_found()
        form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
        wanted = [p for p in form.get("paths", []) if (self.root / p).exists()]
        self._send(200, json.dumps([self._entry(p) for p in wanted]).encode())


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A folder served as `hf://datasets/org/corpus` by the stand-in; yields (folder, requests' Authorization headers)."""
    root = tmp_path / "repo"
    shutil.copytree(STDLIB / "json", root / "code", ignore=shutil.ignore_patterns("__pycache__"))
    rows = [
        {"id": f"r{i}", "repo": "tables", "path": f"t/{i}.py", "language": "Python", "content": f"x = {i}\n",
         "size_bytes": 6, "license": "mit", "revision": None}
        for i in range(7)
    ]  # fmt: skip
    (root / "data").mkdir()
    pq.write_table(SOURCE_FILE.from_records(rows[:4]), root / "data" / "part-00000.parquet")
    pq.write_table(SOURCE_FILE.from_records(rows[4:]), root / "data" / "part-00001.parquet")
    authorizations: list = []
    handler = type("Handler", (HubStandIn,), {"root": root, "authorizations": authorizations})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fs._filesystem.cache_clear()
    yield root, authorizations
    fs._filesystem.cache_clear()
    server.shutdown()
    server.server_close()


def documents(inputs: list[dict]) -> list[dict]:
    tasks, errors = plan_tasks(inputs, files_per_task=4, rows_per_task=3)
    assert not errors, errors
    # `licence_source` names the input location itself (where the licence step looks for licence files)
    return [
        {k: v for k, v in doc.items() if k != "licence_source"}
        for task in tasks
        for doc in read_task(task, inputs[task["input"]])
    ]


def test_hub_inputs_read_as_the_same_folder_on_local_disk(hub):
    root, authorizations = hub
    remote = f"hf://datasets/{REPO}"
    for kind, folder in (("directory", "code"), ("parquet", "data")):
        over_hub = documents([{"kind": kind, "path": f"{remote}/{folder}", "repo": "r"}])
        on_disk = documents([{"kind": kind, "path": str(root / folder), "repo": "r"}])
        assert over_hub and over_hub == on_disk
    # the token comes from HF_TOKEN and is sent as the Hub expects it
    to_repo = {auth for path, auth in authorizations if REPO in path}
    assert to_repo == {f"Bearer {TOKEN}"}, authorizations


def test_shard_tools_read_a_hub_dataset(hub):
    root, _ = hub
    stats = collect_stats(f"hf://datasets/{REPO}/data")
    assert (stats.shards, stats.rows) == (2, 7) and stats.bytes_on_disk == sum(
        p.stat().st_size for p in (root / "data").glob("*.parquet")
    )
    assert fs.discover_shards(f"hf://datasets/{REPO}") == [
        f"hf://datasets/{REPO}/data/part-00000.parquet",
        f"hf://datasets/{REPO}/data/part-00001.parquet",
    ]
    with pytest.raises(FileNotFoundError):
        fs.discover_shards(f"hf://datasets/{REPO}/absent")
