"""One test per attack: each asserts the verdict and that the host is unharmed afterwards.

Every test runs in both isolation modes (bwrap, and the rlimit fallback with a uid drop); the `sandbox`
fixture proves containment with harmless probes first, and the `unharmed` fixture checks after each attack
that a host sentinel process is alive and that no process of any sandbox uid is left (live or zombie) but the
sandbox's own fork servers, each without any process of an execution left under it.
"""

import os
import socket
import stat
import tempfile
import time
from dataclasses import replace

import pytest

from loopcoder.postrain.sandbox.runners import (
    MEMORY_EXCEEDED,
    OUTPUT_TOO_LARGE,
    PASSED,
    TIMED_OUT,
    TestCase,
    run_test,
)

from .conftest import ATTACK_LIMITS, sandbox_processes

pytestmark = pytest.mark.timeout(60)


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(child) for child in handle.read().split()]
    except OSError:
        return []


@pytest.fixture
def unharmed(sandbox, sentinel):
    """After the attack: the sentinel lives, and no process of any sandbox uid is left, live or zombie, except
    the sandbox's idle fork servers (under bwrap, its monitor and the server; the server with no child)."""
    yield
    assert sentinel.poll() is None, "a host process was killed"
    deadline = time.monotonic() + 5
    while True:
        servers = set(sandbox.fork_server_pids())
        left = [line for line in sandbox_processes(sandbox.config) if int(line.split()[0]) not in servers]
        under_servers = [child for pid in servers for child in children_of(pid) if child not in servers]
        if not (left or under_servers) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"sandbox processes left behind: {left}"
    assert not under_servers, f"processes left under a fork server: {under_servers}"


def verdict_of(sandbox, program: str, limits=ATTACK_LIMITS, stdin: str | None = None):
    return run_test(sandbox, program, "python", TestCase(stdin=stdin, expected_stdout="ok"), limits)


def test_fork_bomb_is_killed_and_leaves_no_process(sandbox, unharmed):
    program = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    started = time.monotonic()
    verdict = verdict_of(sandbox, program)
    assert verdict.verdict == TIMED_OUT
    assert time.monotonic() - started < ATTACK_LIMITS.wall + 2
    # the group and (fallback) every process of the slot uid were killed before the verdict came back
    assert len(sandbox_processes(sandbox.config)) <= ATTACK_LIMITS.max_processes


def test_memory_bomb_hits_the_address_space_limit(sandbox, unharmed):
    program = "chunks = []\nwhile True:\n    chunks.append(bytearray(50 << 20))\n"
    # generous time limits: zero-filling 500 MB is slow on a loaded machine, and this test is about memory
    verdict = verdict_of(sandbox, program, replace(ATTACK_LIMITS, cpu_seconds=5, wall_seconds=20))
    assert verdict.verdict == MEMORY_EXCEEDED
    assert "MemoryError" in verdict.detail


def test_infinite_loop_is_stopped_by_the_cpu_limit(sandbox, unharmed):
    verdict = verdict_of(sandbox, "while True:\n    pass\n")
    assert verdict.verdict == TIMED_OUT
    assert verdict.wall_seconds < ATTACK_LIMITS.wall + 1


def test_sleep_forever_is_stopped_by_the_wall_clock(sandbox, unharmed):
    verdict = verdict_of(sandbox, "import time\ntime.sleep(10 ** 6)\n")
    assert verdict.verdict == TIMED_OUT
    assert ATTACK_LIMITS.wall - 0.1 <= verdict.wall_seconds < ATTACK_LIMITS.wall + 1


def test_network_access_fails_under_bwrap(sandbox, unharmed):
    if sandbox.isolation != "bwrap":
        pytest.skip("the rlimit fallback has no network isolation (documented)")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    program = (
        "import socket\n"
        f"for address in [('127.0.0.1', {port}), ('1.1.1.1', 80)]:\n"
        "    try:\n"
        "        socket.create_connection(address, timeout=2).close()\n"
        "        print('connected', address)\n"
        "    except OSError as error:\n"
        "        print('blocked', type(error).__name__)\n"
    )
    result = sandbox.run_python(program, limits=ATTACK_LIMITS)
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()
    assert "connected" not in result.stdout
    assert result.stdout.count("blocked") == 2


