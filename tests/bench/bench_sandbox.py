"""Sandbox throughput: executions per second of the fork servers and of one-shot executions vs a bare
`subprocess.run`, for a trivial program, a program doing ~0.1 s of CPU work, and HumanEval's canonical solutions.

    .venv/bin/python tests/bench/bench_sandbox.py                 # gate, then ~1 min of measurements
    .venv/bin/python tests/bench/bench_sandbox.py --runs 400      # longer, steadier figures
    .venv/bin/python tests/bench/bench_sandbox.py --no-gate       # skip the correctness gate

Configurations, side by side in one run: bare (`subprocess.run` of the sandbox's interpreter and flags, what an
unprotected runner does), and each isolation mode (bwrap, the rlimit layer) both through its fork servers (the
default: one pre-started interpreter per slot, a forked child per execution) and one-shot (bwrap and the
interpreter started anew for every execution, `SandboxConfig(fork_server=False)`). Each runs sequentially
(1 worker) and with one thread per usable core; every configuration keeps its own threads, so its fork servers
stay warm, as in a trainer's pool. Configurations alternate in rounds and medians are reported, because the
machine is shared. Two views of the cost of isolation: wall-clock executions per second, and CPU milliseconds
per execution (this process, its children, and what the fork servers and their reaped children used), whose
ratio is what counts when the cores are saturated, independent of other users' load.

Then the 164 HumanEval canonical solutions are run bare (program and checks in one `subprocess.run`) and
through a pool (the assert harness under isolation), fork servers and one-shot, each pool warmed first.
The correctness gate runs the sandbox property tests, the fork server tests, the attack suite and the
reward-attack suite first and refuses to report figures if any fails.
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

TRIVIAL = "trivial `print(1)`"
PROGRAMS = {
    TRIVIAL: "print(1)\n",
    "~0.1 s of CPU": "total = 0\nfor i in range(1_500_000):\n    total += i\nprint(1)\n",
}
BARE = "bare subprocess.run"
GATE = [
    "tests/postrain/test_sandbox.py",
    "tests/postrain/test_sandbox_fork_server.py",
    "tests/postrain/test_sandbox_attacks.py",
    "tests/postrain/test_reward_attacks.py",
    "-q",
    "-x",
]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds of a live process and of the children it has reaped (utime, stime, cutime, cstime)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


class Configuration:
    """One way of running a program, with its own worker threads (and so its own warm fork servers)."""

    def __init__(self, name: str, run_once, workers: int, sandbox: Sandbox | None = None) -> None:
        self.name, self.run_once, self.sandbox = name, run_once, sandbox
        self.executor = ThreadPoolExecutor(workers)
        self.workers = workers

    def cpu_seconds(self) -> float:
        """This process and its reaped children, plus the live fork servers of this configuration's sandbox:
        their executions are their children, not ours."""
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        total = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
        if self.sandbox is not None:
            total += sum(process_cpu(pid) for pid in self.sandbox.fork_server_pids())
        return total

    def measure(self, runs: int) -> tuple[float, float]:
        """(executions per second, CPU milliseconds per execution) of `runs` calls on this configuration's threads."""
        start, cpu = time.perf_counter(), self.cpu_seconds()
        list(self.executor.map(lambda _: self.run_once(), range(runs)))
        return runs / (time.perf_counter() - start), 1000 * (self.cpu_seconds() - cpu) / runs

    def close(self) -> None:
        self.executor.shutdown()


