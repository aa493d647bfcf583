"""Whole pipeline throughput: read -> decode -> quality -> exact -> MinHash -> AST -> write, on real code.

    .venv/bin/python tests/bench/bench_pipeline.py [--min-mb 100] [--output /tmp/bench_pipeline] [--s3]

The corpus is the Python source of large installed packages (transformers, torch, sympy, then
more until `--min-mb` is reached), read as directory inputs by a job on local Ray using every
core. Reported: MB read per second of wall time, and per core, with the load average (on a
machine shared with other work, wall time per core understates what a core does). The output
folder is removed first, and again at the end.

With `--s3`, the same job runs again with its inputs and output on a local S3-compatible server
(`--s3-server rclone`, the default: `rclone serve s3` from the test extra, in its own process on
loopback; or `moto`, whose Python request handling takes about 9 ms of the job's cores per object
read; tests/local_s3.py), the inputs uploaded first (not timed),
and the two runs are compared: shard bytes must be equal, and the S3 run's throughput is reported
as a ratio of the local run's.

Shuffled bytes per document: what the dedup stages send through their shuffles (the Arrow bytes
each stage records as `shuffled_bytes`), per document entering dedup. The string-keyed rows the
previous stages shuffled at the same points are rebuilt from the same `_work/keys` and
`_work/bands` files and measured the same way (Arrow `nbytes`, with their int64 part column):
`(content_sha256 hex, "licence|id|task|row" key)` per document for the exact stage and `(band
int32, band_hash, content_hash, key)` per band row for the bucket stage. The ratio compares these
index shuffles (ranks, exact and edges now); the pair, component and annotation shuffles are
printed beside it (they carry shingle sets and scale with the duplicate pairs, not the corpus).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from loopcoder.pipelines.clean.job import JobConfig
from loopcoder.pipelines.clean.runner import run_job

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the shared local_s3 helper
import local_s3  # noqa: E402

PACKAGES = ["transformers", "torch", "sympy", "pandas", "scipy", "ray", "numpy"]


def corpus_inputs(min_mb: float, packages: list[str]) -> tuple[list[dict], float]:
    site = Path(sysconfig.get_paths()["purelib"])
    inputs, total = [], 0.0
    for name in packages:
        root = site / name
        if not root.is_dir():
            continue
        size = sum(p.stat().st_size for p in root.rglob("*.py") if p.is_file() and not p.is_symlink()) / 1e6
        inputs.append({"kind": "directory", "path": str(root), "repo": f"pypi/{name}", "include": ["*.py"]})
        total += size
        if total >= min_mb:
            break
    return inputs, total


def previous_index_bytes(work: Path) -> int:
    """Arrow bytes of the string-keyed exact and band rows (with their int64 part) for the same documents."""
    total = 0
    for path in sorted((work / "keys").glob("task-*.parquet")):
        keys = pq.read_table(path)
        task = keys.column("task").to_numpy()
        row = keys.column("row").to_numpy()
        rank = keys.column("licence_rank").to_numpy()
        ids = keys.column("id").to_pylist()
        string_keys = [f"{r}|{i}|{t:06d}|{w:07d}" for r, i, t, w in zip(rank, ids, task, row, strict=True)]
        hashes = [h.hex() for h in keys.column("content_sha256").to_pylist()]
        exact = pa.table({"content_sha256": hashes, "key": string_keys, "part": np.zeros(len(ids), np.int64)})
        total += exact.nbytes
        key_of_row = dict(zip(row.tolist(), string_keys, strict=True))
        hash_of_row = dict(zip(row.tolist(), (int(h[:16], 16) for h in hashes), strict=True))
        band_path = work / "bands" / path.name
        if band_path.exists():
            bands = pq.read_table(band_path)
            rows = bands.column("row").to_pylist()
            previous = pa.table(
                {
                    "band": bands.column("band").cast(pa.int32()),
                    "band_hash": bands.column("band_hash"),
                    "content_hash": pa.array([hash_of_row[r] for r in rows], pa.uint64()),
                    "key": pa.array([key_of_row[r] for r in rows], pa.string()),
                    "part": np.zeros(len(rows), np.int64),
                }
            )
            total += previous.nbytes
    return total


def start_s3_server(kind: str, folder: Path) -> subprocess.Popen:
    """The local S3 server (tests/local_s3.py) in its own process; the job finds it through AWS_* variables."""
    try:
        server, environment = local_s3.start_server(kind, "bench-key", uuid.uuid4().hex, folder)
    except (FileNotFoundError, RuntimeError) as error:
        raise SystemExit(f"{error}; or --s3-server moto") from None
    os.environ.update(environment)
    return server


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def upload_inputs(inputs: list[dict], bucket: str) -> list[dict]:
    """Copies each input directory's *.py files under `bucket/<repo>/`; returns the inputs pointing there."""
    from loopcoder.pipelines.io import filesystem as fs

    uploads, moved = [], []
    for spec in inputs:
        root = Path(spec["path"])
        target = f"{bucket}/{spec['repo'].replace('/', '_')}"
        uploads += [
            (p, fs.join(target, p.relative_to(root).as_posix()))
            for p in root.rglob("*.py")
            if p.is_file() and not p.is_symlink()
        ]
        moved.append(spec | {"path": target})
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: fs.atomic_write_bytes(item[1], item[0].read_bytes()), uploads))
    return moved


