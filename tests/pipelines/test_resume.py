"""A job whose driver is killed part-way, rerun, gives the uninterrupted run's output byte for byte.

The killed run writes to a local folder or to the local S3 server (conftest.py), where rename is not
atomic and only markers tell finished work from a crashed task's leftovers.
"""

import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import yaml

from loopcoder.pipelines.clean.job import JobConfig
from loopcoder.pipelines.clean.runner import run_job
from loopcoder.pipelines.io import filesystem as fs


def bytes_by_shard(output: str | Path) -> dict[str, bytes]:
    """Every shard the shard finder counts (files/ and rejected/), by relative path, with its bytes."""
    output = str(output)
    return {shard[len(output) + 1 :]: fs.read_bytes(shard) for shard in fs.discover_shards(output)}


def descendants(pid: int) -> list[int]:
    """Every process whose parent chain leads to `pid` (the local Ray the killed driver started)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def resume_job(output: str) -> dict:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return {
        "name": "resume",
        "output": output,
        "inputs": [{"kind": "directory", "path": str(stdlib / "email"), "repo": "stdlib/email", "include": ["*.py"]},
                   {"kind": "directory", "path": str(stdlib / "json"), "repo": "stdlib/json", "include": ["*.py"]}],
        "tasks": {"files_per_task": 2},
        "steps": ["decode", "quality", "ast", "exact_dedup", "minhash_dedup"],
        "ray": {"executor": "ray", "num_cpus": 1, "shuffle_partitions": 2},  # a killed driver on Ray
    }  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(ray_local, tmp_path_factory) -> tuple[str, dict]:
    output = str(tmp_path_factory.mktemp("reference") / "out")
    return output, run_job(JobConfig.from_dict(resume_job(output)))


SLOW = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("LOOPCODER_SLOW") != "1", reason="slow: set LOOPCODER_SLOW=1"),
]


# the local variant exercises the same marker and file-system code as the S3 one, on local paths
@pytest.mark.parametrize("storage", [pytest.param("local", marks=SLOW), "s3"])
def test_killed_driver_then_rerun_equals_uninterrupted_run(uninterrupted, storage, tmp_path, request):
    reference_output, reference = uninterrupted
    killed = str(tmp_path / "killed") if storage == "local" else request.getfixturevalue("s3_bucket") + "/killed"
    raw = resume_job(killed)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(raw))
    driver = subprocess.Popen(
        [sys.executable, "-m", "loopcoder.jobs.cli", "data", "run", str(config), "--output", killed],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=os.environ | {"RAY_ADDRESS": ""},
    )  # fmt: skip
    markers = fs.join(killed, "_work", "documents")
    deadline = time.monotonic() + 240
    try:
        while len(fs.list_files(markers, suffixes=(".done",))) < 3:
            assert driver.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.2)
        ray_processes = descendants(driver.pid)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        for pid in descendants(driver.pid) + ([driver.pid] if driver.poll() is None else []):
            os.kill(pid, signal.SIGKILL)
    for pid in ray_processes:  # the killed driver's own Ray instance
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    done = len(fs.list_files(markers, suffixes=(".done",)))
    assert 3 <= done < reference["tasks"] and not fs.exists(fs.join(killed, "_SUCCESS"))

    resumed = run_job(JobConfig.from_dict(raw), killed)
    expected = bytes_by_shard(reference_output)
    assert expected and bytes_by_shard(killed) == expected
    assert resumed["steps"] == reference["steps"] and resumed["output"] == reference["output"]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LOOPCODER_SLOW") != "1", reason="slow: set LOOPCODER_SLOW=1")
def test_killed_worker_is_retried_and_the_output_is_unchanged(ray_local, tmp_path):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    raw = {
        "name": "worker-kill",
        "output": str(tmp_path / "unused"),
        "inputs": [{"kind": "directory", "path": str(stdlib / "json"), "repo": "stdlib/json", "include": ["*.py"]}],
        "tasks": {"files_per_task": 1},
        "steps": ["decode", "quality", "exact_dedup", "minhash_dedup"],
        "ray": {"executor": "ray", "shuffle_partitions": 1},  # a killed Ray worker; in this process it is the driver
    }
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(raw))
    reference = run_job(JobConfig.from_dict(raw), tmp_path / "reference")
    marker = tmp_path / "killed-once"
    env = os.environ | {"RAY_ADDRESS": "", "LOOPCODER_FAULT_KILL_TASK": "2", "LOOPCODER_FAULT_MARKER": str(marker)}
    command = [
        sys.executable,
        "-m",
        "loopcoder.jobs.cli",
        "data",
        "run",
        str(config),
        "--output",
        str(tmp_path / "out"),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert marker.exists()  # a worker did die on task 2
    assert bytes_by_shard(tmp_path / "out") == bytes_by_shard(tmp_path / "reference")
    assert reference["tasks"] == 5
