"""Proxy quality classifiers: hashed n-grams and logistic regression, trained from labelled JSONL, scored in a step.

A classifier is scikit-learn's `HashingVectorizer` (token 1- and 2-grams hashed into 2^18
features, so there is no vocabulary to store) followed by a `LogisticRegression` for one positive
label against the rest. It is saved as a `.npz` file holding only arrays (weights, intercept and a
JSON header with the vectorizer settings, the labels and the held-out metrics), loaded without
pickle; scoring is the hashed features times the weights, so nothing is downloaded or unpickled.

    loopcoder data train-classifier --data labels.jsonl --positive-label good --out good.npz
    loopcoder data train-classifier --from-job data/classifier_labels --out code_rules.npz

Each JSONL row has `text` and `label` (any JSON scalar), and optionally `group`: rows of one group
land on the same side of the held-out split (files of one directory, pages of one site), so the
held-out figures are not inflated by near-copies. `--from-job` makes the rows from a finished
clean job instead: kept files are `kept`, files a per-document step rejected are `rejected`
(duplicates, rows whose content was not kept and path-only rejections are left out).

The `classify` step scores each document with every configured classifier, writes the scores in
the `quality_scores` column, and per classifier with a `threshold` either drops documents below it
(`mode: filter`, reason `low_quality_score`) or keeps them with probability score / threshold
(`mode: sample`, reason `sampled_out`, decided by a hash of the document id and `seed`, so reruns
agree). Classifiers are loaded when the step is built, once per Ray worker process.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loopcoder.pipelines.steps.filters import Doc, Step

FORMAT = "loopcoder-quality-classifier"
FORMAT_VERSION = 1
# Identifiers, numbers and single punctuation marks: code keeps its operators and brackets as features.
TOKEN_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*|\d+|[^\w\s]"
DEFAULT_FEATURES = 2**18
DEFAULT_MAX_CHARS = 20_000
BUILTIN_CLASSIFIERS = {"code_rules": "classifiers/code_rules.npz"}  # relative to jobs/data/
# Rejections that say nothing a text classifier can see: duplicates, rows written without content,
# and the rules that read only the path (a vendored copy of good code is good code).
NOT_QUALITY_REASONS = {"exact_duplicate", "near_duplicate", "too_large", "binary", "not_utf8", "unreadable"}
NOT_QUALITY_REASONS |= {"symlink", "bad_record", "empty", "vendored", "dropped_extension"}


def shape_tokens(text: str) -> str:
    """Layout as words the n-gram features can see: log2 buckets of line lengths and line count, share of alnum."""
    lines = text.split("\n")
    longest = max(map(len, lines))
    mean = len(text) / len(lines)
    alnum = sum(ch.isalnum() for ch in text[:5000]) / max(min(len(text), 5000), 1)
    return (
        f" __longest_line_{int(math.log2(longest + 1))} __mean_line_{int(math.log2(mean + 1))}"
        f" __lines_{int(math.log2(len(lines)))} __alnum_{int(alnum * 10)}"
    )


@dataclass
class QualityClassifier:
    """A trained classifier: weights over hashed features and the settings that produced them."""

    weights: np.ndarray  # float32 [n_features] (stored as float16)
    intercept: float
    meta: dict[str, Any]
    _vectorizer_instance: Any = field(default=None, repr=False, compare=False)

    @property
    def positive_label(self) -> Any:
        return self.meta["positive_label"]

    def _vectorizer(self):
        if self._vectorizer_instance is None:
            self._vectorizer_instance = self._make_vectorizer()
        return self._vectorizer_instance

    def _make_vectorizer(self):
        from sklearn.feature_extraction.text import HashingVectorizer

        settings = self.meta["vectorizer"]
        return HashingVectorizer(
            n_features=settings["n_features"],
            ngram_range=tuple(settings["ngram_range"]),
            token_pattern=settings["token_pattern"],
            lowercase=settings["lowercase"],
            alternate_sign=False,
            norm="l2",
            dtype=np.float32,
        )

    def features(self, texts: Iterable[str]):
        max_chars, shape = self.meta["max_chars"], self.meta["shape_tokens"]
        prepared = [t[:max_chars] + (shape_tokens(t[:max_chars]) if shape and t else "") for t in texts]
        return self._vectorizer().transform(prepared)

    def score(self, texts: Iterable[str]) -> np.ndarray:
        """Probability of the positive label for each text."""
        logits = self.features(texts) @ self.weights + self.intercept
        return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = np.frombuffer(json.dumps(self.meta, sort_keys=True).encode(), dtype=np.uint8)
        with open(path, "wb") as handle:
            # float16 halves the file (the shipped model stays under 1 MB)
            weights = self.weights.astype(np.float16)
            np.savez_compressed(handle, weights=weights, intercept=np.float32(self.intercept), meta=header)

    @classmethod
    def load(cls, path: str | Path) -> QualityClassifier:
        path = resolve_classifier_path(path)
        with np.load(path, allow_pickle=False) as arrays:
            meta = json.loads(arrays["meta"].tobytes().decode())
            if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{path} is not a {FORMAT} file of version {FORMAT_VERSION}")
            return cls(arrays["weights"].astype(np.float32), float(arrays["intercept"]), meta)


def resolve_classifier_path(path: str | Path) -> Path:
    """A file path, or `builtin:<name>` for a classifier shipped in jobs/data/classifiers/."""
    text = str(path)
    if text.startswith("builtin:"):
        name = text.removeprefix("builtin:")
        if name not in BUILTIN_CLASSIFIERS:
            raise ValueError(f"unknown built-in classifier '{name}'; known: {', '.join(BUILTIN_CLASSIFIERS)}")
        import loopcoder.jobs

        return Path(loopcoder.jobs.__file__).resolve().parent / "data" / BUILTIN_CLASSIFIERS[name]
    resolved = Path(text)
    if not resolved.exists():
        raise FileNotFoundError(f"classifier {resolved} does not exist")
    return resolved


def read_labelled_jsonl(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Rows with a string `text` and a scalar `label`; a malformed line is an error naming file and line."""
    rows = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not JSON: {error}") from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str) or "label" not in row:
                    raise ValueError(f"{path}:{number}: each row needs a string 'text' and a 'label'")
                rows.append(row)
    return rows