@pytest.fixture
def host_dir():
    """A root-owned, world-readable directory with a world-readable file: readable by others, not writable."""
    path = tempfile.mkdtemp(prefix="loopcoder-attack-")
    os.chmod(path, 0o755)
    target = os.path.join(path, "precious.txt")
    with open(target, "w") as handle:
        handle.write("keep me")
    os.chmod(target, 0o644)
    yield path
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))
    os.rmdir(path)


def test_files_outside_the_work_directory_cannot_be_written_or_deleted(sandbox, unharmed, host_dir):
    marker = f"loopcoder-escape-{os.getpid()}"
    program = (
        "import os\n"
        f"host = {host_dir!r}\n"
        "attempts = [\n"
        "    lambda: open(os.path.join(host, 'precious.txt'), 'w').write('overwritten'),\n"
        "    lambda: os.unlink(os.path.join(host, 'precious.txt')),\n"
        "    lambda: open(os.path.join(host, 'new.txt'), 'w').write('x'),\n"
        "    lambda: open('/usr/lib/evil', 'w').write('x'),\n"
        "    lambda: os.rename('/usr/bin/env', '/usr/bin/env2'),\n"
        "]\n"
        "for attempt in attempts:\n"
        "    try:\n"
        "        attempt()\n"
        "        print('succeeded')\n"
        "    except OSError as error:\n"
        "        print('denied', type(error).__name__)\n"
        f"open('/tmp/{marker}', 'w').write('x')\n"
        "open('inside.txt', 'w').write('fine')\n"
    )
    result = sandbox.run_python(program, limits=ATTACK_LIMITS)
    assert result.ok, result
    assert "succeeded" not in result.stdout and result.stdout.count("denied") == 5
    with open(os.path.join(host_dir, "precious.txt")) as handle:
        assert handle.read() == "keep me"
    assert sorted(os.listdir(host_dir)) == ["precious.txt"]
    assert os.path.exists("/usr/bin/env") and not os.path.exists("/usr/lib/evil")
    if sandbox.isolation == "bwrap":
        assert not os.path.exists(f"/tmp/{marker}"), "the private /tmp leaked to the host"
    elif os.path.exists(f"/tmp/{marker}"):
        # the fallback cannot hide the host's world-writable /tmp (documented); clean up
        os.unlink(f"/tmp/{marker}")
    # no working directory is left behind, and a fork server's working directory is empty again
    names = os.listdir(sandbox.work_root)
    assert [name for name in names if name.startswith("run-")] == []
    assert [os.listdir(os.path.join(sandbox.work_root, name)) for name in names if name.startswith("slot-")] in (
        [],
        [[]],
    )


def test_other_users_files_and_the_parents_environment_are_unreadable(sandbox, unharmed, monkeypatch):
    secret = f"secret-{os.getpid()}-{time.time_ns()}"
    monkeypatch.setenv("LOOPCODER_TEST_SECRET", secret)
    assert os.stat("/etc/shadow").st_mode & stat.S_IROTH == 0
    program = (
        "import os\n"
        "print('env', sorted(os.environ))\n"
        f"paths = ['/etc/shadow', '/proc/{os.getpid()}/environ', '/proc/1/environ', '/proc/' + str(os.getppid()) + "
        "'/environ']\n"
        "for path in paths:\n"
        "    try:\n"
        "        print('read', path, open(path, 'rb').read()[:200])\n"
        "    except OSError as error:\n"
        "        print('denied', path, type(error).__name__)\n"
        "try:\n"
        "    print('listed /root', os.listdir('/root'))\n"
        "except OSError as error:\n"
        "    print('denied /root', type(error).__name__)\n"
    )
    result = sandbox.run_python(program, limits=ATTACK_LIMITS)
    assert result.ok, result
    assert secret not in result.stdout
    assert "LOOPCODER_TEST_SECRET" not in result.stdout
    assert "denied /etc/shadow" in result.stdout
    assert f"denied /proc/{os.getpid()}/environ" in result.stdout
    assert "denied /root" in result.stdout


