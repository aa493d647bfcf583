"""Proxy quality classifiers: training from labelled JSONL, the saved format, the `classify` step, the CLI."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from loopcoder.jobs.cli import main
from loopcoder.pipelines.clean.job import JobConfig
from loopcoder.pipelines.steps.quality_classifier import (
    QualityClassifier,
    QualityClassify,
    job_labels,
    train_classifier,
)
from loopcoder.schemas import FILTERED_FILE

TOPICS = ["sorting", "hashing", "parsing", "caching", "testing", "logging", "packing", "linking"]


def labelled_rows(n: int = 120) -> list[dict]:
    """`good`: explanatory prose; `spam`: keyword lists with prices. Groups of four rows share a site."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        if i % 2:
            text = (
                f"This article explains {topic} with a worked example. We first describe why {topic} matters, "
                f"then show how the standard library implements it, and finish with the trade-offs."
            )
            rows.append({"text": text, "label": "good", "group": f"site{i // 4}"})
        else:
            text = (
                f"BEST {topic.upper()} DEALS cheap {topic} buy now $${rng.randint(1, 99)} click here free {topic} !!!"
            )
            rows.append({"text": text, "label": "spam", "group": f"site{i // 4}"})
    return rows


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "good.npz"
    train_classifier(labelled_rows(), "good", holdout_fraction=0.25, n_features=2**12).save(path)
    return path


def test_training_separates_the_labels_and_reports_held_out_metrics(model_path):
    classifier = QualityClassifier.load(model_path)
    held_out = classifier.meta["metrics"]["held_out"]
    assert held_out["examples"] > 10
    assert held_out["positive"]["precision"] == 1.0 and held_out["positive"]["recall"] == 1.0
    good, spam = classifier.score(
        [
            "This article explains sorting with a worked example and the trade-offs.",
            "BEST DEALS buy now $$5 click here !!!",
        ]
    )
    assert good > 0.5 > spam


