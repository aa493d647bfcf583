"""`loopcoder data` commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .publishing import register_publishing


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
    corpus.add_argument("--out", type=Path, help="output directory (default: the config's `output`)")
    corpus.add_argument("--json", action="store_true", help="print the manifest as JSON instead of tables")
    corpus.set_defaults(handler=_sample_corpus)

    register_publishing(commands)


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
    console.print(f"manifest: {Path(output) / 'manifest.json'}")
