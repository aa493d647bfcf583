"""The fork server of a sandbox slot: every execution starts from the same clean state, and a server that dies is
replaced without the execution being scored against the program.

Every test runs in both isolation modes (the `sandbox` fixture) and checks that the executions it compares ran
on one and the same server, so that a restart cannot hide a leak.
"""

import os
import secrets
import signal
import threading
import time

import pytest

from loopcoder.postrain.sandbox import Limits, Sandbox, SandboxConfig
from loopcoder.postrain.sandbox.runners import PASSED, TestCase, run_test

pytestmark = pytest.mark.timeout(120)
LIMITS = Limits(cpu_seconds=2, wall_seconds=5, memory_mb=512)

PLANT = """
import builtins, ctypes, json, os, sys, time
marker = {marker!r}
for path in ('left.txt', f'/tmp/{{marker}}', f'/dev/shm/{{marker}}', f'/dev/{{marker}}'):
    try:
        open(path, 'w').write('left')
    except OSError:
        pass
os.makedirs(f'/tmp/{{marker}}-deep/a/b', exist_ok=True)
os.chmod(f'/tmp/{{marker}}-deep/a', 0)
for path in ('/tmp', '.'):
    try:
        os.setxattr(path, 'user.left', b'1')
    except OSError:
        pass
try:
    os.unlink('/dev/stdout')
    os.symlink('/sandbox/left.txt', '/dev/stdout')
except OSError:
    pass
os.environ['LEFT'] = marker
json.dumps = lambda *args, **kwargs: 'patched'
builtins.len = lambda value: -1
sys.modules['left_module'] = json
sys.setrecursionlimit(50)
libc = ctypes.CDLL(None, use_errno=True)
segment = libc.shmget({key}, 4096, 0o1666)
libc.syscall.restype = ctypes.c_long
# kernel keys in the session keyring and in the uid's own keyrings (add_key, x86-64)
keys = [libc.syscall(248, b'user', marker.encode(), b'left', 4, ctypes.c_long(ring)) for ring in (-3, -4, -5)]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(60)
    os._exit(0)
time.sleep(0.1)
print('planted', segment >= 0, all(key > 0 for key in keys))
"""

PROBE = """
import builtins, ctypes, json, os, sys
marker = {marker!r}
found = []
for path in ('left.txt', f'/tmp/{{marker}}', f'/tmp/{{marker}}-deep', f'/dev/shm/{{marker}}', f'/dev/{{marker}}'):
    if os.path.lexists(path):
        found.append(path)
if sorted(os.listdir('.')) != ['main.py']:
    found.append(f'work directory: {{sorted(os.listdir("."))}}')
for path in ('/tmp', '.'):
    try:
        if os.listxattr(path):
            found.append(f'xattrs of {{path}}')
    except OSError:
        pass
if os.path.islink('/dev/stdout') and os.readlink('/dev/stdout') != '/proc/self/fd/1':
    found.append('/dev/stdout replaced')
if 'LEFT' in os.environ:
    found.append('environment')
if json.dumps({{}}) != '{{}}' or len([1]) != 1 or builtins.len is not len or 'left_module' in sys.modules:
    found.append('monkeypatched modules')
if sys.getrecursionlimit() != 1000:
    found.append('recursion limit')
libc = ctypes.CDLL(None, use_errno=True)
if libc.shmget({key}, 0, 0) >= 0:
    found.append('SysV shared memory')
libc.syscall.restype = ctypes.c_long
for ring in (-3, -4, -5):
    # keyctl(KEYCTL_SEARCH, ring, "user", marker, 0)
    if libc.syscall(250, ctypes.c_long(10), ctypes.c_long(ring), b'user', marker.encode(), ctypes.c_long(0)) > 0:
        found.append(f'kernel key in keyring {{ring}}')
others = []
for name in os.listdir('/proc'):
    # under bwrap the server is PID 1 of the namespace; under the rlimit layer it runs as root
    if name.isdigit() and int(name) not in (os.getpid(), 1):
        try:
            with open(f'/proc/{{name}}/status') as handle:
                fields = dict(line.split(':', 1) for line in handle if ':' in line)
        except OSError:
            continue
        # a zombie holds nothing and runs nothing (and one left to a non-reaping init is not the server's)
        if int(fields['Uid'].split()[0]) == os.getuid() and fields['State'].split()[0] not in 'ZX':
            others.append(name + ' ' + fields['Name'].strip() + ' ' + fields['PPid'].strip())
if others:
    found.append(f'processes: {{others}}')
print('found', found)
"""


def server_pids(sandbox: Sandbox) -> list[int]:
    return sorted(sandbox.fork_server_pids())


