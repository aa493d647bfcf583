"""SFT dedup (exact and MinHash near-duplicates) and decontamination against benchmarks with MinHash LSH.

**Dedup** runs on the distributed stages of `dedup/stages.py`, the ones the clean job uses, over
conversations instead of files. A conversation's text is its turns, `role:` then content, each
content stripped; the exact key is `runner.normalised_sha256` of that text (CRLF -> LF, trailing
spaces dropped per line, case kept) and the near-duplicate signature is the MinHash of its
shingles (`dedup/minhash.py`). Per task (any batch of conversations with a task number),
`write_dedup_inputs` writes the files the stages read under a work folder:

    WORK/documents/task-N.parquet   content (the conversation text), for exact Jaccard verification
    WORK/keys/task-N.parquet        task, row, licence_rank, id, content_sha256, minhash
    WORK/bands/task-N.parquet       row, band, band_hash

then `dedup.run_dedup(WORK, exact=True, minhash=MinhashConfig(...), partitions)` runs once over
all tasks, and `drop_duplicates(records, WORK, N)` keeps a task's survivors. No conversation has a
licence, so of a group the conversation with the smallest id stays, whatever the partitioning. Reasons: `exact_duplicate`, `near_duplicate`.

**Decontamination** (`SftDecontaminator`) removes a conversation that holds a benchmark problem.
Each problem of the benchmark registry (`steps/benchmarks.py`) gives its reference units: each of its
fields (HumanEval: `prompt`, `canonical_solution`; an infilling task: its prefix, not the middle or
suffix alone, which can be one ordinary line) and each whole row put back together (the whole
reference function), those with at least `min_reference_tokens` tokens. Their MinHash band hashes
form an in-memory LSH index (`bands` x `rows`, tuned for recall at low Jaccard: a pair at 0.25 is a candidate with
probability 0.9997 under 128 x 2). A conversation is queried with every turn, every fenced code
block, the whole conversation, and windows of `window_tokens` tokens (stride half a window)
over the longer of those, so a solution buried in a long answer still meets a unit of its own
size. A candidate is confirmed when at least `containment` of the reference's distinct shingles
occur in the queried text: renaming a variable or adding a comment breaks only the shingles
around the edit. Removals are counted per benchmark (`contamination:<benchmark>`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from loopcoder.pipelines.clean.runner import normalised_sha256
from loopcoder.pipelines.dedup.minhash import MinhashConfig, MinhashSignatures, shingle_hashes, tokens
from loopcoder.pipelines.dedup.stages import (
    EXACT_DUPLICATE,
    NEAR_DUPLICATE,
    read_annotations,
    task_dedup_tables,
)
from loopcoder.pipelines.io import filesystem as fs
from loopcoder.pipelines.io.filesystem import atomic_write_parquet
from loopcoder.pipelines.samples.conversations import fenced_code_blocks
from loopcoder.pipelines.steps.benchmarks import benchmark_specs, load_benchmark

CONTAMINATION = "contamination"


def conversation_text(record: dict[str, Any]) -> str:
    """The text that dedup compares: each turn as `role:` and its stripped content."""
    return "\n\n".join(f"{m['role']}:\n{m['content'].strip()}" for m in record["messages"])


def dedup_tables(records: list[dict[str, Any]], task: int, signer: MinhashSignatures | None) -> dict[str, pa.Table]:
    """The `documents`, `keys` and (with a signer) `bands` tables of one task, row i = records[i]."""
    texts = [conversation_text(r) for r in records]
    band_hashes = []
    for text in texts:
        token_list = tokens(text) if signer is not None else []
        too_short = signer is None or len(token_list) < signer.config.min_tokens  # exact dedup only
        band_hashes.append(None if too_short else signer.band_hashes(signer.signature_from_tokens(token_list)))
    tables = task_dedup_tables(
        task,
        list(range(len(records))),
        [None] * len(records),
        [r["id"] for r in records],
        [normalised_sha256(t) for t in texts],
        band_hashes,
    )
    return {"documents": pa.table({"content": pa.array(texts, pa.large_string())})} | tables


def write_dedup_inputs(
    work: str | Path, task: int, records: list[dict[str, Any]], signer: MinhashSignatures | None
) -> None:
    """Writes one task's dedup inputs under `work` (layout in the module docstring), atomically."""
    for folder, table in dedup_tables(records, task, signer).items():
        if table.num_rows or folder == "documents":
            atomic_write_parquet(table, fs.join(work, folder, f"task-{task:06d}.parquet"))


