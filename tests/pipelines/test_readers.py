"""Readers: planning is deterministic, every unreadable thing is a counted reason or a one-line input error."""

import json
import os
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopcoder.pipelines.io.readers import plan_tasks, read_task


def git(repo: Path, *args: str) -> str:
    env = os.environ | {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
    }
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


def read_all(inputs, **sizes):
    tasks, errors = plan_tasks(inputs, **sizes)
    docs = [d for t in tasks for d in read_task(t, inputs[t["input"]], max_bytes=1000)]
    return tasks, errors, docs


def test_directory_reader_lists_sorted_files_and_names_reader_rejections(tmp_path):
    root = tmp_path / "src"
    (root / "pkg" / ".git").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("a = 1\n")
    (root / "pkg" / "b.js").write_text("let b = 1;\n")
    (root / "pkg" / "big.py").write_text("x" * 2000)
    (root / "pkg" / ".git" / "HEAD").write_text("ref: x\n")
    (root / "pkg" / "loop").symlink_to(root / "pkg")  # a directory symlink pointing at its parent
    (root / "pkg" / "self").symlink_to(root / "pkg" / "self")  # a symlink loop
    spec = {"kind": "directory", "path": str(root), "repo": "local", "license": "MIT"}
    tasks, errors, docs = read_all([spec], files_per_task=2)
    assert errors == {}
    assert [t["files"] for t in tasks] == [["pkg/a.py", "pkg/b.js"], ["pkg/big.py", "pkg/loop"], ["pkg/self"]]
    by_path = {d["path"]: d for d in docs}
    assert by_path["pkg/a.py"]["raw"] == b"a = 1\n" and by_path["pkg/a.py"]["language"] == "Python"
    assert by_path["pkg/b.js"]["language"] == "JavaScript" and by_path["pkg/b.js"]["license"] == "MIT"
    assert by_path["pkg/big.py"]["reader_reason"] == "too_large" and by_path["pkg/big.py"]["raw"] is None
    assert by_path["pkg/loop"]["reader_reason"] == "symlink"
    assert by_path["pkg/self"]["reader_reason"] == "symlink"


def test_an_object_store_folder_is_read_in_order_with_sizes_from_the_listing(s3_bucket, monkeypatch):
    from loopcoder.pipelines.io import filesystem as fs
    from loopcoder.pipelines.io import readers

    names = [f"pkg/m{i:03d}.py" for i in range(150)]  # more than one window of concurrent reads
    for i, name in enumerate(names):
        fs.atomic_write_bytes(f"{s3_bucket}/src/{name}", (f"v = {i}\n" if i != 7 else "x" * 2000).encode())
    spec = {"kind": "directory", "path": f"{s3_bucket}/src", "repo": "remote"}
    tasks, errors = plan_tasks([spec], files_per_task=100)
    assert errors == {} and [len(t["files"]) for t in tasks] == [100, 50]
    assert tasks[0]["sizes"][7] == 2000 and tasks[0]["sizes"][8] == len("v = 8\n")
    asked = []
    monkeypatch.setattr(readers.fs, "size", lambda location: asked.append(location) or 0)
    docs = [d for t in tasks for d in read_task(t, spec, max_bytes=1000)]
    assert asked == []  # no request per object but its GET
    assert [d["path"] for d in docs] == names
    assert docs[7]["reader_reason"] == "too_large" and docs[7]["raw"] is None
    assert all(d["raw"] == f"v = {i}\n".encode() for i, d in enumerate(docs) if i != 7)


