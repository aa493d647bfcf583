"""Properties of the sandbox and the test runners, one per test: limits, environment, verdicts, comparison."""

import logging
import os
import shutil

import pytest

from loopcoder.postrain.sandbox import Limits, Sandbox, SandboxConfig, SandboxUnavailable, execution
from loopcoder.postrain.sandbox.runners import (
    COMPILE_ERROR,
    FAILED,
    INFRA_ERROR,
    MEMORY_EXCEEDED,
    OUTPUT_TOO_LARGE,
    PASSED,
    RUNTIME_ERROR,
    TIMED_OUT,
    CppCompiler,
    TestCase,
    outputs_match,
    run_test,
)

pytestmark = pytest.mark.timeout(120)
FAST = Limits(cpu_seconds=1, wall_seconds=2, memory_mb=512)


def verdict(sandbox, program, stdin=None, expected=None, assert_code=None, limits=FAST, language="python"):
    return run_test(sandbox, program, language, TestCase(stdin, expected, assert_code), limits).verdict


def test_stdin_is_supplied_or_closed(sandbox):
    assert sandbox.run_python("print(input()[::-1])", stdin="abc\n", limits=FAST).stdout == "cba\n"
    # no stdin: input() sees EOF at once instead of hanging until the wall limit
    result = sandbox.run_python("input()", limits=FAST)
    assert result.returncode != 0 and "EOFError" in result.stderr
    assert result.wall_seconds < 1.5


