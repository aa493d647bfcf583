"""The shared worker pool: one verdict per request under load, the verdict cache, early stop."""

import pytest

from loopcoder.postrain.sandbox import Limits
from loopcoder.postrain.sandbox import pool as pool_module
from loopcoder.postrain.sandbox.pool import SandboxPool
from loopcoder.postrain.sandbox.runners import INFRA_ERROR, PASSED, SKIPPED, TIMED_OUT, TestCase, TestVerdict

pytestmark = pytest.mark.timeout(180)
FAST = Limits(cpu_seconds=1, wall_seconds=2, memory_mb=512)


@pytest.fixture
def pool(sandbox):
    box = SandboxPool(workers=2, sandbox=sandbox)
    yield box
    box.close()


@pytest.fixture
def best_pool(best_sandbox):
    box = SandboxPool(workers=2, sandbox=best_sandbox)
    yield box
    box.close()


def test_hundreds_of_queued_requests_get_exactly_one_verdict_each(best_pool):
    pool = best_pool
    # 50 distinct programs, each submitted 3 times with 2 tests: 300 requests, 100 distinct pairs
    requests = []
    for _copy in range(3):
        for n in range(50):
            program = f"print(int(input()) + {n})"
            tests = [TestCase(f"{k}\n", f"{k + n}\n") for k in range(2)]
            requests.append((program, "python", tests, FAST))
    results = pool.run_programs(requests)
    verdicts = [v for program in results for v in program]
    assert len(results) == len(requests)
    assert len(verdicts) == 300 == pool.stats.requests
    assert all(v.verdict == PASSED for v in verdicts)
    assert pool.stats.executions == 100
    assert pool.stats.executions + pool.stats.cache_hits == 300
    assert sum(pool.stats.verdicts.values()) == 300


def test_identical_requests_are_answered_from_the_cache(pool):
    test = TestCase("", "hi")
    first = pool.run_tests("print('hi')", "python", [test], FAST)[0]
    second = pool.run_tests("print('hi')", "python", [test], FAST)[0]
    assert not first.cached and second.cached and second.verdict == PASSED
    assert pool.stats.executions == 1 and pool.stats.cache_hits == 1
    # different limits are a different request
    pool.run_tests("print('hi')", "python", [test], Limits(cpu_seconds=3))
    assert pool.stats.executions == 2


def test_every_test_runs_unless_early_stop_is_configured(best_sandbox):
    sandbox = best_sandbox
    sleeper = "import time\ntime.sleep(100)"
    tests = [TestCase(str(i), "x") for i in range(3)]
    limits = Limits(cpu_seconds=0.5, wall_seconds=0.5)
    with_one_worker = SandboxPool(workers=1, sandbox=sandbox)
    try:
        all_run = with_one_worker.run_tests(sleeper, "python", tests, limits)
        assert [v.verdict for v in all_run] == [TIMED_OUT] * 3
        stopped = with_one_worker.run_tests(sleeper + "\n# other", "python", tests, limits, max_timeouts=1)
        assert [v.verdict for v in stopped] == [TIMED_OUT, SKIPPED, SKIPPED]
        assert with_one_worker.stats.skipped == 2
    finally:
        with_one_worker.close()


def test_infrastructure_errors_are_verdicts_and_never_cached(pool, monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise OSError("disk full")

    monkeypatch.setattr(pool_module, "run_test", broken)
    test = TestCase("", "1")
    for _ in range(2):
        verdict = pool.run_tests("print(1)", "python", [test], FAST)[0]
        assert verdict.verdict == INFRA_ERROR and "disk full" in verdict.detail
    assert len(calls) == 2


def test_shared_pool_is_created_once(monkeypatch):
    created = []

    class FakePool:
        def __init__(self, **kwargs):
            created.append(kwargs)

    previous = pool_module.set_pool(None)
    monkeypatch.setattr(pool_module, "SandboxPool", FakePool)
    try:
        assert pool_module.get_pool() is pool_module.get_pool()
        assert len(created) == 1
    finally:
        pool_module.set_pool(previous)


def test_verdict_dataclass_reports_pass_and_infra_state():
    assert TestVerdict(PASSED).passed and not TestVerdict(TIMED_OUT).passed
    assert TestVerdict(INFRA_ERROR).infrastructure_error
