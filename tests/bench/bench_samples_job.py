"""The samples job end to end on local Ray: scaling with workers, and driver memory against corpus size.

    python tests/bench/bench_samples_job.py [--corpus data/sample] [--files 600] [--copies 4]

Builds the sample corpus first if `--corpus` does not exist. Each run is a fresh driver process
(`loopcoder data samples` through `run_samples_job`) on its own local Ray, side by side in one
invocation:

- documents per second with 2 workers ÷ 1 worker, on the same input (aim >= 1.7 on 2 free cores),
  on the base corpus and on a corpus `--copies` (4) times larger: the job's fixed cost (starting
  Ray, about 6.5 s here, and each worker's libraries) does not shrink with workers, so the larger
  corpus shows the scaling of the work itself;
- the driver's peak resident memory on the larger corpus ÷ on the base corpus (aim <= 1.2): the
  driver plans tasks and adds up their summaries, so its memory must not follow the data.

Each run's stage timings (`timings_seconds` of its `stats.json`) are printed beside it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from loopcoder.pipelines.sample_corpus import SampleCorpusConfig, build_sample_corpus, default_config_path
from loopcoder.schemas import SOURCE_FILE

REPO_ROOT = Path(__file__).resolve().parents[2]

DRIVER = """
import json, resource, sys, time
from loopcoder.pipelines.samples.job import SamplesJobConfig, run_samples_job
config = SamplesJobConfig.from_dict(json.loads(sys.argv[1]))
start = time.perf_counter()
stats = run_samples_job(config)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "files": stats["fim"]["files"], "stages": stats["timings_seconds"]}))
"""


def write_input(rows: list[dict], directory: Path, copies: int, rows_per_shard: int = 100) -> int:
    """`copies` renamed copies of the rows (other ids and repositories), as shards of `rows_per_shard`."""
    directory.mkdir(parents=True, exist_ok=True)
    expanded = [
        r | {"id": f"{r['id']}#{c}", "repo": f"{r['repo']}#{c}", "path": r["path"]}
        for c in range(copies)
        for r in rows
    ]
    for i in range(0, len(expanded), rows_per_shard):
        pq.write_table(SOURCE_FILE.from_records(expanded[i : i + rows_per_shard]), directory / f"part-{i:06d}.parquet")
    return len(expanded)


def run(input_dir: Path, output: Path, cpus: int) -> dict:
    config = {
        "name": "bench-samples",
        "input": str(input_dir),
        "output": str(output),
        "fim": {"fim_rate": 0.5},
        "repo_fim": {"token_budget": 8192, "targets_per_repo": 2},
        "packing": {"seq_len": 2048, "split_long_documents": True},
        "ray": {"executor": "ray", "num_cpus": cpus, "workers": cpus},  # Ray even where `auto` would stay here
    }
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(config)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=REPO_ROOT / "data" / "sample")
    parser.add_argument("--files", type=int, default=600, help="source files of the base corpus")
    parser.add_argument("--copies", type=int, default=4, help="renamed copies of the base corpus in the larger one")
    args = parser.parse_args()
    if not (args.corpus / "source_files").exists():
        build_sample_corpus(SampleCorpusConfig.from_yaml(default_config_path()), args.corpus)
    rows = [r for r in pq.read_table(args.corpus / "source_files").to_pylist() if r["language"] == "Python"]
    rows = rows[: args.files]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = write_input(rows, root / "base", 1)
        larger = write_input(rows, root / "larger", args.copies)
        started = time.perf_counter()
        one = run(root / "base", root / "one", 1)
        two = run(root / "base", root / "two", 2)
        big_one = run(root / "larger", root / "big_one", 1)
        big = run(root / "larger", root / "big", 2)
        print(f"base corpus {base:,} files, larger corpus {larger:,} files; {time.perf_counter() - started:.0f} s\n")
        larger_name = f"{args.copies}x corpus"
        stage_names = list(one["stages"])
        print("| run | files | seconds | files/s | driver peak RSS (MB) | " + " | ".join(stage_names) + " |")
        print("|---" * (5 + len(stage_names)) + "|")
        runs = (("base, 1 worker", one), ("base, 2 workers", two), (f"{larger_name}, 1 worker", big_one),
                (f"{larger_name}, 2 workers", big))  # fmt: skip
        for name, result in runs:
            rate = result["files"] / result["seconds"]
            stages = " | ".join(f"{result['stages'].get(stage, 0):.1f}" for stage in stage_names)
            print(
                f"| {name} | {result['files']:,} | {result['seconds']:.1f} | {rate:.1f} | "
                f"{result['peak_rss_mb']:.0f} | {stages} |"
            )
        for name, (single, double) in (("base corpus", (one, two)), (larger_name, (big_one, big))):
            speedup = (double["files"] / double["seconds"]) / (single["files"] / single["seconds"])
            print(f"\n2 workers ÷ 1 worker (files/s), {name}: {speedup:.2f} (aim >= 1.7)")
        print(f"\ndriver peak RSS, {larger_name} ÷ base: {big['peak_rss_mb'] / two['peak_rss_mb']:.2f} (aim <= 1.2)")


if __name__ == "__main__":
    main()
