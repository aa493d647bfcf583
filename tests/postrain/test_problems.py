"""Loaders: CodeContests- and TACO-style rows become valid rl_problem records that the sandbox can run."""

import gzip
import json

import pytest

from loopcoder.postrain.sandbox import Limits
from loopcoder.postrain.sandbox.problems import (
    contest_row_to_problem,
    load_contest_jsonl,
    read_problems_jsonl,
    write_problems_jsonl,
)
from loopcoder.postrain.sandbox.runners import PASSED, TestCase, run_test
from loopcoder.schemas import RL_PROBLEM, SchemaError

CODE_CONTESTS_ROW = {
    "name": "1A_sum",
    "description": "Print a + b.",
    "public_tests": {"input": ["1 2\n"], "output": ["3\n"]},
    "private_tests": {"input": ["5 5\n"], "output": ["10\n"]},
    "generated_tests": {"input": ["0 0\n"], "output": ["0\n"]},
    "time_limit": {"seconds": 2, "nanos": 500000000},
    "memory_limit_bytes": 268435456,
}
TACO_STDIO_ROW = {
    "id": "taco-7",
    "question": "Reverse the line.",
    "input_output": json.dumps({"inputs": ["abc\n", "xy\n"], "outputs": ["cba\n", "yx\n"]}),
    "time_limit": "1 second",
    "memory_limit": "256 megabytes",
}
TACO_CALL_ROW = {
    "id": "taco-9",
    "question": "Return the sum of a list.",
    "input_output": {"fn_name": "total", "inputs": [[[1, 2, 3]], [[]]], "outputs": [[6], [0]]},
}


def test_code_contests_row():
    problem = contest_row_to_problem(CODE_CONTESTS_ROW, source="code_contests")
    assert problem["id"] == "1A_sum" and problem["source"] == "code_contests"
    assert [t["stdin"] for t in problem["tests"]] == ["1 2\n", "5 5\n", "0 0\n"]
    assert problem["time_limit_seconds"] == 2.5 and problem["memory_limit_mb"] == 256
    RL_PROBLEM.from_records([problem])


def test_taco_stdio_and_call_based_rows(sandbox):
    stdio = contest_row_to_problem(TACO_STDIO_ROW, source="taco")
    assert stdio["time_limit_seconds"] == 1.0 and stdio["memory_limit_mb"] == 256
    call = contest_row_to_problem(TACO_CALL_ROW, source="taco")
    assert all(t["assert_code"] and t["stdin"] is None for t in call["tests"])
    RL_PROBLEM.from_records([stdio, call])
    limits = Limits(cpu_seconds=2)
    for test in stdio["tests"]:
        assert (
            run_test(sandbox, "print(input()[::-1])", "python", TestCase.from_record(test), limits).verdict == PASSED
        )
    for program in (
        "def total(xs):\n    return sum(xs)",
        "class Solution:\n    def total(self, xs):\n        return sum(xs)",
    ):
        for test in call["tests"]:
            assert run_test(sandbox, program, "python", TestCase.from_record(test), limits).verdict == PASSED
    wrong = run_test(sandbox, "def total(xs):\n    return 1", "python", TestCase.from_record(call["tests"][0]), limits)
    assert wrong.verdict == "failed"


def test_jsonl_round_trip_and_gzip(tmp_path):
    source = tmp_path / "rows.jsonl.gz"
    with gzip.open(source, "wt") as handle:
        for row in (CODE_CONTESTS_ROW, TACO_STDIO_ROW, {"id": "empty", "question": "no tests"}):
            handle.write(json.dumps(row) + "\n")
    problems = load_contest_jsonl(source, source="mixed")
    assert [p["id"] for p in problems] == ["1A_sum", "taco-7"]
    out = tmp_path / "problems.jsonl"
    assert write_problems_jsonl(problems, out) == 2
    assert read_problems_jsonl(out) == problems


def test_invalid_problem_rows_are_rejected(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "x", "prompt": "p"}) + "\n")
    with pytest.raises((SchemaError, KeyError, ValueError)):
        read_problems_jsonl(path)