def test_git_reader_reads_blobs_at_a_revision_and_counts_missing_objects(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "a.py").write_text("x = 1\n")
    (repo / "lost.py").write_text("lost = True\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "one")
    head = git(repo, "rev-parse", "HEAD").strip()
    (repo / "a.py").write_text("x = 2\n")  # working-tree changes are not read
    lost = git(repo, "rev-parse", "HEAD:lost.py").strip()
    (repo / ".git" / "objects" / lost[:2] / lost[2:]).unlink()  # a truncated checkout: one blob is gone
    spec = {"kind": "git", "path": str(repo), "repo": "owner/repo"}
    tasks, errors, docs = read_all([spec])
    assert errors == {}
    by_path = {d["path"]: d for d in docs}
    assert by_path["a.py"]["raw"] == b"x = 1\n" and by_path["a.py"]["revision"] == head
    assert by_path["a.py"]["repo"] == "owner/repo"
    assert by_path["lost.py"]["reader_reason"] == "unreadable"


def test_unlistable_inputs_are_one_line_errors_and_the_others_still_planned(tmp_path):
    broken_git = tmp_path / "broken"
    broken_git.mkdir()
    git(broken_git, "init", "-q")
    (broken_git / "a.py").write_text("x = 1\n")
    git(broken_git, "add", ".")
    git(broken_git, "commit", "-qm", "one")
    tree = git(broken_git, "rev-parse", "HEAD^{tree}").strip()
    (broken_git / ".git" / "objects" / tree[:2] / tree[2:]).unlink()
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    good = tmp_path / "good"
    good.mkdir()
    (good / "a.py").write_text("x = 1\n")
    inputs = [
        {"kind": "git", "path": str(broken_git)},
        {"kind": "parquet", "path": str(corrupt)},
        {"kind": "directory", "path": str(tmp_path / "missing")},
        {"kind": "directory", "path": str(good)},
    ]
    tasks, errors = plan_tasks(inputs)
    assert [t["input"] for t in tasks] == [3]
    assert set(errors) == {f"0:{broken_git}", f"1:{corrupt}", f"2:{tmp_path / 'missing'}"}
    assert all("\n" not in message for message in errors.values())
    assert "cannot read Parquet file" in errors[f"1:{corrupt}"]
    with pytest.raises(ValueError, match="unknown kind 'ftp'"):
        plan_tasks([{"kind": "ftp", "path": "x"}])


def test_table_readers_understand_the_stack_columns(tmp_path):
    rows = [
        {"content": "def f():\n    return 1\n", "max_stars_repo_name": "o/r", "max_stars_repo_path": "src/f.py",
         "lang": "Python", "max_stars_repo_licenses": ["MIT"], "hexsha": "abc"},
        {"content": "x = 2\n", "max_stars_repo_name": "o/r", "max_stars_repo_path": "g.py", "lang": "Python",
         "max_stars_repo_licenses": [], "hexsha": "def"},
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows * 3), tmp_path / "data.parquet", row_group_size=2)
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    tasks, errors, docs = read_all([{"kind": "parquet", "path": str(tmp_path / "data.parquet")}], rows_per_task=4)
    assert [t["rows"] for t in tasks] == [[0, 4], [4, 6]]
    assert [d["path"] for d in docs] == ["src/f.py", "g.py"] * 3
    assert docs[0]["repo"] == "o/r" and docs[0]["license"] == "MIT" and docs[0]["revision"] == "abc"
    assert docs[1]["license"] is None and docs[0]["content"].startswith("def f")
    _, _, docs = read_all([{"kind": "jsonl", "path": str(tmp_path / "data.jsonl")}])
    assert [d["reader_reason"] for d in docs] == [None, None, "bad_record"]
    assert docs[0]["size_bytes"] == len(rows[0]["content"])


def test_stack_v2_columns_flags_and_licences(tmp_path):
    rows = [
        {"blob_id": "b1", "content": "def f():\n    return 1\n", "repo_name": "o/r", "path": "src/f.py",
         "language": "Python", "detected_licenses": ["Apache-2.0", "MIT"], "revision_id": "r1",
         "is_vendor": False, "is_generated": False},
        {"blob_id": "b2", "content": "x = 2\n", "repo_name": "o/r", "path": "third_party/x.py",
         "language": "Python", "detected_licenses": [], "revision_id": "r1", "is_vendor": True, "is_generated": False},
        {"blob_id": "b3", "content": "y = 3\n", "repo_name": "o/r", "path": "gen/y.py",
         "language": "Python", "detected_licenses": [], "revision_id": "r1", "is_vendor": False, "is_generated": True},
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "v2.parquet")
    _, errors, docs = read_all([{"kind": "parquet", "path": str(tmp_path / "v2.parquet")}])
    assert errors == {}
    assert [(d["id"], d["revision"], d["reader_reason"]) for d in docs] == [
        ("b1", "r1", None), ("b2", "r1", "vendor"), ("b3", "r1", "generated")
    ]  # fmt: skip
    assert docs[0]["license"] == "Apache-2.0" and docs[0]["licenses"] == ["Apache-2.0", "MIT"]
    kept = read_all([{"kind": "parquet", "path": str(tmp_path / "v2.parquet"), "keep_vendor": True}])[2]
    assert [d["reader_reason"] for d in kept] == [None, None, "generated"]


