"""The program the sandbox runs for an assert test: the checks run in a process the tested program cannot reach.

This file is copied into the working directory as `main.py` and run by the sandbox's interpreter, so it uses
the standard library only and imports nothing of loopcoder. Inputs: `solution.py` (the program under test) in
the working directory, and on stdin a line with a per-execution nonce followed by the test code. The sandbox
supervisor writes the nonce and reads it back; the program never sees it.

1. Before any line of the program runs, the harness makes its process non-dumpable (`prctl(PR_SET_DUMPABLE,
   0)`): a process of the same uid can then neither ptrace it nor open its `/proc/<pid>/mem`, `fd` or
   `environ`. It keeps a private duplicate of stdout as the report channel and opens two pipes.
2. It forks. The child replaces stdin with /dev/null, points stdout at stderr, closes the report channel,
   runs `solution.py` as `__main__`, and then answers calls from the parent: call an object, get an
   attribute, list an iterable. It was forked before the parent read stdin, so its memory never held the
   test code or the nonce.
3. The parent reads the nonce and the test code, binds every top-level name of the program (except those
   that would shadow a builtin) to a proxy in a fresh namespace, and executes the test code there with its
   own, untouched builtins. Calling a proxy sends the arguments to the child and waits for the result.
4. Values coming back from the program are rebuilt by the parent from plain data: `None`, `bool`, `int`,
   `float`, `complex`, `str`, `bytes`, and `list`, `tuple`, `set`, `frozenset`, `dict` of those, each
   checked with `type(x) is ...` in the child and rebuilt as the exact builtin type in the parent. Anything
   else (a subclass, an object with its own `__eq__`) comes back as an opaque proxy that compares equal
   only to itself, has no truth value, and can only be called, asked for an attribute or iterated.
5. Only when the test code ran to its end, with the program alive and the protocol intact throughout, does
   the parent write the nonce to the report channel. Exit status: 0 passed, 1 a check failed
   (AssertionError), 2 anything else (the program ended, raised, or broke the protocol), 3 the harness
   could not protect itself (an infrastructure error).
"""

import builtins
import os
import struct
import sys

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_ERROR = 2
EXIT_UNPROTECTED = 3
SIGKILL = 9  # the number, not the `signal` module: importing it costs milliseconds per execution
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
MAX_MESSAGE_BYTES = 64 << 20
MAX_DEPTH = 100
MAX_ITEMS = 1_000_000
COUNT = struct.Struct(">I")
DOUBLE = struct.Struct(">d")
CONTAINERS = {b"l": list, b"t": tuple, b"e": set, b"z": frozenset}
CONTAINER_TAGS = {kind: tag for tag, kind in CONTAINERS.items()}


class ProtocolError(Exception):
    """The other side sent something that is not a well-formed message."""


class ProgramEnded(BaseException):
    """The program's process stopped answering. A BaseException, so `except Exception` in checks cannot hide it."""


def encode(value, refer, depth=0):
    """Plain data as bytes (a tag, then the payload); anything else becomes a reference `h` + `refer(value)`."""
    out = bytearray()
    _encode(value, refer, depth, out)
    return bytes(out)


def _encode(value, refer, depth, out):
    kind = type(value)
    if value is None:
        out += b"N"
    elif kind is bool:
        out += b"T" if value else b"F"
    elif depth > MAX_DEPTH:
        out += b"h" + COUNT.pack(refer(value))
    elif kind is int:
        _sized(b"i", format(value, "x").encode(), out)
    elif kind is float:
        out += b"f" + DOUBLE.pack(value)
    elif kind is complex:
        out += b"c" + DOUBLE.pack(value.real) + DOUBLE.pack(value.imag)
    elif kind is str:
        _sized(b"s", value.encode("utf-8", "surrogatepass"), out)
    elif kind is bytes:
        _sized(b"y", value, out)
    elif kind is list or kind is tuple or kind is set or kind is frozenset:
        out += CONTAINER_TAGS[kind] + COUNT.pack(len(value))
        for item in value:
            _encode(item, refer, depth + 1, out)
    elif kind is dict:
        out += b"d" + COUNT.pack(len(value))
        for key, item in value.items():
            _encode(key, refer, depth + 1, out)
            _encode(item, refer, depth + 1, out)
    else:
        out += b"h" + COUNT.pack(refer(value))


def _sized(tag, data, out):
    out += tag + COUNT.pack(len(data))
    out += data


