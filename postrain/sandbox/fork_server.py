"""The pre-started interpreter of one sandbox slot: it forks a fresh child for every execution.

Started once per slot, inside the slot's isolation, by the sandbox's interpreter and flags
(`python -I -B fork_server.py UID HARNESS_PATH CONTROL_FD`), so it uses the standard library only. `execution.py` imports
`confine` from here as well, so a forked child and a one-shot execution are limited by the same code.

    bwrap:  the server runs as the slot uid, as PID 1 of the sandbox's namespaces (`--as-pid-1`).
            Signals from inside the namespace cannot kill PID 1, and the server is non-dumpable, so no
            execution can ptrace it, read its memory or open its descriptors.
    rlimit: the server runs as root (like the supervisor, it never runs untrusted code) and is a child
            subreaper; each child drops to the slot uid, so executions cannot signal or trace it.

Per execution the supervisor sends, on the control socket, a small JSON request (what to run, the working
directory, the rlimits) with three descriptors (stdin, stdout, stderr). The program, its stdin and its tests
never pass through the server: the supervisor writes the files into the working directory and stdin is a
descriptor, so the server's memory, which every later child inherits, holds nothing of any execution.

The child: new session, the three descriptors on 0/1/2 and no other, the working directory, the rlimits and
the uid drop (`confine`), a session keyring of its own, dumpable again (as after `execve`), Python's own
SIGINT handler back, then one of:

- `python`: `main.py` runs as `__main__`, at the top level of this script, so that an uncaught exception,
  `SystemExit`, `atexit` handlers, non-daemon threads and buffered output end the process exactly as they
  end `python main.py`;
- `assert`: the assert harness's `main()` (imported once by the server), then its exit;
- `exec`: `execve` of the given command (compiled programs, the compiler).

When the child has exited, or the supervisor asks for a kill (timeout, output cap), the server kills every
other process of the execution (bwrap: `kill(-1, SIGKILL)` from PID 1; rlimit: a helper that drops to the slot
uid and sends `kill(-1, SIGKILL)`), reaps them all (it is their reaper: PID 1, or the subreaper), and puts the
slot back as it was: it empties the writable places, restores their modes, times and extended attributes,
removes SysV IPC objects and the uid's kernel keys, and, under bwrap, checks `/dev` and those places against
the state recorded at start. It does the same once when it starts, for what an earlier holder of the uid left. Only then does it answer with the wait status and the CPU time of the execution's processes. If the
slot cannot be put back, the answer says `clean: false` and the server exits; the supervisor starts a new one.
"""

import builtins
import ctypes
import gc
import importlib.util
import json
import os
import resource
import select
import signal
import socket
import stat
import sys
import time
import types

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
IPC_RMID = 0
SETUP_DONE = b"1"
# writable places of a bwrap slot besides the working directory (which the supervisor empties)
BWRAP_SCRATCH = ("/tmp", "/dev/shm", "/dev/mqueue")
# world-writable host places an rlimit execution may leave files in, removed when they belong to its uid
HOST_SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")
REAP_SECONDS = 3.0
LIBC = ctypes.CDLL(None, use_errno=True)
# keyctl(2) has no libc wrapper; its system call number depends on the architecture (None: keyrings untouched)
KEYCTL = {"x86_64": 250, "aarch64": 219}.get(os.uname().machine)
KEYCTL_JOIN_SESSION_KEYRING = 1
KEYCTL_CLEAR = 7
KEYCTL_READ = 11
# the keyrings of the uid itself, which outlive its processes: shared by every execution of the slot
UID_KEYRINGS = (-4, -5)  # KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING


def confine(rlimits, uid):
    """Sets each `(resource, value)` as soft = hard limit, the OOM score, then drops to `uid` (None: keep).

    Runs in a forked child before anything untrusted: the one-shot path calls it between fork and exec, the
    fork server in each execution's child.
    """
    for which, value in rlimits:
        resource.setrlimit(which, (value, value))
    try:
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
        os.write(fd, b"1000")
        os.close(fd)
    except OSError:
        pass
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        if os.getuid() != uid or os.geteuid() != uid:
            os._exit(126)


def keyctl(operation, *arguments):
    if KEYCTL is None:
        return -1
    values = [ctypes.c_long(value) if type(value) is int else value for value in arguments]
    return LIBC.syscall(KEYCTL, ctypes.c_long(operation), *values)


def clear_uid_keyrings():
    """Empties the slot uid's user and user-session keyrings (kernel keys outlive the processes that add them)."""
    for keyring in UID_KEYRINGS:
        keyctl(KEYCTL_CLEAR, keyring)


def uid_keyrings_empty():
    return all(keyctl(KEYCTL_READ, keyring, None, 0) <= 0 for keyring in UID_KEYRINGS)


