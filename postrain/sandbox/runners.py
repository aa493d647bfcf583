"""Test kinds and verdicts: run one program against one test case, in Python or C++.

Two kinds of test, told apart by which fields are set (the `rl_problem` test struct):

- **stdio**: `stdin` is fed to the program and its stdout is compared with `expected_stdout` line by line,
  after trimming trailing whitespace of each line and trailing blank lines of the whole output. The number
  of lines must match, so a prefix of the expected output fails. Lines that differ textually still match
  when they hold the same numbers (`1.0` vs `1`, compared as Decimals, as LiveCodeBench does).
- **assert** (Python only): `assert_code` (HumanEval: the `check(candidate)` function plus a
  `check(<entry_point>)` call) runs in the harness of `assert_harness.py`: the program runs in a process of
  its own, the checks in another that the program cannot reach and that sees only plain data coming back
  from it. The test passes only if the harness reports, with a nonce the program never sees, that the
  checks ran to their end; exiting early, faking equality or tampering with the checks does not pass.

Verdicts (`TestVerdict.verdict`):

| verdict | meaning | counts as passed |
|---|---|---|
| `passed` | exit 0 and the output matches (stdio) / the checks ran to their end (assert) | yes |
| `failed` | exit 0 but wrong output (stdio); for assert tests an `AssertionError` in the checks | no |
| `runtime_error` | non-zero exit or killed by a signal (other than the limits below) | no |
| `timeout` | over the CPU limit or the wall-clock limit | no |
| `memory_exceeded` | an allocation failed under RLIMIT_AS (`MemoryError`, `std::bad_alloc`) | no |
| `output_exceeded` | stdout over its cap | no |
| `compile_error` | C++ only: g++ rejected the program | no |
| `skipped` | not run: the program already timed out `max_timeouts` times (early stop) | no |
| `sandbox_error` | the sandbox or the assert harness failed (infrastructure): the reward is None, never 0 | n/a |
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from . import assert_harness
from .execution import OK, OUTPUT_EXCEEDED, SANDBOX_ERROR, TIMEOUT, ExecutionResult, Limits, Sandbox, source_hash

PASSED = "passed"
FAILED = "failed"
RUNTIME_ERROR = "runtime_error"
TIMED_OUT = "timeout"
MEMORY_EXCEEDED = "memory_exceeded"
OUTPUT_TOO_LARGE = "output_exceeded"
COMPILE_ERROR = "compile_error"
SKIPPED = "skipped"
INFRA_ERROR = "sandbox_error"
VERDICTS = (
    PASSED,
    FAILED,
    RUNTIME_ERROR,
    TIMED_OUT,
    MEMORY_EXCEEDED,
    OUTPUT_TOO_LARGE,
    COMPILE_ERROR,
    SKIPPED,
    INFRA_ERROR,
)

PYTHON_LANGUAGES = {"python", "python3", "py"}
CPP_LANGUAGES = {"cpp", "c++", "cxx", "cpp17", "c++17"}
CPP_FLAGS = ("-O2", "-std=gnu++17", "-pipe")
COMPILE_LIMITS = Limits(
    cpu_seconds=20, wall_seconds=40, memory_mb=2048, max_processes=32, file_size_mb=64, stdout_bytes=64 << 10
)


@dataclass(frozen=True)
class TestCase:
    __test__ = False  # not a pytest class

    """One test: stdin/expected_stdout (stdio) or assert_code (assert). Mirrors the `rl_problem` test struct."""

    stdin: str | None = None
    expected_stdout: str | None = None
    assert_code: str | None = None

    @property
    def kind(self) -> str:
        return "assert" if self.assert_code else "stdio"

    @classmethod
    def from_record(cls, record: dict) -> TestCase:
        return cls(record.get("stdin"), record.get("expected_stdout"), record.get("assert_code"))


@dataclass
class TestVerdict:
    __test__ = False  # not a pytest class

    """The verdict of one (program, test) pair, with timings and a short excerpt of stderr for logs."""

    verdict: str
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    detail: str = ""
    cached: bool = False

    @property
    def passed(self) -> bool:
        return self.verdict == PASSED

    @property
    def infrastructure_error(self) -> bool:
        return self.verdict == INFRA_ERROR


def normalize_language(language: str | None) -> str:
    """`python` or `cpp`; raises ValueError naming the supported languages otherwise."""
    name = (language or "python").strip().lower()
    if name in PYTHON_LANGUAGES:
        return "python"
    if name in CPP_LANGUAGES:
        return "cpp"
    raise ValueError(f"unsupported language {language!r}; supported: python, cpp")


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").rstrip().split("\n")]


def _same_numbers(actual: str, expected: str) -> bool:
    left, right = actual.split(), expected.split()
    if len(left) != len(right):
        return False
    try:
        return all(Decimal(a) == Decimal(b) for a, b in zip(left, right, strict=True))
    except InvalidOperation:
        return False


def outputs_match(actual: str, expected: str) -> bool:
    """Line-by-line comparison: trailing whitespace trimmed, equal line counts, then exact or numeric equality.

    >>> outputs_match("1 2\\n3  \\n", "1 2\\n3")
    True
    >>> outputs_match("1\\n", "1\\n2\\n")  # a prefix of the expected output does not pass
    False
    """
    got, want = _lines(actual), _lines(expected)
    if len(got) != len(want):
        return False
    return all(a == b or _same_numbers(a, b) for a, b in zip(got, want, strict=True))


def _excerpt(text: str, limit: int = 300) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def verdict_from_execution(result: ExecutionResult, test: TestCase, nonce: str | None = None) -> TestVerdict:
    """Maps an `ExecutionResult` to a test verdict; for assert tests, `nonce` is the one the harness was given."""
    timing = {"wall_seconds": result.wall_seconds, "cpu_seconds": result.cpu_seconds}
    if result.status == SANDBOX_ERROR:
        return TestVerdict(INFRA_ERROR, detail=result.error, **timing)
    if result.status == TIMEOUT:
        return TestVerdict(TIMED_OUT, **timing)
    if result.status == OUTPUT_EXCEEDED:
        return TestVerdict(OUTPUT_TOO_LARGE, **timing)
    assert result.status == OK, result.status
    if result.memory_exceeded:
        return TestVerdict(MEMORY_EXCEEDED, detail=_excerpt(result.stderr), **timing)
    if test.kind == "assert":
        return _assert_verdict(result, nonce, timing)
    if result.returncode != 0:
        return TestVerdict(RUNTIME_ERROR, detail=f"exit {result.returncode}: {_excerpt(result.stderr)}", **timing)
    if outputs_match(result.stdout, test.expected_stdout or ""):
        return TestVerdict(PASSED, **timing)
    return TestVerdict(FAILED, detail=f"got {_excerpt(result.stdout, 120)!r}", **timing)


def _assert_verdict(result: ExecutionResult, nonce: str | None, timing: dict) -> TestVerdict:
    """Passed only on the harness's report: exit 0 and exactly the nonce on its private channel (stdout)."""
    if nonce and result.returncode == assert_harness.EXIT_PASSED and result.stdout == nonce + "\n":
        return TestVerdict(PASSED, **timing)
    if result.returncode == assert_harness.EXIT_UNPROTECTED:
        return TestVerdict(INFRA_ERROR, detail=_excerpt(result.stderr), **timing)
    if result.returncode == assert_harness.EXIT_FAILED:
        return TestVerdict(FAILED, detail=_excerpt(result.stderr), **timing)
    if result.returncode == assert_harness.EXIT_PASSED:
        return TestVerdict(FAILED, detail="exit 0 without the harness's report", **timing)
    return TestVerdict(RUNTIME_ERROR, detail=f"exit {result.returncode}: {_excerpt(result.stderr)}", **timing)


