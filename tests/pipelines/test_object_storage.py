"""The clean job, the samples job, the shard tools and cards on a local S3 server, against local-disk runs.

The server is moto's S3 server on loopback (`s3_server` in conftest.py); the jobs reach it through
the environment (AWS_ENDPOINT_URL and AWS_* credentials) exactly as they would reach real S3.
"""

import contextlib
import io
import json
import logging
import os
import re
import shutil
import sysconfig
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from loopcoder.jobs.cli import main
from loopcoder.pipelines.clean.job import JobConfig
from loopcoder.pipelines.clean.runner import run_job
from loopcoder.pipelines.io import filesystem as fs
from loopcoder.pipelines.publishing import build_card
from loopcoder.pipelines.samples.job import SamplesJobConfig, run_samples_job
from loopcoder.schemas import FILTERED_FILE

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")


def make_corpus(root: Path) -> Path:
    """Python sources with exact and near duplicates, and a JSONL table."""
    corpus = root / "corpus"
    shutil.copytree(STDLIB / "json", corpus / "json", ignore=shutil.ignore_patterns("__pycache__"))
    (corpus / "copy").mkdir()
    shutil.copy(STDLIB / "json" / "decoder.py", corpus / "copy" / "decoder.py")
    text = (STDLIB / "json" / "encoder.py").read_text()
    (corpus / "copy" / "encoder_edited.py").write_text(text.replace("def ", "def  ", 3))
    (corpus / "copy" / "blank.py").write_text("")
    tables = root / "tables"
    tables.mkdir()
    rows = [{"path": f"snippets/s{i}.py", "content": f"def f{i}(x):\n    return x + {i}\n"} for i in range(5)]
    (tables / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows) + "not json\n")
    return root


