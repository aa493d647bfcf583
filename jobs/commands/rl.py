"""`loopcoder rl` commands: RL problem sets as `rl_problem` shards (docs/rl_data.md).

loopcoder rl mine jobs/data/rl_mining.yaml                   # mined from the cleaned corpus
loopcoder rl prepare deepmind/code_contests --split train --out data/rl/code_contests
loopcoder rl prepare taco --from TACO/ALL --out data/rl/taco     # local files in the dataset's format
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    """Adds this group's commands; the group prints its help when none is given."""
    mine = commands.add_parser(
        "mine",
        help="mine verifiable problems (doctests, unit-tested functions) from the cleaned corpus",
        description="Mine functions with doctests and functions exercised by their repository's unit tests from "
        "the kept files of a clean job, keep those whose reference passes every test in the sandbox and whose "
        "`pass` stub fails, remove near duplicates and benchmark overlaps, and write rl_problem shards, on local "
        "Ray or the cluster named by RAY_ADDRESS.",
    )
    mine.add_argument("config", type=Path, help="job config, e.g. jobs/data/rl_mining.yaml")
    mine.add_argument("--input", type=Path, help="folder of cleaned shards (default: the config's `input`)")
    mine.add_argument("--output", type=Path, help="output directory (default: the config's `output`)")
    mine.add_argument("--json", action="store_true", help="print the job statistics as JSON")
    mine.set_defaults(handler=_mine)

    from loopcoder.postrain.grpo.public_sets import DATASETS

    prepare = commands.add_parser(
        "prepare",
        help="turn a public problem set (CodeContests, TACO, APPS, LiveCodeBench, MBPP, MBPP+) into rl_problem shards",
        description="Convert the rows of a public problem set, read from the Hugging Face Hub by dataset id or from "
        "local files in the dataset's own format (JSONL, JSON, Parquet, Arrow), into rl_problem shards. Malformed "
        "rows are counted with their reason; the others are written. HumanEval is an evaluation set and is not "
        "offered here.",
    )
    prepare.add_argument(
        "dataset",
        help=f"dataset name or Hub id: {', '.join(f'{name} ({spec.hub_id})' for name, spec in DATASETS.items())}",
    )
    prepare.add_argument(
        "--from", dest="local", type=Path, metavar="PATH", help="local file or folder of the dataset's files"
    )
    prepare.add_argument(
        "--split", help="split to read from the Hub, also named in problem ids (default: the training split)"
    )
    prepare.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    prepare.add_argument("--out", type=Path, required=True, help="output folder for rl_problem shards")
    prepare.add_argument("--max-rows", type=int, help="read at most this many rows")
    prepare.add_argument("--max-tests", type=int, help="keep at most this many tests per problem")
    prepare.add_argument("--rows-per-shard", type=int, default=2000)
    prepare.add_argument("--json", action="store_true", help="print the summary as JSON")
    prepare.set_defaults(handler=_prepare)


def _mine(args: argparse.Namespace) -> int:
    from loopcoder.pipelines.rl.mining import MiningConfig, run_mining

    overrides = {"input": str(args.input)} if args.input else {}
    config = MiningConfig.from_yaml(args.config, overrides)
    output = args.output or Path(config.output)
    stats = run_mining(config, output)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{stats['kept']:,} problems, {stats['tests']:,} tests", title_justify="left")
    table.add_column("repository")
    from loopcoder.pipelines.rl.mining import KINDS

    for kind in KINDS:
        table.add_column(kind, justify="right")
    for repo, counts in stats["kept_by_repo"].items():
        table.add_row(repo, *[f"{counts.get(kind, 0):,}" for kind in KINDS])
    console.print(table)
    candidates = ", ".join(f"{kind} {count:,}" for kind, count in sorted(stats["candidates"].items()))
    console.print(f"candidates: {candidates or 'none'}; benchmark overlaps removed: {stats['contaminated']['count']}")
    rejected = Table(title="rejected by reason", title_justify="left")
    rejected.add_column("reason")
    rejected.add_column("count", justify="right")
    for reason, count in sorted(stats["rejections"].items(), key=lambda item: -item[1]):
        rejected.add_row(reason, f"{count:,}")
    console.print(rejected)
    console.print(f"shards: {output / 'problems'}; stats: {output / 'stats.json'}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from loopcoder.postrain.grpo.public_sets import prepare_dataset

    summary = prepare_dataset(
        args.dataset,
        args.out,
        local=args.local,
        split=args.split,
        revision=args.revision,
        max_rows=args.max_rows,
        max_tests=args.max_tests,
        rows_per_shard=args.rows_per_shard,
    )
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    from rich.console import Console

    console = Console()
    console.print(
        f"[bold]{summary['dataset']}[/bold]: {summary['rows']:,} rows -> {summary['problems']:,} problems "
        f"({summary['tests']:,} tests) in {len(summary['shards'])} shard(s) under {args.out}"
    )
    for reason, count in sorted(summary["rejected"].items(), key=lambda item: -item[1]):
        console.print(f"  rejected {reason}: {count:,}")
    return 0