class CppCompiler:
    """Compiles each distinct C++ source once (in the sandbox, under `COMPILE_LIMITS`) and caches the binary.

    Concurrent requests for the same source wait for one compilation. Binaries live in a root-owned
    directory under the sandbox's work root and are hard-linked read-only into each run's directory.
    """

    def __init__(self, sandbox: Sandbox, flags: tuple[str, ...] = CPP_FLAGS) -> None:
        self.sandbox = sandbox
        self.flags = flags
        self.compiler = shutil.which("g++")
        self.cache_dir = os.path.join(sandbox.work_root, "binaries")
        os.makedirs(self.cache_dir, mode=0o711, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._errors: dict[str, str] = {}
        self._mutex = threading.Lock()

    @property
    def available(self) -> bool:
        return self.compiler is not None

    def compile(self, source: str) -> tuple[str | None, str]:
        """(path of the binary, "") or (None, compiler message)."""
        if self.compiler is None:
            return None, "g++ is not installed"
        key = source_hash("cpp", " ".join(self.flags), source)
        binary = os.path.join(self.cache_dir, key)
        with self._mutex:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if os.path.exists(binary):
                return binary, ""
            if key in self._errors:
                return None, self._errors[key]
            partial = binary + ".partial"
            result = self.sandbox.execute(
                [self.compiler, *self.flags, "-o", "prog", "main.cpp"],
                files={"main.cpp": source},
                limits=COMPILE_LIMITS,
                collect={"prog": partial},
            )
            if result.status == SANDBOX_ERROR:
                return None, f"sandbox error while compiling: {result.error}"
            if not (result.ok and os.path.exists(partial)):
                message = _excerpt(result.stderr or result.status, 2000)
                self._errors[key] = message
                return None, message
            os.chmod(partial, 0o755)
            os.replace(partial, binary)
            return binary, ""


def run_assert_test(sandbox: Sandbox, program: str, test: TestCase, limits: Limits) -> tuple[ExecutionResult, str]:
    """Runs a Python program under the assert harness; returns the execution and the nonce it was given.

    The program is `solution.py` in the working directory; the nonce and the test code reach the harness on
    stdin, which it reads only after the program's process has been forked off without it.
    """
    nonce = secrets.token_hex(16)
    result = sandbox.run_assert_harness(program, stdin=f"{nonce}\n{test.assert_code}", limits=limits)
    return result, nonce


def run_test(
    sandbox: Sandbox, program: str, language: str, test: TestCase, limits: Limits, compiler: CppCompiler | None = None
) -> TestVerdict:
    """Runs one test of one program and returns its verdict (never raises for the program's faults).

    Raises ValueError for an unsupported language, and for an assert test of a language other than Python
    (there is no harness that could tell a finished check from an early exit).
    """
    language = normalize_language(language)
    if test.kind == "assert":
        if language != "python":
            raise ValueError(f"assert tests are supported for Python only, not {language}")
        result, nonce = run_assert_test(sandbox, program, test, limits)
        return verdict_from_execution(result, test, nonce)
    if language == "python":
        result = sandbox.run_python(program, stdin=test.stdin, limits=limits)
        return verdict_from_execution(result, test)
    compiler = compiler or CppCompiler(sandbox)
    binary, message = compiler.compile(program)
    if binary is None:
        if message.startswith("sandbox error"):
            return TestVerdict(INFRA_ERROR, detail=message)
        if not compiler.available:
            return TestVerdict(INFRA_ERROR, detail=message)
        return TestVerdict(COMPILE_ERROR, detail=message)
    result = sandbox.execute(["./prog"], links={"prog": binary}, stdin=test.stdin, limits=limits)
    return verdict_from_execution(result, test)
