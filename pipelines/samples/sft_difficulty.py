"""Difficulty of an SFT conversation: a score in [0, 1] and a curriculum tier (`easy`, `medium`, `hard`).

The score is a weighted mean of features of the answer (the assistant turns), each mapped to
[0, 1] on a log scale between two anchors: `(log(1 + x) - log(1 + low)) / (log(1 + high) -
log(1 + low))`, clipped, so a feature at or below `low` adds 0 and at or above `high` adds 1.

| feature | what is counted | anchors (low, high) | weight |
|---|---|---|---|
| `answer_tokens` | tokens of the assistant turns (the tokenizer when given, else words and symbols) | 32, 1024 | 0.35 |
| `ast_nodes` | named tree-sitter nodes of the code in the answer | 20, 600 | 0.2 |
| `cyclomatic` | 1 + decision points of that code (branches, loops, handlers, cases, `and`/`or`, `&&`/`||`, conditional expressions): McCabe's number for one function, summed over several | 1, 15 | 0.3 |
| `files_touched` | files in a unified diff in the answer (`+++ ` headers) | 1, 6 | 0.15 |

The code in the answer is its fenced code blocks, or for a diff the added lines; it is parsed
with the grammar named by the block's info string (`python`, `py`, ...) or else the
conversation's `language`. A feature that does not apply (no code, no diff, no grammar) is left
out and the weights of the others are renormalised. A conversation file's own `difficulty`
(`keep_given`) is kept instead of the score.

Tier: `easy` below `thresholds[0]`, `hard` at or above `thresholds[1]`, `medium` between. The
samples job packs each tier into its own category `sft_<tier>` (`packed/sft_easy/`, ...), the
shard sets that a training config's curriculum phases mix (`jobs/sft/sample_tiny.yaml`).
`DifficultyStats` counts conversations per tier and kind, with each tier's mean features (why
they landed there); `calibrated_thresholds` gives thresholds that split a sample of scores into
chosen shares.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loopcoder.pipelines.io.languages import EXTENSION_LANGUAGES
from loopcoder.pipelines.samples.conversations import fenced_code_blocks
from loopcoder.pipelines.steps.ast_validation import DEFAULT_GRAMMARS

TIERS = ("easy", "medium", "hard")
FEATURES = ("answer_tokens", "ast_nodes", "cyclomatic", "files_touched")
_WORDS_AND_SYMBOLS = re.compile(r"\w+|[^\w\s]")
DECISION_NODES = frozenset(
    {
        "if_statement", "elif_clause", "if_expression", "if_let_expression", "else_if_clause",
        "for_statement", "for_in_statement", "enhanced_for_statement", "for_expression", "for_in_clause",
        "if_clause", "while_statement", "while_expression", "do_statement", "loop_expression",
        "except_clause", "catch_clause", "case_clause", "switch_case", "switch_label", "expression_case",
        "type_case", "match_arm", "conditional_expression", "ternary_expression", "boolean_operator",
        "guard", "case",
    }
)  # fmt: skip
LOGICAL_OPERATORS = frozenset({"&&", "||", "and", "or", "??"})
FENCE_ALIASES = {"py": "Python", "python3": "Python", "js": "JavaScript", "ts": "TypeScript", "golang": "Go",
                 "rs": "Rust", "cpp": "C++", "c++": "C++", "csharp": "C#", "cs": "C#"}  # fmt: skip
_LANGUAGE_NAMES = {name.lower(): name for name in DEFAULT_GRAMMARS}


@dataclass
class DifficultyConfig:
    """Anchors, weights and tier thresholds of the scorer (defaults in the module docstring)."""

    anchors: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {
            "answer_tokens": (32, 1024),
            "ast_nodes": (20, 600),
            "cyclomatic": (1, 15),
            "files_touched": (1, 6),
        }
    )
    weights: dict[str, float] = field(
        default_factory=lambda: {"answer_tokens": 0.35, "ast_nodes": 0.2, "cyclomatic": 0.3, "files_touched": 0.15}
    )
    thresholds: tuple[float, float] = (0.25, 0.5)
    keep_given: bool = True
    max_code_chars: int = 100_000  # longer code is not parsed (its AST features are left out)

    def __post_init__(self) -> None:
        unknown = (set(self.anchors) | set(self.weights)) - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown difficulty feature(s) {sorted(unknown)}; known: {', '.join(FEATURES)}")
        if set(self.weights) - set(self.anchors):
            raise ValueError("every weighted feature needs anchors")
        for name, (low, high) in self.anchors.items():
            if not 0 <= low < high:
                raise ValueError(f"anchors of {name} must satisfy 0 <= low < high, got {(low, high)}")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"weights must be >= 0 and not all 0, got {self.weights}")
        low, high = self.thresholds
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"thresholds must satisfy 0 <= easy/medium <= medium/hard <= 1, got {self.thresholds}")
        self.thresholds = (float(low), float(high))


def tier_of(difficulty: float, thresholds: tuple[float, float]) -> str:
    if difficulty < thresholds[0]:
        return "easy"
    return "medium" if difficulty < thresholds[1] else "hard"


def tier_category(tier: str) -> str:
    """The packed category (and shard-set directory) of a tier: `sft_easy`, `sft_medium`, `sft_hard`."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; known: {', '.join(TIERS)}")
    return f"sft_{tier}"


