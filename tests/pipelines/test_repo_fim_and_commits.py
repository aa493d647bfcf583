"""Repository-level FIM and commit triplets on real files and real git histories."""

import subprocess
import sysconfig
from pathlib import Path

import pytest

from loopcoder.pipelines.samples.commits import CommitConfig, CommitTripletExtractor
from loopcoder.pipelines.samples.repo_fim import (
    BM25,
    RepoFimBuilder,
    RepoFimConfig,
    imported_names,
    imports_path,
    token_counter,
)
from loopcoder.schemas.tokens import FILE_SEP, REPO_NAME, load_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
REPO_ROOT = Path(__file__).resolve().parents[2]
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}


def stdlib_package(name: str) -> list[dict]:
    files = []
    for path in sorted((STDLIB / name).rglob("*.py")):
        relative = path.relative_to(STDLIB).as_posix()
        files.append({"id": relative, "repo": name, "path": relative, "language": "Python",
                      "content": path.read_text(encoding="utf-8")})  # fmt: skip
    return files


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_context_comes_from_the_same_repository_and_respects_the_budget(tokenizer):
    repos = {name: stdlib_package(name) for name in ("json", "email", "http")}
    builder = RepoFimBuilder(
        RepoFimConfig(token_budget=6000, targets_per_repo=4), count_tokens=token_counter(tokenizer)
    )
    samples = [s for name, files in repos.items() for s in builder(name, files)]
    assert len(samples) >= 6, builder.skipped
    for sample in samples:
        own_paths = {f["path"] for f in repos[sample["repo"]]}
        assert sample["target_path"] not in sample["context_paths"]
        assert set(sample["context_paths"]) <= own_paths - {sample["target_path"]}
        assert len(tokenizer.encode(sample["text"])) == sample["num_tokens"] <= 6000
        assert sample["text"].startswith(f"{REPO_NAME}{sample['repo']}\n")
        rendered = [line[len(FILE_SEP) :] for line in sample["text"].splitlines() if line.startswith(FILE_SEP)]
        assert rendered == [*sample["context_paths"], sample["target_path"]]
        assert sample["prefix"] + sample["middle"] + sample["suffix"] == next(
            f["content"] for f in repos[sample["repo"]] if f["path"] == sample["target_path"]
        )


def test_half_fim_half_plain_renders_plain_targets_whole(tokenizer):
    from loopcoder.pipelines.samples.fim import FimConfig

    files = stdlib_package("email")
    config = RepoFimConfig(token_budget=6000, targets_per_repo=12, fim=FimConfig(fim_rate=0.5))
    samples = RepoFimBuilder(config, count_tokens=token_counter(tokenizer))("email", files)
    modes = [s["mode"] for s in samples]
    assert "plain" in modes and set(modes) - {"plain"}, modes
    contents = {f["path"]: f["content"] for f in files}
    for sample in samples:
        if sample["mode"] == "plain":
            assert sample["text"].endswith(f"{FILE_SEP}{sample['target_path']}\n{contents[sample['target_path']]}")
            assert "<|fim_middle|>" not in sample["text"] and sample["id"].endswith("-repo0")
            assert sample["prefix"] == contents[sample["target_path"]] and sample["middle"] == sample["suffix"] == ""
        else:
            assert "<|fim_middle|>" in sample["text"] and sample["id"].endswith("-repofim0")
    assert RepoFimBuilder(config, count_tokens=token_counter(tokenizer))("email", files) == samples


def test_imported_files_rank_first_and_cuts_drop_the_least_relevant():
    files = [
        {"id": "a", "repo": "r", "path": "pkg/app.py", "language": "Python",
         "content": "from pkg.helpers import tidy\nfrom . import models\n\ndef run(items):\n    return tidy(items)\n"},
        {"id": "h", "repo": "r", "path": "pkg/helpers.py", "language": "Python", "content": "def tidy(x):\n    return sorted(x)\n"},
        {"id": "m", "repo": "r", "path": "pkg/models.py", "language": "Python", "content": "class Item:\n    pass\n"},
        {"id": "u", "repo": "r", "path": "pkg/unrelated.py", "language": "Python", "content": "def zzz():\n    return 1\n" * 40},
    ]  # fmt: skip
    assert imports_path("pkg/app.py", imported_names(files[0]["content"]), "pkg/helpers.py")
    assert imports_path("pkg/app.py", imported_names(files[0]["content"]), "pkg/models.py")
    assert not imports_path("pkg/app.py", imported_names(files[0]["content"]), "pkg/unrelated.py")
    config = RepoFimConfig(targets_per_repo=4, token_budget=10_000)
    builder = RepoFimBuilder(config)
    app = next(s for s in builder("r", files) if s["target_path"] == "pkg/app.py")
    assert app["context_paths"][:2] == ["pkg/helpers.py", "pkg/models.py"]
    tight = RepoFimBuilder(RepoFimConfig(targets_per_repo=4, token_budget=app["num_tokens"] - 100))
    cut = next(s for s in tight("r", files) if s["target_path"] == "pkg/app.py")
    assert "pkg/unrelated.py" not in cut["context_paths"] and "pkg/helpers.py" in cut["context_paths"]


