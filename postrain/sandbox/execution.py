"""Run one untrusted program under limits: the sandbox behind the pass-rate reward.

    from loopcoder.postrain.sandbox import Limits, Sandbox
    sandbox = Sandbox()                                  # bwrap when present, else the rlimit layer
    result = sandbox.run_python("print(input()[::-1])", stdin="abc\\n", limits=Limits(cpu_seconds=2))
    result.stdout, result.status                         # ('cba\\n', 'ok')

Executions are forked by a pre-started interpreter per slot (`fork_server.py`, supervised by `slots.py`),
started once inside the slot's isolation; `SandboxConfig(fork_server=False)` starts bwrap and the interpreter
anew for every execution instead (one-shot). What every execution gets (both isolation modes, both paths):

- its own session and process group (`setsid`); on timeout, output overflow or exit the whole group is
  killed with SIGKILL and every process of the execution is reaped, so no zombie is left behind;
- every process of the execution is killed before the next one starts, daemons that left the process group
  (`setsid`, double fork) included: by `kill(-1, SIGKILL)` from the fork server, PID 1 of the namespace
  (bwrap), or by a helper running as the slot uid (`kill -9 -1`) after every run (rlimit layer; one-shot
  bwrap does it after a timeout or overflow, and otherwise relies on the namespace dying with the program);
- a CPU-time limit (RLIMIT_CPU, soft = hard, so the kernel sends SIGKILL) and a wall-clock limit enforced by
  the supervisor (catches `sleep`, blocking reads and deadlocks);
- RLIMIT_AS (address space), RLIMIT_NPROC (processes), RLIMIT_FSIZE (largest file), RLIMIT_NOFILE (open
  files), RLIMIT_STACK, RLIMIT_CORE = 0 (no core dumps), and `oom_score_adj = 1000`, so that if the machine
  does run out of memory the kernel kills sandboxed programs before anything else;
- an unprivileged user: when the supervisor runs as root, the child drops to a dedicated uid per concurrent
  execution slot (default 60000 + slot, leased across processes with `flock`: `uids.py`), with no supplementary
  groups. RLIMIT_NPROC counts per user and is ignored for root, so this is what makes it effective; it also
  means `kill(-1, SIGKILL)` can only reach that slot's own processes, and root-owned files are out of reach;
- a fresh working directory (mode 0700, owned by the slot's uid), removed afterwards (a fork server under
  bwrap reuses its slot's directory, emptied and reset after every execution, along with `/tmp`, `/dev` and
  the IPC namespace: see `fork_server.py`);
- an empty environment: no variable of the supervisor is inherited (no tokens, no keys); only `PATH`,
  `LANG` and `HOME` are set to fixed values;
- stdin supplied from an in-memory file, or /dev/null when there is none (a program waiting on `input()`
  reads EOF instead of hanging);
- stdout capped (default 1 MiB: the program is killed and the result is `output_exceeded`) and stderr
  capped (default 64 KiB: the excess is read and discarded).

With `bwrap` (Debian package `bubblewrap`), additionally:

- new user, PID, network, IPC, UTS and cgroup namespaces (`--unshare-all`): no network at all, not even
  loopback; no host process is visible or signalable (`kill(-1, 9)` fails with ESRCH; killing the parent
  hits bwrap's reaper, which ignores it); when the sandbox's init exits, the kernel kills every process left
  in the namespace, so daemons cannot outlive the program;
- a filesystem made of read-only `/usr` (and the `/bin`, `/lib*` links into it), the bound interpreter, a
  fresh `/proc` and `/dev`, a private size-limited tmpfs `/tmp`, the working directory at `/sandbox`, and
  a read-only root: `/etc` (but the loader cache), `/root`, `/home` and the supervisor's files do not exist
  inside;
- `--die-with-parent`, `--new-session` (no terminal injection), `--cap-drop ALL`, `--disable-userns`.

Without bwrap (the rlimit layer, chosen with a logged warning), the uid drop is the only barrier between
processes and files; see "What this does not protect against".

What this does not protect against:

- kernel exploits and raw system calls: there is no seccomp filter, so a program may issue any system call
  an unprivileged user may (e.g. through `ctypes`); bwrap is not a virtual machine;
- in the rlimit layer: network access is open; the program sees the host filesystem with the permissions of
  an unprivileged uid (world-readable files can be read, world-writable places such as `/tmp` can be written
  with files of at most RLIMIT_FSIZE each); host processes are visible in `/proc` (their environments are
  not: those files are readable by their owner only);
- when the supervisor is not root and bwrap is absent, no uid can be dropped: RLIMIT_NPROC then counts every
  process of the user and `kill(-1, 9)` would reach the user's own processes. `Sandbox` refuses to run in
  that configuration unless `SandboxConfig(allow_unsafe=True)` is given. With bwrap but without root, every
  layer applies except RLIMIT_NPROC, which would count all of the user's processes: a fork bomb is then
  bounded only by the wall limit and the PID namespace teardown;
- total memory of a fork-and-allocate bomb is bounded only by RLIMIT_AS times RLIMIT_NPROC (the OOM score
  makes sandboxed processes the first victims), and disk use by RLIMIT_FSIZE times the files written in
  the wall time (the tmpfs in bwrap is size-limited);
- CPU contention and timing side channels between concurrent executions, and `/proc` information leaks
  such as the host's CPU and memory figures.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import resource
import selectors
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from .fork_server import confine
from .uids import allocator, kill_all_processes_of

logger = logging.getLogger(__name__)

BWRAP_CANDIDATES = ("/usr/bin/bwrap", "/bin/bwrap")
SYSTEM_PYTHON = "/usr/bin/python3"
SANDBOX_DIR = "/sandbox"
HARNESS_SOURCE = Path(__file__).with_name("assert_harness.py").read_text(encoding="utf-8")
FIXED_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}
MEMORY_ERROR_MARKERS = ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "out of memory")

# Exit statuses of a run, before any test comparison: see `ExecutionResult.status`.
OK = "ok"
TIMEOUT = "timeout"
OUTPUT_EXCEEDED = "output_exceeded"
SANDBOX_ERROR = "sandbox_error"


class SandboxUnavailable(RuntimeError):
    """The requested isolation cannot be provided on this machine (the message says what is missing)."""


@dataclass(frozen=True)
class Limits:
    """Per-execution limits. `None` for `wall_seconds` means 2 x CPU + 1 s.

    The defaults suit Python and C++ competition programs; the JVM and Go need a larger `memory_mb`
    because they reserve address space up front.
    """

    cpu_seconds: float = 2.0  # CPU time; RLIMIT_CPU is set to ceil(cpu) + 1 and the excess is judged afterwards
    wall_seconds: float | None = None  # wall clock, enforced by the supervisor; catches sleeping code
    memory_mb: int = 1024  # RLIMIT_AS, address space of each process
    max_processes: int = 32  # RLIMIT_NPROC for the slot's uid (under bwrap, its monitor and the fork server count too)
    file_size_mb: int = 16  # RLIMIT_FSIZE, the largest file a program may write
    max_open_files: int = 64  # RLIMIT_NOFILE
    stack_mb: int = 256  # RLIMIT_STACK: competition code recurses deeply
    stdout_bytes: int = 1 << 20  # kept stdout; more kills the program (output_exceeded)
    stderr_bytes: int = 64 << 10  # kept stderr; the excess is discarded
    tmp_mb: int = 64  # size of the private /tmp under bwrap

    @property
    def wall(self) -> float:
        return self.wall_seconds if self.wall_seconds is not None else 2 * self.cpu_seconds + 1.0

    def key(self) -> tuple:
        """The fields that can change a verdict, for cache keys."""
        return (
            self.cpu_seconds,
            self.wall,
            self.memory_mb,
            self.max_processes,
            self.file_size_mb,
            self.max_open_files,
            self.stack_mb,
            self.stdout_bytes,
        )


@dataclass(frozen=True)
class SandboxConfig:
    """How to isolate: `isolation` is `auto` (bwrap if it works, else rlimit with a warning), `bwrap` or `rlimit`."""

    isolation: str = "auto"
    # interpreter for Python programs; default: this interpreter if the sandbox uid can reach it, else /usr/bin/python3
    python: str | None = None
    python_flags: tuple[str, ...] = ("-I", "-B")  # isolated mode (no env, no user site), no .pyc writes
    uid_base: int = 60000  # slot i runs as uid uid_base + i (only when the supervisor is root)
    uid_count: int = 512
    # directory for the per-execution working directories (default: a fresh one under the system temp dir)
    work_root: str | None = None
    # run untrusted code even when neither bwrap nor a uid drop is available (never do this on a shared host)
    allow_unsafe: bool = False
    # start one interpreter per slot, inside the slot's isolation, and fork each execution from it
    # (`fork_server.py`); False starts bwrap and the interpreter anew for every execution
    fork_server: bool = True


@dataclass
class ExecutionResult:
    """What happened to one execution.

    `status` is `ok` (the program ran to its end: look at `returncode`), `timeout` (wall or CPU limit),
    `output_exceeded` (stdout over its cap) or `sandbox_error` (the sandbox itself failed: an
    infrastructure error, not the program's fault). `memory_exceeded` is a best guess from the exit and
    stderr (MemoryError, std::bad_alloc), since RLIMIT_AS makes allocations fail rather than kill.
    """

    status: str
    returncode: int | None = None  # negative: killed by that signal
    stdout: str = ""
    stderr: str = ""
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    memory_exceeded: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    isolation: str = ""
    error: str = ""  # what went wrong for sandbox_error

    @property
    def ok(self) -> bool:
        return self.status == OK and self.returncode == 0


@dataclass
class _Stream:
    limit: int
    chunks: list[bytes] = field(default_factory=list)
    kept: int = 0
    seen: int = 0

    def add(self, data: bytes) -> None:
        self.seen += len(data)
        room = self.limit - self.kept
        if room > 0:
            piece = data[:room]
            self.chunks.append(piece)
            self.kept += len(piece)

    @property
    def overflowed(self) -> bool:
        return self.seen > self.limit

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", errors="replace")


def find_bwrap() -> str | None:
    """Path of a bwrap binary, or None."""
    for candidate in BWRAP_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("bwrap")


def _reachable_by_others(path: str) -> bool:
    """True if a uid that is neither owner nor group member can execute `path` (every ancestor searchable)."""
    real = os.path.realpath(path)
    try:
        if not os.stat(real).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(real)
        while True:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
            if parent == "/":
                return True
            parent = os.path.dirname(parent)
    except OSError:
        return False


def _python_prefix(python: str) -> str:
    """The installation prefix to bind for an interpreter: `/x/bin/python3` -> `/x`."""
    real = os.path.realpath(python)
    prefix = os.path.dirname(os.path.dirname(real))
    return prefix


def rlimit_settings(limits: Limits, uid: int | None) -> list[tuple[int, int]]:
    """The `(resource, value)` pairs of an execution, each set as soft = hard limit."""
    cpu = int(math.ceil(limits.cpu_seconds)) + 1
    settings = [
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_AS, limits.memory_mb << 20),
        (resource.RLIMIT_FSIZE, limits.file_size_mb << 20),
        (resource.RLIMIT_NOFILE, limits.max_open_files),
        (resource.RLIMIT_STACK, limits.stack_mb << 20),
        (resource.RLIMIT_CORE, 0),
    ]
    if uid is not None:
        # counted per real uid: only binding for the dedicated slot uid (root ignores it, and for another
        # user it would count every process the user already has)
        settings.append((resource.RLIMIT_NPROC, limits.max_processes))
    return settings


def _preexec(limits: Limits, uid: int | None) -> None:
    """Runs in the child between fork and exec: limits first, then the uid drop (which makes them binding)."""
    confine(rlimit_settings(limits, uid), uid)


def fill_workdir(workdir: str, files: dict | None, links: dict | None, uid: int | None) -> None:
    """Writes the files (read-only for the program) and links into the working directory, then gives the
    directory to the slot uid (mode 0700)."""
    for name, content in (files or {}).items():
        data = content.encode() if isinstance(content, str) else content
        path = os.path.join(workdir, name)
        with open(path, "wb") as handle:
            handle.write(data)
        os.chmod(path, 0o644)
    for name, source in (links or {}).items():
        target = os.path.join(workdir, name)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    if uid is not None:
        os.chown(workdir, uid, uid)
    os.chmod(workdir, 0o700)


def collect_files(workdir: str, collect: dict | None, result: ExecutionResult) -> None:
    """Copies out the regular files the program produced, if it ran to its end."""
    for name, destination in (collect or {}).items():
        source = os.path.join(workdir, name)
        if result.status == OK and os.path.isfile(source) and not os.path.islink(source):
            shutil.copyfile(source, destination)


_SANDBOX_TOKENS = itertools.count()


class Sandbox:
    """Runs programs in isolation; thread-safe (each calling thread gets its own uid slot).

    Construct once and share: the constructor probes the machine (bwrap, uid drop, interpreter).
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.token = next(_SANDBOX_TOKENS)  # tells this sandbox's fork servers from another's
        self._servers: weakref.WeakSet = weakref.WeakSet()
        if self.config.isolation not in ("auto", "bwrap", "rlimit"):
            raise ValueError(f"isolation must be auto, bwrap or rlimit, not {self.config.isolation!r}")
        self.drops_privileges = os.geteuid() == 0
        self._uids = allocator(self.config.uid_base, self.config.uid_count) if self.drops_privileges else None
        self._own_work_root = self.config.work_root is None
        root = self.config.work_root or tempfile.mkdtemp(prefix="loopcoder-sandbox-")
        os.makedirs(root, exist_ok=True)
        # others may traverse (the slot uid must reach its own directory) but not list
        os.chmod(root, 0o711)
        self.work_root = root
        # removed when the sandbox is closed, collected, or the interpreter exits
        self._cleanup = weakref.finalize(self, shutil.rmtree, root, True) if self._own_work_root else None
        self.python = self._resolve_python()
        self.bwrap = find_bwrap()
        self._bwrap_base: list[str] | None = None
        self.isolation = self._resolve_isolation()
        if self.isolation == "rlimit" and not self.drops_privileges and not self.config.allow_unsafe:
            raise SandboxUnavailable(
                "no bwrap and not root: untrusted code would run as this user (kill(-1) would reach its "
                "processes); install bubblewrap, run as root, or pass allow_unsafe=True"
            )

    def close(self) -> None:
        """Stops this sandbox's fork servers and removes the work root if this sandbox created it."""
        for server in list(self._servers):
            server.stop()
        if self._cleanup is not None:
            self._cleanup()

    def fork_server_pids(self) -> list[int]:
        """Host pids of this sandbox's live fork servers (with bwrap's monitor processes)."""
        return [pid for server in list(self._servers) for pid in server.host_pids()]

    def uses_fork_server(self) -> bool:
        """Fork servers need bwrap or a uid drop: the rlimit layer cleans up by killing all of the slot uid's
        processes, which is only safe for a dedicated uid."""
        return self.config.fork_server and (self.isolation == "bwrap" or self.drops_privileges)

    def _resolve_python(self) -> str:
        if self.config.python:
            python = self.config.python
            if not os.access(python, os.X_OK):
                raise SandboxUnavailable(f"Python interpreter {python} is not executable")
            if _python_prefix(python) == "/":
                # its prefix would be the host's root, which must never be bound into the sandbox
                raise SandboxUnavailable(f"Python interpreter {python} must live in a prefix such as /opt/x/bin")
            return python
        import sys

        if not self.drops_privileges or _reachable_by_others(sys.executable):
            return os.path.realpath(sys.executable)
        # the interpreter lives where the sandbox uid cannot go (e.g. under /root): use the system one
        if os.access(SYSTEM_PYTHON, os.X_OK) and _reachable_by_others(SYSTEM_PYTHON):
            return os.path.realpath(SYSTEM_PYTHON)
        raise SandboxUnavailable(
            f"no Python interpreter reachable by an unprivileged uid (tried {sys.executable}, "
            f"{SYSTEM_PYTHON}); set SandboxConfig(python=...)"
        )

    def _resolve_isolation(self) -> str:
        wanted = self.config.isolation
        if wanted == "rlimit":
            return "rlimit"
        problem = None
        if self.bwrap is None:
            problem = "bwrap is not installed (Debian package bubblewrap)"
        else:
            probe = self._execute(["/bin/true"], isolation="bwrap", limits=Limits(cpu_seconds=5))
            if not (probe.status == OK and probe.returncode == 0):
                problem = f"bwrap does not work here: {probe.error or probe.stderr.strip()}"
        if problem is None:
            return "bwrap"
        if wanted == "bwrap":
            raise SandboxUnavailable(problem)
        logger.warning(
            "sandbox: %s; falling back to rlimits and a uid drop only (no network or filesystem isolation)", problem
        )
        return "rlimit"

    def layers(self) -> dict[str, str]:
        """Which isolation layers are active, for `loopcoder sandbox check` and logs."""
        bwrap = self.isolation == "bwrap"
        drop = f"yes, one uid per slot from {self.config.uid_base}" if self.drops_privileges else "no"
        return {
            "isolation": self.isolation,
            "bwrap binary": self.bwrap or "absent",
            "network namespace (no network)": "yes" if bwrap else "no",
            "PID namespace": "yes" if bwrap else "no",
            "read-only filesystem view, private /tmp": "yes" if bwrap else "no",
            "unprivileged uid": drop,
            "RLIMIT_NPROC": "yes" if self.drops_privileges else "no (only binding for a dedicated uid)",
            "rlimits (CPU, AS, FSIZE, NOFILE, STACK, CORE)": "yes",
            "wall-clock timeout + process-group kill": "yes",
            "empty environment": "yes",
            "fork server per slot": "yes" if self.uses_fork_server() else "no",
            "python": self.python,
            "g++": shutil.which("g++") or "absent",
            "seccomp": "no",
        }

    def run_python(
        self,
        source: str,
        *,
        stdin: str | bytes | None = None,
        limits: Limits | None = None,
    ) -> ExecutionResult:
        """Runs Python source as `main.py` in a fresh working directory."""
        argv = [self.python, *self.config.python_flags, "main.py"]
        return self._run("python", argv, files={"main.py": source}, stdin=stdin, limits=limits)

    def run_assert_harness(self, program: str, *, stdin: str | bytes, limits: Limits | None = None) -> ExecutionResult:
        """Runs the assert harness (`assert_harness.py` as `main.py`) on `program` (`solution.py`)."""
        argv = [self.python, *self.config.python_flags, "main.py"]
        files = {"main.py": HARNESS_SOURCE, "solution.py": program}
        return self._run("assert", argv, files=files, stdin=stdin, limits=limits)

    def execute(
        self,
        argv: list[str],
        *,
        files: dict[str, str | bytes] | None = None,
        links: dict[str, str] | None = None,
        stdin: str | bytes | None = None,
        limits: Limits | None = None,
        collect: dict[str, str] | None = None,
    ) -> ExecutionResult:
        """Runs `argv` with the working directory as cwd.

        Args:
            argv: command; relative paths resolve in the working directory (`./prog`, `main.py`).
            files: name -> content written into the working directory first (read-only for the program).
            links: name -> host path of a read-only file hard-linked (or copied) into the working directory.
            stdin: the program's standard input; None gives /dev/null.
            limits: resource limits; default `Limits()`.
            collect: name -> host path: files the program produced, copied out before the directory goes.
        """
        return self._run("exec", argv, files=files, links=links, stdin=stdin, limits=limits, collect=collect)

    def _run(self, mode: str, argv: list[str], *, limits, files=None, links=None, stdin=None, collect=None):
        """Through the calling thread's fork server when there is one (`mode` says how the child runs the
        program: `python` main.py, the `assert` harness, or `exec` of argv), else as a one-shot execution."""
        limits = limits or Limits()
        if not self.uses_fork_server():
            return self._execute(
                argv, isolation=self.isolation, files=files, links=links, stdin=stdin, limits=limits, collect=collect
            )
        from .slots import run_in_slot  # slots builds on this module

        try:
            return run_in_slot(
                self,
                mode,
                argv,
                files=files,
                links=links,
                stdin=stdin,
                limits=limits,
                collect=collect,
                lease=self._uids.lease() if self._uids is not None else None,
            )
        except OSError as error:
            logger.exception("sandbox: execution failed")
            return ExecutionResult(
                status=SANDBOX_ERROR, isolation=self.isolation, error=f"{type(error).__name__}: {error}"
            )

    def _execute(
        self, argv: list[str], *, isolation: str, limits: Limits, files=None, links=None, stdin=None, collect=None
    ) -> ExecutionResult:
        uid = self._uids.lease().uid if self._uids is not None else None
        workdir = None
        try:
            workdir = tempfile.mkdtemp(prefix="run-", dir=self.work_root)
            fill_workdir(workdir, files, links, uid)
            command = self._bwrap_command(argv, workdir, limits) if isolation == "bwrap" else list(argv)
            result = self._supervise(command, workdir, stdin, limits, uid, isolation)
            collect_files(workdir, collect, result)
            return result
        except OSError as error:
            logger.exception("sandbox: execution failed")
            return ExecutionResult(status=SANDBOX_ERROR, isolation=isolation, error=f"{type(error).__name__}: {error}")
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)

    def _bwrap_command(self, argv: list[str], workdir: str, limits: Limits, extra: list[str] = ()) -> list[str]:
        """The bwrap command running `argv`; `extra` arguments go before the root is made read-only."""
        if self._bwrap_base is None:
            self._bwrap_base = self._bwrap_static_arguments()
        return [
            *self._bwrap_base,
            *extra,
            "--size",
            str(limits.tmp_mb << 20),
            "--tmpfs",
            "/tmp",
            "--bind",
            workdir,
            SANDBOX_DIR,
            "--chdir",
            SANDBOX_DIR,
            "--remount-ro",
            "/",
            "--",
            *argv,
        ]

    def _bwrap_static_arguments(self) -> list[str]:
        """The part of the bwrap command line that is the same for every execution (computed once)."""
        command = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--as-pid-1"]
        command += ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox", "--clearenv"]
        for name, value in FIXED_ENV.items():
            command += ["--setenv", name, value]
        command += ["--ro-bind", "/usr", "/usr"]
        for link in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
            if os.path.islink(f"/{link}"):
                command += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
            elif os.path.isdir(f"/{link}"):
                command += ["--ro-bind", f"/{link}", f"/{link}"]
        # the dynamic loader's cache: without it every C++ binary searches the library paths
        command += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        prefix = _python_prefix(self.python)
        if prefix != "/usr" and not prefix.startswith("/usr/"):
            command += ["--ro-bind", prefix, prefix]
        return command + ["--proc", "/proc", "--dev", "/dev"]

    def _supervise(
        self,
        command: list[str],
        workdir: str,
        stdin: str | bytes | None,
        limits: Limits,
        uid: int | None,
        isolation: str,
    ) -> ExecutionResult:
        """Starts the command, reads its output until it exits or the wall limit, kills and reaps, then judges."""
        run = _spawn(command, workdir, stdin, limits, uid, isolation)
        if isinstance(run, ExecutionResult):
            return run
        try:
            _pump_until_exit_or_deadline(run, run.started + limits.wall)
        finally:
            usage = _kill_and_reap(run)
        return _classify(run, usage, _bwrap_started(run.status_read), limits)