def calibrated_thresholds(
    scores: list[float], shares: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
) -> tuple[float, float]:
    """Thresholds that put about `shares` of `scores` (a sample) in easy, medium and hard."""
    if not scores:
        raise ValueError("no scores to calibrate on")
    total = sum(shares)
    first, second = np.quantile(
        np.asarray(scores, dtype=np.float64), [shares[0] / total, (shares[0] + shares[1]) / total]
    )
    return float(first), float(second)


def _language_of_fence(info: str, fallback: str | None) -> str | None:
    if info:
        if info in FENCE_ALIASES:
            return FENCE_ALIASES[info]
        if info in _LANGUAGE_NAMES:
            return _LANGUAGE_NAMES[info]
        if f".{info}" in EXTENSION_LANGUAGES:
            return EXTENSION_LANGUAGES[f".{info}"]
        if info not in ("diff", "patch"):
            return None
    return fallback


def _diff_parts(diff: str) -> tuple[int, str, str | None]:
    """(files in the diff, its added lines, the language of its first file)."""
    paths = [line[4:].strip() for line in diff.split("\n") if line.startswith("+++ ")]
    added = "\n".join(line[1:] for line in diff.split("\n") if line.startswith("+") and not line.startswith("+++ "))
    language = None
    for path in paths:
        suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
        language = language or EXTENSION_LANGUAGES.get(suffix)
    return len(paths), added, language


class DifficultyScorer:
    """Scores records in batches; `count_tokens(texts) -> counts` (e.g. `repo_fim.token_counter(tokenizer)`).

    Holds one tree-sitter parser per grammar: make one per worker (one per Ray worker process).
    """

    def __init__(
        self, config: DifficultyConfig | None = None, count_tokens: Callable[[list[str]], list[int]] | None = None
    ):
        self.config = config or DifficultyConfig()
        self.count_tokens = count_tokens or (lambda texts: [len(_WORDS_AND_SYMBOLS.findall(t)) for t in texts])
        self._parsers: dict[str, Any] = {}

    def _parser(self, grammar: str):
        if grammar not in self._parsers:
            from tree_sitter_language_pack import get_parser

            self._parsers[grammar] = get_parser(grammar)
        return self._parsers[grammar]

    def code_features(self, code: str, language: str | None) -> dict[str, float]:
        """`ast_nodes` and `cyclomatic` of one piece of code; empty when it cannot be parsed here."""
        grammar = DEFAULT_GRAMMARS.get(language or "")
        if grammar is None or not code.strip() or len(code) > self.config.max_code_chars:
            return {}
        tree = self._parser(grammar).parse(code.encode("utf-8"))
        nodes, decisions = 0, 0
        stack = [tree.root_node]
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            if not node.is_named:
                continue
            nodes += 1
            if node.type in DECISION_NODES:
                decisions += 1
            elif node.type == "binary_expression":
                operator = node.child_by_field_name("operator")
                if operator is not None and operator.type in LOGICAL_OPERATORS:
                    decisions += 1
        return {"ast_nodes": float(nodes), "cyclomatic": float(1 + decisions)}

    def features(self, record: dict[str, Any], answer_tokens: int) -> dict[str, float]:
        """The raw (unscaled) features of one conversation."""
        answer = "\n".join(m["content"] for m in record["messages"] if m["role"] == "assistant")
        features = {"answer_tokens": float(answer_tokens)}
        codes: list[tuple[str, str | None]] = []
        files = 0
        blocks = fenced_code_blocks(answer)
        if not blocks and answer.lstrip().startswith("diff --git"):
            blocks = [("diff", answer)]
        for info, code in blocks:
            if info in ("diff", "patch") or code.lstrip().startswith(("diff --git", "--- ")):
                touched, added, language = _diff_parts(code)
                files += touched
                codes.append((added, language or record.get("language")))
            else:
                codes.append((code, _language_of_fence(info, record.get("language"))))
        if files:
            features["files_touched"] = float(files)
        parsed = [self.code_features(code, language) for code, language in codes]
        parsed = [p for p in parsed if p]
        if parsed:
            features["ast_nodes"] = sum(p["ast_nodes"] for p in parsed)
            # several functions: their decision points add up (McCabe's number of the whole answer)
            features["cyclomatic"] = 1 + sum(p["cyclomatic"] - 1 for p in parsed)
        return features

    def score(self, features: dict[str, float]) -> float:
        total, weight = 0.0, 0.0
        for name, value in features.items():
            w = self.config.weights.get(name, 0.0)
            if w <= 0:
                continue
            low, high = self.config.anchors[name]
            scaled = (math.log1p(value) - math.log1p(low)) / (math.log1p(high) - math.log1p(low))
            total += w * min(max(scaled, 0.0), 1.0)
            weight += w
        return total / weight if weight else 0.0

    def __call__(self, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, float]]]:
        """Copies of `records` with `difficulty` and `difficulty_tier` set, and each one's features."""
        answers = ["\n".join(m["content"] for m in r["messages"] if m["role"] == "assistant") for r in records]
        counts = self.count_tokens(answers) if answers else []
        scored, all_features = [], []
        for record, count in zip(records, counts, strict=True):
            features = self.features(record, count)
            given = record.get("difficulty")
            difficulty = float(given) if given is not None and self.config.keep_given else self.score(features)
            scored.append(
                record | {"difficulty": difficulty, "difficulty_tier": tier_of(difficulty, self.config.thresholds)}
            )
            all_features.append(features)
        return scored, all_features