def drop_duplicates(
    records: list[dict[str, Any]], work: str | Path, task: int, removed: Counter | None = None
) -> list[dict[str, Any]]:
    """A task's records minus those `run_dedup` marked; `removed` counts them by reason."""
    notes = read_annotations(str(work), task, len(records))
    removed = removed if removed is not None else Counter()
    for reason, flags in ((EXACT_DUPLICATE, notes.exact_duplicate), (NEAR_DUPLICATE, notes.near_duplicate)):
        if count := int((flags & ~notes.exact_duplicate if reason == NEAR_DUPLICATE else flags).sum()):
            removed[reason] += count
    dropped = notes.exact_duplicate | notes.near_duplicate
    return [record for record, drop in zip(records, dropped.tolist(), strict=True) if not drop]


@dataclass
class SftDecontaminationConfig:
    """Benchmarks as in `DecontaminationConfig` (built-ins or `{name, path, format | fields}`), and the LSH knobs."""

    benchmarks: list[Any] = field(default_factory=lambda: ["humaneval"])
    ngram: int = 3
    num_perm: int = 256
    bands: int = 128
    rows: int = 2
    containment: float = 0.5
    min_reference_tokens: int = 12
    window_tokens: int = 256
    seed: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.containment <= 1.0:
            raise ValueError(f"containment must be in (0, 1], got {self.containment}")
        if self.window_tokens < 2 * self.ngram:
            raise ValueError(f"window_tokens must be at least 2 * ngram, got {self.window_tokens}")
        self.minhash()
        benchmark_specs(self.benchmarks)

    def minhash(self) -> MinhashConfig:
        return MinhashConfig(
            ngram=self.ngram, num_perm=self.num_perm, bands=self.bands, rows=self.rows, seed=self.seed,
            min_tokens=self.ngram, verify=True,
        )  # fmt: skip


class SftDecontaminator:
    """`__call__(records)` -> (records without benchmark content, removals by `contamination:<benchmark>`).

    Builds the benchmark index once; make one per worker (one per Ray worker process).
    """

    def __init__(self, config: SftDecontaminationConfig | None = None):
        self.config = config or SftDecontaminationConfig()
        self.signer = MinhashSignatures(self.config.minhash())
        self.references: list[tuple[str, str, np.ndarray]] = []  # (benchmark, problem key, shingle set)
        self.index: dict[int, list[int]] = {}
        for spec in benchmark_specs(self.config.benchmarks):
            for problem in load_benchmark(spec):
                for unit in dict.fromkeys([*problem.units, *problem.programs]):
                    self._add_reference(problem.benchmark, problem.key, unit)
        if not self.references:
            raise ValueError("the benchmarks hold no reference text long enough to match")

    def _add_reference(self, benchmark: str, problem: str, text: str) -> None:
        token_list = tokens(text)
        if len(token_list) < self.config.min_reference_tokens:
            return
        number = len(self.references)
        self.references.append((benchmark, problem, np.unique(shingle_hashes(token_list, self.config.ngram))))
        bands = self.signer.band_hashes(self.signer.signature_from_tokens(token_list))
        for value in bands.tolist():
            self.index.setdefault(value, []).append(number)

    def _queries(self, record: dict[str, Any]) -> list[list[bytes]]:
        texts = [m["content"] for m in record["messages"]]
        texts += [code for m in record["messages"] for _, code in fenced_code_blocks(m["content"])]
        texts.append("\n".join(m["content"] for m in record["messages"]))
        window, queries = self.config.window_tokens, []
        for text in dict.fromkeys(texts):
            token_list = tokens(text)
            if len(token_list) < self.config.ngram:
                continue
            queries.append(token_list)
            if len(token_list) > window:
                starts = list(range(0, len(token_list) - window, window // 2)) + [len(token_list) - window]
                queries += [token_list[start : start + window] for start in starts]
        return queries

    def match(self, record: dict[str, Any]) -> tuple[str, str] | None:
        """(benchmark, problem key) of the first reference the conversation holds, or None."""
        for token_list in self._queries(record):
            signature = self.signer.signature_from_tokens(token_list)
            candidates = sorted(
                {r for value in self.signer.band_hashes(signature).tolist() for r in self.index.get(value, ())}
            )
            if not candidates:
                continue
            shingles = np.unique(shingle_hashes(token_list, self.config.ngram))
            for number in candidates:
                benchmark, problem, reference = self.references[number]
                shared = len(np.intersect1d(reference, shingles, assume_unique=True))
                if shared >= self.config.containment * len(reference):
                    return benchmark, problem
        return None

    def __call__(self, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Counter]:
        kept, removed = [], Counter()
        for record in records:
            hit = self.match(record)
            if hit is None:
                kept.append(record)
            else:
                removed[f"{CONTAMINATION}:{hit[0]}"] += 1
        return kept, removed
