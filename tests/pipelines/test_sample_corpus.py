import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from loopcoder.jobs.cli import main
from loopcoder.pipelines.io.decoding import decode_source
from loopcoder.pipelines.io.languages import language_of
from loopcoder.pipelines.sample_corpus import SampleCorpusConfig, build_sample_corpus, default_config_path
from loopcoder.schemas import COMMIT_TRIPLET, SOURCE_FILE


def git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


@pytest.fixture
def source_tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "good.py").write_text("def add(a, b):\n    return a + b  # é\n", encoding="utf-8")
    (root / "pkg" / "util.js").write_text("export const x = 1;\n", encoding="utf-8")
    (root / "pkg" / "blob.py").write_bytes(b"\x7fELF\x00\x01\x02")
    (root / "pkg" / "latin1.py").write_bytes("# caf\xe9\n".encode("latin-1"))
    (root / "pkg" / "empty.py").write_bytes(b"")
    (root / "pkg" / "huge.py").write_text("x = 1\n" * 400, encoding="utf-8")
    (root / "tests").mkdir()
    (root / "tests" / "test_skip.py").write_text("assert True\n", encoding="utf-8")
    return root


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "a.py").write_text("x = 1\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "root")
    (repo / "a.py").write_text("x = 2\n")
    (repo / "b.py").write_text("y = 3\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "change a, add b")
    (repo / "b.py").unlink()
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "delete b")
    (repo / "img.py").write_bytes(b"\x00\x01binary")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "add a binary")
    return repo


def make_config(source_tree: Path, git_repo: Path, **overrides) -> SampleCorpusConfig:
    sources = [
        {"kind": "directory", "repo": "local", "path": str(source_tree), "include": ["*.py", "*.js"],
         "exclude": ["tests/*"], "license": "MIT"},
        {"kind": "git_history", "repo": "history", "path": str(git_repo)},
    ]  # fmt: skip
    return SampleCorpusConfig(sources=sources, max_file_bytes=1000, **overrides)


def test_decode_source_names_each_rejection():
    assert decode_source(b"x = 1\n") == ("x = 1\n", None)
    assert decode_source(b"") == (None, "empty")
    assert decode_source(b"a\x00b") == (None, "binary")
    assert decode_source("é".encode("latin-1")) == (None, "not_utf8")
    assert decode_source(b"x" * 11, max_bytes=10) == (None, "too_large")


def test_language_table_covers_the_main_languages():
    expected = {
        "a.py": "Python", "A.java": "Java", "a.js": "JavaScript", "a.ts": "TypeScript", "a.c": "C",
        "a.cpp": "C++", "a.cs": "C#", "a.go": "Go", "a.rs": "Rust", "a.php": "PHP", "a.rb": "Ruby",
        "a.sh": "Shell", "README.md": "Markdown", "a.html": "HTML", "a.json": "JSON", "a.yml": "YAML",
        "src/Makefile": "Makefile", "x.unknownext": "unknown", "A.PY": "Python",
    }  # fmt: skip
    assert {path: language_of(path) for path in expected} == expected


def test_build_writes_valid_shards_and_counts_rejections(source_tree, git_repo, tmp_path):
    out = tmp_path / "corpus"
    manifest = build_sample_corpus(make_config(source_tree, git_repo), out)

    files = pq.read_table(out / "source_files" / "part-00000.parquet")
    SOURCE_FILE.validate(files)
    assert sorted(files.column("path").to_pylist()) == ["pkg/good.py", "pkg/util.js"]
    by_path = {row["path"]: row for row in files.to_pylist()}
    assert by_path["pkg/good.py"]["content"].endswith("# é\n")
    assert by_path["pkg/good.py"]["language"] == "Python" and by_path["pkg/util.js"]["language"] == "JavaScript"
    assert by_path["pkg/good.py"]["license"] == "MIT"
    assert manifest["rejections"] == {"binary": 1, "not_utf8": 1, "empty": 1, "too_large": 1, "commit_binary": 1}

    commits = pq.read_table(out / "commits" / "part-00000.parquet")
    COMMIT_TRIPLET.validate(commits)
    rows = {row["message"]: row for row in commits.to_pylist()}
    # one triplet per iteration: root -> c1 and c1 -> c2; c2 -> c3 adds a binary file and is rejected
    assert set(rows) == {"change a, add b", "delete b"}
    change = rows["change a, add b"]
    assert change["old_files"] == [{"path": "a.py", "content": "x = 1\n"}, {"path": "b.py", "content": None}]
    assert change["new_files"] == [{"path": "a.py", "content": "x = 2\n"}, {"path": "b.py", "content": "y = 3\n"}]
    assert "-x = 1\n+x = 2" in change["patch"]
    assert rows["delete b"]["new_files"] == [{"path": "b.py", "content": None}]
    assert change["lifecycle_percentile"] == 0.0 < rows["delete b"]["lifecycle_percentile"] < 1.0
    assert change["parent_commit"] == git(git_repo, "rev-list", "--max-parents=0", "HEAD").strip()
    assert manifest["commits"]["rows"] == 2
    assert json.loads((out / "manifest.json").read_text())["source_files"]["rows"] == 2


