"""`loopcoder shards` commands: validate, stats, show and plot shards."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    validate = commands.add_parser(
        "validate", help="check every shard's schema, version and data; non-zero exit on a problem",
        description="Check that every shard under PATH is readable Parquet holding a known record schema at the "
        "version this code reads, with conforming columns; reads every data page unless --quick.",
    )  # fmt: skip
    validate.add_argument("path", help="a shard, a directory of shards or a job output (local path or URI)")
    validate.add_argument("--record", help="require this record type (e.g. source_file)")
    validate.add_argument("--quick", action="store_true", help="footers and statistics only, no data pages")
    validate.set_defaults(handler=_validate)

    stats = commands.add_parser(
        "stats", help="rows, bytes, tokens, languages, categories, lengths, rejections",
        description="Summarise shards from their Parquet footers and the job's stats files, reading row data "
        "only for the few small columns they do not answer.",
    )  # fmt: skip
    stats.add_argument("path", help="a shard, a directory of shards or a job output (local path or URI)")
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    stats.set_defaults(handler=_stats)

    show = commands.add_parser("show", help="pretty-print samples", description="Pretty-print the first N rows "
                               "matching --where, with FIM parts, special tokens and diffs visible.")  # fmt: skip
    show.add_argument("path", help="a shard, a directory of shards or a job output (local path or URI)")
    show.add_argument("--n", type=int, default=3, help="rows to show (default 3)")
    show.add_argument(
        "--where", help="Python expression over the columns, e.g. 'language == \"Go\" and size_bytes < 2000'"
    )
    show.add_argument("--max-lines", type=int, default=40, help="lines shown per text field (default 40)")
    show.add_argument(
        "--tokenizer", type=Path, help="tokenizer directory to decode packed sequences (default: bundled)"
    )
    show.set_defaults(handler=_show)

    plot = commands.add_parser("plot", help="PNG charts of lengths, languages, categories, tokens and rejections")
    plot.add_argument("path", help="a shard, a directory of shards or a job output (local path or URI)")
    plot.add_argument("-o", "--out", type=Path, required=True, help="directory for the PNG files")
    plot.set_defaults(handler=_plot)


def _validate(args: argparse.Namespace) -> int:
    from loopcoder.pipelines.inspection import validate_shards

    shards, problems = validate_shards(args.path, expected_record=args.record, quick=args.quick)
    if not shards:
        raise ValueError(f"no .parquet shards under {args.path}")
    for problem in problems:
        print(f"INVALID {problem}")
    print(f"{len(shards) - len(problems)} of {len(shards)} shard(s) valid")
    return 1 if problems else 0


def _stats(args: argparse.Namespace) -> int:
    from loopcoder.pipelines.inspection.stats import collect_stats

    stats = collect_stats(args.path)
    if stats.shards == 0:
        raise ValueError(f"no .parquet shards under {args.path}")
    if args.json:
        print(json.dumps(stats.to_json(), indent=2))
    else:
        print_stats(stats)
    return 0


def print_stats(stats) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    overview = Table(title=f"shards under {stats.path}", title_justify="left")
    for column in ("record", "shards", "rows", "MB on disk"):
        overview.add_column(column, justify="left" if column == "record" else "right")
    for record, entry in sorted(stats.records.items()):
        overview.add_row(record, f"{entry['shards']:,}", f"{entry['rows']:,}", f"{entry['bytes'] / 1e6:,.2f}")
    overview.add_row(
        "total", f"{stats.shards:,}", f"{stats.rows:,}", f"{stats.bytes_on_disk / 1e6:,.2f}", style="bold"
    )
    console.print(overview)
    facts = []
    if stats.tokens is not None:
        facts.append(f"tokens: {stats.tokens:,}")
    if stats.documents is not None:
        facts.append(f"documents: {stats.documents:,}")
    if stats.kept is not None:
        facts.append(f"kept: {stats.kept:,} of {stats.records.get('filtered_file', {}).get('rows', stats.rows):,}")
    if stats.dedup_clusters is not None:
        facts.append(f"near-duplicate clusters: {stats.dedup_clusters:,}")
    if stats.length_percentiles:
        pcts = ", ".join(f"{k} {v:,.0f}" for k, v in stats.length_percentiles.items())
        facts.append(f"{stats.length_unit}: {pcts}")
    for fact in facts:
        console.print(fact)
    for title, counter in (
        ("languages", stats.languages), ("categories", stats.categories),
        ("tokens per category", stats.tokens_by_category), ("FIM split kinds", stats.fim_split_kinds),
        ("FIM modes", stats.fim_modes), (f"rejections by reason (from the {stats.rejections_source})", stats.rejections),
        ("near-dedup candidate pairs by exact Jaccard", stats.candidate_pairs_by_jaccard),
    ):  # fmt: skip
        if not counter:
            continue
        table = Table(title=title, title_justify="left")
        table.add_column("value")
        table.add_column("count", justify="right")
        table.add_column("share", justify="right")
        total = sum(counter.values())
        # a histogram reads in bin order; the other counters by size
        ordered = sorted(counter.items()) if counter is stats.candidate_pairs_by_jaccard else counter.most_common(15)
        for value, count in ordered:
            table.add_row(str(value), f"{count:,}", f"{count / total:.1%}")
        if len(counter) > 15:
            table.add_row(f"... {len(counter) - 15} more", "", "")
        console.print(table)


def _show(args: argparse.Namespace) -> int:
    from rich.console import Console

    from loopcoder.pipelines.inspection.show import iter_rows, render_row

    tokenizer = None
    console = Console()
    shown = 0
    for shard, record, row in iter_rows(args.path, args.where, args.n):
        if record == "packed_sequence" and tokenizer is None:
            from loopcoder.schemas.tokens import load_tokenizer

            tokenizer = load_tokenizer(args.tokenizer)
        render_row(console, shard, record, row, max_lines=args.max_lines, tokenizer=tokenizer)
        shown += 1
    if shown == 0:
        console.print(f"no rows{' match ' + repr(args.where) if args.where else ''} under {args.path}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from loopcoder.pipelines.inspection.plots import plot_stats
    from loopcoder.pipelines.inspection.stats import collect_stats

    stats = collect_stats(args.path, keep_lengths=True)
    if stats.shards == 0:
        raise ValueError(f"no .parquet shards under {args.path}")
    for path in plot_stats(stats, args.out):
        print(path)
    return 0