def test_a_table_without_content_is_a_one_line_input_error_at_planning(tmp_path):
    listing = [{"blob_id": "b1", "path": "a.py", "repo_name": "o/r"}]  # The Stack v2 as published: ids, no content
    pq.write_table(pa.Table.from_pylist(listing), tmp_path / "ids.parquet")
    (tmp_path / "ids.jsonl").write_text(json.dumps(listing[0]) + "\n")
    (tmp_path / "good.jsonl").write_text(json.dumps({"content": "x = 1\n"}) + "\n")
    inputs = [
        {"kind": "parquet", "path": str(tmp_path / "ids.parquet")},
        {"kind": "jsonl", "path": str(tmp_path / "ids.jsonl")},
        {"kind": "jsonl", "path": str(tmp_path / "good.jsonl"), "columns": {"content": "code"}},
        {"kind": "jsonl", "path": str(tmp_path / "good.jsonl")},
    ]
    tasks, errors = plan_tasks(inputs)
    assert [t["input"] for t in tasks] == [3]
    assert set(errors) == {f"{i}:{inputs[i]['path']}" for i in range(3)}
    for message in errors.values():
        assert "\n" not in message and "no content column" in message
    assert "found blob_id, path, repo_name" in errors[f"0:{tmp_path / 'ids.parquet'}"]
    assert "'code' (columns.content)" in errors[f"2:{tmp_path / 'good.jsonl'}"]


def test_jsonl_is_split_by_bytes_on_line_boundaries_without_losing_or_doubling_a_line(tmp_path):
    lines = [
        json.dumps({"content": f"v{i} = '{'é' * (i % 7)}{'x' * (i * 13 % 41)}'\n", "id": f"d{i}"}) for i in range(60)
    ]
    lines[10], lines[30] = "", "not json"  # a blank line (skipped) and a bad record (counted)
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    size = path.stat().st_size
    expected = [line for line in lines if line.strip()]
    for bytes_per_task in (1, 2, 37, 100, 1000, size, 10 * size):
        tasks, errors, docs = read_all([{"kind": "jsonl", "path": str(path)}], bytes_per_task=bytes_per_task)
        assert errors == {} and len(tasks) == -(-size // bytes_per_task)
        got = [d["id"] if d["reader_reason"] is None else "bad" for d in docs]
        assert got == [json.loads(line)["id"] if line != "not json" else "bad" for line in expected], bytes_per_task
    unterminated = tmp_path / "tail.jsonl"
    unterminated.write_bytes(b'{"content": "a = 1"}\n{"content": "b = 2"}')  # no final newline
    for bytes_per_task in (1, 5, 25, 100):
        docs = read_all([{"kind": "jsonl", "path": str(unterminated)}], bytes_per_task=bytes_per_task)[2]
        assert [d["content"] for d in docs] == ["a = 1", "b = 2"]


def test_each_parquet_row_group_is_read_once_by_one_task(tmp_path, monkeypatch):
    from loopcoder.pipelines.io import filesystem as fs

    rows = [{"content": f"x = {i}\n", "path": f"f{i}.py"} for i in range(23)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet", row_group_size=3)
    reads: list[tuple[int, int]] = []  # (task, row group)
    current = {"task": -1}

    class CountingParquetFile(pq.ParquetFile):
        def read_row_group(self, i, *args, **kwargs):
            reads.append((current["task"], i))
            return super().read_row_group(i, *args, **kwargs)

        def read_row_groups(self, row_groups, *args, **kwargs):
            reads.extend((current["task"], i) for i in row_groups)
            return super().read_row_groups(row_groups, *args, **kwargs)

    # every Parquet read of the readers goes through `filesystem.parquet_file`
    monkeypatch.setattr(fs, "parquet_file", lambda location: CountingParquetFile(fs.open_input_file(location)))
    for rows_per_task in (1, 3, 4, 7, 100):
        reads.clear()
        spec = {"kind": "parquet", "path": str(tmp_path / "t.parquet")}
        tasks, errors = plan_tasks([spec], rows_per_task=rows_per_task)
        docs = []
        for task in tasks:
            current["task"] = task["task"]
            docs += list(read_task(task, spec))
        assert errors == {} and [d["path"] for d in docs] == [r["path"] for r in rows]
        assert sorted(group for _, group in reads) == list(range(8)), rows_per_task  # 8 row groups, each read once
        assert all(task["rows"][1] - task["rows"][0] >= min(rows_per_task, 3) for task in tasks[:-1])
