"""Jobs on a Ray head started on loopback for this test: through RAY_ADDRESS, and with `ray job submit`.

`ray job submit` talks to the dashboard's job server, which needs Ray's `default` extra (aiohttp,
aiohttp_cors, opencensus, prometheus_client, grpcio, ...); `ray[data]` alone does not install it
and `ray start --include-dashboard=true` then fails with "Cannot include dashboard with missing
packages". That test is skipped, with this reason, where the extra is missing.

Every port of the head is chosen free for this test. Ray's defaults for the dashboard agent's HTTP
port (52365) and the Ray Client server (10001) are fixed: a second Ray node on the machine (a local
`ray.init()` of another test run, a developer's cluster) already holds them, and the agent of this
head then fails to bind ("address already in use"), stays up without its HTTP service, and
`ray job submit` finds "No available agent to submit job" forever.
"""

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

BIN = Path(sys.executable).parent
HAS_JOB_SERVER = all(
    importlib.util.find_spec(m) for m in ("aiohttp", "aiohttp_cors", "opencensus", "prometheus_client")
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes_using(marker: str) -> list[int]:
    """Pids whose command line names `marker` (the head's own temp dir), and all their descendants.

    Ray renames some of its processes (`ray::DashboardAgent`, `ray::IDLE`), so their command lines no
    longer name the temp dir; they are found as children of the head's raylet and dashboard.
    """
    named, parent = set(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                named.add(int(entry.name))
            # the parent pid is the second field after the parenthesised command name
            parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(named), set(named)
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - found
        found |= frontier
    return sorted(found)


@pytest.fixture
def ray_head(request):
    # short path: Ray's unix sockets live under the temp dir and have a ~100 character limit
    temp_dir = tempfile.mkdtemp(prefix="lcray-", dir="/tmp")
    port, dashboard, agent, client = free_port(), free_port(), free_port(), free_port()
    with_dashboard = request.param
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{env.get('PATH', '')}"}
    start = [str(BIN / "ray"), "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}",
             f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
             "--node-ip-address=127.0.0.1", "--num-cpus=1", f"--include-dashboard={str(with_dashboard).lower()}",
             f"--temp-dir={temp_dir}", "--disable-usage-stats"]  # fmt: skip
    try:
        result = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr[-2000:]
        yield (f"http://127.0.0.1:{dashboard}" if with_dashboard else f"127.0.0.1:{port}"), env, Path(temp_dir)
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in processes_using(temp_dir):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(2)
        shutil.rmtree(temp_dir, ignore_errors=True)


def write_job(tmp_path: Path) -> tuple[Path, Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    working_dir = tmp_path / "submit"
    working_dir.mkdir()
    output = tmp_path / "out"
    job = {
        "name": "cluster",
        "output": str(output),
        "inputs": [{"kind": "directory", "path": str(stdlib / "json"), "repo": "stdlib/json", "include": ["*.py"]}],
        # the LSH-only dedup (no exact-Jaccard check, BigCode's bands) runs here; the default path elsewhere
        "steps": ["decode", "quality", "exact_dedup", {"minhash_dedup": {"verify": False, "bands": 25, "rows": 10}}],
        "tasks": {"files_per_task": 3},
        "ray": {"shuffle_partitions": 1},
    }
    (working_dir / "job.yaml").write_text(yaml.safe_dump(job))
    return working_dir, output


def check_output(output: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    assert (output / "_SUCCESS").exists()
    rows = [r for p in sorted((output / "files").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert {r["path"] for r in rows} == {p.name for p in (stdlib / "json").glob("*.py")}


@pytest.mark.parametrize("ray_head", [False], indirect=True, ids=["head"])
def test_job_runs_on_the_cluster_named_by_ray_address(ray_head, tmp_path):
    address, env, _ = ray_head
    working_dir, output = write_job(tmp_path)
    command = [str(BIN / "loopcoder"), "data", "run", str(working_dir / "job.yaml")]
    result = subprocess.run(command, env=env | {"RAY_ADDRESS": address}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    check_output(output)
    assert "job cluster" in result.stdout


# a second head with the dashboard and its job agent: with the larger sweeps (the test above covers running on a cluster)
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LOOPCODER_SLOW") != "1", reason="slow: set LOOPCODER_SLOW=1")
@pytest.mark.skipif(
    not HAS_JOB_SERVER, reason="ray job submit needs ray[default] (aiohttp, opencensus, ...) for the job server"
)
@pytest.mark.parametrize("ray_head", [True], indirect=True, ids=["head-with-dashboard"])
def test_ray_job_submit_runs_a_job_on_the_cluster(ray_head, tmp_path):
    address, env, temp_dir = ray_head
    working_dir, output = write_job(tmp_path)
    submit = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(working_dir),
              "--", "loopcoder", "data", "run", "job.yaml"]  # fmt: skip
    # the head's job agent starts a little after the head answers: a submission that finds no agent is retried
    deadline = time.monotonic() + 120
    while True:
        result = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in result.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    if "No available agent" in result.stderr:
        log = temp_dir / "session_latest" / "logs" / "dashboard_agent.log"
        agent_log = log.read_text(errors="replace")[-3000:] if log.exists() else "(no dashboard_agent.log)"
        pytest.fail(f"the head's job agent did not register within 120 s; dashboard_agent.log ends with:\n{agent_log}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "succeeded" in result.stdout
    check_output(output)
    assert "job cluster" in result.stdout  # the summary table, printed by the driver on the cluster