def test_environment_is_empty_of_inherited_variables(sandbox, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_leak")
    result = sandbox.run_python("import os\nprint(sorted(os.environ))", limits=FAST)
    names = set(eval(result.stdout))
    # only fixed values, plus what the interpreter or bwrap derive from them (PWD, LC_CTYPE)
    assert names <= set(execution.FIXED_ENV) | {"PWD", "LC_CTYPE"}
    assert "hf_do_not_leak" not in result.stdout


def test_each_run_gets_a_fresh_work_directory_removed_afterwards(sandbox):
    first = sandbox.run_python("open('state.txt', 'w').write('x')\nimport os\nprint(os.listdir('.'))", limits=FAST)
    second = sandbox.run_python("import os\nprint(sorted(os.listdir('.')))", limits=FAST)
    assert "state.txt" in first.stdout
    assert second.stdout.strip() == "['main.py']"
    assert [name for name in os.listdir(sandbox.work_root) if name.startswith("run-")] == []


def test_stderr_is_capped_and_the_excess_discarded(sandbox):
    result = sandbox.run_python(
        "import sys\nsys.stderr.write('e' * (1 << 20))\nprint('done')", limits=Limits(cpu_seconds=2, stderr_bytes=1000)
    )
    assert result.ok and result.stdout == "done\n"
    assert len(result.stderr) == 1000 and result.stderr_truncated


def test_cpu_time_over_the_limit_is_a_timeout_even_if_the_program_finishes(sandbox):
    program = "import time\nend = time.process_time() + 1.3\nwhile time.process_time() < end:\n    pass\nprint('ok')"
    assert verdict(sandbox, program, expected="ok", limits=Limits(cpu_seconds=1, wall_seconds=10)) == TIMED_OUT


def test_verdict_taxonomy(sandbox):
    assert verdict(sandbox, "print(int(input()) * 2)", "21\n", "42") == PASSED
    assert verdict(sandbox, "print(int(input()) * 3)", "21\n", "42") == FAILED
    assert verdict(sandbox, "raise SystemExit(3)", "", "") == RUNTIME_ERROR
    assert verdict(sandbox, "1 / 0", "", "") == RUNTIME_ERROR
    assert verdict(sandbox, "def f():\n    return 1", assert_code="assert f() == 2") == FAILED
    assert verdict(sandbox, "def f():\n    return 1", assert_code="assert f() == 1") == PASSED
    assert verdict(sandbox, "def f(:\n    return 1", assert_code="assert f() == 1") == RUNTIME_ERROR
    assert verdict(sandbox, "x = bytearray(1 << 30)", "", "") == MEMORY_EXCEEDED
    assert verdict(sandbox, "while True:\n    print('y' * 1000)", "", "", limits=Limits(stdout_bytes=4096)) == (
        OUTPUT_TOO_LARGE
    )


def test_exit_before_printing_fails(sandbox):
    assert verdict(sandbox, "import sys\nsys.exit(0)\nprint(42)", "", "42") == FAILED


@pytest.mark.parametrize(
    ("actual", "expected", "match"),
    [
        ("1 2\n3\n", "1 2\n3", True),
        ("1 2   \n3\t\n\n\n", "1 2\n3\n", True),
        ("1\r\n2\r\n", "1\n2\n", True),
        ("héllo wörld ✓\n", "héllo wörld ✓", True),
        ("1.0 2\n", "1 2.000\n", True),
        ("1\n", "1\n2\n", False),
        ("", "0", False),
        ("1\n2\n", "1\n", False),
        ("1 2\n", "12\n", False),
        ("abc\n", "ABC\n", False),
        ("", "", True),
    ],
    ids=[
        "trailing-newline",
        "trailing-space",
        "crlf",
        "unicode",
        "numeric",
        "prefix",
        "empty",
        "extra-line",
        "joined-tokens",
        "case",
        "both-empty",
    ],
)
def test_output_comparison(actual, expected, match):
    assert outputs_match(actual, expected) is match


def test_a_prefix_of_the_expected_output_does_not_pass(sandbox):
    assert verdict(sandbox, "print(1)\nprint(2)", "", "1\n2\n3\n") == FAILED


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_cpp_is_compiled_once_and_run_per_test(sandbox):
    compiler = CppCompiler(sandbox)
    program = "#include <iostream>\nint main() { long long a, b; std::cin >> a >> b; std::cout << a + b << '\\n'; }\n"
    limits = Limits(cpu_seconds=2)
    assert run_test(sandbox, program, "cpp", TestCase("2 3\n", "5\n"), limits, compiler).verdict == PASSED
    assert run_test(sandbox, program, "c++", TestCase("2 3\n", "6\n"), limits, compiler).verdict == FAILED
    assert len(os.listdir(compiler.cache_dir)) == 1
    broken = run_test(sandbox, "int main( {", "cpp", TestCase("", ""), limits, compiler)
    assert broken.verdict == COMPILE_ERROR and "error" in broken.detail
    looping = run_test(
        sandbox,
        "int main() { volatile long x = 0; for (;;) x++; }",
        "cpp",
        TestCase("", ""),
        Limits(cpu_seconds=1, wall_seconds=3),
        compiler,
    )
    assert looping.verdict == TIMED_OUT


def test_unsupported_language_is_an_error(sandbox):
    with pytest.raises(ValueError, match="supported: python, cpp"):
        run_test(sandbox, "x", "cobol", TestCase("", ""), FAST)


def test_missing_bwrap_falls_back_to_rlimits_with_a_warning(monkeypatch, caplog):
    if os.geteuid() != 0:
        pytest.skip("the fallback needs root to drop to an unprivileged uid")
    monkeypatch.setattr(execution, "find_bwrap", lambda: None)
    with caplog.at_level(logging.WARNING, logger=execution.__name__):
        box = Sandbox(SandboxConfig(isolation="auto"))
    try:
        assert box.isolation == "rlimit"
        assert "falling back to rlimits" in caplog.text
        assert box.run_python("print('fine')", limits=FAST).stdout == "fine\n"
        assert box.layers()["network namespace (no network)"] == "no"
    finally:
        box.close()
    with pytest.raises(SandboxUnavailable, match="bwrap is not installed"):
        Sandbox(SandboxConfig(isolation="bwrap"))


def test_fallback_refuses_untrusted_code_when_no_uid_can_be_dropped(monkeypatch):
    monkeypatch.setattr(execution, "find_bwrap", lambda: None)
    monkeypatch.setattr(execution.os, "geteuid", lambda: 1000)
    with pytest.raises(SandboxUnavailable, match="allow_unsafe"):
        Sandbox(SandboxConfig(isolation="auto", python=execution.SYSTEM_PYTHON))


def test_a_sandbox_failure_is_an_infrastructure_verdict(sandbox, monkeypatch):
    monkeypatch.setattr(sandbox, "python", "/nonexistent/python3")
    result = verdict(sandbox, "print(1)", "", "1")
    # bwrap cannot exec the interpreter inside: it reports that itself; without bwrap Popen fails to start it
    assert result in (INFRA_ERROR, RUNTIME_ERROR)
    if sandbox.isolation == "rlimit":
        assert result == INFRA_ERROR


def test_uid_slots_are_exclusive_across_threads(sandbox):
    import threading

    uids = []

    def lease():
        uids.append(sandbox.run_python("import os\nprint(os.getuid())", limits=FAST).stdout.strip())

    threads = [threading.Thread(target=lease) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(uids)) == 4


def test_harness_codec_rebuilds_exact_builtin_types_and_refuses_malformed_data():
    from loopcoder.postrain.sandbox import assert_harness as harness

    objects = []

    def refer(value):
        objects.append(value)
        return len(objects) - 1

    class Int(int):
        pass

    values = [None, True, 0, -(10**5000), 2.5, float("inf"), -0.0, 1 + 2j, "é\udc80", b"\x00", [1, (2, {3})]]
    values += [frozenset({"a"}), {(1, 2): [None]}, [[[]]]]
    decoded = harness.decode(harness.encode(values, refer), lambda ref: objects[ref])
    assert decoded == values and [type(v) for v in decoded] == [type(v) for v in values]
    assert objects == []
    # a subclass, or anything that is not plain data, travels as a reference to the object
    fake = Int(3)
    assert harness.decode(harness.encode([fake], refer), lambda ref: ("ref", ref)) == [("ref", 0)]
    for malformed in [
        b"",
        b"Q",
        b"i\x00\x00\x00\x05zz",
        b"l\xff\xff\xff\xff",
        b"d\x00\x00\x00\x01l\x00\x00\x00\x00N",
        b"NN",
    ]:
        with pytest.raises(harness.ProtocolError):
            harness.decode(malformed, lambda ref: None)


def test_assert_harness_passes_honest_results_of_every_plain_type(sandbox):
    program = (
        "def values():\n"
        "    return [None, True, 10 ** 400, -0.5, 2j, 'x', b'y', (1,), {2}, frozenset({3}), {'k': [4]}]\n"
        "def squares(n):\n    for i in range(n):\n        yield i * i\n"
        "class Solution:\n    def twice(self, x):\n        return 2 * x\n"
        "LIMIT = 7\n"
    )
    checks = (
        "assert values() == [None, True, 10 ** 400, -0.5, 2j, 'x', b'y', (1,), {2}, frozenset({3}), {'k': [4]}]\n"
        "assert [type(v) for v in values()][1:] == [bool, int, float, complex, str, bytes, tuple, set, frozenset, dict]\n"
        "assert list(squares(4)) == [0, 1, 4, 9]\n"
        "assert Solution().twice(LIMIT) == 14 and 'Solution' in globals()\n"
        "try:\n    squares(None).__next__()\nexcept TypeError:\n    pass\n"
    )
    assert verdict(sandbox, program, assert_code=checks) == PASSED
    assert verdict(sandbox, program, assert_code=checks.replace("== 14", "== 15")) == FAILED
