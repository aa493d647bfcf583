"""The supervisor's side of the fork servers: one per slot, started on first use, restarted when it fails.

A slot is a calling thread with its leased uid (see `uids.py`); its server (`fork_server.py`) is started once,
inside the slot's isolation, and forks one fresh child per execution. The supervisor keeps every job it had:
it writes the program's files into the working directory, owns the stdout and stderr pipes and their caps,
enforces the wall-clock limit, and judges the ending with the same code as a one-shot execution
(`execution.judge`). What moves into the server is the fork, the limits and the uid drop, the reaping, and
putting the slot back as it was.

Failures: a server that cannot start, dies, breaks the protocol or does not answer within
`KILL_GRACE_SECONDS` of a kill is stopped (under bwrap its namespace and every process in it go with it; under
the rlimit layer its uid is swept), and the execution is retried once on a new server; a second failure is a
`sandbox_error` result (reward None), never a verdict against the program. A server that reports it could not
put its slot back is replaced before the next execution.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref

from . import fork_server
from .execution import (
    FIXED_ENV,
    SANDBOX_DIR,
    SANDBOX_ERROR,
    Ending,
    ExecutionResult,
    Limits,
    Sandbox,
    _drain,
    _Stream,
    collect_files,
    fill_workdir,
    judge,
    rlimit_settings,
)
from .uids import UidLease, kill_all_processes_of

logger = logging.getLogger(__name__)

START_SECONDS = 30.0  # a server not ready by then is broken (bwrap and the imports take ~0.1 s)
KILL_GRACE_SECONDS = 5.0  # time for a server to kill, reap and tidy after a kill request
STOP_SECONDS = 2.0  # time for a server to exit once its socket is closed, before it is killed
SERVER_FILES = ("fork_server.py", "assert_harness.py")
INSIDE_SERVER_DIR = "/loopcoder-sandbox"

_CURRENT = threading.local()  # the calling thread's server: one per slot uid at a time


class ServerFailed(Exception):
    """The slot's server could not start, died, or stopped answering: the execution may be retried."""


def install_server_files(work_root: str) -> str:
    """A root-owned, read-only copy of the server and the harness under the work root (done once)."""
    target = os.path.join(work_root, "server")
    if not os.path.isdir(target):
        staging = tempfile.mkdtemp(prefix="server-", dir=work_root)
        here = os.path.dirname(os.path.abspath(fork_server.__file__))
        for name in SERVER_FILES:
            shutil.copyfile(os.path.join(here, name), os.path.join(staging, name))
            os.chmod(os.path.join(staging, name), 0o644)
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return target


