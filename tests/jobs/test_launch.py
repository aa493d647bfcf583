"""The launch scripts of jobs/launch/: every command documented in docs/launch.md, run as written with --dry-run,
prints the command the page says it runs; a few run for real (--print-config) to show the printed line works."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LAUNCH_DOC = ROOT / "docs" / "launch.md"


def program(line: str) -> str:
    """The program a shell line runs, after its VAR=value assignments."""
    return next(word for word in shlex.split(line) if not re.fullmatch(r"[A-Z_]+=.*", word))


def documented_commands() -> list[tuple[str, list[str]]]:
    """(command line, the `# runs:` lines after it) for each script invocation in the bash blocks of the page."""
    blocks = re.findall(r"```bash\n(.*?)```", LAUNCH_DOC.read_text(), flags=re.S)
    found: list[tuple[str, list[str]]] = []
    for block in blocks:
        for line in block.splitlines():
            if line.startswith("# runs: "):
                assert found, f"'{line}' follows no command"
                found[-1][1].append(line.removeprefix("# runs: "))
            elif "jobs/launch/" in line and not line.startswith("#") and program(line) != "sbatch":
                found.append((line, []))
    return found


def launch_env(**extra: str) -> dict[str, str]:
    """The environment a user has, minus what would make the printed paths machine-specific."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    for knob in ("CONFIG", "LAUNCHER", "NPROC", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "HOSTFILE"):
        env.pop(knob, None)
    env.pop("DRY_RUN", None)
    env.update({"LOOPCODER": "loopcoder", "PYTHON": "python3", **extra})
    return env


def run_line(line: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


COMMANDS = documented_commands()


def test_the_page_documents_every_script_and_launcher():
    lines = " ".join(line for line, _ in COMMANDS)
    for script in ("train_sft.sh", "train_grpo.sh", "slurm_train.sbatch"):
        assert f"jobs/launch/{script}" in lines
    outputs = " ".join(" ".join(runs) for _, runs in COMMANDS)
    for launcher in ("python3 -m loopcoder.jobs.cli", "torchrun", "deepspeed --no_local_rank", "--hostfile", "srun"):
        assert launcher in outputs
    assert "--nnodes 2 --node_rank 1" in outputs
    assert all(runs for _, runs in COMMANDS), "a documented command has no `# runs:` line"


@pytest.mark.parametrize(("line", "expected"), COMMANDS, ids=[line for line, _ in COMMANDS])
def test_documented_command_prints_what_the_page_says(line, expected):
    result = run_line(f"{line} --dry-run", launch_env())
    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()
    assert [shlex.split(p) for p in printed] == [shlex.split(e) for e in expected]


def test_printed_command_is_quoted_for_the_shell():
    result = run_line("jobs/launch/train_sft.sh --dry-run 'output_dir=runs/a b' 'note=it''s'", launch_env())
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout)[-2:] == ["output_dir=runs/a b", "note=its"]


def test_dry_run_also_from_the_environment():
    result = run_line("DRY_RUN=1 NPROC=2 jobs/launch/train_grpo.sh", launch_env())
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout)[:3] == ["torchrun", "--nproc_per_node", "2"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("jobs/launch/launch.sh pretrain", "usage:"),
        ("jobs/launch/train_sft.sh --dryrun", "unknown argument '--dryrun'"),
        ("jobs/launch/train_sft.sh max_steps", "unknown argument 'max_steps'"),
        ("LAUNCHER=mpirun jobs/launch/train_sft.sh --dry-run", "LAUNCHER must be torchrun or deepspeed"),
        ("NNODES=2 NPROC=8 jobs/launch/train_sft.sh --dry-run", "set MASTER_ADDR"),
    ],
)
def test_bad_invocations_are_refused_with_a_reason(line, message):
    result = run_line(line, launch_env())
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("line", "copies", "default_data"),
    [
        ("jobs/launch/train_sft.sh --print-config max_steps=7", 1, "sft_easy: data/samples/packed/sft_easy"),
        ("NPROC=2 jobs/launch/train_grpo.sh --print-config max_steps=7", 2, "problems: data/rl_mined/problems"),
    ],
    ids=["one-process-sft", "torchrun-2-grpo"],
)
def test_printed_command_runs(line, copies, default_data):
    """The command is executed for real (the trainer prints its resolved config and exits): one process, and
    torchrun starting two. The default configs train on the pipeline's data: the samples job's conversations
    and the problems mined from the corpus."""
    env = launch_env(
        PYTHON=sys.executable, MASTER_PORT=str(free_port()), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}"
    )
    result = run_line(line, env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("max_steps: 7") == copies
    assert result.stdout.count(default_data) == copies
