"""Sandbox throughput: executions per second with full isolation vs a bare `subprocess.run`, and HumanEval time.

    /work/venv/bin/python tests/bench/bench_sandbox.py                 # gate, then ~40 s of measurements
    /work/venv/bin/python tests/bench/bench_sandbox.py --runs 400      # longer, steadier figures
    /work/venv/bin/python tests/bench/bench_sandbox.py --no-gate       # skip the correctness gate

Every configuration runs the same program (a trivial `print(1)`, then one doing ~0.1 s of CPU work) with the same interpreter and flags (the
sandbox's), sequentially (1 worker) and with one thread per usable core. Configurations alternate in rounds
and medians are reported, because the machine is shared. Two views of the cost of isolation: wall-clock
executions per second, and CPU milliseconds per execution (supervisor + bwrap + program), whose ratio is
the throughput lost when the cores are saturated, independent of other users' load. Then the 164 HumanEval
canonical solutions are scored through the pool. The correctness gate runs the sandbox property tests
first and refuses to report figures if they fail.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from loopcoder.postrain.sandbox import Limits, Sandbox, SandboxConfig, find_bwrap
from loopcoder.postrain.sandbox.pool import SandboxPool, usable_cores
from loopcoder.postrain.sandbox.problems import humaneval_solutions, load_humaneval
from loopcoder.postrain.sandbox.runners import TestCase

PROGRAMS = {
    "trivial `print(1)`": "print(1)\n",
    "~0.1 s of CPU": "total = 0\nfor i in range(1_500_000):\n    total += i\nprint(1)\n",
}
GATE = ["tests/postrain/test_sandbox.py", "-q", "-x", "-k", "taxonomy or stdin or environment or comparison"]


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the sandboxed programs and bwrap)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(run_once, runs: int, workers: int) -> tuple[float, float]:
    """(executions per second, CPU milliseconds per execution) of `runs` calls on `workers` threads."""
    start, cpu = time.perf_counter(), cpu_seconds()
    if workers == 1:
        for _ in range(runs):
            run_once()
    else:
        with ThreadPoolExecutor(workers) as executor:
            list(executor.map(lambda _: run_once(), range(runs)))
    return runs / (time.perf_counter() - start), 1000 * (cpu_seconds() - cpu) / runs


def interleaved(runners: dict, runs: int, workers: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Median rate and CPU cost per configuration, measured in alternating rounds so that load changes on a
    shared machine hit every configuration alike."""
    for run_once in runners.values():
        for _ in range(3):
            run_once()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run_once in runners.items():
            samples[name].append(measure(run_once, max(1, runs // rounds), workers))
    return {
        name: (statistics.median(s[0] for s in values), statistics.median(s[1] for s in values))
        for name, values in samples.items()
    }


def bare_runner(python: str, directory: str, program: str):
    with open(os.path.join(directory, "main.py"), "w") as handle:
        handle.write(program)

    def run_once():
        result = subprocess.run([python, "-I", "-B", "main.py"], cwd=directory, capture_output=True, timeout=10)
        assert result.stdout == b"1\n"

    return run_once


def sandbox_runner(sandbox: Sandbox, program: str):
    limits = Limits(cpu_seconds=2)

    def run_once():
        result = sandbox.run_python(program, limits=limits)
        assert result.ok and result.stdout == "1\n", result

    return run_once


def humaneval_seconds(isolation: str) -> tuple[float, int]:
    problems = load_humaneval()
    solutions = humaneval_solutions("canonical")
    with SandboxPool(config=SandboxConfig(isolation=isolation)) as pool:
        requests = [
            (
                solutions[p["id"]],
                "python",
                [TestCase.from_record(t) for t in p["tests"]],
                Limits(cpu_seconds=p["time_limit_seconds"]),
            )
            for p in problems
        ]
        start = time.perf_counter()
        results = pool.run_programs(requests)
        seconds = time.perf_counter() - start
    return seconds, sum(all(v.passed for v in verdicts) for verdicts in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=150, help="executions per configuration (default: 150)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds (default: 5)")
    parser.add_argument("--no-gate", action="store_true", help="skip the correctness tests")
    args = parser.parse_args()
    if not args.no_gate:
        gate = subprocess.run([os.path.join(os.path.dirname(sys.executable), "pytest"), *GATE])
        if gate.returncode != 0:
            print("correctness gate failed: no figures reported", file=sys.stderr)
            return 1
    cores = usable_cores()
    modes = ["rlimit"] + (["bwrap"] if find_bwrap() else [])
    sandboxes = {mode: Sandbox(SandboxConfig(isolation=mode)) for mode in modes}
    python = sandboxes[modes[0]].python
    rows = []
    for label, program in PROGRAMS.items():
        runs = args.runs if program == PROGRAMS["trivial `print(1)`"] else max(10, args.runs // 4)
        with tempfile.TemporaryDirectory() as directory:
            runners = {"bare subprocess.run": bare_runner(python, directory, program)}
            runners.update({f"sandbox ({mode})": sandbox_runner(sandboxes[mode], program) for mode in modes})
            for workers in sorted({1, cores}):
                results = interleaved(runners, runs, workers, args.rounds)
                baseline_rate, baseline_cpu = results["bare subprocess.run"]
                for name, (value, cpu) in results.items():
                    lost, lost_cpu = 1 - value / baseline_rate, 1 - baseline_cpu / cpu
                    rows.append((label, name, workers, value, cpu, lost, lost_cpu))
    for sandbox in sandboxes.values():
        sandbox.close()
    load = os.getloadavg()[0]
    print(
        f"\n{args.runs} runs per row for the trivial program ({max(10, args.runs // 4)} for the other) in "
        f"{args.rounds} interleaved rounds (medians), {cores} usable cores, python {python}, load average "
        f"{load:.1f} at the end\n"
    )
    print("| program | configuration | workers | executions/s | lost vs bare | CPU ms/execution | lost, CPU-bound |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, name, workers, value, cpu, lost, lost_cpu in rows:
        bare = name.startswith("bare")
        print(
            f"| {label} | {name} | {workers} | {value:.1f} | {'' if bare else f'{lost:.0%}'} | {cpu:.1f} | "
            f"{'' if bare else f'{lost_cpu:.0%}'} |"
        )
    print("\n| HumanEval canonical (164 problems) | seconds | fully passed |")
    print("|---|---:|---:|")
    for mode in modes:
        seconds, passed = humaneval_seconds(mode)
        print(f"| {mode}, {cores} workers | {seconds:.1f} | {passed} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
