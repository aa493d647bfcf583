"""Repository-level FIM samples: context files of the same repository, then a FIM target.

    <|repo_name|>{repo}
    <|file_sep|>{path}
    {content}
    ...
    <|file_sep|>{target path}
    {FIM-formatted target}

This is the Qwen2.5-Coder repository layout. Context files come from the target's repository
only, never include the target, and are ranked by relevance to it: a file the target imports
(local imports, `#include "..."`, relative `require`/`import` paths) scores 1, plus the BM25
similarity of its identifiers to the target's, normalised to [0, 1] within the repository.
Context is rendered most relevant first; when the token budget (default 32K) cannot hold every
file, the least relevant are dropped first, and files that do not fit are skipped.

With `fim.fim_rate` below 1 (default 1), a target not drawn for FIM is rendered whole, left to
right (`mode: plain`, category `repo` in the samples job): the paper's repository-level data is
half FIM and half plain, `fim_rate: 0.5`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from loopcoder.pipelines.samples.fim import FimConfig, FimSplitter
from loopcoder.pipelines.samples.seeding import document_rng
from loopcoder.schemas.tokens import FILE_SEP, REPO_NAME

PLAIN = "plain"
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{1,}")
PYTHON_FROM_IMPORT = re.compile(r"^[ \t]*from[ \t]+([.\w]+)[ \t]+import[ \t]+(\([^)]*\)|[\w \t,]+)", re.MULTILINE)
IMPORT_PATTERNS = [
    re.compile(r"^\s*import\s+([.\w]+)", re.MULTILINE),  # Python, Java, Go (unquoted)
    re.compile(r'#\s*include\s+"([^"]+)"'),  # C, C++
    re.compile(r"""(?:require\(|from\s+|import\s+)['"](\.{1,2}/[^'"]+)['"]"""),  # JavaScript, TypeScript
    re.compile(r"^\s*(?:use|mod)\s+(?:crate::)?([\w:]+)", re.MULTILINE),  # Rust
]


@dataclass
class RepoFimConfig:
    token_budget: int = 32_768  # tokens of the whole sample, context and target
    targets_per_repo: int = 4
    min_files: int = 2  # repositories with fewer files give no sample
    max_context_candidates: int = 64  # only the most relevant files are tokenised and considered
    bm25_k1: float = 1.5
    bm25_b: float = 0.75
    fim: FimConfig = field(default_factory=lambda: FimConfig(fim_rate=1.0))
    seed: int = 0


def identifiers(text: str) -> list[str]:
    return IDENTIFIER.findall(text)


class BM25:
    """Okapi BM25 over a fixed set of documents (Robertson & Zaragoza, 2009), term statistics computed once."""

    def __init__(self, documents: list[list[str]], k1: float = 1.5, b: float = 0.75):
        self.k1, self.b = k1, b
        self.frequencies = [Counter(d) for d in documents]
        self.lengths = [len(d) for d in documents]
        self.average_length = (sum(self.lengths) / len(documents) if documents else 0.0) or 1.0
        containing = Counter(term for f in self.frequencies for term in f)
        n = len(documents)
        self.idf = {term: math.log(1 + (n - df + 0.5) / (df + 0.5)) for term, df in containing.items()}

    def scores(self, query: list[str], exclude: int | None = None) -> list[float]:
        terms = [t for t in set(query) if t in self.idf]
        out = []
        for index, (frequencies, length) in enumerate(zip(self.frequencies, self.lengths, strict=True)):
            if index == exclude:
                out.append(0.0)
                continue
            norm = self.k1 * (1 - self.b + self.b * length / self.average_length)
            score = 0.0
            for term in terms:
                tf = frequencies.get(term)
                if tf:
                    score += self.idf[term] * tf * (self.k1 + 1) / (tf + norm)
            out.append(score)
        return out


def imported_names(content: str) -> set[str]:
    """Module-like names the file imports, as written (`pkg.mod`, `./util`, `util.h`, `crate::a`)."""
    names = set()
    for pattern in IMPORT_PATTERNS:
        names.update(match.group(1) for match in pattern.finditer(content))
    for match in PYTHON_FROM_IMPORT.finditer(content):
        package = match.group(1)
        names.add(package)
        # `from pkg import mod` may import a module: keep `pkg.mod` too
        separator = "" if package.endswith(".") else "."
        names.update(package + separator + name for name in re.findall(r"\w+", match.group(2)))
    return names


def imports_path(target_path: str, imports: set[str], candidate_path: str) -> bool:
    """Whether one of the target's imports names the candidate file (by module path or relative path)."""
    candidate = PurePosixPath(candidate_path)
    module = ".".join(candidate.with_suffix("").parts)
    stem = candidate.stem if candidate.stem != "__init__" else candidate.parent.name
    target_dir = PurePosixPath(target_path).parent
    for name in imports:
        if name.startswith("./") or name.startswith("../"):
            resolved = PurePosixPath(*_normalise((target_dir / name).parts))
            if resolved == candidate.with_suffix("") or resolved == candidate:
                return True
        elif "/" in name or name.endswith((".h", ".hpp")):
            if candidate_path.endswith(name):
                return True
        else:
            dotted = name.replace("::", ".").lstrip(".")
            if dotted and (module.endswith(dotted) or dotted.split(".")[-1] == stem):
                return True
    return False


def _normalise(parts: Iterable[str]) -> list[str]:
    out: list[str] = []
    for part in parts:
        if part == "..":
            if out:
                out.pop()
        elif part != ".":
            out.append(part)
    return out


def rank_context(target_index: int, files: list[dict[str, Any]], bm25: BM25) -> list[tuple[float, int]]:
    """(relevance, index) of every file of the repository but the target, most relevant first."""
    target = files[target_index]
    imports = imported_names(target["content"])
    bm25_scores = bm25.scores(identifiers(target["content"]), exclude=target_index)
    top = max(bm25_scores, default=0.0) or 1.0
    ranked = [
        (float(imports_path(target["path"], imports, other["path"])) + score / top, index)
        for index, (other, score) in enumerate(zip(files, bm25_scores, strict=True))
        if index != target_index
    ]
    return sorted(ranked, key=lambda pair: (-pair[0], files[pair[1]]["path"]))


def token_counter(tokenizer) -> Callable[[list[str]], list[int]]:
    """Batched token counting with a Hugging Face tokenizer, no special tokens added."""
    backend = tokenizer.backend_tokenizer

    def count(texts: list[str]) -> list[int]:
        return [len(encoding.ids) for encoding in backend.encode_batch(texts, add_special_tokens=False)]

    return count


class RepoFimBuilder:
    """Builds repository-level FIM samples for the files of one repository.

    `count_tokens(texts) -> list[int]` budgets the sample; `token_counter(tokenizer)` makes one
    from a Hugging Face tokenizer (batched, in Rust). The default estimates 4 characters per token.
    """

    def __init__(
        self, config: RepoFimConfig | None = None, count_tokens: Callable[[list[str]], list[int]] | None = None
    ):
        self.config = config or RepoFimConfig()
        self.count_tokens_batch = count_tokens or (lambda texts: [(len(t) + 3) // 4 for t in texts])
        self.splitter = FimSplitter(self.config.fim)
        self.skipped: Counter = Counter()

    def __call__(self, repo: str, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
        files = sorted(files, key=lambda f: f["path"])
        if len(files) < self.config.min_files:
            self.skipped["repo_too_small"] += 1
            return []
        rng = document_rng(self.config.seed, repo, salt="repo-fim")
        targets = sorted(rng.sample(range(len(files)), min(self.config.targets_per_repo, len(files))))
        bm25 = BM25([identifiers(f["content"]) for f in files], self.config.bm25_k1, self.config.bm25_b)
        samples = []
        for target in targets:
            sample = self._sample(repo, target, files, bm25)
            if sample is not None:
                samples.append(sample)
        return samples

    @staticmethod
    def _context_part(file: dict[str, Any]) -> str:
        return f"{FILE_SEP}{file['path']}\n{file['content']}\n"

    def count_tokens(self, text: str) -> int:
        return self.count_tokens_batch([text])[0]

    def _sample(self, repo, target_index, files, bm25) -> dict[str, Any] | None:
        target = files[target_index]
        fim = self.splitter(target)
        if fim is None and self.splitter.last_skip_reason is not None:
            self.skipped[self.splitter.last_skip_reason] += 1
            return None
        if fim is None:  # not drawn for FIM (fim_rate < 1): the target file whole, left to right
            fim = {"source_id": target["id"], "mode": PLAIN, "split_kind": "none", "node_type": None,
                   "prefix": target["content"], "middle": "", "suffix": "", "text": target["content"]}  # fmt: skip
        head = f"{REPO_NAME}{repo}\n"
        tail = f"{FILE_SEP}{target['path']}\n{fim['text']}"
        used = self.count_tokens(head + tail)
        if used > self.config.token_budget:
            self.skipped["target_over_budget"] += 1
            return None
        # Context files are chosen on an estimate from the target's own characters per token, so
        # that only the chosen text is tokenised; the exact count then trims the least relevant.
        chars_per_token = max(len(head + tail) / used, 1.0)
        estimated = used
        chosen: list[int] = []
        for _relevance, index in rank_context(target_index, files, bm25)[: self.config.max_context_candidates]:
            cost = int(len(self._context_part(files[index])) / chars_per_token) + 1
            if estimated + cost > self.config.token_budget:
                continue  # a smaller, less relevant file may still fit
            estimated += cost
            chosen.append(index)
        text = head + "".join(self._context_part(files[i]) for i in chosen) + tail
        total = self.count_tokens(text)
        while total > self.config.token_budget and chosen:
            # drop the least relevant files until the measured excess is covered, then count again
            excess, chars_per_token = total - self.config.token_budget, len(text) / total
            while chosen and excess > 0:
                excess -= len(self._context_part(files[chosen.pop()])) / chars_per_token
            text = head + "".join(self._context_part(files[i]) for i in chosen) + tail
            total = self.count_tokens(text)
        kind = "repo" if fim["mode"] == PLAIN else "repofim"
        return {
            "id": f"{fim['source_id']}-{kind}{self.config.seed}",
            "repo": repo,
            "target_path": target["path"],
            "language": target["language"],
            "context_paths": [files[i]["path"] for i in chosen],
            "mode": fim["mode"],
            "split_kind": fim["split_kind"],
            "node_type": fim["node_type"],
            "prefix": fim["prefix"],
            "middle": fim["middle"],
            "suffix": fim["suffix"],
            "text": text,
            "num_tokens": total,
        }
