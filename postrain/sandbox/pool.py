"""A worker pool shared by all reward calls, with a verdict cache keyed by (program, test, limits).

    from loopcoder.postrain.sandbox.pool import get_pool
    pool = get_pool()                       # one per process, sized to the usable cores
    verdicts = pool.run_programs([(program, "python", tests, limits)])  # list of per-program verdict lists

Why threads and not processes: the work happens in sandboxed child processes; a pool thread only sends a
request to its slot's fork server, waits in `select` and compares outputs, all of which release the GIL.
Threads share the verdict cache and the compile cache without pickling, add no processes that could
themselves be orphaned, and start in microseconds. Each thread is a slot: it leases its own unprivileged uid
(see `uids.py`) and keeps its own fork server (see `slots.py`), so concurrent executions never share an
RLIMIT_NPROC budget and cannot signal each other. The executions are forked by the servers, which are small
single-threaded interpreters; this process forks only to start a server (and, one-shot, for every
execution), and between that fork and exec the child runs only `setrlimit`, `setgroups`, `setresgid` and
`setresuid`, none of which take a lock another thread may hold. A trainer that holds CUDA can host the pool:
its own address space no longer sets the cost of each execution's fork.

The pool is sized to the usable cores by default: CPU-time limits assume each execution has a core to
itself, and oversubscription turns slow-but-correct programs into false timeouts.

Identical requests are answered once: a finished verdict comes from the cache (LRU, `cache_size` entries),
and a request identical to one still running waits for it instead of running twice. `sandbox_error` and
`skipped` verdicts are never cached.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from .execution import Limits, Sandbox, SandboxConfig, source_hash
from .runners import INFRA_ERROR, SKIPPED, TIMED_OUT, CppCompiler, TestCase, TestVerdict, normalize_language, run_test


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@dataclass
class PoolStats:
    requests: int = 0
    cache_hits: int = 0
    executions: int = 0
    skipped: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)


class _ProgramBudget:
    """Counts a program's timeouts, for early stop."""

    def __init__(self, max_timeouts: int | None) -> None:
        self.max_timeouts = max_timeouts
        self.timeouts = 0
        self.lock = threading.Lock()

    def exhausted(self) -> bool:
        return self.max_timeouts is not None and self.timeouts >= self.max_timeouts

    def record(self, verdict: TestVerdict) -> None:
        if verdict.verdict == TIMED_OUT:
            with self.lock:
                self.timeouts += 1


class SandboxPool:
    """Runs (program, test) requests on `workers` threads; every request gets exactly one verdict."""

    def __init__(
        self,
        workers: int | None = None,
        sandbox: Sandbox | None = None,
        cache_size: int = 100_000,
        config: SandboxConfig | None = None,
    ) -> None:
        self.workers = workers or usable_cores()
        self._owns_sandbox = sandbox is None
        self.sandbox = sandbox or Sandbox(config)
        self.compiler = CppCompiler(self.sandbox)
        self.cache_size = cache_size
        self.stats = PoolStats()
        self._cache: OrderedDict[str, TestVerdict] = OrderedDict()
        self._running: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sandbox")

    def close(self) -> None:
        """Waits for queued work, then removes the sandbox's files if this pool created the sandbox."""
        self._executor.shutdown(wait=True, cancel_futures=False)
        if self._owns_sandbox:
            self.sandbox.close()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(
        self, program: str, language: str, test: TestCase, limits: Limits, budget: _ProgramBudget | None = None
    ) -> Future:
        """A future of the verdict; identical concurrent requests share one execution."""
        language = normalize_language(language)
        key = source_hash(
            language,
            program,
            test.stdin or "",
            test.expected_stdout or "",
            test.assert_code or "",
            repr(limits.key()),
            self.sandbox.isolation,
        )
        with self._lock:
            self.stats.requests += 1
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.stats.cache_hits += 1
                self._count(cached.verdict)
                done: Future = Future()
                done.set_result(replace(cached, cached=True))
                return done
            running = self._running.get(key)
            if running is not None:
                self.stats.cache_hits += 1
                shared: Future = Future()
                running.add_done_callback(lambda f: _copy_result(f, shared, self))
                return shared
            future = self._executor.submit(self._run, key, program, language, test, limits, budget)
            self._running[key] = future
            return future

    def _run(
        self, key: str, program: str, language: str, test: TestCase, limits: Limits, budget: _ProgramBudget | None
    ) -> TestVerdict:
        try:
            if budget is not None and budget.exhausted():
                verdict = TestVerdict(SKIPPED, detail=f"early stop after {budget.timeouts} timeouts")
            else:
                try:
                    verdict = run_test(self.sandbox, program, language, test, limits, self.compiler)
                except Exception as error:  # noqa: BLE001 - an infrastructure fault must become a verdict
                    verdict = TestVerdict(INFRA_ERROR, detail=f"{type(error).__name__}: {error}")
                if budget is not None:
                    budget.record(verdict)
            with self._lock:
                self._count(verdict.verdict)
                if verdict.verdict == SKIPPED:
                    self.stats.skipped += 1
                else:
                    self.stats.executions += 1
                if verdict.verdict not in (INFRA_ERROR, SKIPPED):
                    self._cache[key] = verdict
                    if len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
            return verdict
        finally:
            with self._lock:
                self._running.pop(key, None)

    def _count(self, verdict: str) -> None:
        self.stats.verdicts[verdict] = self.stats.verdicts.get(verdict, 0) + 1

    def run_programs(
        self, requests: Sequence[tuple[str, str, Sequence[TestCase], Limits]], max_timeouts: int | None = None
    ) -> list[list[TestVerdict]]:
        """Verdicts for many programs at once: all their tests are queued together, results in input order.

        Every test of a program is run, unless `max_timeouts` is set: then, once a program has timed out
        that many times, its tests that have not started yet come back `skipped`.
        """
        futures = []
        for program, language, tests, limits in requests:
            budget = _ProgramBudget(max_timeouts) if max_timeouts is not None else None
            futures.append([self.submit(program, language, test, limits, budget) for test in tests])
        return [[future.result() for future in program_futures] for program_futures in futures]

    def run_tests(
        self, program: str, language: str, tests: Sequence[TestCase], limits: Limits, max_timeouts: int | None = None
    ) -> list[TestVerdict]:
        """Verdicts of one program on its tests."""
        return self.run_programs([(program, language, tests, limits)], max_timeouts)[0]


def _copy_result(source: Future, target: Future, pool: SandboxPool) -> None:
    try:
        verdict = source.result()
    except Exception as error:  # noqa: BLE001 - propagate as an infrastructure verdict
        verdict = TestVerdict(INFRA_ERROR, detail=f"{type(error).__name__}: {error}")
    with pool._lock:
        pool._count(verdict.verdict)
    target.set_result(replace(verdict, cached=True))


_SHARED_POOL: SandboxPool | None = None
_SHARED_LOCK = threading.Lock()


def get_pool(workers: int | None = None, config: SandboxConfig | None = None) -> SandboxPool:
    """The process-wide pool shared by all reward calls (created on first use with these arguments)."""
    global _SHARED_POOL
    with _SHARED_LOCK:
        if _SHARED_POOL is None:
            _SHARED_POOL = SandboxPool(workers=workers, config=config)
        return _SHARED_POOL


def set_pool(pool: SandboxPool | None) -> SandboxPool | None:
    """Replaces the shared pool (tests, or a trainer that builds its own); returns the previous one."""
    global _SHARED_POOL
    with _SHARED_LOCK:
        previous, _SHARED_POOL = _SHARED_POOL, pool
        return previous