def decode(data, resolve):
    """The inverse of `encode`, building exact builtin types only; raises ProtocolError on anything else."""
    try:
        value, end = _decode(memoryview(data), 0, resolve, 0)
    except (ValueError, TypeError, IndexError, OverflowError, RecursionError, struct.error) as error:
        raise ProtocolError(f"malformed value: {error}") from None
    if end != len(data):
        raise ProtocolError("trailing bytes")
    return value


def _decode(view, at, resolve, depth):
    if depth > MAX_DEPTH + 1:
        raise ProtocolError("nested too deeply")
    tag = bytes(view[at : at + 1])
    at += 1
    if tag == b"N":
        return None, at
    if tag == b"T" or tag == b"F":
        return tag == b"T", at
    if tag == b"f":
        return DOUBLE.unpack_from(view, at)[0], at + DOUBLE.size
    if tag == b"c":
        real, imag = DOUBLE.unpack_from(view, at)[0], DOUBLE.unpack_from(view, at + DOUBLE.size)[0]
        return complex(real, imag), at + 2 * DOUBLE.size
    (size,) = COUNT.unpack_from(view, at)
    at += COUNT.size
    if tag == b"h":
        return resolve(size), at
    if tag in (b"i", b"s", b"y"):
        if at + size > len(view):
            raise ProtocolError("truncated value")
        raw = bytes(view[at : at + size])
        value = (
            int(raw.decode("ascii"), 16)
            if tag == b"i"
            else raw.decode("utf-8", "surrogatepass")
            if tag == b"s"
            else raw
        )
        return value, at + size
    if size > len(view) - at:
        raise ProtocolError("more items than bytes")
    if tag == b"d":
        pairs = []
        for _ in range(size):
            key, at = _decode(view, at, resolve, depth + 1)
            item, at = _decode(view, at, resolve, depth + 1)
            pairs.append((key, item))
        return dict(pairs), at
    if tag in CONTAINERS:
        items = []
        for _ in range(size):
            item, at = _decode(view, at, resolve, depth + 1)
            items.append(item)
        return CONTAINERS[tag](items), at
    raise ProtocolError(f"unknown tag {tag!r}")


def send(fd, payload):
    data = COUNT.pack(len(payload)) + payload
    while data:
        data = data[os.write(fd, data) :]


def receive(fd):
    """One message's bytes, or None at end of stream."""
    header = read_exactly(fd, COUNT.size)
    if header is None:
        return None
    (size,) = COUNT.unpack(header)
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {size} bytes")
    payload = read_exactly(fd, size)
    if payload is None:
        raise ProtocolError("truncated message")
    return payload