def test_printing_gigabytes_is_cut_at_the_output_cap(sandbox, unharmed):
    program = "import sys\nblock = 'x' * (1 << 20)\nwhile True:\n    sys.stdout.write(block)\n"
    started = time.monotonic()
    result = sandbox.run_python(program, limits=ATTACK_LIMITS)
    assert result.status == "output_exceeded"
    assert len(result.stdout) == ATTACK_LIMITS.stdout_bytes
    assert time.monotonic() - started < 2
    assert verdict_of(sandbox, program).verdict == OUTPUT_TOO_LARGE


def test_killing_the_parent_process_does_not_reach_the_supervisor(sandbox, unharmed):
    program = (
        "import os, signal\n"
        f"for pid in [{os.getpid()}, os.getppid()]:\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "        print('sent', pid)\n"
        "    except OSError as error:\n"
        "        print('denied', pid, type(error).__name__)\n"
        "print('ok')\n"
    )
    result = sandbox.run_python(program, limits=ATTACK_LIMITS)
    # the supervisor is not visible (bwrap) or not ours to signal (fallback)
    if sandbox.isolation == "bwrap":
        assert f"denied {os.getpid()} ProcessLookupError" in result.stdout
        # the parent is the fork server, PID 1 of the namespace, and PID 1 does not receive SIGKILL sent from
        # inside its namespace (one-shot, the program is PID 1 itself and getppid() is 0: its own group)
        assert result.ok
    else:
        assert f"denied {os.getpid()} PermissionError" in result.stdout
        assert result.stdout.count("PermissionError") == 2 and result.ok


def test_kill_minus_one_reaches_nothing_outside(sandbox, unharmed):
    program = (
        "import os, signal\n"
        "try:\n"
        "    os.kill(-1, signal.SIGKILL)\n"
        "    print('sent')\n"
        "except OSError as error:\n"
        "    print('denied', type(error).__name__)\n"
    )
    result = sandbox.run_python(program, limits=ATTACK_LIMITS)
    if sandbox.isolation == "bwrap":
        # nothing else exists in the PID namespace
        assert result.stdout.strip() == "denied ProcessLookupError"
    else:
        # only the slot uid's own processes could be hit, and the caller is exempt from kill(-1)
        assert result.stdout.strip() == "sent"
    assert result.status == "ok"


def test_a_50mb_file_is_refused(sandbox, unharmed):
    program = (
        "import os\n"
        "try:\n"
        "    with open('big.bin', 'wb') as handle:\n"
        "        for _ in range(50):\n"
        "            handle.write(b'x' * (1 << 20))\n"
        "    print('wrote', os.path.getsize('big.bin'))\n"
        "except OSError as error:\n"
        "    print('refused', type(error).__name__, os.path.getsize('big.bin'))\n"
    )
    result = sandbox.run_python(program, limits=ATTACK_LIMITS)
    assert result.ok, result
    assert result.stdout.startswith("refused")
    assert int(result.stdout.split()[-1]) <= ATTACK_LIMITS.file_size_mb << 20


def test_a_daemon_does_not_outlive_the_program(sandbox, unharmed):
    program = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.closerange(0, 3)\n"
        "        time.sleep(120)\n"
        "    os._exit(0)\n"
        "time.sleep(0.2)\n"
        "print('ok')\n"
    )
    verdict = verdict_of(sandbox, program)
    assert verdict.verdict == PASSED
    assert verdict.wall_seconds < 2
