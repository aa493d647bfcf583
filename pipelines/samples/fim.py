"""File-level fill-in-the-middle samples: character, line and syntax-based (tree-sitter) splits.

    PSM: <|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>{middle}<|im_end|>
    SPM: <|fim_suffix|>{suffix}<|fim_prefix|>{prefix}<|fim_middle|>{middle}<|im_end|>

SPM follows Bavarian et al. (2022, "Efficient Training of Language Models to Fill in the Middle",
arXiv 2207.14255): suffix, then prefix, then middle, each special token once. Every sample
satisfies `prefix + middle + suffix == content`.

Split kinds:
* `char`: two uniform cut points over code points (a Python `str` index never falls inside a
  UTF-8 character);
* `line`: a span of 1..`max_span_lines` whole lines;
* `ast`: one whole tree-sitter node at the expression, statement, function, class or block
  level, chosen by level weights (and optional per-node-type weights), whose length lies in
  `middle_chars`.

Every choice draws from a generator seeded by (`seed`, document id), so a document's sample does
not depend on how the corpus is partitioned or in which order it is read.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from loopcoder.pipelines.samples.seeding import document_rng
from loopcoder.pipelines.steps.ast_validation import DEFAULT_GRAMMARS
from loopcoder.schemas.tokens import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, IM_END, SPECIAL_TOKENS

PSM, SPM = "psm", "spm"
SPLIT_KINDS = ("char", "line", "ast")
AST_LEVELS = ("expression", "statement", "function", "class", "block")


@dataclass
class FimConfig:
    """Knobs of file-level FIM (defaults from SantaCoder/StarCoder and ExecRepoBench, see docs/fim.md)."""

    fim_rate: float = 0.5  # share of documents turned into FIM samples; the rest stay left-to-right
    spm_rate: float = 0.5  # share of FIM samples in SPM order
    split_kind_weights: dict[str, float] = field(default_factory=lambda: {"char": 0.4, "line": 0.3, "ast": 0.3})
    max_span_lines: int = 15
    middle_chars: tuple[int, int] = (10, 512)  # length range of an AST middle, in characters
    level_weights: dict[str, float] = field(
        default_factory=lambda: {"expression": 0.3, "statement": 0.4, "function": 0.2, "class": 0.05, "block": 0.05}
    )
    node_type_weights: dict[str, float] = field(default_factory=dict)  # overrides within a level, e.g. {"call": 3}
    grammars: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_GRAMMARS))
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.split_kind_weights) - set(SPLIT_KINDS)
        if unknown:
            raise ValueError(f"unknown split kind(s) {sorted(unknown)}; known: {', '.join(SPLIT_KINDS)}")
        unknown = set(self.level_weights) - set(AST_LEVELS)
        if unknown:
            raise ValueError(f"unknown AST level(s) {sorted(unknown)}; known: {', '.join(AST_LEVELS)}")
        if not 0.0 <= self.fim_rate <= 1.0 or not 0.0 <= self.spm_rate <= 1.0:
            raise ValueError("fim_rate and spm_rate must lie in [0, 1]")
        self.middle_chars = tuple(self.middle_chars)


def format_fim(prefix: str, middle: str, suffix: str, mode: str = PSM) -> str:
    if mode == PSM:
        return f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}{middle}{IM_END}"
    if mode == SPM:
        return f"{FIM_SUFFIX}{suffix}{FIM_PREFIX}{prefix}{FIM_MIDDLE}{middle}{IM_END}"
    raise ValueError(f"unknown FIM mode '{mode}'; known: {PSM}, {SPM}")


def ast_level(node_type: str) -> str | None:
    """The FIM level of a tree-sitter node type, from the naming conventions grammars share."""
    if node_type in ("block", "compound_statement", "statement_block", "declaration_list", "field_declaration_list"):
        return "block"
    if any(word in node_type for word in ("class", "struct_item", "impl_item", "interface_declaration", "enum_")):
        if node_type.endswith(("definition", "declaration", "specifier", "_item")):
            return "class"
    if any(word in node_type for word in ("function", "method")):
        if node_type.endswith(("definition", "declaration", "_item")) and "call" not in node_type:
            return "function"
    if node_type.endswith("_statement") or node_type in ("expression_statement", "return_statement"):
        return "statement"
    if node_type.endswith(("_expression", "_operator")) or node_type in (
        "call", "attribute", "subscript", "list", "dictionary", "tuple", "lambda", "argument_list",
        "arguments", "conditional_expression", "list_comprehension",
    ):  # fmt: skip
        return "expression"
    return None


class FimSplitter:
    """Turns source documents into FIM samples (or leaves them left-to-right, at `1 - fim_rate`).

    `__call__(doc)` returns a `fim_sample` record, or None for a left-to-right document; `reason`
    on the instance names why the last document was not split when it could not be (too short,
    holds a special token, no AST node in range). Parsers are created once per instance.
    """

    def __init__(self, config: FimConfig | None = None):
        self.config = config or FimConfig()
        self._parsers: dict[str, Any] = {}
        self.last_skip_reason: str | None = None

    def _parser(self, grammar: str):
        if grammar not in self._parsers:
            from tree_sitter_language_pack import get_parser

            self._parsers[grammar] = get_parser(grammar)
        return self._parsers[grammar]

    def __call__(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        self.last_skip_reason = None
        content = doc["content"]
        rng = document_rng(self.config.seed, doc["id"], salt="fim")
        if rng.random() >= self.config.fim_rate:
            return None
        if any(token in content for token in SPECIAL_TOKENS):
            self.last_skip_reason = "contains_special_token"
            return None
        if len(content) < 2:
            self.last_skip_reason = "too_short"
            return None
        mode = SPM if rng.random() < self.config.spm_rate else PSM
        kinds = [k for k, w in self.config.split_kind_weights.items() if w > 0]
        kind = rng.choices(kinds, weights=[self.config.split_kind_weights[k] for k in kinds])[0]
        node_type = None
        split = None
        if kind == "ast":
            split = self._ast_split(doc, rng)
            if split is None:  # no grammar or no node in range: fall back to a line span
                kind = "line"
            else:
                start, end, node_type = split
        if kind == "line":
            start, end = self._line_split(content, rng)
        elif kind == "char":
            start, end = sorted(rng.sample(range(len(content) + 1), 2))
        prefix, middle, suffix = content[:start], content[start:end], content[end:]
        return {
            "id": f"{doc['id']}-fim{self.config.seed}",
            "source_id": doc["id"],
            "repo": doc["repo"],
            "path": doc["path"],
            "language": doc["language"],
            "mode": mode,
            "split_kind": kind,
            "node_type": node_type,
            "prefix": prefix,
            "middle": middle,
            "suffix": suffix,
            "text": format_fim(prefix, middle, suffix, mode),
        }

    def _line_split(self, content: str, rng: random.Random) -> tuple[int, int]:
        lines = content.splitlines(keepends=True)
        first = rng.randrange(len(lines))
        span = rng.randint(1, min(self.config.max_span_lines, len(lines) - first))
        start = sum(len(line) for line in lines[:first])
        return start, start + sum(len(line) for line in lines[first : first + span])

    def _ast_split(self, doc: dict[str, Any], rng: random.Random) -> tuple[int, int, str] | None:
        grammar = self.config.grammars.get(doc["language"])
        if grammar is None:
            return None
        if grammar == "typescript" and doc["path"].endswith(".tsx"):
            grammar = "tsx"
        content = doc["content"]
        data = content.encode("utf-8")
        tree = self._parser(grammar).parse(data)
        low, high = self.config.middle_chars
        by_level: dict[str, list[tuple[int, int, str]]] = {}
        stack = [tree.root_node]
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            if not node.is_named or node.has_error or node.is_missing:
                continue
            level = ast_level(node.type)
            if level is None or self.config.level_weights.get(level, 0) <= 0:
                continue
            if not low <= node.end_byte - node.start_byte <= 4 * high:  # cheap byte bound before decoding
                continue
            by_level.setdefault(level, []).append((node.start_byte, node.end_byte, node.type))
        candidates: dict[str, list[tuple[int, int, str]]] = {}
        for level, nodes in by_level.items():
            in_range = []
            for start_byte, end_byte, node_type in nodes:
                length = len(data[start_byte:end_byte].decode("utf-8", "replace"))
                if low <= length <= high:
                    in_range.append((start_byte, end_byte, node_type))
            if in_range:
                candidates[level] = sorted(in_range)
        if not candidates:
            self.last_skip_reason = "no_ast_node_in_range"
            return None
        levels = sorted(candidates)
        level = rng.choices(levels, weights=[self.config.level_weights[lv] for lv in levels])[0]
        nodes = candidates[level]
        weights = [self.config.node_type_weights.get(node_type, 1.0) for _, _, node_type in nodes]
        start_byte, end_byte, node_type = rng.choices(nodes, weights=weights)[0]
        # byte offsets -> string indices (the file is valid UTF-8, node boundaries are character boundaries)
        start = len(data[:start_byte].decode("utf-8"))
        end = start + len(data[start_byte:end_byte].decode("utf-8"))
        return start, end, node_type