@dataclass
class _Run:
    """One started execution: its process, what was read from it, and how the reading ended."""

    process: subprocess.Popen
    started: float
    uid: int | None
    isolation: str
    status_read: int  # read end of bwrap's --json-status-fd pipe; -1 without bwrap
    out: _Stream
    err: _Stream
    selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    timed_out: bool = False
    overflow: bool = False
    exited: bool = False
    wall_seconds: float = 0.0


def _spawn(
    command: list[str], workdir: str, stdin: str | bytes | None, limits: Limits, uid: int | None, isolation: str
) -> _Run | ExecutionResult:
    """Starts the command in its own session, under the limits and the uid; a `sandbox_error` if it cannot."""
    stdin_fd = status_read = status_write = -1
    if stdin is not None:
        stdin_fd = os.memfd_create("stdin", os.MFD_CLOEXEC)
        os.write(stdin_fd, stdin.encode() if isinstance(stdin, str) else stdin)
        os.lseek(stdin_fd, 0, os.SEEK_SET)
    if isolation == "bwrap":
        status_read, status_write = os.pipe()
        command = command[:1] + ["--json-status-fd", str(status_write)] + command[1:]
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            command,
            stdin=stdin_fd if stdin_fd >= 0 else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=dict(FIXED_ENV),
            start_new_session=True,
            close_fds=True,
            pass_fds=(status_write,) if status_write >= 0 else (),
            preexec_fn=lambda: _preexec(limits, uid),
        )
    except (OSError, subprocess.SubprocessError) as error:
        # e.g. the uid drop failed in the pre-exec hook: nothing of the program ran
        if status_read >= 0:
            os.close(status_read)
        return ExecutionResult(status=SANDBOX_ERROR, isolation=isolation, error=f"cannot start: {error}")
    finally:
        for fd in (stdin_fd, status_write):
            if fd >= 0:
                os.close(fd)
    out, err = _Stream(limits.stdout_bytes), _Stream(limits.stderr_bytes)
    return _Run(process, started, uid, isolation, status_read, out, err)


