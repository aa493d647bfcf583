"""Unprivileged uids for sandboxed executions: one per concurrent slot, leased across processes, and swept.

When the supervisor runs as root, each execution runs as a dedicated uid (default 60000 + slot): RLIMIT_NPROC
then counts only that slot's processes, `kill(-1, 9)` reaches only them, and after a run every process of the
uid can be killed by a helper running as that uid (`kill_all_processes_of`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import random
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

KILL_BINARY = "/bin/kill"


class UidUnavailable(RuntimeError):
    """No sandbox uid can be leased: all are in use, or the lock directory is not private."""


class UidLease:
    """Exclusive use of one unprivileged uid, held by an `flock` on a root-owned lock file."""

    def __init__(self, uid: int, fd: int) -> None:
        self.uid = uid
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.release()


class UidAllocator:
    """Hands out uids uid_base .. uid_base + count - 1, one per concurrent execution, across processes.

    A uid is in use while a process holds an exclusive `flock` on `<lock_dir>/<uid>.lock`; the kernel drops
    the lock when the holder dies, so a crashed trainer never leaks a slot. Uids that exist in
    /etc/passwd are skipped.
    """

    def __init__(self, base: int, count: int) -> None:
        if base < 1000:
            raise ValueError(f"uid_base {base} is too low: sandbox uids must not collide with system users")
        self.base, self.count = base, count
        self.lock_dir = Path(tempfile.gettempdir()) / f"loopcoder-sandbox-uids-{os.geteuid()}"
        self._local = threading.local()
        self._mutex = threading.Lock()

    def _ensure_lock_dir(self) -> None:
        try:
            os.mkdir(self.lock_dir, 0o700)
        except FileExistsError:
            pass
        info = os.lstat(self.lock_dir)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise UidUnavailable(f"{self.lock_dir} is not a private directory of this user; remove it")

    def lease(self) -> UidLease:
        """The calling thread's uid; acquired on first use and kept until the thread ends."""
        lease = getattr(self._local, "lease", None)
        if lease is None:
            lease = self._acquire()
            self._local.lease = lease
        return lease

    def _acquire(self) -> UidLease:
        with self._mutex:
            self._ensure_lock_dir()
            start = random.randrange(self.count)
            for step in range(self.count):
                uid = self.base + (start + step) % self.count
                try:
                    pwd.getpwuid(uid)
                    continue
                except KeyError:
                    pass
                fd = os.open(self.lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as error:
                    os.close(fd)
                    if error.errno in (errno.EWOULDBLOCK, errno.EACCES):
                        continue
                    raise
                return UidLease(uid, fd)
        raise UidUnavailable(f"all {self.count} sandbox uids from {self.base} are in use")


_ALLOCATORS: dict[tuple[int, int], UidAllocator] = {}
_ALLOCATORS_LOCK = threading.Lock()


def allocator(base: int, count: int) -> UidAllocator:
    with _ALLOCATORS_LOCK:
        if (base, count) not in _ALLOCATORS:
            _ALLOCATORS[(base, count)] = UidAllocator(base, count)
        return _ALLOCATORS[(base, count)]


def processes_of(uid: int) -> list[int]:
    """Pids of the live (not zombie) processes whose real uid is `uid`, from /proc."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as handle:
                status = handle.read(2048)
        except OSError:
            continue
        state = status.split(b"State:", 1)[-1].split(None, 1)[0] if b"State:" in status else b""
        uid_line = status.split(b"\nUid:", 1)[-1].split(None, 1)[0] if b"\nUid:" in status else b"-1"
        if int(uid_line) == uid and state not in (b"Z", b"X"):
            pids.append(int(name))
    return pids


def kill_all_processes_of(uid: int, settle_seconds: float = 2.0) -> list[int]:
    """SIGKILL every process of `uid` (an unprivileged sandbox uid); returns the pids still alive after waiting.

    The kill is sent by `kill -9 -1` running *as the uid*, which reaches exactly the processes that uid may
    signal: its own. The helper drops to the uid before exec (subprocess `user=`); if that fails, it never
    runs. A process forked while the signal was being delivered gets another round.
    """
    if uid < 1000 or uid == os.geteuid():
        raise ValueError(f"refusing to kill all processes of uid {uid}")
    deadline = time.monotonic() + settle_seconds
    while True:
        helper = subprocess.run(
            [KILL_BINARY, "-9", "-1"],
            user=uid,
            group=uid,
            extra_groups=[],
            env={},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            close_fds=True,
            check=False,
            timeout=10,
        )
        if b"Usage" in helper.stderr:
            raise RuntimeError(f"{KILL_BINARY} rejected its arguments: {helper.stderr.decode()[:200]}")
        left = processes_of(uid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.01)