def read_exactly(fd, size):
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            if left == size:
                return None
            raise ProtocolError("truncated message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def serve(requests, responses):
    """The child: run the program, publish its top-level names, then answer calls until the parent hangs up."""
    objects = []

    def refer(value):
        objects.append(value)
        return len(objects) - 1

    def resolve(ref):
        if not 0 <= ref < len(objects):
            raise ProtocolError(f"unknown reference {ref}")
        return objects[ref]

    namespace = {"__name__": "__main__", "__file__": "solution.py", "__builtins__": builtins}
    with open("solution.py", encoding="utf-8") as handle:
        source = handle.read()
    exec(compile(source, "solution.py", "exec"), namespace)
    module = type(sys)
    names = {name: value for name, value in list(namespace.items()) if not isinstance(value, module)}
    send(responses, encode(("ready", names), refer))
    while True:
        payload = receive(requests)
        if payload is None:
            return
        message = decode(payload, resolve)
        try:
            operation, target = message[0], message[1]
            if operation == "call":
                result = target(*message[2], **message[3])
            elif operation == "getattr":
                result = getattr(target, message[2])
            elif operation == "iter":
                result = []
                for item in target:
                    result.append(item)
                    if len(result) > MAX_ITEMS:
                        raise ValueError(f"more than {MAX_ITEMS} items")
            else:
                raise ProtocolError(f"unknown operation {operation!r}")
            reply = encode(("ok", result), refer)
        except BaseException as error:  # noqa: B036 - every failure of the program goes back to the checks
            reply = encode(("raise", type(error).__name__, str(error)[:2000]), refer)
        send(responses, reply)


class Link:
    """The parent's end of the conversation with the program's process. Once broken, it stays broken."""

    def __init__(self, requests, responses):
        self.requests, self.responses = requests, responses
        self.broken = ""

    def fail(self, reason):
        self.broken = self.broken or reason
        raise ProgramEnded(reason)

    def receive(self, what):
        """The next message from the program, decoded; `what` names the step for the failure message."""
        try:
            payload = receive(self.responses)
            if payload is not None:
                message = decode(payload, RemoteObject.of)
                if type(message) is tuple and message and type(message[0]) is str:
                    return message
                raise ProtocolError("malformed message")
        except OSError:
            pass
        except ProtocolError as error:
            self.fail(f"protocol error: {error}")
        self.fail(f"the program's process ended before {what}")

    def greeting(self):
        """The program's top-level names, once it has run."""
        message = self.receive("the checks started")
        if len(message) != 2 or message[0] != "ready" or type(message[1]) is not dict:
            self.fail("protocol error: malformed greeting")
        return message[1]

    def request(self, *message):
        if self.broken:
            raise ProgramEnded(self.broken)
        try:
            send(self.requests, encode(message, outgoing))
        except OSError:
            self.fail("the program's process ended before the checks finished")
        reply = self.receive("the checks finished")
        if len(reply) == 2 and reply[0] == "ok":
            return reply[1]
        if len(reply) == 3 and reply[0] == "raise" and type(reply[1]) is str and type(reply[2]) is str:
            raise remote_exception(reply[1], reply[2])
        self.fail("protocol error: malformed reply")


def remote_exception(name, message):
    """The builtin exception the program raised (by name), or a RuntimeError naming it."""
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except TypeError:
            pass
    return RuntimeError(f"{name}: {message}")


LINK = None


class RemoteObject:
    """An object living in the program's process: it can be called, asked for an attribute or iterated."""

    __slots__ = ("_ref",)

    @classmethod
    def of(cls, ref):
        proxy = cls()
        object.__setattr__(proxy, "_ref", ref)
        return proxy

    def __call__(self, *args, **kwargs):
        return LINK.request("call", self, args, kwargs)

    def __getattr__(self, name):
        if name == "_ref":
            raise AttributeError(name)
        return LINK.request("getattr", self, name)

    @property
    def __module__(self):
        # every class has its own `__module__`, which would hide the program's: ask the program
        return LINK.request("getattr", self, "__module__")

    def __iter__(self):
        return iter(LINK.request("iter", self))

    def __bool__(self):
        raise TypeError("an object returned by the program that is not plain data has no truth value")

    def __repr__(self):
        return f"<object of the program #{self._ref}>"


def outgoing(value):
    """What may be sent to the program besides plain data: its own objects (as references)."""
    if type(value) is RemoteObject:
        return value._ref
    raise TypeError(f"cannot pass a {type(value).__name__} to the program: only plain data")


def protect():
    """Makes this process non-dumpable; False if that cannot be done."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0 and libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError, ImportError):
        return False


def print_failure():
    import traceback

    traceback.print_exc()


def run_child(report, to_child, from_child):
    """In the forked child: nothing of the checks is reachable from here; then the program runs."""
    status = EXIT_ERROR
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(2, 1)
        for fd in (null, report, to_child[1], from_child[0]):
            os.close(fd)
        serve(to_child[0], from_child[1])
        status = 0
    except BaseException:  # noqa: B036 - the program's own failure: reported, then the process ends
        print_failure()
    finally:
        flush()
        os._exit(status)


def run_checks(names, code):
    """Executes the test code in a fresh namespace holding the program's names (but none shadowing a builtin)."""
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    for name, value in names.items():
        if type(name) is str and not name.startswith("__") and not hasattr(builtins, name):
            namespace[name] = value
    exec(compile(code, "checks.py", "exec"), namespace)


def main():
    global LINK
    if not protect():
        print("harness: cannot make the checking process non-dumpable (prctl)", file=sys.stderr)
        return EXIT_UNPROTECTED
    report = os.dup(1)
    os.dup2(2, 1)
    to_child, from_child = os.pipe(), os.pipe()
    child = os.fork()
    if child == 0:
        run_child(report, to_child, from_child)
    os.close(to_child[0])
    os.close(from_child[1])
    LINK = link = Link(to_child[1], from_child[0])
    try:
        nonce, _, code = sys.stdin.read().partition("\n")
        run_checks(link.greeting(), code)
        if link.broken:
            raise ProgramEnded(link.broken)
    except AssertionError:
        print_failure()
        return EXIT_FAILED
    except BaseException:  # noqa: B036 - any other way of not reaching the end is not a pass
        print_failure()
        return EXIT_ERROR
    finally:
        os.kill(child, SIGKILL)
        os.waitpid(child, 0)
    os.write(report, (nonce + "\n").encode())
    return EXIT_PASSED


def flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


if __name__ == "__main__":
    status = main()
    flush()
    os._exit(status)