class SlotServer:
    """One slot's fork server: `run` executes one request in a fresh child of it; not shared between threads."""

    def __init__(self, sandbox: Sandbox, lease: UidLease | None, key: tuple, limits: Limits) -> None:
        uid = lease.uid if lease is not None else None
        self.key, self.uid, self.isolation = key, uid, sandbox.isolation
        self.work_root = sandbox.work_root
        self.broken = False
        self.slot_dir = None
        self.slot_times: tuple[int, int] | None = None
        server_dir = install_server_files(sandbox.work_root)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.control = ours
        inside_dir = INSIDE_SERVER_DIR if self.isolation == "bwrap" else server_dir
        argv = [
            sandbox.python,
            *sandbox.config.python_flags,
            os.path.join(inside_dir, "fork_server.py"),
            "-1" if self.isolation == "bwrap" or uid is None else str(uid),
            os.path.join(inside_dir, "assert_harness.py"),
            str(theirs.fileno()),
        ]
        # the server's own limits: no core dumps, and the largest stack an execution may ask for, so that
        # the interpreter's memory layout leaves it room (children lower every limit themselves)
        start_limits = [(resource.RLIMIT_CORE, 0), (resource.RLIMIT_STACK, limits.stack_mb << 20)]
        server_uid = uid if self.isolation == "bwrap" else None
        if self.isolation == "bwrap":
            self.slot_dir = tempfile.mkdtemp(prefix="slot-", dir=sandbox.work_root)
            if uid is not None:
                os.chown(self.slot_dir, uid, uid)
            os.chmod(self.slot_dir, 0o700)
            info = os.stat(self.slot_dir)
            self.slot_times = (info.st_atime_ns, info.st_mtime_ns)
            extra = ["--ro-bind", server_dir, INSIDE_SERVER_DIR, "--mqueue", "/dev/mqueue"]
            argv = sandbox._bwrap_command(argv, self.slot_dir, limits, extra)
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=dict(FIXED_ENV),
                start_new_session=True,
                close_fds=True,
                pass_fds=(theirs.fileno(),),
                preexec_fn=lambda: fork_server.confine(start_limits, server_uid),
            )
        except (OSError, subprocess.SubprocessError) as error:
            ours.close()
            self._remove_slot_dir()
            raise ServerFailed(f"cannot start the fork server: {error}") from error
        finally:
            theirs.close()
        # the finalizer holds the uid's lease: the uid is not handed to another slot before its sweep
        self._finalizer = weakref.finalize(self, _terminate, os.getpid(), self.process, ours, lease, self.slot_dir)
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        ready = selectors.DefaultSelector()
        ready.register(self.control, selectors.EVENT_READ)
        try:
            message = self.control.recv(4096) if ready.select(START_SECONDS) else b""
        except OSError:
            message = b""
        finally:
            ready.close()
        if not message:
            detail = self._server_stderr()
            self.stop()
            raise ServerFailed(f"the fork server did not start: {detail}")

    def _server_stderr(self) -> str:
        """What the server wrote before it failed (it writes nothing otherwise)."""
        if self.process.stderr.closed:
            return ""
        os.set_blocking(self.process.stderr.fileno(), False)
        try:
            return (self.process.stderr.read() or b"").decode(errors="replace").strip()[-500:]
        except OSError:
            return ""

    @property
    def stopped(self) -> bool:
        return not self._finalizer.alive

    def host_pids(self) -> list[int]:
        """The server's processes as the host sees them: bwrap's monitor then the server, or the server."""
        if self.stopped:
            return []
        return _process_tree(self.process.pid)[:2] if self.isolation == "bwrap" else [self.process.pid]

    def stop(self) -> None:
        """Kills the server (and, with it, anything left of its executions) and removes the slot directory."""
        self._finalizer()

    def run(self, mode: str, argv: list[str], files, links, stdin, limits: Limits, collect) -> ExecutionResult:
        """One execution in a fresh child of the server. Raises ServerFailed if the server fails."""
        workdir = self.slot_dir or tempfile.mkdtemp(prefix="run-", dir=self.work_root)
        try:
            fill_workdir(workdir, files, links, self.uid)
            request = {
                "mode": mode,
                "argv": list(argv),
                "cwd": SANDBOX_DIR if self.slot_dir else workdir,
                "rlimits": rlimit_settings(limits, self.uid),
            }
            result = judge(self._exchange(request, stdin, limits), limits)
            collect_files(workdir, collect, result)
            return result
        finally:
            if self.slot_dir is None:
                shutil.rmtree(workdir, ignore_errors=True)
            elif not self.stopped:
                self._empty_slot_dir()

    def _exchange(self, request: dict, stdin, limits: Limits) -> Ending:
        """Sends the request with its descriptors, pumps the output until the answer, the deadline or the cap."""
        if stdin is not None:
            stdin_fd = os.memfd_create("stdin", os.MFD_CLOEXEC)
            os.write(stdin_fd, stdin.encode() if isinstance(stdin, str) else stdin)
            os.lseek(stdin_fd, 0, os.SEEK_SET)
        else:
            stdin_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        started = time.monotonic()
        try:
            socket.send_fds(self.control, [json.dumps(request).encode()], [stdin_fd, out_write, err_write])
        except OSError as error:
            os.close(out_read)
            os.close(err_read)
            self.stop()
            raise ServerFailed(f"the fork server is gone: {error}") from error
        finally:
            for fd in (stdin_fd, out_write, err_write):
                os.close(fd)
        out, err = _Stream(limits.stdout_bytes), _Stream(limits.stderr_bytes)
        selector = selectors.DefaultSelector()
        selector.register(out_read, selectors.EVENT_READ, out)
        selector.register(err_read, selectors.EVENT_READ, err)
        selector.register(self.control, selectors.EVENT_READ, None)
        reply, timed_out, overflow, gone = None, False, False, False
        deadline, kill_sent = started + limits.wall, None
        try:
            while reply is None and not gone:
                now = time.monotonic()
                if kill_sent is None and now >= deadline:
                    timed_out = True
                    kill_sent = self._request_kill()
                if kill_sent is not None and now >= kill_sent + KILL_GRACE_SECONDS:
                    break
                wait = (deadline if kill_sent is None else kill_sent + KILL_GRACE_SECONDS) - now
                for key, _ in selector.select(max(wait, 0)):
                    if key.data is None:
                        reply, gone = self._read_reply()
                        continue
                    data = os.read(key.fd, 1 << 16)
                    if data:
                        key.data.add(data)
                    else:
                        selector.unregister(key.fd)
                if kill_sent is None and out.overflowed:
                    overflow = True
                    kill_sent = self._request_kill()
            wall = time.monotonic() - started
            if reply is None:
                # dead or hung: stopping it kills whatever the execution left (namespace teardown, uid sweep)
                reason = "did not answer a kill" if not gone else "died during the execution"
                detail = self._server_stderr()
                self.stop()
                if not (timed_out or overflow):
                    raise ServerFailed(f"the fork server {reason}: {detail}")
                reply = {"status": 9, "cpu": 0.0, "started": True, "clean": False}
            # every writer is dead now: take what is left in the pipes, within the caps
            for key in list(selector.get_map().values()):
                if key.data is not None:
                    _drain(key.fd, key.data)
        finally:
            selector.close()
            os.close(out_read)
            os.close(err_read)
        if not reply["clean"]:
            logger.warning("sandbox: slot of uid %s could not be put back; its fork server is replaced", self.uid)
            self.broken = True
        return Ending(
            returncode=os.waitstatus_to_exitcode(reply["status"]),
            cpu_seconds=reply["cpu"],
            wall_seconds=wall,
            out=out,
            err=err,
            isolation=self.isolation,
            started=reply["started"],
            timed_out=timed_out,
            overflow=overflow,
            exited=not (timed_out or overflow),
            failure="the fork server could not set the execution up",
        )

    def _request_kill(self) -> float:
        try:
            self.control.send(b"kill")
        except OSError:
            pass
        return time.monotonic()

    def _read_reply(self) -> tuple[dict | None, bool]:
        """(the answer, whether the server is gone)."""
        try:
            message = self.control.recv(4096)
        except OSError:
            return None, True
        if not message:
            return None, True
        try:
            reply = json.loads(message)
        except ValueError:
            return None, True
        if not isinstance(reply, dict) or not {"status", "cpu", "started", "clean"} <= set(reply):
            return None, True
        return reply, False

    def _empty_slot_dir(self) -> None:
        """Puts the bwrap working directory back: empty, its mode, owner, times, no extended attributes."""
        try:
            for name in os.listdir(self.slot_dir):
                fork_server.remove_tree(os.path.join(self.slot_dir, name))
            if self.uid is not None:
                os.chown(self.slot_dir, self.uid, self.uid)
            os.chmod(self.slot_dir, 0o700)
            fork_server.clear_xattrs(self.slot_dir)
            os.utime(self.slot_dir, ns=self.slot_times)
        except OSError:
            logger.exception("sandbox: cannot empty %s; its fork server is replaced", self.slot_dir)
            self.broken = True

    def _remove_slot_dir(self) -> None:
        if self.slot_dir is not None:
            _remove_quietly(self.slot_dir)


