"""Whole pipeline throughput: read -> decode -> quality -> exact -> MinHash -> AST -> write, on real code.

    .venv/bin/python tests/bench/bench_pipeline.py [--min-mb 100] [--output /tmp/bench_pipeline]

The corpus is the Python source of large installed packages (transformers, torch, sympy, then
more until `--min-mb` is reached), read as directory inputs by a job on local Ray using every
core. Reported: MB read per second of wall time, and per core, with the load average (on a
machine shared with other work, wall time per core understates what a core does). The output
folder is removed first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sysconfig
import time
from pathlib import Path

from loopcoder.pipelines.job import JobConfig
from loopcoder.pipelines.runner import run_job

PACKAGES = ["transformers", "torch", "sympy", "pandas", "scipy", "ray", "numpy"]


def corpus_inputs(min_mb: float) -> tuple[list[dict], float]:
    site = Path(sysconfig.get_paths()["purelib"])
    inputs, total = [], 0.0
    for name in PACKAGES:
        root = site / name
        if not root.is_dir():
            continue
        size = sum(p.stat().st_size for p in root.rglob("*.py") if p.is_file() and not p.is_symlink()) / 1e6
        inputs.append({"kind": "directory", "path": str(root), "repo": f"pypi/{name}", "include": ["*.py"]})
        total += size
        if total >= min_mb:
            break
    return inputs, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-mb", type=float, default=100)
    parser.add_argument("--output", type=Path, default=Path("/tmp/bench_pipeline"))
    parser.add_argument("--files-per-task", type=int, default=200)
    args = parser.parse_args()
    inputs, megabytes = corpus_inputs(args.min_mb)
    if megabytes < args.min_mb:
        raise SystemExit(f"only {megabytes:.0f} MB of installed Python source found, need {args.min_mb:.0f}")
    cores = os.cpu_count() or 1
    job = JobConfig.from_dict(
        {
            "name": "bench_pipeline",
            "output": str(args.output),
            "inputs": inputs,
            "steps": ["decode", "quality", "ast", "exact_dedup", "minhash_dedup"],
            "tasks": {"files_per_task": args.files_per_task},
            "ray": {"num_cpus": cores, "shuffle_partitions": cores * 2},
        }
    )
    shutil.rmtree(args.output, ignore_errors=True)
    start = time.perf_counter()
    stats = run_job(job, args.output)
    wall = time.perf_counter() - start
    decode = stats["steps"][0]
    read_mb = decode["bytes_in"] / 1e6
    print(f"{decode['docs_in']:,} files, {read_mb:.1f} MB read from {', '.join(i['repo'] for i in inputs)}; "
          f"{cores} cores; load average at the end {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| stage | seconds |")
    print("|---|---:|")
    for stage, seconds in stats["timings_seconds"].items():
        print(f"| {stage} | {seconds:.1f} |")
    print(f"| whole job (incl. Ray start, planning, stats) | {wall:.1f} |")
    print()
    print("| step | docs in | kept | dropped |")
    print("|---|---:|---:|---:|")
    for step in stats["steps"]:
        print(f"| {step['step']} | {step['docs_in']:,} | {step['kept']:,} | {sum(step['dropped'].values()):,} |")
    print()
    print("| MB/s | MB/s per core |")
    print("|---:|---:|")
    print(f"| {read_mb / wall:.2f} | {read_mb / wall / cores:.2f} |")
    print(f"output: {stats['output']['rows']:,} files, {stats['output']['bytes'] / 1e6:.1f} MB in {args.output}")


if __name__ == "__main__":
    main()