def test_binary_commit_is_a_counted_rejection(source_tree, git_repo, tmp_path):
    manifest = build_sample_corpus(make_config(source_tree, git_repo), tmp_path / "corpus")
    assert manifest["rejections"]["commit_binary"] == 1


def test_rerun_replaces_the_corpus_without_duplicates(source_tree, git_repo, tmp_path):
    out = tmp_path / "corpus"
    config = make_config(source_tree, git_repo, rows_per_shard=1)
    build_sample_corpus(config, out)
    (source_tree / "pkg" / "util.js").unlink()
    build_sample_corpus(config, out)
    shards = sorted((out / "source_files").glob("part-*.parquet"))
    assert [p.name for p in shards] == ["part-00000.parquet"]
    assert pq.read_table(shards[0]).column("path").to_pylist() == ["pkg/good.py"]
    assert not list(tmp_path.glob(".corpus.*")), "staging directories are cleaned up"


def test_corpus_on_s3_equals_local_and_a_rerun_replaces_it(source_tree, git_repo, tmp_path, s3_bucket):
    from loopcoder.pipelines.io import filesystem as fs

    config = make_config(source_tree, git_repo, rows_per_shard=1)
    local, remote = str(tmp_path / "corpus"), f"{s3_bucket}/corpus"
    build_sample_corpus(config, local)
    build_sample_corpus(config, remote)
    for root in (local, remote):
        assert fs.read_marker(root, "corpus")["shards"] == [
            "commits/part-00000.parquet", "commits/part-00001.parquet",
            "source_files/part-00000.parquet", "source_files/part-00001.parquet",
        ]  # fmt: skip
    names = [s[len(local) + 1 :] for s in fs.discover_shards(local)]
    assert names == [s[len(remote) + 1 :] for s in fs.discover_shards(remote)]
    for name in names:
        assert fs.read_bytes(fs.join(remote, name)) == fs.read_bytes(fs.join(local, name))
    (source_tree / "pkg" / "util.js").unlink()
    build_sample_corpus(config, remote)
    shards = fs.discover_shards(fs.join(remote, "source_files"))
    assert shards == [f"{remote}/source_files/part-00000.parquet"]
    assert fs.read_parquet(shards[0]).column("path").to_pylist() == ["pkg/good.py"]
    assert fs.list_files(fs.join(remote, "source_files")) == ["part-00000.parquet"]


def test_broken_git_repository_is_counted_not_fatal(source_tree, tmp_path):
    not_a_repo = tmp_path / "plain"
    not_a_repo.mkdir()
    manifest = build_sample_corpus(make_config(source_tree, not_a_repo), tmp_path / "corpus")
    assert manifest["rejections"]["commit_broken_repository"] == 1
    assert manifest["commits"]["rows"] == 0
    assert manifest["source_files"]["rows"] == 2


def test_missing_required_directory_is_a_clear_error(tmp_path):
    config = SampleCorpusConfig(sources=[{"kind": "directory", "repo": "x", "path": str(tmp_path / "nope")}])
    with pytest.raises(FileNotFoundError, match="directory source 'x'"):
        build_sample_corpus(config, tmp_path / "out")


def test_cli_builds_from_a_config_and_reports_errors_in_one_line(source_tree, git_repo, tmp_path, capsys):
    config_path = tmp_path / "corpus.yaml"
    config = make_config(source_tree, git_repo)
    config_path.write_text(
        yaml.safe_dump({"sources": config.sources, "output": str(tmp_path / "out"), "max_file_bytes": 1000})
    )
    assert main(["data", "sample-corpus", "--config", str(config_path)]) == 0
    assert "not_utf8" in capsys.readouterr().out
    assert main(["data", "sample-corpus", "--config", str(config_path), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert (manifest["source_files"]["rows"], manifest["commits"]["rows"]) == (2, 2)

    config_path.write_text(yaml.safe_dump({"sources": [], "outptu": "typo"}))
    assert main(["data", "sample-corpus", "--config", str(config_path)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"loopcoder: error: {config_path}: unknown key(s) outptu; valid keys: max_file_bytes, output, rows_per_shard, "
        "sources (rerun with --debug for the traceback)"
    )


def test_packaged_default_config_is_valid():
    config = SampleCorpusConfig.from_yaml(default_config_path())
    kinds = [source["kind"] for source in config.sources]
    assert {"directory", "installed_packages", "git_history"} <= set(kinds)