def prctl(option, value):
    if LIBC.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def enter_execution(request, fds, setup_write, control, uid):
    """In the forked child: everything of the execution's process except running the program."""
    os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    control.detach()
    os.closerange(3, setup_write)
    os.closerange(setup_write + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    os.chdir(request["cwd"])
    confine(request["rlimits"], None if uid < 0 else uid)
    # a session keyring of its own, not the one inherited from the supervisor's session
    keyctl(KEYCTL_JOIN_SESSION_KEYRING, None)
    prctl(PR_SET_DUMPABLE, 1)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.write(setup_write, SETUP_DONE)
    os.close(setup_write)


def run_python_main():
    """`python main.py`, in this already started interpreter: `main.py` becomes a fresh `__main__`."""
    main = types.ModuleType("__main__")
    main.__file__ = "main.py"
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    sys.argv = ["main.py"]
    with open("main.py", "rb") as handle:
        source = handle.read()
    exec(compile(source, "main.py", "exec"), main.__dict__)


def kill_all(uid):
    """SIGKILL every process of the execution (never the server); returns the helper's pid or None."""
    if uid < 0:
        # PID 1 of the namespace: kill(-1) reaches every other process in it, and only those
        assert os.getpid() == 1 and os.getuid() != 0
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return None
    helper = os.fork()
    if helper == 0:
        try:
            confine([], uid)
            os.kill(-1, signal.SIGKILL)
            clear_uid_keyrings()
        except BaseException:  # noqa: B036 - the helper must exit whatever happens
            pass
        os._exit(0)
    return helper


def reap_all(uid, first_kill):
    """Kills and reaps every child of the server (the execution's processes and their orphans) until none is
    left; returns (their CPU seconds, True if none is left). Without `first_kill`, kills only if one is left."""
    cpu, helpers = 0.0, set()
    deadline = time.monotonic() + REAP_SECONDS
    next_kill = time.monotonic() if first_kill else None
    while True:
        now = time.monotonic()
        if next_kill is not None and now >= next_kill and not helpers:
            helper = kill_all(uid)
            if helper is not None:
                helpers.add(helper)
            next_kill = now + 0.01
        try:
            pid, _, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return cpu, True
        if pid in helpers:
            helpers.discard(pid)
        elif pid:
            cpu += usage.ru_utime + usage.ru_stime
        elif now > deadline:
            return cpu, False
        else:
            next_kill = now if next_kill is None else next_kill
            time.sleep(0.0005)


def remove_tree(path):
    """Removes a file or a directory tree that a program made: however deep, whatever modes it set.

    Works on descriptors (never a path longer than one name, never following a symbolic link), for trees
    nested beyond PATH_MAX. Only called once every process of the execution is dead.
    """
    parent, name = os.path.split(path)
    parent_fd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY)
    stack = []
    try:
        if not stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
            os.unlink(name, dir_fd=parent_fd)
            return
        stack.append((parent_fd, name, _enter(parent_fd, name)))
        while stack:
            above, name, fd = stack[-1]
            subdirectory = None
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        subdirectory = entry.name
                        break
                    os.unlink(entry.name, dir_fd=fd)
            if subdirectory is not None:
                stack.append((fd, subdirectory, _enter(fd, subdirectory)))
                continue
            stack.pop()
            os.close(fd)
            os.rmdir(name, dir_fd=above)
    finally:
        for _, _, fd in stack:
            os.close(fd)
        os.close(parent_fd)


def _enter(parent_fd, name):
    os.chmod(name, 0o700, dir_fd=parent_fd)
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)


def clear_xattrs(path):
    for name in os.listxattr(path, follow_symlinks=False):
        os.removexattr(path, name, follow_symlinks=False)


def remove_ipc(uid):
    """Removes the SysV shared memory segments, semaphore sets and message queues of `uid` (-1: all visible)."""
    for kind, call in (("shm", LIBC.shmctl), ("sem", LIBC.semctl), ("msg", LIBC.msgctl)):
        try:
            with open(f"/proc/sysvipc/{kind}") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        header = lines[0].split()
        for line in lines[1:]:
            row = dict(zip(header, line.split(), strict=False))
            if uid >= 0 and int(row["uid"]) != uid and int(row["cuid"]) != uid:
                continue
            ident = int(row[{"shm": "shmid", "sem": "semid", "msg": "msqid"}[kind]])
            if kind == "sem":
                call(ident, 0, IPC_RMID)
            else:
                call(ident, IPC_RMID, None)


class BwrapSlotState:
    """What the slot's writable places look like at start; `restore` puts them back after each execution."""

    def __init__(self):
        self.dev = {name: self.describe(os.path.join("/dev", name)) for name in os.listdir("/dev")}
        self.scratch = {path: os.lstat(path) for path in BWRAP_SCRATCH + ("/dev",) if os.path.isdir(path)}

    @staticmethod
    def describe(path):
        info = os.lstat(path)
        target = os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
        return stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_rdev, target

    def restore(self):
        for name in set(os.listdir("/dev")) - set(self.dev):
            remove_tree(os.path.join("/dev", name))
        for name, wanted in self.dev.items():
            path = os.path.join("/dev", name)
            if os.path.lexists(path) and self.describe(path) == wanted:
                continue
            kind, mode, _, target = wanted
            if os.path.lexists(path):
                remove_tree(path)
            if kind == stat.S_IFLNK:
                os.symlink(target, path)
            elif kind == stat.S_IFDIR:
                os.mkdir(path, mode)
        for path, info in self.scratch.items():
            if path != "/dev":
                for name in os.listdir(path):
                    remove_tree(os.path.join(path, name))
            os.chmod(path, stat.S_IMODE(info.st_mode))
            clear_xattrs(path)
            os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
        remove_ipc(-1)
        clear_uid_keyrings()

    def intact(self):
        if not uid_keyrings_empty():
            return False
        if {name: self.describe(os.path.join("/dev", name)) for name in os.listdir("/dev")} != self.dev:
            return False
        for path, info in self.scratch.items():
            now = os.lstat(path)
            if (path != "/dev" and os.listdir(path)) or os.listxattr(path, follow_symlinks=False):
                return False
            if (now.st_mode, now.st_mtime_ns) != (info.st_mode, info.st_mtime_ns):
                return False
        return True