def test_bm25_prefers_documents_sharing_rare_terms():
    bm25 = BM25([["parse", "json", "decoder"], ["http", "client"], ["json", "encoder", "json"]])
    scores = bm25.scores(["json", "decoder"])
    assert scores[0] > scores[2] > scores[1] == 0.0


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=GIT_ENV
    ).stdout


def make_history(repo: Path, commits: int = 12) -> None:
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for i in range(commits):
        body = "".join(f"def f{j}(x):\n    return x + {j * (i + 1)}\n\n" for j in range(i + 2))
        (repo / "mod.py").write_text(body)
        (repo / f"doc{i % 3}.md").write_text(f"# Notes {i}\n\n" + "line\n" * (i + 1))
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", f"iteration {i}")


def apply_patch(tmp: Path, triplet: dict) -> dict[str, str | None]:
    """Writes R_old, `git apply`s P, returns the resulting files."""
    work = tmp / f"apply-{triplet['commit'][:8]}"
    work.mkdir()
    git(work, "init", "-q")
    for file in triplet["old_files"]:
        if file["content"] is not None:
            (work / file["path"]).parent.mkdir(parents=True, exist_ok=True)
            (work / file["path"]).write_text(file["content"])
    (work / "patch.diff").write_text(triplet["patch"])
    git(work, "apply", "--whitespace=nowarn", "patch.diff")
    return {
        f["path"]: (work / f["path"]).read_text() if (work / f["path"]).exists() else None
        for f in triplet["new_files"]
    }


@pytest.mark.parametrize("source", ["synthetic", "this_repository"])
def test_patches_apply_to_old_files_and_give_new_files(tmp_path, source):
    if source == "synthetic":
        repo = tmp_path / "repo"
        make_history(repo)
    else:
        repo = REPO_ROOT
        if git(repo, "rev-parse", "--is-shallow-repository").strip() == "true":
            pytest.skip("this checkout is shallow")
    config = CommitConfig(lifecycle=(0.4, 0.8), triplets_per_repo=6, max_files=30, max_diff_lines=5000)
    extractor = CommitTripletExtractor(config)
    triplets = extractor(repo, "r")
    history = git(repo, "rev-list", "--first-parent", "--reverse", "HEAD").split()
    if source == "this_repository" and len(history) < 6:
        pytest.skip("history too short")
    assert triplets, extractor.rejections
    for triplet in triplets:
        start = history.index(triplet["parent_commit"])
        assert 0.4 <= start / (len(history) - 1) <= 0.8
        assert triplet["lifecycle_percentile"] == pytest.approx(start / (len(history) - 1))
        assert history.index(triplet["commit"]) > start
        expected = {f["path"]: f["content"] for f in triplet["new_files"]}
        assert apply_patch(tmp_path, triplet) == expected
        assert triplet["date"]
    spans = sorted((history.index(t["parent_commit"]), history.index(t["commit"])) for t in triplets)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False))


def test_shallow_and_corrupt_repositories_are_counted_rejections(tmp_path):
    origin = tmp_path / "origin"
    make_history(origin, commits=6)
    shallow = tmp_path / "shallow"
    subprocess.run(
        ["git", "clone", "-q", "--depth", "2", f"file://{origin}", str(shallow)], check=True, capture_output=True
    )
    extractor = CommitTripletExtractor()
    assert extractor(shallow) == []
    assert extractor.rejections["shallow_repository"] == 1

    corrupt = tmp_path / "corrupt"
    subprocess.run(["git", "clone", "-q", str(origin), str(corrupt)], check=True, capture_output=True)
    head_tree = git(corrupt, "rev-parse", "HEAD~2^{tree}").strip()
    loose = corrupt / ".git" / "objects" / head_tree[:2] / head_tree[2:]
    if not loose.exists():  # objects may be packed: unpack them first
        packs = list((corrupt / ".git" / "objects" / "pack").glob("*.pack"))
        for pack in packs:
            subprocess.run(["git", "-C", str(corrupt), "unpack-objects", "-q"], input=pack.read_bytes(), check=True)
            pack.unlink()
            pack.with_suffix(".idx").unlink()
    loose.chmod(0o644)
    loose.write_bytes(b"not a zlib stream")
    extractor = CommitTripletExtractor(CommitConfig(lifecycle=(0.0, 1.0), triplets_per_repo=10))
    triplets = extractor(corrupt, "corrupt")
    assert extractor.rejections["git_error"] >= 1
    assert all(t["parent_commit"] != git(corrupt, "rev-parse", "HEAD~2").strip() for t in triplets)

    not_a_repo = tmp_path / "plain"
    not_a_repo.mkdir()
    extractor = CommitTripletExtractor()
    assert extractor(not_a_repo) == [] and extractor.rejections["broken_repository"] == 1


def test_merges_reverts_and_formatting_only_changes_do_not_become_triplets(tmp_path):
    repo = tmp_path / "repo"
    make_history(repo, commits=3)
    (repo / "mod.py").write_text((repo / "mod.py").read_text().replace("    return", "        return"))
    git(repo, "commit", "-qam", "reindent")
    git(repo, "revert", "--no-edit", "HEAD")
    extractor = CommitTripletExtractor(CommitConfig(lifecycle=(0.6, 1.0), min_diff_lines=1))
    triplets = extractor(repo, "r")
    assert triplets == []
    assert extractor.rejections["formatting_only"] + extractor.rejections["revert"] >= 1
