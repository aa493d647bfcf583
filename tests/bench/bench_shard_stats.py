"""`loopcoder shards stats` on a job output of 1,000 shards: footers and small columns vs a full scan.

    python tests/bench/bench_shard_stats.py [--shards 1000] [--rows 200]

Writes the shards to a temporary directory, then times, side by side in one run:
* `collect_stats` (Parquet footers plus the few small columns it needs);
* a full scan that reads every column of every shard, as a tool without footer statistics would.
Both must agree on rows and languages before any time is printed.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from loopcoder.pipelines.inspection.stats import collect_stats
from loopcoder.schemas import SOURCE_FILE

LANGUAGES = ["Python", "C", "C++", "Go", "Rust", "Java", "JavaScript"]


def write_shards(root: Path, shards: int, rows: int) -> None:
    rng = random.Random(0)
    words = [f"name_{i}" for i in range(5000)] + ["def", "return", "(", ")", ":", "\n    ", "=", "+", "if"]
    for shard in range(shards):
        records = []
        for row in range(rows):
            content = " ".join(rng.choices(words, k=rng.randint(20, 600)))
            records.append({"id": f"{shard}-{row}", "repo": "bench", "path": f"f{row}.py",
                            "language": rng.choice(LANGUAGES), "content": content,
                            "size_bytes": len(content), "license": None, "revision": None})  # fmt: skip
        pq.write_table(SOURCE_FILE.from_records(records), root / f"part-{shard:05d}.parquet", compression="zstd")


def full_scan(root: Path) -> tuple[int, Counter]:
    rows, languages = 0, Counter()
    for path in sorted(root.glob("*.parquet")):
        table = pq.read_table(path)
        rows += table.num_rows
        languages.update(table.column("language").to_pylist())
    return rows, languages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        write_shards(root, args.shards, args.rows)
        size = sum(p.stat().st_size for p in root.glob("*.parquet"))
        print(
            f"wrote {args.shards} shards x {args.rows} rows ({size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s"
        )
        os.sync()
        start = time.perf_counter()
        stats = collect_stats(root)
        stats_seconds = time.perf_counter() - start
        start = time.perf_counter()
        rows, languages = full_scan(root)
        scan_seconds = time.perf_counter() - start
        if stats.rows != rows or dict(stats.languages) != dict(languages):
            raise SystemExit("stats disagree with the full scan: not reporting times")
        print("\n| method | shards | rows | seconds | ratio to full scan |\n|---|---|---|---|---|")
        print(
            f"| shards stats (footers + small columns) | {stats.shards} | {stats.rows:,} | {stats_seconds:.2f} | {stats_seconds / scan_seconds:.2f} |"
        )
        print(f"| full scan (every column) | {args.shards} | {rows:,} | {scan_seconds:.2f} | 1.00 |")


if __name__ == "__main__":
    main()
