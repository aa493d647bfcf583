"""Offline scoring: many solutions against their problems' tests, with per-solution records and a summary.

    from loopcoder.postrain.sandbox.pool import SandboxPool
    from loopcoder.postrain.sandbox.scoring import score_solutions
    with SandboxPool() as pool:
        records, summary = score_solutions(problems, solutions, pool)

This is what `loopcoder sandbox run` prints. A solution is a dict with `problem_id` (or `id`) and either
`code` (run as is) or `completion` (model output: the last fenced code block is run, as the reward does);
`language` overrides the problem's.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable

from loopcoder.postrain.rewards.code_rewards import DEFAULT_MAX_TESTS, extract_code, select_tests

from .execution import Limits
from .pool import SandboxPool
from .runners import TestVerdict


class UnknownProblem(ValueError):
    """A solution names a problem id that is not in the problem set."""


def score_solutions(
    problems: Iterable[dict],
    solutions: Iterable[dict],
    pool: SandboxPool,
    max_tests: int | None = DEFAULT_MAX_TESTS,
    max_timeouts: int | None = None,
) -> tuple[list[dict], dict]:
    """Runs every solution on (up to `max_tests` of) its problem's tests; returns (records, summary).

    Each record holds `problem_id`, `pass_rate` and every verdict with its timings and detail. The summary
    counts solutions, problems, fully passed solutions, executions and cache hits of this call, verdicts,
    seconds and the isolation used. Raises UnknownProblem (naming the solution's 1-based position) before
    anything runs if a solution's problem is missing.
    """
    by_id = {problem["id"]: problem for problem in problems}
    requests, problem_ids = [], []
    for number, solution in enumerate(solutions, 1):
        problem_id = solution.get("problem_id", solution.get("id"))
        if problem_id not in by_id:
            raise UnknownProblem(f"solution {number}: unknown problem id {problem_id!r}")
        problem = by_id[problem_id]
        code = solution.get("code")
        if code is None:
            code = extract_code(solution.get("completion") or "") or ""
        tests = select_tests(problem["tests"], max_tests, problem_id)
        limits = Limits(cpu_seconds=float(problem["time_limit_seconds"]), memory_mb=int(problem["memory_limit_mb"]))
        requests.append((code, solution.get("language") or problem["language"], tests, limits))
        problem_ids.append(problem_id)
    executions, cache_hits = pool.stats.executions, pool.stats.cache_hits
    started = time.monotonic()
    results = pool.run_programs(requests, max_timeouts)
    seconds = time.monotonic() - started
    records = [_record(problem_id, verdicts) for problem_id, verdicts in zip(problem_ids, results, strict=True)]
    rates = [record["pass_rate"] for record in records]
    summary = {
        "solutions": len(records),
        "problems": len(set(problem_ids)),
        "mean_pass_rate": sum(rates) / len(rates) if rates else 0.0,
        "fully_passed": sum(rate == 1.0 for rate in rates),
        "executions": pool.stats.executions - executions,
        "cache_hits": pool.stats.cache_hits - cache_hits,
        "verdicts": dict(Counter(v["verdict"] for record in records for v in record["verdicts"])),
        "seconds": round(seconds, 2),
        "isolation": pool.sandbox.isolation,
    }
    return records, summary


def _record(problem_id: str, verdicts: list[TestVerdict]) -> dict:
    return {
        "problem_id": problem_id,
        "pass_rate": sum(v.passed for v in verdicts) / len(verdicts) if verdicts else 0.0,
        "verdicts": [
            {
                "verdict": v.verdict,
                "wall_seconds": round(v.wall_seconds, 4),
                "cpu_seconds": round(v.cpu_seconds, 4),
                "detail": v.detail,
            }
            for v in verdicts
        ],
    }


def by_problem(records: Iterable[dict]) -> dict[str, tuple[list[float], Counter]]:
    """Problem id -> (pass rates of its solutions, verdict counts), in first-seen order."""
    table: dict[str, tuple[list[float], Counter]] = defaultdict(lambda: ([], Counter()))
    for record in records:
        rates, counts = table[record["problem_id"]]
        rates.append(record["pass_rate"])
        counts.update(v["verdict"] for v in record["verdicts"])
    return dict(table)
