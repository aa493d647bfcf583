"""Decontamination against benchmark data: exact substrings and 13-gram overlap.

Two tests, as bigcode and NeMo Curator run them:

* `benchmark_substring`: a benchmark text (stripped, at least `min_substring_chars` long) occurs in
  the file, case-insensitively. A problem's texts are its fields (HumanEval: `prompt` and
  `canonical_solution`); an infilling middle counts only in a file that shares n-grams with the
  rest of its problem, since one line of a solution alone is ordinary code;
* `benchmark_ngram`: the file shares at least `min_matching_ngrams` distinct word 13-grams with
  one benchmark problem (all of them when the problem has fewer), and at least
  `min_ngram_fraction` of that problem's n-grams (a number-word table such as
  "two 2 three 3 ... nine 9" is in HumanEval/19 and in ordinary code). N-grams that occur in more
  than `max_benchmark_df` problems of a benchmark are boilerplate (shared imports, doctest
  scaffolding) and go to the stop-list, as do the n-grams of any `stoplist_texts`.

The benchmarks come from the one registry (`pipelines/steps/benchmarks.py`: HumanEval and its infilling
variants built in, any file or Hub dataset in its own format), which SFT decontamination
(`samples/sft_dedup.py`) and RL mining (`rl/mining.py`) use too. Hits are counted per benchmark in
`stats.extra` (`substring:humaneval`, `ngram:humaneval`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loopcoder.pipelines.steps.benchmarks import BenchmarkProblem, benchmark_specs, load_benchmark
from loopcoder.pipelines.steps.filters import Doc, Step

_WORD = re.compile(r"[a-z0-9_]+")
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
SUBSTRING = "benchmark_substring"
NGRAM = "benchmark_ngram"


@dataclass
class DecontaminationConfig:
    benchmarks: list[Any] = field(
        default_factory=lambda: ["humaneval"]
    )  # built-in names or {name, path, format|fields}
    ngram: int = 13
    min_matching_ngrams: int = 3
    min_ngram_fraction: float = 0.1
    max_benchmark_df: int = 2
    min_substring_chars: int = 50
    stoplist_texts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        benchmark_specs(self.benchmarks)


@dataclass(frozen=True)
class BenchmarkHit:
    reason: str  # SUBSTRING or NGRAM
    benchmark: str
    problem: str  # the problem's key: its task id, or the HumanEval task an infilling task derives from


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
    """Drops files containing benchmark texts or sharing their 13-grams.

    Reasons: `benchmark_substring`, `benchmark_ngram`.
    """

    name = "decontamination"

    def __init__(self, config: DecontaminationConfig | None = None, **overrides: Any):
        super().__init__()
        self.config = config or DecontaminationConfig(**overrides)
        self.vocab: dict[str, int] = {}
        self.problems: list[BenchmarkProblem] = []
        # n-gram hash -> numbers of the problems holding it, after the stop-list
        self.ngram_owners: dict[int, list[int]] = {}
        self.problem_ngrams: list[int] = []
        # lowered texts too short to have n-grams of their own: tested on every file
        self.short_substrings: list[tuple[str, int]] = []
        # lowered texts per problem: tested on files sharing n-grams with the problem
        self.substrings: list[list[str]] = []
        stop = set()
        for text in self.config.stoplist_texts:
            stop.update(self._hashes(text, grow_vocab=True).tolist())
        for spec in benchmark_specs(self.config.benchmarks):
            self._add_benchmark(load_benchmark(spec), stop)
        self._ngram_array = np.array(sorted(self.ngram_owners), dtype=np.uint64)

    def _hashes(self, text: str, grow_vocab: bool) -> np.ndarray:
        tokens = _WORD.findall(text.lower())
        if grow_vocab:
            ids = [self.vocab.setdefault(t, len(self.vocab)) for t in tokens]
        else:
            ids = [self.vocab.get(t, -1) for t in tokens]
        return _window_hashes(np.array(ids, dtype=np.int64), self.config.ngram)

    def _add_benchmark(self, problems: list[BenchmarkProblem], stop: set[int]) -> None:
        per_problem = [
            set().union(*(self._hashes(program, grow_vocab=True).tolist() for program in problem.programs))
            for problem in problems
        ]
        df: dict[int, int] = {}
        for grams in per_problem:
            for g in grams:
                df[g] = df.get(g, 0) + 1
        for problem, grams in zip(problems, per_problem, strict=True):
            number = len(self.problems)
            self.problems.append(problem)
            kept = [g for g in grams if g not in stop and df[g] <= self.config.max_benchmark_df]
            for g in kept:
                self.ngram_owners.setdefault(g, []).append(number)
            self.problem_ngrams.append(len(kept))
            texts: list[str] = []
            seen: set[str] = set()
            standalone = [(text, True) for text in problem.units] + [(text, False) for text in problem.targets]
            for text, alone in standalone:
                text = text.strip().lower()
                if len(text) < self.config.min_substring_chars or text in seen:
                    continue
                seen.add(text)
                if alone and len(_WORD.findall(text)) < self.config.ngram + 2:
                    self.short_substrings.append((text, number))
                else:
                    texts.append(text)
            self.substrings.append(texts)

    def match(self, content: str) -> BenchmarkHit | None:
        """The first benchmark problem the text holds (substring first, then n-grams), or None."""
        lowered = content.lower()
        tokens = _WORD.findall(lowered)
        ids = np.fromiter((self.vocab.get(t, -1) for t in tokens), dtype=np.int64, count=len(tokens))
        hashes = _window_hashes(ids, self.config.ngram)
        hits = np.unique(hashes[np.isin(hashes, self._ngram_array)]) if len(hashes) else hashes
        per_problem: dict[int, int] = {}
        for g in hits.tolist():
            for owner in self.ngram_owners[g]:
                per_problem[owner] = per_problem.get(owner, 0) + 1
        # A long benchmark string inside the file implies shared n-grams, so only problems with a hit
        # (and strings too short to have n-grams of their own) need the substring test.
        for text, number in self.short_substrings:
            if text in lowered:
                return self._hit(SUBSTRING, number)
        for number in sorted(per_problem):
            if any(text in lowered for text in self.substrings[number]):
                return self._hit(SUBSTRING, number)
        for number, count in sorted(per_problem.items()):
            total = self.problem_ngrams[number]
            needed = max(min(self.config.min_matching_ngrams, total), self.config.min_ngram_fraction * total)
            if total and count >= needed:
                return self._hit(NGRAM, number)
        return None

    def _hit(self, reason: str, number: int) -> BenchmarkHit:
        problem = self.problems[number]
        return BenchmarkHit(reason, problem.benchmark, problem.key)

    def apply(self, doc: Doc) -> str | None:
        hit = self.match(doc["content"])
        if hit is None:
            return None
        self.stats.count(f"{'substring' if hit.reason == SUBSTRING else 'ngram'}:{hit.benchmark}")
        return hit.reason
