"""Near-dedup side by side: the clean job's dedup steps vs datatrove's 4-stage MinHash dedup, same documents.

    .venv/bin/python tests/bench/bench_dedup_datatrove.py --datatrove-python /tmp/dtvenv/bin/python \\
        [--sizes 5,50,100] [--work /tmp/bench_dedup_datatrove] [--sample-corpus data/sample] [--no-profile]

datatrove is not a dependency of the project. Install it in a venv of its own and name that
venv's interpreter; without `--datatrove-python`, or when `datatrove` does not import there, only
the loopcoder side runs and the script says so:

    python3 -m venv /tmp/dtvenv && /tmp/dtvenv/bin/pip install "datatrove[processing]" orjson spacy

(`processing` brings xxhash, the default hash; spaCy is the default English word tokenizer; orjson
is what `JsonlReader` parses with.)

**Corpus.** Real source code available offline: the rows of the sample corpus (`loopcoder data
sample-corpus`, built into `--sample-corpus` when missing) and the `.py` files of the packages
installed next to this interpreter (site-packages, less the files the sample corpus already
read). Files are grouped by their path below any `_vendor/` folder (`pip/_vendor/rich/console.py`
and `rich/console.py` are one group), groups are shuffled with a fixed seed, and every 20th group
gets one edited copy of its first file (lines deleted, an identifier renamed, a comment added):
so each corpus holds real vendored copies, exact copies and edited copies. Files that are not
strict UTF-8, contain NUL, exceed 1,000,000 bytes or have fewer than 10 alphanumeric tokens are
left out, so neither tool rejects a file for another reason. The corpora are nested prefixes of
one document order, each written as `--files` JSONL files (`id`, `text`, `repo`, `path`) that both
tools read.

**The two sides.** loopcoder: `loopcoder data run` on a job with the steps `decode`,
`exact_dedup`, `minhash_dedup` (defaults: 5-grams of alphanumeric tokens, 256 permutations,
40 bands x 6 rows, exact Jaccard check at 0.7) and the job's other defaults (local Ray on every
core, 4 shuffle partitions, Parquet output with rejected rows), one task per JSONL file.
datatrove: its `MinhashDedupSignature` -> `MinhashDedupBuckets` -> `MinhashDedupCluster` ->
`MinhashDedupFilter` with `MinhashConfig()` defaults (5-grams of spaCy words of lowercased text
without punctuation, 14 buckets x 8 hashes, 64-bit xxhash, no Jaccard check), `JsonlReader` and
`JsonlWriter` (output and removed documents), `LocalPipelineExecutor` with 2 tasks for the
signature and filter stages, `num_buckets` tasks on 2 workers for the bucket stage (it requires a
multiple of `num_buckets`) and 1 for clustering. Each side runs in a process of its own; wall
time is that process from start to exit (interpreter, imports, Ray or process pools, all stages,
writing the output).

**Ground truth.** Two documents are near-duplicates when the exact Jaccard similarity of their
sets of token 5-grams is at least 0.7: tokens are runs of `[A-Za-z0-9_]` (case kept), each 5-gram
hashed to 32 bits (`loopcoder.pipelines.dedup.minhash.shingle_set`; this is the clean job's own
definition, datatrove's shingles differ). Documents with equal shingle sets form exact groups;
one member of each goes through a very sensitive LSH (the same 256 MinHash values cut into 64
bands of 4 rows: a pair at Jaccard 0.7 is missed with probability 2e-8, at 0.6 with 1e-4), and
every candidate pair is checked exactly. True clusters are the connected components of the
near-duplicate pairs. With `removed` the documents a tool dropped and, per true cluster C,
`correct(C) = min(|removed ∩ C|, |C| - 1)` (removing a whole cluster keeps nothing of it):

    precision = Σ correct(C) / |removed|        recall = Σ correct(C) / Σ (|C| - 1)

loopcoder runs the clean job as users do (`loopcoder data run`, the default `ray.executor: auto`:
in its own process up to `ray.local_max_input_mb`, on a local Ray above). The loopcoder side's
fixed cost is its wall time less the three stage timings of its `stats.json` (documents, dedup,
write). Unless `--no-profile` is given, one more loopcoder run on
the smallest corpus in a fresh process, under cProfile, splits the driver's time into imports,
`ray.init`, planning, each stage, stats merging and `ray.shutdown`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

THRESHOLD = 0.7
MAX_BYTES = 1_000_000
MIN_TOKENS = 10
EDIT_EVERY = 20
MAX_GROUP = 10
SEED = 0
SENSITIVE_BANDS, SENSITIVE_ROWS = 64, 4
IDENTIFIER = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]{3,}\b")


def group_key(relative: str) -> str:
    """Vendored copies share the key of the package they copy: `pip/_vendor/rich/x.py` -> `rich/x.py`."""
    parts = relative.split("/")
    for marker in ("_vendor", "_vendored", "vendored", "_distutils"):
        if marker in parts[:-1]:
            index = len(parts) - 1 - parts[::-1].index(marker)
            parts = (["distutils"] if marker == "_distutils" else []) + parts[index + 1 :]
    return "/".join(parts)


def acceptable(text: str) -> bool:
    from loopcoder.pipelines.dedup.minhash import tokens

    return "\x00" not in text and len(text.encode("utf-8")) <= MAX_BYTES and len(tokens(text)) >= MIN_TOKENS


def sample_corpus_files(location: Path) -> tuple[list[dict], set[str]]:
    """The sample corpus's source files, and the site-packages paths it already read."""
    import pyarrow.parquet as pq

    if not (location / "markers" / "corpus.done").exists():
        print(f"building the sample corpus into {location} (loopcoder data sample-corpus)", flush=True)
        subprocess.run(
            [sys.executable, "-m", "loopcoder.jobs.cli", "data", "sample-corpus", "--out", str(location)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    table = pq.read_table(sorted((location / "source_files").glob("*.parquet")), columns=["repo", "path", "content"])
    files, read_from_site = [], set()
    for repo, path, content in zip(*(table[c].to_pylist() for c in ("repo", "path", "content")), strict=True):
        if repo.startswith("pypi/"):
            read_from_site.add(path)
        files.append({"repo": repo, "path": path, "text": content})
    return files, read_from_site


def site_package_paths(skip: set[str]) -> list[tuple[str, Path]]:
    site = Path(sysconfig.get_paths()["purelib"])
    found = []
    for root, dirs, names in os.walk(site):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.endswith((".dist-info", ".egg-info")))
        for name in sorted(names):
            if name.endswith(".py"):
                path = Path(root, name)
                relative = path.relative_to(site).as_posix()
                if relative not in skip and not path.is_symlink():
                    found.append((relative, path))
    return found


def edited_copy(text: str, rng: random.Random) -> str:
    """Deletes 2-20% of the lines, renames one identifier everywhere, adds a comment line."""
    lines = text.splitlines(keepends=True)
    drop = set(rng.sample(range(len(lines)), int(len(lines) * rng.uniform(0.02, 0.2))))
    kept = "".join(line for index, line in enumerate(lines) if index not in drop)
    names = sorted(set(IDENTIFIER.findall(kept)))
    if names:
        name = rng.choice(names)
        kept = re.sub(rf"\b{name}\b", f"{name}_renamed", kept)
    return "# edited copy\n" + kept


def build_documents(target_mb: float, sample_corpus: Path) -> list[dict]:
    """Documents in a fixed order; every corpus is a prefix of it."""
    sample_files, read_from_site = sample_corpus_files(sample_corpus)
    groups: dict[str, list] = {}
    for file in sample_files:
        groups.setdefault(group_key(file["path"]), []).append(file)
    for relative, path in site_package_paths(read_from_site):
        groups.setdefault(group_key(relative), []).append((relative, path))
    units = []
    for members in groups.values():
        if len(members) > MAX_GROUP:  # `__init__.py`, `utils.py`: a common name, not copies
            units.extend([m] for m in members)
        else:
            units.append(members)
    rng = random.Random(SEED)
    rng.shuffle(units)
    documents, total = [], 0
    for number, unit in enumerate(units):
        texts = []
        for member in unit:
            if isinstance(member, dict):
                texts.append((member["repo"], member["path"], member["text"]))
                continue
            relative, path = member
            try:
                text = path.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            texts.append(("site-packages/" + relative.split("/")[0], relative, text))
        texts = [t for t in texts if acceptable(t[2])]
        if texts and number % EDIT_EVERY == 0:
            repo, path, text = texts[0]
            edited = edited_copy(text, rng)
            if acceptable(edited):
                texts.append(("edited", path, edited))
        for repo, path, text in texts:
            documents.append({"id": f"doc-{len(documents):07d}", "repo": repo, "path": path, "text": text})
            total += len(text.encode("utf-8"))
        if total >= target_mb * 1e6:
            break
    return documents


def prefix_for(documents: list[dict], megabytes: float) -> int:
    total = 0
    for index, doc in enumerate(documents):
        total += len(doc["text"].encode("utf-8"))
        if total >= megabytes * 1e6:
            return index + 1
    return len(documents)


def write_corpus(documents: list[dict], folder: Path, files: int) -> float:
    """`files` JSONL files of about equal bytes; returns the megabytes of text."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sizes = [len(d["text"].encode("utf-8")) for d in documents]
    share, written, part = sum(sizes) / files, 0, 0
    handle = open(folder / f"part-{part:05d}.jsonl", "w", encoding="utf-8")
    for doc, size in zip(documents, sizes, strict=True):
        if written >= share * (part + 1) and part + 1 < files:
            handle.close()
            part += 1
            handle = open(folder / f"part-{part:05d}.jsonl", "w", encoding="utf-8")
        handle.write(json.dumps(doc) + "\n")
        written += size
    handle.close()
    return sum(sizes) / 1e6


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(x, x) != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def ground_truth_edges(texts: list[str]) -> tuple[list[tuple[int, int]], dict]:
    """Edges whose connected components are the true clusters: exact groups chained, verified LSH pairs."""
    import numpy as np

    from loopcoder.pipelines.dedup.minhash import (
        MinhashConfig,
        MinhashSignatures,
        jaccard,
        shingle_hashes,
        tokens,
    )

    config = MinhashConfig(bands=SENSITIVE_BANDS, rows=SENSITIVE_ROWS)
    signer = MinhashSignatures(config)
    sets, exact_groups, representatives, edges = [], {}, [], []
    for index, text in enumerate(texts):
        token_list = tokens(text)
        shingle_set = np.unique(shingle_hashes(token_list, config.ngram))
        sets.append(shingle_set)
        digest = hashlib.sha256(shingle_set.tobytes()).digest()
        if digest in exact_groups:
            edges.append((exact_groups[digest][-1], index))  # chained in index order: prefixes stay connected
            exact_groups[digest].append(index)
        else:
            exact_groups[digest] = [index]
            representatives.append((index, signer.band_hashes(signer.signature_from_tokens(token_list))))
    rep_index = np.array([r for r, _ in representatives], dtype=np.int64)
    bands = np.stack([b for _, b in representatives])
    candidates = []
    for band in range(bands.shape[1]):
        order = np.argsort(bands[:, band], kind="stable")
        values = bands[order, band]
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
        ends = np.r_[starts[1:], len(values)]
        for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1], strict=True):
            members = np.sort(rep_index[order[start:end]])
            left, right = np.triu_indices(len(members), k=1)
            candidates.append(members[left] * len(texts) + members[right])
    unique = np.unique(np.concatenate(candidates)) if candidates else np.empty(0, dtype=np.int64)
    near = 0
    for code in unique.tolist():
        a, b = divmod(code, len(texts))
        if jaccard(sets[a], sets[b]) >= THRESHOLD:
            edges.append((a, b))
            near += 1
    info = {
        "candidates": len(unique),
        "near_pairs": near,
        "exact_groups": sum(len(g) > 1 for g in exact_groups.values()),
    }
    return edges, info


def score(removed: set[int], edges: list[tuple[int, int]], count: int) -> dict:
    """Precision and recall of `removed` against the clusters of the edges within the first `count` documents."""
    clusters = UnionFind()
    for a, b in edges:
        if a < count and b < count:
            clusters.union(a, b)
    members: dict[int, list[int]] = {}
    for node in clusters.parent:
        members.setdefault(clusters.find(node), []).append(node)
    members = {root: set(m) | {root} for root, m in members.items()}
    correct = sum(min(len(removed & m), len(m) - 1) for m in members.values())
    expected = sum(len(m) - 1 for m in members.values())
    return {
        "removed": len(removed),
        "true_removable": expected,
        "clusters": len(members),
        "precision": correct / len(removed) if removed else float("nan"),
        "recall": correct / expected if expected else float("nan"),
    }


def run_loopcoder(corpus: Path, output: Path) -> dict:
    import pyarrow.parquet as pq

    shutil.rmtree(output, ignore_errors=True)
    job_file = output.parent / f"{output.name}.yaml"
    job = {
        "name": "bench_dedup_datatrove",
        "output": str(output),
        "inputs": [{"kind": "jsonl", "path": str(corpus)}],
        "steps": ["decode", "exact_dedup", "minhash_dedup"],
    }
    job_file.write_text(json.dumps(job))
    log = output.parent / f"{output.name}.log"
    start = time.perf_counter()
    with open(log, "w") as handle:
        result = subprocess.run(
            [sys.executable, "-m", "loopcoder.jobs.cli", "data", "run", str(job_file), "--json"],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"loopcoder job failed (exit {result.returncode}); see {log}")
    stats = json.loads((output / "stats.json").read_text())
    removed, other = set(), {}
    for shard in sorted((output / "rejected").glob("*.parquet")):
        table = pq.read_table(shard, columns=["id", "rejection_reason"])
        for doc_id, reason in zip(table["id"].to_pylist(), table["rejection_reason"].to_pylist(), strict=True):
            if reason in ("exact_duplicate", "near_duplicate"):
                removed.add(doc_id)
            else:
                other[reason] = other.get(reason, 0) + 1
    if other:
        raise SystemExit(f"loopcoder rejected documents for reasons other than dedup: {other}")
    timings = stats["timings_seconds"]
    stages = {name: s.get("seconds", 0.0) for name, s in stats["dedup"].items() if isinstance(s, dict)}
    return {"wall": wall, "removed_ids": removed, "timings": timings, "dedup_stages": stages}


def datatrove_available(python: str | None) -> str | None:
    """None when the interpreter can import datatrove, else why not."""
    if not python:
        return "no --datatrove-python given"
    probe = subprocess.run([python, "-c", "import datatrove, orjson, spacy, xxhash"], capture_output=True, text=True)
    if probe.returncode:
        return f"{python} cannot import datatrove, orjson, spacy and xxhash: {probe.stderr.strip().splitlines()[-1]}"
    return None


def run_datatrove(python: str, corpus: Path, work: Path, tasks: int) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work.parent / f"{work.name}.log"
    start = time.perf_counter()
    with open(log, "w") as handle:
        result = subprocess.run(
            [python, __file__, "--datatrove-stages", str(corpus), str(work), str(tasks)],
            stdout=subprocess.PIPE,
            stderr=handle,
            text=True,
        )
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"datatrove pipeline failed (exit {result.returncode}); see {log}")
    removed = set()
    for path in sorted((work / "removed").glob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as handle:
            removed.update(json.loads(line)["id"] for line in handle if line.strip())
    return {"wall": wall, "removed_ids": removed, "timings": json.loads(result.stdout.strip().splitlines()[-1])}


def datatrove_stages(corpus: str, work: str, tasks: int) -> None:
    """Runs in the datatrove interpreter: the four stages with datatrove's defaults; prints their timings."""
    start = time.perf_counter()
    from datatrove.executor.local import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers.jsonl import JsonlWriter

    timings = {"imports": time.perf_counter() - start}
    config = MinhashConfig()
    stages = [
        ("signatures", [JsonlReader(corpus), MinhashDedupSignature(f"{work}/signatures", config=config)], tasks),
        ("buckets", [MinhashDedupBuckets(f"{work}/signatures", f"{work}/buckets", config=config)], config.num_buckets),
        ("clusters", [MinhashDedupCluster(f"{work}/buckets", f"{work}/remove_ids", config=config)], 1),
        (
            "filter",
            [
                JsonlReader(corpus),
                MinhashDedupFilter(f"{work}/remove_ids", exclusion_writer=JsonlWriter(f"{work}/removed")),
                JsonlWriter(f"{work}/output"),
            ],
            tasks,
        ),
    ]
    for name, pipeline, count in stages:
        start = time.perf_counter()
        executor = LocalPipelineExecutor(
            pipeline, tasks=count, workers=min(count, tasks), logging_dir=f"{work}/logs/{name}"
        )
        executor.run()
        timings[name] = time.perf_counter() - start
    print(json.dumps(timings))


def profile_loopcoder(job_file: str) -> None:
    """Runs in a fresh process: one job under cProfile; prints where the driver's time went."""
    import cProfile
    import pstats

    start = time.perf_counter()
    from loopcoder.pipelines.clean.job import JobConfig
    from loopcoder.pipelines.clean.runner import run_job

    imports = time.perf_counter() - start
    job = JobConfig.from_yaml(Path(job_file))
    profiler = cProfile.Profile()
    profiler.enable()
    run_job(job)
    profiler.disable()
    wanted = {
        ("ray/_private/worker.py", "init"): "ray.init",
        ("pipelines/io/readers.py", "plan_tasks"): "planning (plan_tasks)",
        ("pipelines/clean/runner.py", "_run_stage"): "documents + write stages (_run_stage)",
        ("pipelines/dedup/stages.py", "run_dedup"): "dedup stages (run_dedup)",
        ("pipelines/clean/runner.py", "merge_job_stats"): "stats merging (merge_job_stats)",
        ("ray/_private/worker.py", "shutdown"): "ray.shutdown",
        ("pipelines/clean/runner.py", "run_job"): "run_job in all",
    }
    found = {"imports (loopcoder.pipelines; Ray's are inside ray.init)": (1, imports)}
    for (filename, _line, function), (_cc, calls, _tt, cumulative, _callers) in pstats.Stats(profiler).stats.items():
        for (suffix, name), label in wanted.items():
            if function == name and filename.endswith(suffix) and cumulative >= found.get(label, (0, 0.0))[1]:
                found[label] = (calls, cumulative)
    print(json.dumps(found))


def run_profile(job_file: Path, output: Path) -> dict:
    shutil.rmtree(output, ignore_errors=True)
    job = json.loads(job_file.read_text()) | {"output": str(output)}
    profiled = job_file.parent / "profile.yaml"
    profiled.write_text(json.dumps(job))
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, __file__, "--profile-job", str(profiled)], capture_output=True, text=True, check=True
    )
    return {"wall": time.perf_counter() - start, "parts": json.loads(result.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datatrove-python", help="an interpreter that can import datatrove (its own venv)")
    parser.add_argument("--sizes", default="5,50,100", help="corpus sizes in MB, comma-separated")
    parser.add_argument("--files", type=int, default=2, help="JSONL files per corpus (loopcoder: one task each)")
    parser.add_argument("--datatrove-tasks", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_dedup_datatrove"))
    parser.add_argument("--sample-corpus", type=Path, default=Path("data/sample"))
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled run on the smallest corpus")
    args = parser.parse_args()
    sizes = sorted(float(s) for s in args.sizes.split(","))
    skip_datatrove = datatrove_available(args.datatrove_python)
    if skip_datatrove:
        print(f"datatrove side skipped: {skip_datatrove}. Install it in a venv of its own, e.g. "
              "`python3 -m venv /tmp/dtvenv && /tmp/dtvenv/bin/pip install 'datatrove[processing]' orjson spacy`, "
              "and pass --datatrove-python /tmp/dtvenv/bin/python")  # fmt: skip
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    documents = build_documents(sizes[-1], args.sample_corpus)
    edges, truth = ground_truth_edges([d["text"] for d in documents])
    print(f"corpus and ground truth: {len(documents):,} documents in {time.perf_counter() - start:.0f} s; "
          f"{truth['candidates']:,} sensitive-LSH candidates, {truth['near_pairs']:,} near pairs (Jaccard >= "
          f"{THRESHOLD}) and {truth['exact_groups']:,} groups of equal shingle sets", flush=True)  # fmt: skip
    index_of = {d["id"]: i for i, d in enumerate(documents)}
    rows, fixed_rows = [], []
    for size in sizes:
        count = prefix_for(documents, size)
        corpus = args.work / f"corpus-{size:g}mb"
        megabytes = write_corpus(documents[:count], corpus, args.files)
        label = f"{megabytes:.1f} MB, {count:,} files"
        loopcoder = run_loopcoder(corpus, args.work / f"loopcoder-{size:g}mb")
        stage_sum = sum(loopcoder["timings"].values())
        fixed_rows.append((label, loopcoder["wall"], loopcoder["timings"], loopcoder["wall"] - stage_sum))
        results = [("loopcoder", loopcoder)]
        if not skip_datatrove:
            results.append(
                (
                    "datatrove",
                    run_datatrove(
                        args.datatrove_python, corpus, args.work / f"datatrove-{size:g}mb", args.datatrove_tasks
                    ),
                )
            )
        for tool, result in results:
            metrics = score({index_of[i] for i in result["removed_ids"]}, edges, count)
            rows.append((label, tool, result, metrics))
            print(f"{label} {tool}: {result['wall']:.1f} s, removed {metrics['removed']:,}, precision "
                  f"{metrics['precision']:.3f}, recall {metrics['recall']:.3f}", flush=True)  # fmt: skip
    print(f"\n{os.cpu_count()} cores; load average at the end {os.getloadavg()[0]:.1f}\n")
    print("| corpus | tool | wall s | removed | true removable | precision | recall | loopcoder ÷ datatrove wall |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    walls = {(label, tool): result["wall"] for label, tool, result, _ in rows}
    for label, tool, result, m in rows:
        ratio = ""
        if tool == "loopcoder" and (label, "datatrove") in walls:
            ratio = f"{result['wall'] / walls[(label, 'datatrove')]:.2f}"
        print(f"| {label} | {tool} | {result['wall']:.1f} | {m['removed']:,} | {m['true_removable']:,} | "
              f"{m['precision']:.3f} | {m['recall']:.3f} | {ratio} |")  # fmt: skip
    print("\nloopcoder: stages from stats.json, fixed cost = wall - stages (process start, imports, Ray start "
          "and stop, planning, stats)\n")  # fmt: skip
    print("| corpus | wall s | documents | dedup | write | fixed cost |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, wall, timings, fixed in fixed_rows:
        print(f"| {label} | {wall:.1f} | {timings.get('documents', 0):.1f} | {timings.get('dedup', 0):.1f} | "
              f"{timings.get('write', 0):.1f} | {fixed:.1f} |")  # fmt: skip
    for label, tool, result, _ in rows:
        if tool == "loopcoder":
            stages = ", ".join(f"{k} {v:.1f}" for k, v in result["dedup_stages"].items())
            print(f"loopcoder dedup stages, {label}: {stages}")
        else:
            print(f"datatrove stages, {label}: " + ", ".join(f"{k} {v:.1f}" for k, v in result["timings"].items()))
    if not args.no_profile:
        smallest = args.work / f"loopcoder-{sizes[0]:g}mb"
        profile = run_profile(smallest.parent / f"{smallest.name}.yaml", args.work / "loopcoder-profile")
        print(
            f"\nloopcoder job on the smallest corpus under cProfile, driver process ({profile['wall']:.1f} s wall):\n"
        )
        print("| part | calls | seconds |")
        print("|---|---:|---:|")
        for part, (calls, seconds) in profile["parts"].items():
            print(f"| {part} | {calls} | {seconds:.1f} |")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--datatrove-stages":
        datatrove_stages(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--profile-job":
        profile_loopcoder(sys.argv[2])
    else:
        main()