def server_pid(sandbox: Sandbox) -> int:
    """The calling thread's server process (under bwrap, the child of bwrap's monitor)."""
    return sandbox.fork_server_pids()[-1]


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the plant uses x86-64 system call numbers")
def test_an_execution_leaves_nothing_for_the_next(sandbox):
    marker = f"loopcoder-left-{secrets.token_hex(6)}"
    key = secrets.randbelow(1 << 30) + 1
    assert sandbox.run_python("print('warm')", limits=LIMITS).ok
    before = server_pids(sandbox)
    planted = sandbox.run_python(PLANT.format(marker=marker, key=key), limits=LIMITS)
    assert planted.ok and planted.stdout == "planted True True\n", planted
    probe = sandbox.run_python(PROBE.format(marker=marker, key=key), limits=LIMITS)
    assert probe.ok, probe
    assert probe.stdout == "found []\n"
    assert server_pids(sandbox) == before and before, "the server was restarted: the test proves nothing"
    assert not os.path.exists(f"/tmp/{marker}")


def test_the_tests_of_one_execution_are_not_in_the_memory_of_the_next(sandbox):
    """The server never holds a program, its stdin or its tests, so a later child cannot find them by reading its
    own memory (what it inherited from the server)."""
    token = f"tok-{secrets.token_hex(12)}"
    honest = run_test(
        sandbox, "def f():\n    return 1\n", "python", TestCase(assert_code=f"assert f() == 1, {token!r}"), LIMITS
    )
    assert honest.verdict == PASSED
    before = server_pids(sandbox)
    search = (
        "import re\n"
        "found = set()\n"
        "with open('/proc/self/maps') as maps, open('/proc/self/mem', 'rb') as mem:\n"
        "    for line in maps:\n"
        "        start, end = (int(x, 16) for x in line.split()[0].split('-'))\n"
        "        if 'r' in line.split()[1] and end - start < 1 << 28:\n"
        "            try:\n"
        "                mem.seek(start)\n"
        "                found.update(re.findall(rb'tok-[0-9a-f]{24}', mem.read(end - start)))\n"
        "            except (OSError, ValueError, OverflowError):\n"
        "                pass\n"
        "print(sorted(found))\n"
    )
    result = sandbox.run_python(search, limits=LIMITS)
    assert result.ok, result
    assert token not in result.stdout and result.stdout == "[]\n"
    assert server_pids(sandbox) == before


def test_a_server_killed_between_executions_is_replaced(sandbox):
    assert sandbox.run_python("print(1)", limits=LIMITS).stdout == "1\n"
    before = server_pids(sandbox)
    os.kill(server_pid(sandbox), signal.SIGKILL)
    result = sandbox.run_python("print(2)", limits=LIMITS)
    assert result.ok and result.stdout == "2\n", result
    assert server_pids(sandbox) and not set(server_pids(sandbox)) & set(before)


def test_a_server_killed_during_an_execution_is_replaced_and_the_execution_retried(sandbox):
    assert sandbox.run_python("print(1)", limits=LIMITS).ok
    before = server_pids(sandbox)

    server = server_pid(sandbox)

    def kill_soon():
        time.sleep(0.4)
        os.kill(server, signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    result = sandbox.run_python("import time\ntime.sleep(1)\nprint('done')", limits=LIMITS)
    killer.join()
    # run again from the start on a new server: the program's verdict, not a zero for the server's death
    assert result.ok and result.stdout == "done\n", result
    assert not set(server_pids(sandbox)) & set(before)


def test_a_server_that_cannot_start_gives_an_infrastructure_error(sandbox, monkeypatch):
    broken = Sandbox(SandboxConfig(isolation=sandbox.isolation))
    # an interpreter that exits at once: the server never reports ready, on the first try or the retry
    monkeypatch.setattr(broken, "python", "/bin/false")
    try:
        result = broken.run_python("print(1)", limits=LIMITS)
        verdict = run_test(broken, "print(1)", "python", TestCase("", "1"), LIMITS)
    finally:
        broken.close()
    assert result.status == "sandbox_error" and "fork server" in result.error
    assert verdict.verdict == "sandbox_error"


def test_the_one_shot_path_remains_available(sandbox):
    one_shot = Sandbox(SandboxConfig(isolation=sandbox.isolation, fork_server=False))
    try:
        result = one_shot.run_python("print(input()[::-1])", stdin="abc\n", limits=LIMITS)
        assert result.ok and result.stdout == "cba\n"
        assert one_shot.fork_server_pids() == []
    finally:
        one_shot.close()
