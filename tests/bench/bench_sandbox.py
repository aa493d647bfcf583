"""Sandbox throughput: executions per second with full isolation vs a bare `subprocess.run`, and HumanEval time.

    .venv/bin/python tests/bench/bench_sandbox.py                 # gate, then ~40 s of measurements
    .venv/bin/python tests/bench/bench_sandbox.py --runs 400      # longer, steadier figures
    .venv/bin/python tests/bench/bench_sandbox.py --no-gate       # skip the correctness gate

Every configuration runs the same program (a trivial `print(1)`, then one doing ~0.1 s of CPU work) with the same interpreter and flags (the
sandbox's), sequentially (1 worker) and with one thread per usable core. Configurations alternate in rounds
and medians are reported, because the machine is shared. Two views of the cost of isolation: wall-clock
executions per second, and CPU milliseconds per execution (supervisor + bwrap + program), whose ratio is
the throughput lost when the cores are saturated, independent of other users' load. Then the 164 HumanEval
canonical solutions are run bare (program and checks in one `subprocess.run`, as an unprotected runner
would) and through the pool (the assert harness under isolation), and their executions per second compared.
The correctness gate runs the sandbox property tests, the attack suite and the reward-attack suite first and
refuses to report figures if any fails.
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
GATE = [
    "tests/postrain/test_sandbox.py",
    "tests/postrain/test_sandbox_attacks.py",
    "tests/postrain/test_reward_attacks.py",
    "-q",
    "-x",
]


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


def humaneval_rates(isolation: str, workers: int, python: str) -> tuple[float, float, int]:
    """(bare executions/s, sandboxed executions/s, fully passed under the sandbox) for the 164 canonical solutions."""
    problems = load_humaneval()
    solutions = humaneval_solutions("canonical")
    with tempfile.TemporaryDirectory() as directory:
        os.chmod(directory, 0o755)

        def bare(problem):
            source = f"{solutions[problem['id']]}\n\n{problem['tests'][0]['assert_code']}"
            result = subprocess.run([python, "-I", "-B", "-c", source], cwd=directory, capture_output=True, timeout=30)
            assert result.returncode == 0, problem["id"]

        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as executor:
            list(executor.map(bare, problems))
        bare_rate = len(problems) / (time.perf_counter() - start)
    with SandboxPool(workers=workers, config=SandboxConfig(isolation=isolation)) as pool:
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
        sandbox_rate = len(problems) / (time.perf_counter() - start)
    return bare_rate, sandbox_rate, sum(all(v.passed for v in verdicts) for verdicts in results)


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
    print(
        "| program | configuration | workers | executions/s | sandboxed ÷ bare | lost vs bare | CPU ms/execution "
        "| lost, CPU-bound |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, name, workers, value, cpu, lost, lost_cpu in rows:
        bare = name.startswith("bare")
        print(
            f"| {label} | {name} | {workers} | {value:.1f} | {'' if bare else f'{1 - lost:.2f}'} | "
            f"{'' if bare else f'{lost:.0%}'} | {cpu:.1f} | {'' if bare else f'{lost_cpu:.0%}'} |"
        )
    print(
        "\n| HumanEval canonical (164 problems) | workers | bare executions/s | sandboxed executions/s | ratio | fully passed |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for mode in modes:
        bare_rate, sandbox_rate, passed = humaneval_rates(mode, cores, python)
        print(
            f"| {mode} | {cores} | {bare_rate:.1f} | {sandbox_rate:.1f} | {sandbox_rate / bare_rate:.2f} | {passed} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