def test_the_saved_model_holds_arrays_only_and_scores_identically(model_path, tmp_path):
    with np.load(model_path, allow_pickle=False) as arrays:
        assert sorted(arrays.files) == ["intercept", "meta", "weights"]
    first = QualityClassifier.load(model_path)
    first.save(tmp_path / "copy.npz")
    texts = ["cheap deals", "a worked example of parsing"]
    assert np.array_equal(first.score(texts), QualityClassifier.load(tmp_path / "copy.npz").score(texts))
    (tmp_path / "not_a_model.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(Exception):  # noqa: B017 - numpy raises its own error for a broken archive
        QualityClassifier.load(tmp_path / "not_a_model.npz")


def test_one_class_or_an_unknown_positive_label_is_refused():
    rows = labelled_rows(20)
    with pytest.raises(ValueError, match="not among the labels"):
        train_classifier(rows, "excellent")
    with pytest.raises(ValueError, match="at least two labels"):
        train_classifier([r for r in rows if r["label"] == "good"], "good")


def doc(content: str, number: int, language: str = "Text") -> dict:
    return {
        "id": f"doc{number}",
        "content": content,
        "language": language,
        "size_bytes": len(content),
        "decisions": [],
    }


def test_classify_step_scores_filters_and_samples(model_path):
    spam = "BEST CACHING DEALS cheap caching buy now $$10 click here free caching !!!"
    good = "This article explains caching with a worked example and the trade-offs."
    step = QualityClassify(classifiers=[{"path": str(model_path), "threshold": 0.5}])
    kept, dropped = doc(good, 1), doc(spam, 2)
    assert step.run(kept) is None and kept["quality_scores"]["good"] > 0.5
    assert step.run(dropped) == "low_quality_score" and dropped["quality_scores"]["good"] < 0.5
    assert step.stats.extra == {"below:good": 1}
    scorer = QualityClassify(classifiers=[{"path": str(model_path), "name": "g"}], languages=["Text"])
    code = doc(spam, 3, language="Python")
    assert scorer.run(code) is None and "quality_scores" not in code
    # sampling keeps a low-scoring document with probability score / threshold, the same way on every run
    sampler = QualityClassify(classifiers=[{"path": str(model_path), "threshold": 1.0, "mode": "sample"}])
    decisions = [sampler.run(doc(good if i % 2 else spam, i)) for i in range(200)]
    again = QualityClassify(classifiers=[{"path": str(model_path), "threshold": 1.0, "mode": "sample"}])
    assert decisions == [again.run(doc(good if i % 2 else spam, i)) for i in range(200)]
    kept_good = sum(d is None for d in decisions[1::2])
    kept_spam = sum(d is None for d in decisions[0::2])
    assert kept_spam < kept_good and set(decisions) == {None, "sampled_out"}


def test_classify_is_a_job_step_and_checks_its_config(model_path):
    raw = {"name": "c", "output": "/tmp/unused", "inputs": [{"kind": "jsonl", "path": "/tmp/unused"}]}
    job = JobConfig.from_dict(raw | {"steps": ["decode", {"classify": {"classifiers": [{"path": str(model_path)}]}}]})
    assert job.build_steps()[1].name == "classify"
    with pytest.raises(ValueError, match="mode must be"):
        JobConfig.from_dict(
            raw | {"steps": [{"classify": {"classifiers": [{"path": str(model_path), "mode": "top"}]}}]}
        )
    with pytest.raises(FileNotFoundError):
        JobConfig.from_dict(raw | {"steps": [{"classify": {"classifiers": [{"path": "/no/such/model.npz"}]}}]})


def test_the_shipped_example_classifier_loads_and_is_small():
    classifier = QualityClassifier.load("builtin:code_rules")
    from loopcoder.pipelines.steps.quality_classifier import resolve_classifier_path

    assert resolve_classifier_path("builtin:code_rules").stat().st_size < 1_000_000
    assert classifier.meta["metrics"]["held_out"]["examples"] > 100
    readable = 'def area(radius):\n    """Area of a circle."""\n    return 3.14159 * radius**2\n'
    generated = "# Generated by the protocol buffer compiler.  DO NOT EDIT!\n" + readable
    # the rule it imitates best: a generated-file header lowers the score of the same code
    plain_score, generated_score = classifier.score([readable, generated])
    assert generated_score < plain_score - 0.1


def test_cli_trains_from_jsonl_and_from_a_job_output(tmp_path, capsys):
    data = tmp_path / "labels.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in labelled_rows()) + "\n")
    assert (
        main(
            [
                "data",
                "train-classifier",
                "--data",
                str(data),
                "--positive-label",
                "good",
                "--out",
                str(tmp_path / "m.npz"),
            ]
        )
        == 0
    )
    assert (
        '"precision"' in capsys.readouterr().out
        and QualityClassifier.load(tmp_path / "m.npz").positive_label == "good"
    )
    job = tmp_path / "job"
    base = {"repo": "r", "language": "Python", "size_bytes": 1, "license": None, "revision": None, "decisions": []}
    base |= {"content_sha256": "0" * 64, "near_dup_cluster": None, "ast_status": None, "quality_scores": None}
    rows = [
        base | {"id": "1", "path": "a/x.py", "content": "x = 1\n", "kept": True, "rejection_reason": None},
        base | {"id": "2", "path": "b/y.py", "content": "def (\n", "kept": False, "rejection_reason": "ast_error"},
        base
        | {"id": "3", "path": "b/z.py", "content": "x = 1\n", "kept": False, "rejection_reason": "exact_duplicate"},
        base | {"id": "4", "path": "c.bin", "content": "", "kept": False, "rejection_reason": "binary"},
    ]
    (job / "files").mkdir(parents=True)
    (job / "rejected").mkdir()
    import pyarrow.parquet as pq

    pq.write_table(FILTERED_FILE.from_records(rows[:1]), job / "files" / "part-0.parquet")
    pq.write_table(FILTERED_FILE.from_records(rows[1:]), job / "rejected" / "part-0.parquet")
    with pytest.raises(FileNotFoundError, match="_SUCCESS"):
        list(job_labels(job))
    (job / "_SUCCESS").write_text("{}")
    labels = list(job_labels(job))
    assert [(r["label"], r["reason"], r["group"]) for r in labels] == [
        ("kept", None, "r/a"),
        ("rejected", "ast_error", "r/b"),
    ]
