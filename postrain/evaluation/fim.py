"""Infilling: exact match (EM) and edit similarity (ES) of generated FIM middles, per language and split kind.

    from loopcoder.postrain.evaluation.fim import load_fim_samples, evaluate_fim
    samples = load_fim_samples("data/heldout_fim")          # fim_sample / repo_fim_sample / source_file shards
    result = evaluate_fim(samples, generator)
    result.summary["overall"]["em"], result.summary["by_split_kind"]["line"]["es"]

Samples come from the data pipelines: `fim_sample` shards (file level), `repo_fim_sample` shards
(repository level: context files, then the target), or source-file shards (`source_file`,
`filtered_file`), from which `FimSplitter` cuts one line or AST-node middle per file (seed `seed`,
PSM/SPM as configured). The prompt is the sample's text up to and including `<|fim_middle|>`, so the
format is exactly the training one, and the model writes the middle until `<|im_end|>` (or another
document end). A single-line middle (no line break before its end) stops at the first line break, as
in CrossCodeEval's line-level task.

EM and ES compare the normalised prediction and middle (`metrics.normalize`). Results are grouped by
`level` (`file` / `repo`), `language`, `split_kind` (`char`, `line`, `ast`) and `lines` (`single` /
`multi`).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from loopcoder.pipelines.samples.fim import format_fim
from loopcoder.schemas.tokens import ENDOFTEXT, FILE_SEP, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, IM_END

from .generation import Generator
from .metrics import edit_similarity, exact_match

logger = logging.getLogger(__name__)

GROUPS = ("level", "language", "split_kind", "lines")
SAMPLE_COLUMNS = ("id", "language", "split_kind", "mode", "prefix", "middle", "suffix", "text")


@dataclass
class FimResult:
    summary: dict
    rows: list[dict] = field(default_factory=list)


def is_single_line(middle: str) -> bool:
    return "\n" not in middle.rstrip("\n")


def fim_prompt(
    text: str,
    prefix: str | None = None,
    suffix: str | None = None,
    mode: str = "psm",
    max_prefix_chars: int | None = None,
    max_suffix_chars: int | None = None,
    max_context_chars: int | None = None,
) -> str:
    """The sample's text up to and including `<|fim_middle|>` (PSM, SPM and repository layouts alike).

    With the sample's `prefix`, `suffix` and `mode`, the target is re-rendered with the prefix cut to its
    last `max_prefix_chars` and the suffix to its first `max_suffix_chars` characters, and the repository
    context before the target (if any) to its last `max_context_chars`: the format stays the training one
    while the prompt fits a small model's context.
    """
    index = text.find(FIM_MIDDLE)
    if index == -1:
        raise ValueError("FIM sample text has no <|fim_middle|> token")
    if prefix is None or suffix is None:
        return text[: index + len(FIM_MIDDLE)]
    starts = [i for i in (text.find(FIM_PREFIX), text.find(FIM_SUFFIX)) if i != -1]
    context = text[: min(starts)]
    if max_context_chars is not None and len(context) > max_context_chars:
        context = context[len(context) - max_context_chars :] if max_context_chars else ""
    if max_prefix_chars is not None:
        prefix = prefix[len(prefix) - max_prefix_chars :] if max_prefix_chars < len(prefix) else prefix
    if max_suffix_chars is not None:
        suffix = suffix[:max_suffix_chars]
    target = format_fim(prefix, "", suffix, mode)
    return context + target[: target.index(FIM_MIDDLE) + len(FIM_MIDDLE)]


def _shard_paths(data: str | Path) -> list[Path]:
    data = Path(data)
    paths = [data] if data.is_file() else sorted(p for p in data.rglob("*.parquet") if not p.name.startswith("."))
    if not paths:
        raise FileNotFoundError(f"no *.parquet shards under {data}")
    return paths


def load_fim_samples(
    data: str | Path,
    max_samples: int | None = None,
    split_kinds: Sequence[str] = ("line", "ast"),
    seed: int = 0,
    max_prefix_chars: int | None = 4000,
    max_suffix_chars: int | None = 2000,
    max_context_chars: int | None = 8000,
) -> list[dict]:
    """FIM samples (`id`, `level`, `language`, `split_kind`, `middle`, `prompt`) from shards under `data`.

    `split_kinds` keeps only those kinds (empty = all); for source files it is what the splitter cuts.
    The prompt keeps the last `max_prefix_chars` of the prefix, the first `max_suffix_chars` of the suffix and,
    for repository samples, the last `max_context_chars` of the context files (see `fim_prompt`); None = all.
    """
    samples: list[dict] = []
    splitter = None
    for path in _shard_paths(data):
        names = set(pq.ParquetFile(path).schema_arrow.names)
        table = pq.read_table(path)
        if {"middle", "text", "split_kind"} <= names:
            level = "repo" if "target_path" in names else "file"
            records = table.select([c for c in SAMPLE_COLUMNS if c in names]).to_pylist()
        elif "content" in names:
            if splitter is None:
                from loopcoder.pipelines.samples.fim import FimConfig, FimSplitter

                kinds = list(split_kinds) or ["line", "ast"]
                weights = {k: 1.0 for k in kinds}
                splitter = FimSplitter(FimConfig(fim_rate=1.0, split_kind_weights=weights, seed=seed))
            level = "file"
            records = []
            for doc in table.to_pylist():
                if "kept" in doc and not doc["kept"]:
                    continue
                sample = splitter(doc)
                if sample is not None:
                    records.append(sample)
        else:
            raise ValueError(f"{path} holds neither FIM samples nor source files (columns: {sorted(names)})")
        for record in records:
            if split_kinds and record["split_kind"] not in split_kinds:
                continue
            if not record["middle"].strip():
                continue
            prompt = fim_prompt(
                record["text"],
                record.get("prefix"),
                record.get("suffix"),
                record.get("mode") or "psm",
                max_prefix_chars,
                max_suffix_chars,
                max_context_chars,
            )
            samples.append(
                {
                    "id": record["id"],
                    "level": level,
                    "language": record["language"],
                    "split_kind": record["split_kind"],
                    "middle": record["middle"],
                    "prompt": prompt,
                }
            )
            if max_samples is not None and len(samples) >= max_samples:
                return samples
    return samples


def aggregate(rows: Sequence[dict], groups: Sequence[str] = GROUPS) -> dict:
    """{"overall": {count, em, es}, "by_<group>": {value: {count, em, es}}} over per-sample rows."""

    def mean(selected: list[dict]) -> dict:
        count = len(selected)
        return {
            "count": count,
            "em": sum(r["em"] for r in selected) / count if count else float("nan"),
            "es": sum(r["es"] for r in selected) / count if count else float("nan"),
        }

    summary = {"overall": mean(list(rows))}
    for group in groups:
        buckets: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            buckets[str(row[group])].append(row)
        summary[f"by_{group}"] = {key: mean(buckets[key]) for key in sorted(buckets)}
    return summary


def evaluate_fim(
    samples: Sequence[dict], generator: Generator, max_new_tokens: int = 128, max_new_tokens_single_line: int = 48
) -> FimResult:
    """Greedy middles for every sample, scored with EM and ES; single-line middles stop at the first line break."""
    if not samples:
        raise ValueError("no FIM samples to evaluate")
    ends = [IM_END, ENDOFTEXT, FILE_SEP]
    rows = []
    started = time.perf_counter()
    for single in (True, False):
        part = [s for s in samples if is_single_line(s["middle"]) == single]
        if not part:
            continue
        stop = [*ends, "\n"] if single else ends
        budget = max_new_tokens_single_line if single else max_new_tokens
        predictions = generator.generate(
            [s["prompt"] for s in part], n=1, temperature=0.0, max_new_tokens=budget, stop=stop
        )
        for sample, (prediction,) in zip(part, predictions, strict=True):
            rows.append(
                {
                    "id": sample["id"],
                    "level": sample["level"],
                    "language": sample["language"],
                    "split_kind": sample["split_kind"],
                    "lines": "single" if single else "multi",
                    "em": exact_match(prediction, sample["middle"]),
                    "es": edit_similarity(prediction, sample["middle"]),
                    "prediction": prediction,
                    "middle": sample["middle"],
                }
            )
    summary = aggregate(rows)
    summary["generation_seconds"] = round(time.perf_counter() - started, 3)
    logger.info("FIM: %d samples, EM %.3f, ES %.3f", len(rows), summary["overall"]["em"], summary["overall"]["es"])
    return FimResult(summary, rows)


__all__ = ["FimResult", "aggregate", "evaluate_fim", "fim_prompt", "is_single_line", "load_fim_samples"]