def upload(local: Path, location: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.atomic_write_bytes(fs.join(location, path.relative_to(local).as_posix()), path.read_bytes())


def job_raw(source: str) -> dict:
    return {
        "name": "object-storage",
        "output": "unused",
        "inputs": [{"kind": "directory", "path": f"{source}/corpus", "repo": "corpus"},
                   {"kind": "jsonl", "path": f"{source}/tables", "repo": "tables"}],
        "tasks": {"files_per_task": 3},
        "steps": ["decode", "quality", "ast", "exact_dedup", {"minhash_dedup": {"threshold": 0.7}}],
        # Ray tasks and Ray Data's dedup stages on the object store, as on a cluster
        "ray": {"executor": "ray", "dedup_here_max_mb": 0, "num_cpus": 1, "shuffle_partitions": 2},
    }  # fmt: skip


def shard_bytes(output: str) -> dict[str, bytes]:
    """Every shard the shard finder counts, by path relative to the output, with its exact bytes."""
    return {shard[len(output) + 1 :]: fs.read_bytes(shard) for shard in fs.discover_shards(output)}


def without_timings(stats: dict) -> dict:
    """The figures of a job's stats, without its timings and its fingerprint (which covers the input locations)."""
    stats = json.loads(json.dumps(stats))
    stats.pop("timings_seconds", None)
    stats.pop("fingerprint", None)
    for stage in (stats.get("dedup") or {}).values():
        if isinstance(stage, dict):
            stage.pop("seconds", None)
    return stats


def samples_config(source: str, output: str) -> SamplesJobConfig:
    return SamplesJobConfig(
        name="samples-object-storage", output=output, input=f"{source}/files",
        fim={"fim_rate": 0.5, "seed": 3}, repo_fim={"token_budget": 2000, "targets_per_repo": 1},
        packing={"seq_len": 256, "split_long_documents": True}, rows_per_shard=20,
        # the SFT dedup runs the clean job's dedup stages, which the clean job's runs here already take through S3
        sft_dedup=None,
    )  # fmt: skip


@pytest.fixture(scope="module")
def local_source(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("source"))


@pytest.fixture(scope="module")
def runs(ray_local, s3_server, local_source, tmp_path_factory):
    """The clean job then the samples job, once on local disk and once with input and output on S3."""
    bucket = s3_server.bucket()
    upload(local_source, f"{bucket}/source")
    local = str(tmp_path_factory.mktemp("local"))
    records = logging.getLogger()
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    records.addHandler(handler)
    level = records.level
    records.setLevel(logging.DEBUG)
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            result = {
                "local": run_job(JobConfig.from_dict(job_raw(str(local_source))), f"{local}/clean"),
                "s3": run_job(JobConfig.from_dict(job_raw(f"{bucket}/source")), f"{bucket}/clean"),
            }
            run_samples_job(samples_config(f"{local}/clean", f"{local}/samples"))
            run_samples_job(samples_config(f"{bucket}/clean", f"{bucket}/samples"))
    finally:
        records.removeHandler(handler)
        records.setLevel(level)
    return {"local": local, "s3": bucket, "stats": result, "log": captured.getvalue()}


@pytest.mark.parametrize("job", ["clean", "samples"])
def test_jobs_on_s3_write_the_bytes_a_local_run_writes(runs, job):
    local, remote = shard_bytes(f"{runs['local']}/{job}"), shard_bytes(f"{runs['s3']}/{job}")
    assert local and local.keys() == remote.keys()
    for name in local:
        assert remote[name] == local[name], name
    local_stats = fs.read_json(f"{runs['local']}/{job}/stats.json")
    remote_stats = fs.read_json(f"{runs['s3']}/{job}/stats.json")
    assert without_timings(remote_stats) == without_timings(local_stats)
    assert fs.exists(f"{runs['s3']}/{job}/_SUCCESS")
    if job == "clean":
        for name in (n for n in local if n.startswith("files/")):
            FILTERED_FILE.validate(pq.read_table(io.BytesIO(local[name])))
        reasons = local_stats["rejected"]["by_reason"]
        assert reasons["exact_duplicate"] >= 1 and reasons["empty"] == 1 and local_stats["dedup"]["exact"]["removed"]


def test_dedup_stages_in_the_driver_on_s3_write_the_bytes_of_ray_data_on_local_disk(runs, caplog):
    """The clean job's dedup in the driver, whose parts run several at a time on an object store."""
    raw = job_raw(f"{runs['s3']}/source")
    raw["ray"] = raw["ray"] | {"dedup_here_max_mb": 32}
    output = f"{runs['s3']}/clean_dedup_in_driver"
    with caplog.at_level(logging.INFO, logger="loopcoder.pipelines.dedup.stages"):
        run_job(JobConfig.from_dict(raw), output)
    assert "dedup stages in this process" in caplog.text
    assert shard_bytes(output) == shard_bytes(f"{runs['local']}/clean")


def shards_cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["shards", *args])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("job", ["clean", "samples"])
def test_shard_tools_read_s3_as_they_read_local_disk(runs, job, capsys):
    local, remote = f"{runs['local']}/{job}", f"{runs['s3']}/{job}"
    code, out = shards_cli(capsys, "validate", remote)
    assert code == 0 and re.search(r"(\d+) of \1 shard\(s\) valid", out)
    figures = {}
    for where, location in (("local", local), ("s3", remote)):
        code, out = shards_cli(capsys, "stats", location, "--json")
        assert code == 0
        figures[where] = json.loads(out)
        figures[where].pop("path")
        figures[where].pop("stats_files")
    assert figures["s3"] == figures["local"] and figures["s3"]["shards"] > 0
    code, out = shards_cli(capsys, "show", remote, "--n", "1")
    assert code == 0 and "part-" in out


def test_an_unmarked_shard_on_s3_is_invisible_to_readers_and_tools(runs, capsys):
    output = f"{runs['s3']}/clean"
    before = collect(output)
    # a task that crashed after writing its shard and before its marker leaves exactly this behind
    stray = fs.join(output, "files", "part-09999-of-09999.parquet")
    fs.atomic_write_bytes(stray, fs.read_bytes(fs.discover_shards(fs.join(output, "files"))[0]))
    try:
        assert stray not in fs.discover_shards(output) and collect(output) == before
        code, out = shards_cli(capsys, "validate", output)
        assert code == 0 and f"{before['shards']} of {before['shards']} shard(s) valid" in out
        from loopcoder.pipelines.io.readers import plan_tasks

        tasks, errors = plan_tasks([{"kind": "parquet", "path": f"{output}/files"}])
        assert not errors and stray not in {task["path"] for task in tasks}
    finally:
        fs.delete_file(stray)


def collect(location: str) -> dict:
    from loopcoder.pipelines.inspection.stats import collect_stats

    figures = collect_stats(location).to_json()
    figures.pop("path")
    return figures


def test_credentials_reach_no_config_log_stats_or_card(runs):
    secrets = [os.environ[name] for name in SECRETS]
    assert runs["log"] and "object-storage" in json.dumps(runs["stats"])
    build = build_card(f"{runs['s3']}/clean", with_charts=False)
    texts = [runs["log"], json.dumps(runs["stats"]), build]
    for output in (f"{runs['s3']}/clean", f"{runs['s3']}/samples"):
        for relative in fs.list_files(output, include_internal=True):
            if relative.endswith((".json", ".done", "_SUCCESS")):
                texts.append(fs.read_bytes(fs.join(output, relative)).decode())
    assert len(texts) > 20
    for text in texts:
        assert not any(secret in text for secret in secrets)