def interleaved(configurations: list[Configuration], runs: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Median rate and CPU cost per configuration, measured in alternating rounds so that load changes on a
    shared machine hit every configuration alike."""
    for configuration in configurations:
        configuration.measure(2 * configuration.workers)
    samples: dict[str, list[tuple[float, float]]] = {c.name: [] for c in configurations}
    for _ in range(rounds):
        for configuration in configurations:
            samples[configuration.name].append(configuration.measure(max(1, runs // rounds)))
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


def humaneval_rates(configs: dict[str, SandboxConfig], workers: int, python: str) -> list[tuple[str, float, int]]:
    """(configuration, executions/s, fully passed) for the 164 canonical solutions, bare first."""
    problems = load_humaneval()
    solutions = humaneval_solutions("canonical")
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        os.chmod(directory, 0o755)

        def bare(problem):
            source = f"{solutions[problem['id']]}\n\n{problem['tests'][0]['assert_code']}"
            result = subprocess.run([python, "-I", "-B", "-c", source], cwd=directory, capture_output=True, timeout=30)
            return result.returncode == 0

        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as executor:
            passed = sum(executor.map(bare, problems))
        rows.append((BARE, len(problems) / (time.perf_counter() - start), passed))
    requests = [
        (
            solutions[p["id"]],
            "python",
            [TestCase.from_record(t) for t in p["tests"]],
            Limits(cpu_seconds=p["time_limit_seconds"]),
        )
        for p in problems
    ]
    for name, config in configs.items():
        with SandboxPool(workers=workers, config=config, cache_size=0) as pool:
            # warm: every worker thread starts its fork server before the clock starts, as in a running trainer
            warm = [(f"print({i})", "python", [TestCase("", str(i))], Limits()) for i in range(4 * workers)]
            pool.run_programs(warm)
            start = time.perf_counter()
            results = pool.run_programs(requests)
            rate = len(problems) / (time.perf_counter() - start)
        rows.append((name, rate, sum(all(v.passed for v in verdicts) for verdicts in results)))
    return rows


def sandbox_configs() -> dict[str, SandboxConfig]:
    modes = (["bwrap"] if find_bwrap() else []) + ["rlimit"]
    configs = {}
    for mode in modes:
        configs[f"sandbox ({mode}, fork server)"] = SandboxConfig(isolation=mode)
        configs[f"sandbox ({mode}, one-shot)"] = SandboxConfig(isolation=mode, fork_server=False)
    return configs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="executions per configuration (default: 100)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds (default: 5)")
    parser.add_argument("--no-gate", action="store_true", help="skip the correctness tests")
    args = parser.parse_args()
    if not args.no_gate:
        gate = subprocess.run([os.path.join(os.path.dirname(sys.executable), "pytest"), *GATE])
        if gate.returncode != 0:
            print("correctness gate failed: no figures reported", file=sys.stderr)
            return 1
    cores = usable_cores()
    configs = sandbox_configs()
    sandboxes = {name: Sandbox(config) for name, config in configs.items()}
    python = next(iter(sandboxes.values())).python
    rows = []
    for label, program in PROGRAMS.items():
        runs = args.runs if program == PROGRAMS[TRIVIAL] else max(10, args.runs // 5)
        with tempfile.TemporaryDirectory() as directory:
            for workers in sorted({1, cores}):
                configurations = [Configuration(BARE, bare_runner(python, directory, program), workers)]
                configurations += [
                    Configuration(name, sandbox_runner(sandbox, program), workers, sandbox)
                    for name, sandbox in sandboxes.items()
                ]
                results = interleaved(configurations, runs, args.rounds)
                for configuration in configurations:
                    configuration.close()
                baseline_rate, baseline_cpu = results[BARE]
                for name, (value, cpu) in results.items():
                    rows.append((label, name, workers, value, cpu, value / baseline_rate, baseline_cpu / cpu))
    for sandbox in sandboxes.values():
        sandbox.close()
    load = os.getloadavg()[0]
    print(
        f"\n{args.runs} runs per row for the trivial program ({max(10, args.runs // 5)} for the other) in "
        f"{args.rounds} interleaved rounds (medians), {cores} usable cores, python {python}, load average "
        f"{load:.1f} at the end\n"
    )
    print(
        "| program | configuration | workers | executions/s | ÷ bare | CPU ms/execution | bare CPU ÷ CPU (CPU-bound) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, name, workers, value, cpu, ratio, cpu_ratio in rows:
        bare = name == BARE
        print(
            f"| {label} | {name} | {workers} | {value:.1f} | {'' if bare else f'{ratio:.2f}'} | {cpu:.1f} | "
            f"{'' if bare else f'{cpu_ratio:.2f}'} |"
        )
    print("\n| HumanEval canonical (164 problems) | workers | executions/s | ÷ bare | fully passed |")
    print("|---|---:|---:|---:|---:|")
    humaneval = humaneval_rates(configs, cores, python)
    bare_rate = humaneval[0][1]
    for name, rate, passed in humaneval:
        print(f"| {name} | {cores} | {rate:.1f} | {'' if name == BARE else f'{rate / bare_rate:.2f}'} | {passed} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
