"""The evaluation metrics on hand-computed values: unbiased pass@k, exact match, edit similarity."""

import math

import pytest

from loopcoder.postrain.evaluation.fim import aggregate, fim_prompt, is_single_line
from loopcoder.postrain.evaluation.generation import truncate_at_stop
from loopcoder.postrain.evaluation.metrics import (
    edit_similarity,
    exact_match,
    levenshtein,
    mean_pass_at_k,
    pass_at_k,
)
from loopcoder.postrain.evaluation.problems import build_program
from loopcoder.postrain.evaluation.report import markdown_table


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        pytest.param(1, 1, 1, 1.0, id="n1-c1-k1"),
        pytest.param(1, 0, 1, 0.0, id="n1-c0-k1"),
        pytest.param(10, 0, 1, 0.0, id="none-pass"),
        pytest.param(10, 10, 10, 1.0, id="all-pass"),
        # pass@1 is the plain pass fraction c / n
        pytest.param(10, 3, 1, 0.3, id="pass1-is-fraction"),
        pytest.param(200, 37, 1, 37 / 200, id="n200-pass1"),
        # 1 - C(2, 2) / C(4, 2) = 1 - 1/6
        pytest.param(4, 2, 2, 5 / 6, id="n4-c2-k2"),
        # 1 - C(7, 3) / C(10, 3) = 1 - 35/120
        pytest.param(10, 3, 3, 1 - 35 / 120, id="n10-c3-k3"),
        # n - c < k: every draw of k holds a passing sample
        pytest.param(10, 8, 3, 1.0, id="n-minus-c-below-k"),
        pytest.param(5, 1, 5, 1.0, id="k-equals-n-one-pass"),
        pytest.param(5, 0, 5, 0.0, id="k-equals-n-no-pass"),
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_the_binomial_formula_on_a_grid():
    for n in range(1, 16):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12), (n, c, k)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 1, 6), (5, 6, 1), (5, -1, 1), (5, 1, 0)])
def test_pass_at_k_rejects_undefined_cases(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_averages_problems():
    assert mean_pass_at_k([(2, 2), (2, 0), (2, 1)], 1) == pytest.approx(0.5)
    assert mean_pass_at_k([(2, 2), (2, 0), (2, 1)], 2) == pytest.approx(2 / 3)


def test_exact_match_and_edit_similarity_on_literals():
    # identical
    assert exact_match("return a + b", "return a + b") == 1.0
    assert edit_similarity("return a + b", "return a + b") == 1.0
    # one character changed out of 12
    assert exact_match("return a - b", "return a + b") == 0.0
    assert edit_similarity("return a - b", "return a + b") == pytest.approx(1 - 1 / 12)
    # one character inserted: distance 1 over the longer length 13
    assert edit_similarity("return a + bc", "return a + b") == pytest.approx(1 - 1 / 13)
    # empty prediction: nothing matches
    assert exact_match("", "x = 1") == 0.0
    assert edit_similarity("", "x = 1") == 0.0
    # both empty is a match
    assert edit_similarity("", "") == 1.0
    # surrounding blank space and trailing spaces per line do not count
    assert exact_match("  x = 1  \n\n", "x = 1\n") == 1.0
    assert exact_match("if a:\n    b   \n", "if a:\n    b\n") == 1.0
    # leading indentation of a line does count
    assert exact_match("if a:\nb", "if a:\n    b") == 0.0


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3), ("flaw", "lawn", 2), ("abc", "abc", 0), ("ab", "ba", 2)],
)
def test_levenshtein(a, b, distance):
    assert levenshtein(a, b) == distance
    assert levenshtein(b, a) == distance


def test_stop_sequences_and_programs():
    assert truncate_at_stop("    return 1\ndef g():\n", ["\ndef", "\nclass"]) == "    return 1"
    assert truncate_at_stop("abc", []) == "abc"
    assert build_program("def f():\n", "    return 1\n", "continue") == "def f():\n    return 1\n"
    assert build_program("def f():\n", "Here:\n```python\nprint(2)\n```", "auto") == "print(2)\n"
    assert build_program("def f():\n", "no code", "fenced") is None
    with pytest.raises(ValueError):
        build_program("", "", "other")


def test_fim_prompt_single_line_and_aggregation():
    text = "<|fim_prefix|>a = <|fim_suffix|>\nb = 2<|fim_middle|>1<|im_end|>"
    assert fim_prompt(text) == "<|fim_prefix|>a = <|fim_suffix|>\nb = 2<|fim_middle|>"
    assert is_single_line("x = 1\n") and is_single_line("x") and not is_single_line("x\ny\n")
    rows = [
        {"level": "file", "language": "Python", "split_kind": "line", "lines": "single", "em": 1.0, "es": 1.0},
        {"level": "file", "language": "Python", "split_kind": "ast", "lines": "multi", "em": 0.0, "es": 0.5},
        {"level": "repo", "language": "C", "split_kind": "line", "lines": "single", "em": 0.0, "es": 0.0},
    ]
    summary = aggregate(rows)
    assert summary["overall"] == {"count": 3, "em": pytest.approx(1 / 3), "es": pytest.approx(0.5)}
    assert summary["by_language"]["Python"] == {"count": 2, "em": 0.5, "es": 0.75}
    assert summary["by_split_kind"]["line"]["es"] == 0.5
    assert summary["by_level"]["repo"]["count"] == 1


def test_markdown_table():
    assert markdown_table([{"a": 1, "b": 0.5}, {"a": 2}]) == "| a | b |\n|---|---|\n| 1 | 0.5000 |\n| 2 |  |\n"
