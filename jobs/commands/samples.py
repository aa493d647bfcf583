"""`loopcoder data samples`: FIM, repository-level FIM, commits and SFT into a packed token mixture."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register_samples(commands: argparse._SubParsersAction) -> None:
    samples = commands.add_parser(
        "samples", help="make training samples (FIM, repo-level FIM, commits, SFT) and pack a token mixture",
        description="Turn the kept files of a clean job into FIM and repository-level FIM samples, add commit "
        "triplets and SFT conversations, select a token mixture and pack it into packed_sequence shards, on local "
        "Ray or the cluster named by RAY_ADDRESS. A rerun into the same output resumes.",
    )  # fmt: skip
    samples.add_argument("config", type=Path, help="job config, e.g. jobs/data/samples.yaml")
    samples.add_argument(
        "--output", help="output directory or URI, e.g. s3://bucket/samples (default: the config's `output`)"
    )
    samples.add_argument("--json", action="store_true", help="print the job statistics as JSON")
    samples.set_defaults(handler=_samples)


def _samples(args: argparse.Namespace) -> int:
    from loopcoder.pipelines.samples.job import SamplesJobConfig, run_samples_job

    config = SamplesJobConfig.from_yaml(args.config)
    stats = run_samples_job(config, args.output)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    packed = stats["packed"]
    table = Table(title=f"packed into {packed['rows']:,} rows of {packed['seq_len']:,} tokens", title_justify="left")
    for column in ("category", "documents", "tokens", "share"):
        table.add_column(column, justify="left" if column == "category" else "right")
    total = sum(packed["tokens_by_category"].values()) or 1
    for category, tokens in sorted(packed["tokens_by_category"].items()):
        documents = packed["documents_by_category"][category]
        table.add_row(category, f"{documents:,}", f"{tokens:,}", f"{tokens / total:.1%}")
    console.print(table)
    fim = stats["fim"]
    console.print(f"file-level FIM: {fim['samples']:,} samples from {fim['files']:,} files; skipped {fim['skipped']}")
    for stage, summary in stats.get("stages", {}).items():
        if stage != "pack":
            console.print(f"{stage}: {summary}")
    if stats.get("mixture"):
        console.print(stats["mixture"])
    console.print(f"output: {args.output or config.output}")
    return 0