def job_labels(output: Path) -> Iterator[dict[str, Any]]:
    """Rows from a finished clean job: `kept` for files/, `rejected` for files a per-document step rejected."""
    import pyarrow.parquet as pq

    output = Path(output)
    if not (output / "_SUCCESS").exists():
        raise FileNotFoundError(f"{output} holds no finished job (no _SUCCESS)")
    for folder, label in (("files", "kept"), ("rejected", "rejected")):
        for shard in sorted((output / folder).glob("*.parquet")):
            table = pq.read_table(shard, columns=["repo", "path", "content", "rejection_reason"])
            for row in table.to_pylist():
                if row["rejection_reason"] in NOT_QUALITY_REASONS or not row["content"]:
                    continue
                group = f"{row['repo']}/{row['path'].rsplit('/', 1)[0] if '/' in row['path'] else ''}"
                yield {"text": row["content"], "label": label, "group": group, "reason": row["rejection_reason"]}


def held_out(row: dict[str, Any], fraction: float, seed: int) -> bool:
    key = str(row.get("group") if row.get("group") is not None else row["text"])
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def binary_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Precision, recall and F1 of each class (True = positive), accuracy and counts."""
    metrics: dict[str, Any] = {
        "examples": int(len(truth)),
        "accuracy": float(np.mean(truth == predicted)) if len(truth) else 0.0,
    }
    for name, cls in (("positive", True), ("negative", False)):
        tp = int(np.sum((predicted == cls) & (truth == cls)))
        precision = tp / max(int(np.sum(predicted == cls)), 1)
        recall = tp / max(int(np.sum(truth == cls)), 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        metrics[name] = {"support": int(np.sum(truth == cls)), "precision": precision, "recall": recall, "f1": f1}
    return metrics


def train_classifier(
    rows: list[dict[str, Any]],
    positive_label: Any,
    *,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    n_features: int = DEFAULT_FEATURES,
    max_chars: int = DEFAULT_MAX_CHARS,
    regularisation: float = 1.0,
    use_shape_tokens: bool = True,
    source: str = "",
) -> QualityClassifier:
    """Fits on the rows outside the held-out groups; the held-out metrics go into `meta["metrics"]`."""
    from sklearn.linear_model import LogisticRegression

    labels = sorted({json.dumps(r["label"]) for r in rows})
    if json.dumps(positive_label) not in labels:
        raise ValueError(f"positive label {positive_label!r} is not among the labels {', '.join(labels)}")
    if len(labels) < 2:
        raise ValueError("training needs at least two labels")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "positive_label": positive_label,
        "labels": [json.loads(label) for label in labels],
        "vectorizer": {
            "n_features": n_features,
            "ngram_range": [1, 2],
            "token_pattern": TOKEN_PATTERN,
            "lowercase": False,
        },
        "max_chars": max_chars,
        "shape_tokens": use_shape_tokens,
        "training": {
            "source": source,
            "rows": len(rows),
            "holdout_fraction": holdout_fraction,
            "seed": seed,
            "C": regularisation,
        },
    }
    untrained = QualityClassifier(np.zeros(n_features, dtype=np.float32), 0.0, meta)
    test_mask = np.array([held_out(r, holdout_fraction, seed) for r in rows], dtype=bool)
    truth = np.array([r["label"] == positive_label for r in rows], dtype=bool)
    if truth[~test_mask].all() or not truth[~test_mask].any():
        raise ValueError("the training split holds only one class: add rows or lower --holdout-fraction")
    features = untrained.features(r["text"] for r in rows)
    model = LogisticRegression(C=regularisation, class_weight="balanced", max_iter=2000)
    model.fit(features[~test_mask], truth[~test_mask])
    classifier = QualityClassifier(model.coef_[0].astype(np.float32), float(model.intercept_[0]), meta)
    if test_mask.any():
        predicted = classifier.score(r["text"] for r, test in zip(rows, test_mask, strict=True) if test) >= 0.5
        meta["metrics"] = {"held_out": binary_metrics(truth[test_mask], predicted), "threshold": 0.5}
    meta["training"]["train_rows"] = int((~test_mask).sum())
    return classifier


@dataclass
class ClassifierSpec:
    path: str  # a .npz file or `builtin:<name>`
    name: str | None = None  # column key in `quality_scores`; default: the file's stem
    threshold: float | None = None  # None: score only
    mode: str = "filter"  # `filter`: drop below threshold; `sample`: keep with probability score / threshold


@dataclass
class ClassifyConfig:
    classifiers: list[Any] = field(default_factory=list)  # ClassifierSpec dicts
    languages: tuple[str, ...] | None = None  # None: every document
    seed: int = 0  # of the sampling decisions


class QualityClassify(Step):
    """Scores documents with each classifier into `doc["quality_scores"]`; filters or samples by threshold.

    Reasons: `low_quality_score`, `sampled_out`; per classifier `below:<name>` / `sampled_out:<name>` in `stats.extra`.
    """

    name = "classify"

    def __init__(self, config: ClassifyConfig | None = None, **overrides: Any):
        super().__init__()
        self.config = config or ClassifyConfig(**overrides)
        if not self.config.classifiers:
            raise ValueError("step 'classify': list at least one classifier ({path: ..., threshold: ...})")
        self.models: list[tuple[ClassifierSpec, QualityClassifier]] = []
        for entry in self.config.classifiers:
            spec = entry if isinstance(entry, ClassifierSpec) else ClassifierSpec(**entry)
            if spec.mode not in ("filter", "sample"):
                raise ValueError(f"classifier {spec.path}: mode must be 'filter' or 'sample', got '{spec.mode}'")
            spec.name = spec.name or Path(str(spec.path).removeprefix("builtin:")).stem
            self.models.append((spec, QualityClassifier.load(spec.path)))

    def apply(self, doc: Doc) -> str | None:
        languages = self.config.languages
        if languages is not None and doc["language"] not in languages:
            return None
        scores = {spec.name: float(model.score([doc["content"]])[0]) for spec, model in self.models}
        doc["quality_scores"] = scores
        for spec, _ in self.models:
            if spec.threshold is None or scores[spec.name] >= spec.threshold:
                continue
            if spec.mode == "filter":
                self.stats.count(f"below:{spec.name}")
                return "low_quality_score"
            if self._uniform(doc["id"], spec.name) >= scores[spec.name] / spec.threshold:
                self.stats.count(f"sampled_out:{spec.name}")
                return "sampled_out"
        return None

    def _uniform(self, doc_id: str, name: str) -> float:
        digest = hashlib.sha256(f"{self.config.seed}:{name}:{doc_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64
