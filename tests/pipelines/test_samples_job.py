"""The samples job end to end on local Ray: FIM, repo-level FIM, commits, mixture, packing, resume."""

import json
import subprocess
import sysconfig
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from loopcoder.pipelines.samples_job import SamplesJobConfig, render_commit, run_samples_job
from loopcoder.schemas import COMMIT_TRIPLET, FIM_SAMPLE, PACKED_SEQUENCE, REPO_FIM_SAMPLE, SOURCE_FILE

STDLIB = Path(sysconfig.get_paths()["stdlib"])
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("samples")
    rows = []
    for package in ("json", "email"):
        for path in sorted((STDLIB / package).glob("*.py"))[:8]:
            text = path.read_text(encoding="utf-8")
            rows.append({"id": f"{package}/{path.name}", "repo": package, "path": f"{package}/{path.name}",
                         "language": "Python", "content": text, "size_bytes": len(text.encode()),
                         "license": None, "revision": None})  # fmt: skip
    (root / "in").mkdir()
    pq.write_table(SOURCE_FILE.from_records(rows[::2]), root / "in" / "part-0.parquet")
    pq.write_table(SOURCE_FILE.from_records(rows[1::2]), root / "in" / "part-1.parquet")
    repo = root / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    for i in range(8):
        (repo / "calc.py").write_text("".join(f"def f{j}(x):\n    return x * {j + i}\n\n" for j in range(i + 3)))
        subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
        subprocess.run(["git", "-C", str(repo), "commit", "-qm", f"step {i}"], check=True, env=GIT_ENV)
    return {"root": root, "rows": {r["id"]: r for r in rows}, "repo": repo}


def make_config(inputs, output: Path) -> SamplesJobConfig:
    return SamplesJobConfig(
        name="samples-test",
        output=str(output),
        input=str(inputs["root"] / "in"),
        git_repositories=[{"path": str(inputs["repo"]), "repo": "calc"}],
        fim={"fim_rate": 0.5, "seed": 1},
        repo_fim={"token_budget": 3000, "targets_per_repo": 2},
        commits={"lifecycle": [0.0, 1.0], "triplets_per_repo": 3, "min_diff_lines": 1},
        packing={"seq_len": 512, "split_long_documents": True},
        mixture={
            "total_tokens": 20_000,
            "categories": {c: {"weight": 1} for c in ("file", "file_fim", "repo_fim", "commit")},
        },
        rows_per_shard=50,
    )


@pytest.fixture(scope="module")
def job_output(ray_local, inputs, tmp_path_factory):
    output = tmp_path_factory.mktemp("out") / "samples"
    stats = run_samples_job(make_config(inputs, output))
    return output, stats


def test_every_output_conforms_and_fim_reconstructs_the_files(job_output, inputs):
    output, stats = job_output
    fim = pq.read_table(output / "fim")
    FIM_SAMPLE.validate(pq.read_table(output / "fim" / "part-00000.parquet"))
    for sample in fim.to_pylist():
        assert sample["prefix"] + sample["middle"] + sample["suffix"] == inputs["rows"][sample["source_id"]]["content"]
    repo_fim = pq.read_table(output / "repo_fim" / "part-00000.parquet")
    REPO_FIM_SAMPLE.validate(repo_fim)
    for sample in repo_fim.to_pylist():
        assert all(path.startswith(sample["repo"] + "/") for path in sample["context_paths"])
        assert sample["target_path"] not in sample["context_paths"] and sample["num_tokens"] <= 3000
    commits = pq.read_table(output / "commits" / "part-00000.parquet")
    COMMIT_TRIPLET.validate(commits)
    assert commits.num_rows == 3 and "<|file_sep|>patch\n" in render_commit(commits.to_pylist()[0])
    assert stats["fim"]["files"] == len(inputs["rows"]) and stats["fim"]["samples"] == fim.num_rows


def test_packed_rows_hold_the_mixture_that_stats_report(job_output):
    output, stats = job_output
    packed = pq.read_table(output / "packed")
    for shard in sorted((output / "packed").glob("*.parquet")):
        PACKED_SEQUENCE.validate(pq.read_table(shard))
    tokens = Counter()
    for row in packed.to_pylist():
        assert len(row["input_ids"]) == 512
        tokens[row["category"]] += row["cu_seqlens"][row["num_documents"]]
    assert dict(tokens) == stats["packed"]["tokens_by_category"]
    assert set(tokens) == {"file", "file_fim", "repo_fim", "commit"}
    assert "| file |" in stats["mixture"] and json.loads((output / "stats.json").read_text()) == stats


def test_rerun_resumes_and_a_fresh_run_gives_the_same_bytes(job_output, inputs, tmp_path):
    output, stats = job_output
    before = {p: p.read_bytes() for p in sorted(output.rglob("*.parquet"))}
    assert run_samples_job(make_config(inputs, output)) == stats  # finished: answered from stats.json
    (output / "_SUCCESS").unlink()
    (output / "markers" / "pack.done").unlink()
    (output / "markers" / "files-00001.done").unlink()
    rerun = run_samples_job(make_config(inputs, output))
    assert {p: p.read_bytes() for p in sorted(output.rglob("*.parquet"))} == before
    assert rerun["packed"] == stats["packed"]
    fresh = tmp_path / "fresh"
    run_samples_job(make_config(inputs, fresh))
    for name in ("fim", "repo_fim", "commits", "packed"):
        for shard in sorted((output / name).glob("*.parquet")):
            assert pq.read_table(fresh / name / shard.name).equals(pq.read_table(shard)), shard


def test_another_config_into_the_same_output_is_refused(job_output, inputs):
    output, _ = job_output
    config = make_config(inputs, output)
    config.fim = {"fim_rate": 0.9}
    with pytest.raises(ValueError, match="different config"):
        run_samples_job(config)


def test_shard_tools_read_the_packed_output(job_output):
    from loopcoder.pipelines.inspection import validate_shards
    from loopcoder.pipelines.inspection.stats import collect_stats

    output, stats = job_output
    inspected = collect_stats(output / "packed")
    packed = pq.read_table(output / "packed")
    assert inspected.tokens == sum(len(ids) for ids in packed.column("input_ids").to_pylist())
    assert dict(inspected.categories) == dict(Counter(packed.column("category").to_pylist()))
    assert inspected.documents == sum(packed.column("num_documents").to_pylist())
    whole = collect_stats(output)
    assert whole.records["fim_sample"]["rows"] == pq.read_table(output / "fim").num_rows
    assert validate_shards(output)[1] == []


def test_input_shards_with_nothing_kept_fail_the_job_loudly(ray_local, inputs, tmp_path):
    from loopcoder.pipelines.job import JobFailed

    empty = tmp_path / "nothing_kept"
    empty.mkdir()
    pq.write_table(SOURCE_FILE.from_records([]), empty / "part-0.parquet")
    config = make_config(inputs, tmp_path / "out")
    config.input, config.git_repositories, config.mixture = str(empty), [], None
    with pytest.raises(JobFailed, match=r"0 input file\(s\) and 0 document\(s\) gave no packed sequence"):
        run_samples_job(config)
    assert (tmp_path / "out" / "stats.json").exists() and not (tmp_path / "out" / "_SUCCESS").exists()