CARD_TABLES = {
    "Languages": "languages",
    "Categories": "categories",
    "Tokens per category": "tokens_by_category",
    "FIM split kinds": "fim_split_kinds",
    "Rejections by reason": "rejections",
}


def card_figures(card: str) -> dict:
    """Every figure a card states, read back from its text."""
    figures: dict = {"tables": {}}
    summary = re.search(
        r"loopcoder: ([\d,]+) rows in ([\d,]+) Parquet shards \(([\d,.]+) MB\)(, ([\d,]+) tokens)?", card
    )
    figures["rows"], figures["shards"] = int(summary[1].replace(",", "")), int(summary[2].replace(",", ""))
    figures["mb"] = float(summary[3].replace(",", ""))
    figures["tokens"] = int(summary[5].replace(",", "")) if summary[5] else None
    languages = re.search(r", (\d+) languages\.", card)
    figures["language_count"] = int(languages[1]) if languages else 0
    for title in CARD_TABLES:
        block = re.search(
            rf"\*\*{re.escape(title)}\*\*\n\n\| value \| count \| share \|\n\|---\|---\|---\|\n((?:\|.*\|\n)+)", card
        )
        if block:
            rows = [line.strip("|").split("|") for line in block[1].splitlines()]
            figures["tables"][CARD_TABLES[title]] = {v.strip(): int(c.strip().replace(",", "")) for v, c, _ in rows}
    configs = re.findall(r"^\| `\w+` \| `\w+` \| ([\d,]+) \| ([\d,]+) \|", card, re.MULTILINE)
    figures["config_shards"] = sum(int(s.replace(",", "")) for s, _ in configs)
    figures["config_rows"] = sum(int(r.replace(",", "")) for _, r in configs)
    lengths = re.search(r"^Lengths \((.+)\): (.+)\.$", card, re.MULTILINE)
    figures["lengths"] = (lengths[1], {k: float(v.replace(",", "")) for k, v in (p.split(" ") for p in lengths[2].split(", "))}) if lengths else None  # fmt: skip
    clusters = re.search(r"Near-duplicate clusters: ([\d,]+)\.", card)
    figures["clusters"] = int(clusters[1].replace(",", "")) if clusters else None
    return figures


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("job", ["clean", "samples"])
def test_every_figure_of_the_card_equals_shards_stats(runs, job, where, capsys):
    output = f"{runs[where]}/{job}"
    code, out = shards_cli(capsys, "stats", output, "--json")
    stats = json.loads(out)
    assert code == 0 and main(["data", "card", output]) == 0
    card = fs.read_bytes(fs.join(output, "README.md")).decode()
    figures = card_figures(card)
    assert (figures["rows"], figures["shards"]) == (stats["rows"], stats["shards"])
    assert (figures["config_rows"], figures["config_shards"]) == (stats["rows"], stats["shards"])
    assert figures["mb"] == round(stats["bytes_on_disk"] / 1e6, 1) and figures["tokens"] == stats["tokens"]
    assert figures["language_count"] == len(stats["languages"])
    shown = {key: counts for key, counts in stats.items() if key in CARD_TABLES.values() and counts}
    assert figures["tables"] == {key: dict(list(counts.items())[:25]) for key, counts in shown.items()}
    if stats["length_percentiles"]:
        unit, values = figures["lengths"]
        assert unit == stats["length_unit"]
        assert values == {k: float(f"{v:.0f}") for k, v in stats["length_percentiles"].items()}
    assert figures["clusters"] == stats["dedup_clusters"]
    job_stats = fs.read_json(fs.join(output, "stats.json"))
    if job == "clean":
        # the card's rejections are the job's own count, once (never the job's plus the shards')
        assert figures["tables"]["rejections"] == job_stats["rejected"]["by_reason"]
    # the resolved job config the job wrote is shown, as written
    config = fs.read_json(fs.join(output, "config.json"))
    block = re.search(r"Resolved job configuration \(`config.json`\):\n\n```yaml\n(.*?)```", card, re.DOTALL)
    assert block and yaml.safe_load(block[1]) == config and "No resolved job config" not in card
    assert fs.exists(fs.join(output, "charts", "lengths.png"))
