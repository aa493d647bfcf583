"""Throughput of the sample generators on the sample corpus, one core, side by side in one run.

    python tests/bench/bench_samples.py [--corpus data/sample] [--files 400]

Builds the sample corpus first if `--corpus` does not exist. Reports samples per second for
file-level FIM by split kind, repository-level FIM and commit triplets, and tokens per second
for tokenise+pack, each as a table row.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from loopcoder.pipelines.sample_corpus import SampleCorpusConfig, build_sample_corpus, default_config_path
from loopcoder.pipelines.samples.commits import CommitConfig, CommitTripletExtractor
from loopcoder.pipelines.samples.fim import FimConfig, FimSplitter
from loopcoder.pipelines.samples.packing import PackingConfig, pack, tokenize_text
from loopcoder.pipelines.samples.repo_fim import RepoFimBuilder, RepoFimConfig, token_counter
from loopcoder.schemas.tokens import load_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=REPO_ROOT / "data" / "sample")
    parser.add_argument("--files", type=int, default=400, help="source files used per generator")
    args = parser.parse_args()
    if not (args.corpus / "source_files").exists():
        build_sample_corpus(SampleCorpusConfig.from_yaml(default_config_path()), args.corpus)
    files = pq.read_table(args.corpus / "source_files").to_pylist()
    files = [f for f in files if f["language"] in ("Python", "C", "JavaScript")][: args.files]
    mb = sum(len(f["content"].encode()) for f in files) / 1e6
    tokenizer = load_tokenizer()
    rows = []
    for kind in ("char", "line", "ast"):
        splitter = FimSplitter(FimConfig(fim_rate=1.0, split_kind_weights={kind: 1.0}))
        samples, seconds = timed(lambda s=splitter: [s(f) for f in files])
        rows.append((f"file FIM ({kind})", len(samples), "samples", seconds))
    by_repo = defaultdict(list)
    for f in files:
        by_repo[f["repo"]].append(f)
    builder = RepoFimBuilder(RepoFimConfig(targets_per_repo=8), count_tokens=token_counter(tokenizer))
    samples, seconds = timed(lambda: [s for repo, group in by_repo.items() for s in builder(repo, group)])
    rows.append(("repo-level FIM (32K budget)", len(samples), "samples", seconds))
    extractor = CommitTripletExtractor(CommitConfig(lifecycle=(0.0, 1.0), triplets_per_repo=20, max_files=20))
    triplets, seconds = timed(lambda: extractor(REPO_ROOT, "loopcoder"))
    rows.append(("commit triplets (this repository)", len(triplets), "samples", seconds))
    documents, seconds_tokenize = timed(lambda: [tokenize_text(tokenizer, f["content"], "file") for f in files])
    (packed, stats), seconds_pack = timed(
        lambda: pack(documents, PackingConfig(seq_len=4096, split_long_documents=True), 0)
    )
    tokens = sum(stats.tokens.values())
    rows.append(("tokenise + pack (4,096-token rows)", tokens, "tokens", seconds_tokenize + seconds_pack))
    print(f"{len(files)} source files, {mb:.1f} MB\n")
    print("| generator | count | unit | seconds | per second |\n|---|---|---|---|---|")
    for name, count, unit, seconds in rows:
        print(f"| {name} | {count:,} | {unit} | {seconds:.2f} | {count / seconds:,.0f} |")


if __name__ == "__main__":
    main()