def compare_on_s3(
    job_raw: dict,
    inputs: list[dict],
    local_output: Path,
    local_stats: dict,
    local_wall: float,
    read_mb: float,
    server_kind: str,
) -> None:
    import pyarrow.fs as pafs

    from loopcoder.pipelines.io import filesystem as fs

    served = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    server = start_s3_server(server_kind, served)
    try:
        name = f"bench-{uuid.uuid4().hex[:8]}"
        pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], allow_bucket_creation=True).create_dir(
            name
        )
        bucket = f"s3://{name}"
        start = time.perf_counter()
        remote_inputs = upload_inputs(inputs, bucket)
        print(f"uploaded the inputs to the local S3 server in {time.perf_counter() - start:.1f} s (not timed)")
        output = f"{bucket}/out"
        server_cpu = cpu_seconds(server.pid)
        start = time.perf_counter()
        s3_stats = run_job(JobConfig.from_dict(job_raw | {"inputs": remote_inputs, "output": output}), output)
        s3_wall = time.perf_counter() - start
        if server_cpu is not None:
            server_cpu = cpu_seconds(server.pid) - server_cpu
        local = {s[len(str(local_output)) + 1 :]: fs.read_bytes(s) for s in fs.discover_shards(str(local_output))}
        remote = {s[len(output) + 1 :]: fs.read_bytes(s) for s in fs.discover_shards(output)}
        if local != remote:
            raise SystemExit("the S3 run's shards differ from the local run's")
        print()
        print("| input and output | whole job (s) | MB/s |")
        print("|---|---:|---:|")
        print(f"| local disk | {local_wall:.1f} | {read_mb / local_wall:.2f} |")
        print(f"| local S3 server ({server_kind}) | {s3_wall:.1f} | {read_mb / s3_wall:.2f} |")
        print(f"S3 ÷ local throughput: {local_wall / s3_wall:.2f} ({len(local)} shards, byte-identical)")
        print("| stage | local disk (s) | S3 (s) |")
        print("|---|---:|---:|")
        for stage, seconds in local_stats["timings_seconds"].items():
            print(f"| {stage} | {seconds:.1f} | {s3_stats['timings_seconds'].get(stage, float('nan')):.1f} |")
        if server_cpu is not None:
            print(f"the S3 server itself used {server_cpu:.1f} s of CPU on the job's cores during the S3 run")
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(served, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-mb", type=float, default=100)
    parser.add_argument("--output", type=Path, default=Path("/tmp/bench_pipeline"))
    parser.add_argument("--files-per-task", type=int, default=200)
    parser.add_argument("--packages", nargs="+", default=PACKAGES, help="installed packages read, in order")
    parser.add_argument("--s3", action="store_true", help="also run on a local S3 server and compare")
    parser.add_argument("--s3-server", choices=["rclone", "moto"], default="rclone", help="which local S3 server")
    args = parser.parse_args()
    inputs, megabytes = corpus_inputs(args.min_mb, args.packages)
    if megabytes < args.min_mb:
        raise SystemExit(f"only {megabytes:.0f} MB of installed Python source found, need {args.min_mb:.0f}")
    cores = os.cpu_count() or 1
    job_raw = {
        "name": "bench_pipeline",
        "output": str(args.output),
        "inputs": inputs,
        "steps": ["decode", "quality", "ast", "exact_dedup", "minhash_dedup"],
        "tasks": {"files_per_task": args.files_per_task},
        "ray": {"num_cpus": cores},
        "keep_work": True,
    }
    job = JobConfig.from_dict(job_raw)
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
    print()
    dedup = stats["dedup"]
    documents = dedup["ranks"]["documents"]
    index = sum(dedup[name].get("shuffled_bytes", 0) for name in ("ranks", "exact", "edges"))
    previous = previous_index_bytes(args.output / "_work")
    print(f"| dedup shuffles, bytes per document ({documents:,} documents) | now | string keys | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| index (exact + buckets; now ranks + exact + edges) | {index / documents:,.0f} | "
          f"{previous / documents:,.0f} | {index / previous:.3f} |")  # fmt: skip
    for name in ("verified", "components", "annotations"):
        if name in dedup:
            print(f"| {name} | {dedup[name].get('shuffled_bytes', 0) / documents:,.0f} | | |")
    print("partitions per stage:", {name: stage.get("partitions") for name, stage in dedup.items()})
    if args.s3:
        compare_on_s3(job_raw, inputs, args.output, stats, wall, read_mb, args.s3_server)
    shutil.rmtree(args.output, ignore_errors=True)


if __name__ == "__main__":
    main()
