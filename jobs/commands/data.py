"""`loopcoder data` commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .publishing import register_publishing
from .samples import register_samples


def register(commands: argparse._SubParsersAction) -> None:
    corpus = commands.add_parser(
        "sample-corpus",
        help="build the local sample corpus (standard library, installed packages, git history)",
        description="Read the sources of a sample-corpus config into Parquet shards of source files and "
        "commit triplets, then print what is there.",
    )
    corpus.add_argument(
        "--config", type=Path, help="corpus config (default: the packaged jobs/data/sample_corpus.yaml)"
    )
    corpus.add_argument("--out", help="output directory or URI (default: the config's `output`)")
    corpus.add_argument("--json", action="store_true", help="print the manifest as JSON instead of tables")
    corpus.set_defaults(handler=_sample_corpus)

    run = commands.add_parser(
        "run",
        help="run a pipeline job (read, clean, dedup, AST validation, decontamination, write)",
        description="Run the job a YAML config describes on local Ray (started for the job, sized to the machine) "
        "or on the cluster named by RAY_ADDRESS. A rerun into the same output resumes: completed tasks are skipped.",
    )
    run.add_argument("config", type=Path, help="job config, e.g. jobs/data/clean_dedup.yaml")
    run.add_argument("--output", help="output directory or URI, e.g. s3://bucket/out (default: the config's `output`)")
    run.add_argument("--json", action="store_true", help="print the job statistics as JSON instead of tables")
    run.set_defaults(handler=_run)

    register_publishing(commands)
    register_samples(commands)


def _sample_corpus(args: argparse.Namespace) -> int:
    from loopcoder.pipelines.sample_corpus import SampleCorpusConfig, build_sample_corpus, default_config_path

    config_path = args.config or default_config_path()
    if not config_path.exists():
        raise FileNotFoundError(f"config {config_path} does not exist")
    config = SampleCorpusConfig.from_yaml(config_path)
    manifest = build_sample_corpus(config, args.out)
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        print_corpus_summary(manifest)
    return 0


def print_corpus_summary(manifest: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from loopcoder.pipelines.filesystem import join

    console = Console()
    output = manifest["config"]["output"]
    console.print(
        f"[bold]Sample corpus[/bold] in {output}: {manifest['source_files']['rows']:,} source files in "
        f"{len(manifest['source_files']['shards'])} shard(s), {manifest['commits']['rows']:,} commit triplets in "
        f"{len(manifest['commits']['shards'])} shard(s)"
    )
    languages = Table(title="files by language", title_justify="left")
    for column in ("language", "files", "MB"):
        languages.add_column(column, justify="left" if column == "language" else "right")
    for language, count in manifest["files_by_language"].items():
        languages.add_row(language, f"{count:,}", f"{manifest['bytes_by_language'][language] / 1e6:.2f}")
    console.print(languages)
    repos = Table(title="files by source", title_justify="left")
    repos.add_column("source")
    repos.add_column("files", justify="right")
    for repo, count in manifest["files_by_repo"].items():
        repos.add_row(repo, f"{count:,}")
    console.print(repos)
    if manifest["rejections"]:
        rejected = Table(title="rejected (counted, not written)", title_justify="left")
        rejected.add_column("reason")
        rejected.add_column("count", justify="right")
        for reason, count in manifest["rejections"].items():
            rejected.add_row(reason, f"{count:,}")
        console.print(rejected)
    console.print(f"manifest: {join(output, 'manifest.json')}")


def _run(args: argparse.Namespace) -> int:
    from loopcoder.pipelines.job import JobConfig
    from loopcoder.pipelines.runner import run_job

    job = JobConfig.from_yaml(args.config)
    output = args.output or job.output
    stats = run_job(job, output)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print_job_summary(stats, output)
    return 0


def print_job_summary(stats: dict, output: str) -> None:
    """Per step: documents and MB in, kept, dropped by reason; then the output and any unreadable input."""
    from rich.console import Console
    from rich.table import Table

    from loopcoder.pipelines.filesystem import join

    console = Console()
    steps = Table(title=f"job {stats['job']}: {stats['tasks']} task(s)", title_justify="left")
    for column in ("step", "docs in", "MB in", "kept", "dropped", "dropped by reason"):
        steps.add_column(column, justify="left" if column in ("step", "dropped by reason") else "right")
    for step in stats["steps"]:
        reasons = ", ".join(f"{reason} {count:,}" for reason, count in step.get("dropped", {}).items())
        dropped = sum(step.get("dropped", {}).values())
        steps.add_row(
            step["step"], f"{step.get('docs_in', 0):,}", f"{step.get('bytes_in', 0) / 1e6:.2f}",
            f"{step.get('kept', 0):,}", f"{dropped:,}", reasons,
        )  # fmt: skip
    console.print(steps)
    out = stats["output"]
    console.print(
        f"output: {out.get('rows', 0):,} files, {out.get('bytes', 0) / 1e6:.2f} MB in "
        f"{sum(1 for name in stats['shards'] if name.startswith('files/'))} shard(s) under {join(output, 'files')}; "
        f"{stats['rejected'].get('rows', 0):,} rejected"
    )
    verified = stats.get("dedup", {}).get("verified") or {}
    if "candidate_pairs" in verified:
        threshold = verified.get("threshold")
        console.print(
            f"near-dedup: {verified['candidate_pairs']:,} candidate pair(s) from the LSH buckets, "
            f"{verified.get('duplicate_pairs', 0):,} at exact Jaccard >= {threshold if threshold is not None else '?'}"
        )
    for name, error in stats["input_errors"].items():
        console.print(f"[red]unreadable input {name}[/red]: {error}")
    timings = ", ".join(f"{stage} {seconds:.1f}s" for stage, seconds in stats["timings_seconds"].items())
    console.print(f"stats: {join(output, 'stats.json')} ({timings})")