def _pump_until_exit_or_deadline(run: _Run, deadline: float) -> None:
    """Reads stdout and stderr into their streams until the child exits, the deadline passes or stdout overflows.

    The child's exit is watched through a pidfd, so a daemon holding the pipes open cannot stall the verdict.
    """
    pidfd = os.pidfd_open(run.process.pid)
    try:
        run.selector.register(run.process.stdout, selectors.EVENT_READ, run.out)
        run.selector.register(run.process.stderr, selectors.EVENT_READ, run.err)
        run.selector.register(pidfd, selectors.EVENT_READ, None)
        while not run.exited and not run.overflow:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                run.timed_out = True
                return
            for key, _ in run.selector.select(remaining):
                if key.data is None:
                    run.exited = True
                    continue
                data = os.read(key.fd, 1 << 16)
                if data:
                    key.data.add(data)
                else:
                    run.selector.unregister(key.fileobj)
            run.overflow = run.out.overflowed
    finally:
        if pidfd in run.selector.get_map():
            run.selector.unregister(pidfd)
        os.close(pidfd)


def _kill_and_reap(run: _Run) -> resource.struct_rusage:
    """Kills the group, sweeps the uid when needed, reaps the child and drains the pipes; returns its usage.

    The uid sweep runs after every run of the rlimit layer, and after anything abnormal under bwrap (where
    the namespace dies with the program otherwise).
    """
    try:
        os.killpg(run.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    abnormal = run.timed_out or run.overflow or not run.exited
    if run.uid is not None and (run.isolation == "rlimit" or abnormal):
        try:
            left = kill_all_processes_of(run.uid)
        except (OSError, subprocess.SubprocessError, RuntimeError):
            logger.exception("sandbox: sweeping uid %d failed", run.uid)
            left = []
        if left:
            logger.error("sandbox: processes %s of uid %d survived SIGKILL", left, run.uid)
    _, wait_status, usage = os.wait4(run.process.pid, 0)
    run.process.returncode = os.waitstatus_to_exitcode(wait_status)
    run.wall_seconds = time.monotonic() - run.started
    # every writer is dead now: take what is left in the pipes, within the caps
    for key in list(run.selector.get_map().values()):
        if key.data is not None:
            _drain(key.fd, key.data)
    run.selector.close()
    run.process.stdout.close()
    run.process.stderr.close()
    return usage


def _bwrap_started(status_read: int) -> bool:
    """Whether bwrap reported starting the program (always True without bwrap)."""
    if status_read < 0:
        return True
    os.set_blocking(status_read, False)
    try:
        status_text = os.read(status_read, 1 << 16).decode(errors="replace")
    except BlockingIOError:
        status_text = ""
    finally:
        os.close(status_read)
    return "child-pid" in status_text


@dataclass
class Ending:
    """How an execution ended, as its supervisor saw it: what `judge` turns into a result."""

    returncode: int
    cpu_seconds: float
    wall_seconds: float
    out: _Stream
    err: _Stream
    isolation: str
    started: bool  # False: the sandbox failed before the program could run
    timed_out: bool = False
    overflow: bool = False
    exited: bool = True
    signal_as_exit_code: bool = False  # bwrap's init reports a signal death of the program as 128 + signal
    failure: str = ""  # who failed to start the program, for the error message


def _classify(run: _Run, usage: resource.struct_rusage, started: bool, limits: Limits) -> ExecutionResult:
    ending = Ending(
        returncode=run.process.returncode,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        wall_seconds=run.wall_seconds,
        out=run.out,
        err=run.err,
        isolation=run.isolation,
        started=started,
        timed_out=run.timed_out,
        overflow=run.overflow,
        exited=run.exited,
        signal_as_exit_code=run.isolation == "bwrap",
        failure="bwrap failed",
    )
    return judge(ending, limits)


def judge(ending: Ending, limits: Limits) -> ExecutionResult:
    """The result: sandbox error, timeout (wall, RLIMIT_CPU kill, or CPU over the limit), overflow, or ok."""
    cpu, returncode = ending.cpu_seconds, ending.returncode
    bwrap_signal = returncode - 128 if ending.signal_as_exit_code and returncode > 128 else 0
    killed_by = -returncode if returncode < 0 else bwrap_signal
    cpu_limit_hit = killed_by in (signal.SIGKILL, signal.SIGXCPU) and cpu >= math.ceil(limits.cpu_seconds)
    result = ExecutionResult(
        status=OK,
        returncode=returncode,
        stdout=ending.out.text(),
        stderr=ending.err.text(),
        wall_seconds=ending.wall_seconds,
        cpu_seconds=cpu,
        stdout_truncated=ending.out.overflowed,
        stderr_truncated=ending.err.overflowed,
        isolation=ending.isolation,
    )
    if not ending.started and not ending.timed_out:
        result.status = SANDBOX_ERROR
        result.error = f"{ending.failure} (exit {returncode}): {result.stderr.strip()[:500]}"
    elif ending.timed_out or cpu_limit_hit or (ending.exited and cpu > limits.cpu_seconds):
        result.status = TIMEOUT
    elif ending.overflow or ending.out.overflowed:
        result.status = OUTPUT_EXCEEDED
    elif returncode != 0 and any(marker in result.stderr for marker in MEMORY_ERROR_MARKERS):
        result.memory_exceeded = True
    return result


def _drain(fd: int, stream: _Stream, budget_seconds: float = 1.0) -> None:
    os.set_blocking(fd, False)
    end = time.monotonic() + budget_seconds
    while time.monotonic() < end:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        if not data:
            return
        stream.add(data)


def source_hash(*parts: str | bytes) -> str:
    """sha256 over length-prefixed parts: the key for compile and verdict caches."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()
