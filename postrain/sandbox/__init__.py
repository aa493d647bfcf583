"""Sandboxed execution of untrusted programs, test runners, a shared worker pool and problem loaders.

    from loopcoder.postrain.sandbox import Limits, TestCase, get_pool
    verdicts = get_pool().run_tests("print(int(input()) * 2)", "python", [TestCase("21\n", "42\n")], Limits())

See `execution.py` for what the sandbox protects against and what it does not, `assert_harness.py` for why an
assert test passes only when its checks ran to their end, and docs/sandbox.md.
"""

from .execution import ExecutionResult, Limits, Sandbox, SandboxConfig, SandboxUnavailable, find_bwrap
from .pool import SandboxPool, get_pool, set_pool
from .runners import VERDICTS, TestCase, TestVerdict, outputs_match, run_test

__all__ = [
    "VERDICTS",
    "ExecutionResult",
    "Limits",
    "Sandbox",
    "SandboxConfig",
    "SandboxPool",
    "SandboxUnavailable",
    "TestCase",
    "TestVerdict",
    "find_bwrap",
    "get_pool",
    "outputs_match",
    "run_test",
    "set_pool",
]