def tidy_host_scratch(uid):
    """rlimit layer: removes what the slot uid left in the host's world-writable places, and its IPC objects."""
    for top in HOST_SCRATCH:
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid == uid:
                    remove_tree(entry.path)
            except OSError:
                pass
    remove_ipc(uid)


def put_slot_back(uid, state):
    """True if the slot is as it was before the execution."""
    try:
        if state is None:
            tidy_host_scratch(uid)
            return True
        state.restore()
        return state.intact()
    except (OSError, RecursionError, ValueError):
        return False


def wait_for_exit_or_kill(child, control):
    """Waits until the child exits or the supervisor asks for a kill; returns (kill requested, supervisor gone)."""
    pidfd = os.pidfd_open(child)
    try:
        while True:
            ready, _, _ = select.select([control, pidfd], [], [])
            if control in ready:
                message = control.recv(64)
                return True, not message
            if pidfd in ready:
                return False, False
    finally:
        os.close(pidfd)


def serve(control, uid, harness):
    """The server's loop; returns only in a forked child, with the request it is to run."""
    # start from a clean slot: an earlier holder of the uid may have left processes, files or kernel keys
    if uid >= 0:
        reap_all(uid, first_kill=True)
    else:
        clear_uid_keyrings()
    state = BwrapSlotState() if uid < 0 else None
    put_slot_back(uid, state)
    control.send(json.dumps({"ready": True, "pid": os.getpid()}).encode())
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 1 << 16, 3)
        except OSError:
            message, fds = b"", []
        if not message:
            reap_all(uid, first_kill=True)
            return None
        if len(fds) != 3:
            # a kill that arrived after its execution had ended
            for fd in fds:
                os.close(fd)
            continue
        request = json.loads(message)
        setup_read, setup_write = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(setup_read)
            try:
                enter_execution(request, fds, setup_write, control, uid)
            except BaseException as error:  # noqa: B036 - nothing of the program has run: report and end
                os.write(2, f"sandbox: cannot set the execution up: {error!r}\n".encode())
                os._exit(126)
            return request
        os.close(setup_write)
        for fd in fds:
            os.close(fd)
        kill_requested, supervisor_gone = wait_for_exit_or_kill(child, control)
        if kill_requested:
            try:
                os.killpg(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, status, usage = os.wait4(child, 0)
        cpu, reaped = reap_all(uid, first_kill=kill_requested or uid >= 0)
        os.set_blocking(setup_read, False)
        try:
            started = os.read(setup_read, 1) == SETUP_DONE
        except BlockingIOError:
            started = False
        os.close(setup_read)
        clean = reaped and put_slot_back(uid, state)
        if supervisor_gone:
            return None
        reply = {
            "status": status,
            "cpu": usage.ru_utime + usage.ru_stime + cpu,
            "started": started,
            "killed": kill_requested,
            "clean": clean,
        }
        control.send(json.dumps(reply).encode())
        if not clean:
            return None


def load_harness(path):
    spec = importlib.util.spec_from_file_location("assert_harness", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start(argv):
    """Sets the server up and serves; returns (request, harness) in an execution's child, None when done."""
    uid, harness, control_fd = int(argv[1]), load_harness(argv[2]), int(argv[3])
    prctl(PR_SET_DUMPABLE, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if uid >= 0:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        if os.getppid() == 1:
            return None
    if "random" in sys.modules:
        # a seeded generator would be inherited by every child: the same "random" numbers in every execution
        raise RuntimeError("the fork server must not import random before forking")
    control = socket.socket(fileno=control_fd)
    # what the server allocated never changes again: keep the collector from writing to it in every child
    # (each write copies a page), most of all at the child's exit
    gc.freeze()
    request = serve(control, uid, harness)
    return None if request is None else (request, harness)


if __name__ == "__main__":
    job = start(sys.argv)
    if job is None:
        os._exit(0)
    request, harness = job
    del job
    if request["mode"] == "assert":
        # as when the harness runs as `python main.py`
        sys.modules["__main__"] = harness
        status = harness.main()
        harness.flush()
        os._exit(status)
    elif request["mode"] == "exec":
        try:
            os.execv(request["argv"][0], request["argv"])
        except OSError as error:
            os.write(2, f"cannot execute {request['argv'][0]}: {error}\n".encode())
            os._exit(127)
    else:
        del request, harness
        run_python_main()
