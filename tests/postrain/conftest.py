"""Shared fixtures: one sandbox per isolation mode, proven contained before any attack runs."""

import os
import subprocess
import time

import pytest

from loopcoder.postrain.sandbox import Limits, Sandbox, SandboxConfig, find_bwrap

MODES = ["bwrap", "rlimit"]


def sandbox_processes(config: SandboxConfig) -> list[str]:
    """`pid uid state` of every live or zombie process running under one of the sandbox uids."""
    found = []
    low, high = config.uid_base, config.uid_base + config.uid_count
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue
        uid = int(fields["Uid"].split()[0])
        if low <= uid < high:
            found.append(f"{name} {uid} {fields['State'].strip()}")
    return found


def wait_no_sandbox_processes(config: SandboxConfig, seconds: float = 5.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while True:
        left = sandbox_processes(config)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture(scope="session")
def sentinel():
    """A host process the attacks must not reach (it stands for the trainer and other users' work)."""
    process = subprocess.Popen(["sleep", "600"])
    yield process
    process.kill()
    process.wait()


def make_sandbox(mode: str) -> Sandbox:
    if mode == "bwrap" and find_bwrap() is None:
        pytest.skip("bwrap is not installed (Debian package bubblewrap)")
    if mode == "rlimit" and os.geteuid() != 0:
        pytest.skip("the rlimit fallback can only contain attacks when it can drop to an unprivileged uid (root)")
    return Sandbox(SandboxConfig(isolation=mode))


@pytest.fixture(scope="session", params=MODES)
def sandbox(request):
    """A sandbox whose containment was proven with harmless probes: unprivileged uid, and under bwrap no host
    process visible to `kill(-1, 0)`. Attack tests only run on a sandbox that passed."""
    box = make_sandbox(request.param)
    probe = box.run_python(
        "import os\n"
        "try:\n    os.kill(-1, 0)\n    visible = 'visible'\nexcept OSError:\n    visible = 'none'\n"
        "print(os.getuid(), os.geteuid(), visible)\n",
        limits=Limits(cpu_seconds=5),
    )
    uid, euid, visible = probe.stdout.split()
    assert probe.ok, probe
    assert int(uid) >= 1000 and int(euid) >= 1000, f"containment not proven: runs as uid {uid}"
    if request.param == "bwrap":
        assert visible == "none", "containment not proven: host processes are visible from the sandbox"
    yield box
    box.close()


@pytest.fixture
def unharmed(sandbox, sentinel):
    """Checks after the test that the host is intact: sentinel alive, no process of any sandbox uid left."""
    yield
    assert sentinel.poll() is None, "a host process was killed"
    left = wait_no_sandbox_processes(sandbox.config)
    assert not left, f"sandbox processes left behind: {left}"


ATTACK_LIMITS = Limits(
    cpu_seconds=1, wall_seconds=3, memory_mb=512, max_processes=32, file_size_mb=1, stdout_bytes=64 << 10
)


@pytest.fixture(scope="session")
def best_sandbox():
    """The strongest isolation this machine offers, for tests that need not run in both modes."""
    box = make_sandbox("bwrap" if find_bwrap() else "rlimit")
    yield box
    box.close()
