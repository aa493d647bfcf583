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

    classifier = commands.add_parser(
        "train-classifier",
        help="train a proxy quality classifier (hashed n-grams, logistic regression) for the `classify` step",
        description="Train on labelled JSONL rows (`text`, `label`, optional `group`) or on a finished clean job's "
        "decisions; print precision and recall on a held-out split of the groups; save a .npz model.",
    )
    source = classifier.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, nargs="+", help="labelled JSONL file(s)")
    source.add_argument("--from-job", type=Path, help="output folder of a finished clean job (labels kept/rejected)")
    classifier.add_argument("--out", type=Path, required=True, help="model file to write (.npz)")
    classifier.add_argument("--positive-label", help="label scored as positive (default: `kept` with --from-job)")
    classifier.add_argument(
        "--holdout-fraction", type=float, default=0.2, help="share of groups held out (default 0.2)"
    )
    classifier.add_argument("--seed", type=int, default=0, help="seed of the held-out split (default 0)")
    classifier.add_argument(
        "--C", type=float, default=1.0, dest="regularisation", help="inverse L2 strength (default 1)"
    )
    classifier.set_defaults(handler=_train_classifier)

    register_publishing(commands)
    register_samples(commands)


def _train_classifier(args: argparse.Namespace) -> int:
    from loopcoder.pipelines.steps.quality_classifier import job_labels, read_labelled_jsonl, train_classifier

    if args.from_job:
        rows, positive, source = list(job_labels(args.from_job)), args.positive_label or "kept", f"job {args.from_job}"
    else:
        rows, source = read_labelled_jsonl(args.data), ", ".join(map(str, args.data))
        if args.positive_label is None:
            raise ValueError("--positive-label is required with --data")
        labels = {r["label"] for r in rows}
        # a label given on the command line is a string; match it to a JSON number or boolean when that is what the rows hold
        positive = next(
            (label for label in labels if str(label).lower() == args.positive_label.lower()), args.positive_label
        )
    classifier = train_classifier(
        rows,
        positive,
        holdout_fraction=args.holdout_fraction,
        seed=args.seed,
        regularisation=args.regularisation,
        source=source,
    )
    classifier.save(args.out)
    print(
        json.dumps({"model": str(args.out), "bytes": args.out.stat().st_size} | classifier.meta["training"], indent=2)
    )
    print(json.dumps(classifier.meta.get("metrics", {}), indent=2))
    return 0


def _sample_corpus(args: argparse.Namespace) -> int:
    from loopcoder.pipelines.sample_corpus import SampleCorpusConfig, build_sample_corpus, default_config_path

    config = SampleCorpusConfig.from_yaml(args.config or default_config_path())
    manifest = build_sample_corpus(config, args.out)
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        print_corpus_summary(manifest)
    return 0


def print_corpus_summary(manifest: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from loopcoder.pipelines.io.filesystem import join

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
    from loopcoder.pipelines.clean.job import JobConfig
    from loopcoder.pipelines.clean.runner import run_job

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

    from loopcoder.pipelines.io.filesystem import join

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