def _process_tree(pid: int) -> list[int]:
    """`pid` and its direct children."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [pid, *(int(child) for child in handle.read().split())]
    except OSError:
        return [pid]


def _remove_quietly(path: str) -> None:
    try:
        fork_server.remove_tree(path)
    except OSError:
        logger.exception("sandbox: cannot remove %s", path)


def _terminate(
    owner: int, process: subprocess.Popen, control: socket.socket, lease: UidLease | None, slot_dir: str | None
) -> None:
    """Stops a server for good: closes its socket, kills it, reaps it, sweeps its uid, removes its slot.

    Only in the process that started it: a child forked with a pre-exec hook drops the other threads'
    thread-local data, which would otherwise stop their servers from inside the child.
    """
    if os.getpid() != owner:
        return
    # closing the socket makes the server kill its execution's processes and exit, then bwrap's monitor exits
    control.close()
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        # the server first (bwrap's monitor reaps it), so that no zombie of the slot uid is left to init
        for pid in reversed(_process_tree(process.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            logger.error("sandbox: fork server %d did not die", process.pid)
    process.stderr.close()
    uid = lease.uid if lease is not None else None
    if uid is not None:
        try:
            left = kill_all_processes_of(uid)
        except (OSError, subprocess.SubprocessError, RuntimeError):
            logger.exception("sandbox: sweeping uid %d failed", uid)
            left = []
        if left:
            logger.error("sandbox: processes %s of uid %d survived SIGKILL", left, uid)
    if slot_dir is not None:
        _remove_quietly(slot_dir)


def server_for(sandbox: Sandbox, lease: UidLease | None, limits: Limits) -> SlotServer:
    """The calling thread's server for this sandbox and these limits: kept, or (re)started."""
    uid = lease.uid if lease is not None else None
    key = (sandbox.token, sandbox.isolation, sandbox.python, limits.tmp_mb, limits.stack_mb)
    server = getattr(_CURRENT, "server", None)
    if server is not None and (server.key != key or server.uid != uid or server.broken or server.stopped):
        server.stop()
        server = None
    if server is None:
        _CURRENT.server = None
        server = SlotServer(sandbox, lease, key, limits)
        _CURRENT.server = server
        sandbox._servers.add(server)
    return server


def run_in_slot(sandbox: Sandbox, mode: str, argv: list[str], *, files, links, stdin, limits, collect, lease):
    """One execution through the calling thread's fork server; retried once on a new server if it fails."""
    failure = ""
    for _ in range(2):
        try:
            return server_for(sandbox, lease, limits).run(mode, argv, files, links, stdin, limits, collect)
        except ServerFailed as error:
            failure = str(error)
            logger.warning("sandbox: %s; retrying on a new fork server", failure)
    return ExecutionResult(status=SANDBOX_ERROR, isolation=sandbox.isolation, error=f"fork server failed: {failure}")
