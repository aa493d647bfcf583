"""The difficulty scorer: features, scores, tiers and the shard sets the curriculum mixes."""

from pathlib import Path

import pytest
import yaml

from loopcoder.pipelines.samples.conversations import code_block
from loopcoder.pipelines.samples.sft_difficulty import (
    TIERS,
    DifficultyConfig,
    DifficultyScorer,
    DifficultyStats,
    calibrated_thresholds,
    tier_category,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
BRANCHY = """def f(xs, y):
    total = 0
    for x in xs:
        if x > 0 and y:
            total += x
        elif x < -5:
            total -= 1
    try:
        z = 1 if y else 2
    except ValueError:
        z = 0
    return [v for v in xs if v]
"""


def conversation(answer: str, language: str | None = "Python", kind: str = "docstring", **extra) -> dict:
    return {
        "id": str(hash(answer)),
        "messages": [{"role": "user", "content": "Write it."}, {"role": "assistant", "content": answer}],
        "source": "t",
        "difficulty": None,
        "difficulty_tier": None,
        "kind": kind,
        "language": language,
    } | extra


def patch(files: int, body: str) -> str:
    parts = []
    for i in range(files):
        added = "".join(f"+{line}\n" for line in body.splitlines())
        parts.append(
            f"diff --git a/m{i}.py b/m{i}.py\n--- a/m{i}.py\n+++ b/m{i}.py\n@@ -1,0 +1,{len(body.splitlines())} @@\n{added}"
        )
    return "".join(parts)


@pytest.mark.parametrize(
    ("language", "code", "cyclomatic"),
    [
        ("Python", BRANCHY, 9),  # for, if, and, elif, conditional, except, comprehension for and if
        ("Java", "class A { int f(int a, boolean b) { if (a > 0 && b) { return 1; } "
                 "for (int i = 0; i < a || b; i++) {} return a > 1 ? 2 : 3; } }", 6),
        ("JavaScript", "function g(a) { switch (a) { case 1: return 1; case 2: return 2; default: return a ?? 0; } }", 4),
        ("Go", "package p\nfunc h(a int) int {\n\tfor a > 0 {\n\t\ta--\n\t}\n\treturn a\n}\n", 2),
    ],
)  # fmt: skip
def test_cyclomatic_complexity_counts_decision_points(language, code, cyclomatic):
    features = DifficultyScorer().code_features(code, language)
    assert features["cyclomatic"] == cyclomatic and features["ast_nodes"] > 10


def test_tiers_follow_answer_size_complexity_and_files_touched():
    scorer = DifficultyScorer()
    easy = conversation(code_block("def one():\n    return 1", "python"))
    medium = conversation(code_block(BRANCHY, "python"))
    big_body = "\n".join(BRANCHY.replace("def f", f"def f{i}") for i in range(4))
    hard = conversation(code_block(patch(4, big_body), "diff"), kind="commit")
    scored, features = scorer([easy, medium, hard])
    assert [r["difficulty_tier"] for r in scored] == ["easy", "medium", "hard"]
    assert scored[0]["difficulty"] < scored[1]["difficulty"] < scored[2]["difficulty"]
    assert features[2]["files_touched"] == 4 and features[2]["cyclomatic"] == 1 + 4 * 4 * 8
    assert "files_touched" not in features[1] and features[1]["cyclomatic"] == 9
    assert easy["difficulty"] is None  # the input records are not modified


def test_without_code_only_length_counts_and_a_given_difficulty_is_kept():
    scorer = DifficultyScorer(count_tokens=lambda texts: [len(t.split()) for t in texts])
    prose = conversation(" ".join(["word"] * 1024), language=None, kind="user")
    [scored], [features] = scorer([prose])
    assert features == {"answer_tokens": 1024.0} and scored["difficulty"] == pytest.approx(1.0)
    given = conversation("short", kind="user", difficulty=0.9)
    assert scorer([given])[0][0]["difficulty_tier"] == "hard"
    assert DifficultyScorer(DifficultyConfig(keep_given=False))([given])[0][0]["difficulty_tier"] == "easy"


def test_token_counter_is_called_once_per_batch():
    calls = []

    def count(texts):
        calls.append(len(texts))
        return [len(t) for t in texts]

    DifficultyScorer(count_tokens=count)([conversation("a"), conversation("b"), conversation("c")])
    assert calls == [3]


def test_stats_merge_across_tasks_and_report_why():
    scorer = DifficultyScorer()
    records = [conversation(code_block("def one():\n    return 1", "python")), conversation(code_block(BRANCHY, "py"))]
    first, second = DifficultyStats(), DifficultyStats()
    first.add(*scorer(records[:1]))
    second.add(*scorer(records[1:]))
    merged = DifficultyStats.from_dict(first.to_dict()).merge(DifficultyStats.from_dict(second.to_dict()))
    report = merged.report()
    assert set(report) == set(TIERS)
    assert report["easy"]["conversations"] == 1 and report["easy"]["by_kind"] == {"docstring": 1}
    assert report["medium"]["mean_features"]["cyclomatic"] == 9
    assert report["hard"] == {"conversations": 0, "by_kind": {}, "mean_features": {}}


def test_calibrated_thresholds_split_a_sample_into_the_asked_shares():
    scores = [i / 99 for i in range(100)]
    low, high = calibrated_thresholds(scores, (0.5, 0.3, 0.2))
    config = DifficultyConfig(thresholds=(low, high))
    tiers = [("easy" if s < low else "medium" if s < high else "hard") for s in scores]
    assert [tiers.count(t) for t in TIERS] == [50, 30, 20] and config.thresholds == (low, high)


def test_tier_categories_are_the_shard_sets_the_curriculum_mixes():
    config = yaml.safe_load((REPO_ROOT / "jobs" / "sft" / "sample_tiny.yaml").read_text())
    mixed = {name for phase in config["curriculum"] for name in phase["mixture"]}
    assert mixed == {tier_category(t) for t in TIERS}
    with pytest.raises(ValueError, match="unknown tier"):
        tier_category("extreme")


@pytest.mark.parametrize(
    "bad",
    [
        {"weights": {"stars": 1.0}},
        {"anchors": {"answer_tokens": (10, 5)}},
        {"weights": {"answer_tokens": 0.0, "ast_nodes": 0.0, "cyclomatic": 0.0, "files_touched": 0.0}},
        {"thresholds": (0.7, 0.2)},
    ],
)
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError):
        DifficultyConfig(**bad)