@dataclass
class DifficultyStats:
    """Conversations per tier and per (tier, kind), and the sums of each tier's features; mergeable across tasks."""

    tiers: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)  # "tier/kind" -> conversations
    feature_sums: dict[str, Counter] = field(default_factory=dict)  # tier -> feature -> sum
    feature_counts: dict[str, Counter] = field(default_factory=dict)  # tier -> feature -> conversations having it

    def add(self, records: list[dict[str, Any]], features: list[dict[str, float]]) -> None:
        for record, values in zip(records, features, strict=True):
            tier = record["difficulty_tier"]
            self.tiers[tier] += 1
            self.kinds[f"{tier}/{record.get('kind') or 'unknown'}"] += 1
            for name, value in values.items():
                self.feature_sums.setdefault(tier, Counter())[name] += value
                self.feature_counts.setdefault(tier, Counter())[name] += 1

    def merge(self, other: DifficultyStats) -> DifficultyStats:
        merged = DifficultyStats(self.tiers + other.tiers, self.kinds + other.kinds)
        for source in (self, other):
            for tier, sums in source.feature_sums.items():
                merged.feature_sums.setdefault(tier, Counter()).update(sums)
                merged.feature_counts.setdefault(tier, Counter()).update(source.feature_counts[tier])
        return merged

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form that `from_dict` reads back (per-task summaries are merged from it)."""
        return {
            "tiers": dict(self.tiers),
            "kinds": dict(self.kinds),
            "feature_sums": {tier: dict(sums) for tier, sums in self.feature_sums.items()},
            "feature_counts": {tier: dict(counts) for tier, counts in self.feature_counts.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DifficultyStats:
        return cls(
            Counter(data["tiers"]),
            Counter(data["kinds"]),
            {tier: Counter(sums) for tier, sums in data["feature_sums"].items()},
            {tier: Counter(counts) for tier, counts in data["feature_counts"].items()},
        )

    def report(self) -> dict[str, Any]:
        """Per tier: conversations, by kind, and the mean of each feature over the conversations having it."""
        report = {}
        for tier in TIERS:
            sums, counts = self.feature_sums.get(tier, Counter()), self.feature_counts.get(tier, Counter())
            report[tier] = {
                "conversations": self.tiers.get(tier, 0),
                "by_kind": {k.split("/", 1)[1]: n for k, n in sorted(self.kinds.items()) if k.startswith(f"{tier}/")},
                "mean_features": {name: round(sums[name] / counts[name], 2) for name in FEATURES if counts.get(name)},
            }
        return report
