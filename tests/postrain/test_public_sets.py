"""Public problem sets: fixture rows in each dataset's own format convert to rl_problem records whose tests the
sandbox runs (a correct solution passes, a wrong one fails); malformed rows are counted by reason."""

import base64
import json
import pickle
import zlib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopcoder.jobs.cli import main
from loopcoder.postrain.grpo.data import load_problems
from loopcoder.postrain.grpo.public_sets import (
    MalformedRow,
    convert_rows,
    dataset_spec,
    decode_livecodebench_tests,
    prepare_dataset,
    read_rows,
)
from loopcoder.postrain.sandbox import Limits, SandboxPool, TestCase
from loopcoder.schemas import RL_PROBLEM

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "public_sets"

EXPECTED = {
    "code_contests": (
        ["code_contests/train/1000_A. Sum of Two", "code_contests/train/1000_B. Longest Word"],
        {"file_io": 1, "unequal_inputs_outputs": 1},
    ),
    "taco": (["taco/train/0", "taco/train/1"], {"bad_json:input_output": 1, "unequal_inputs_outputs": 1}),
    "apps": (["apps/train/4000", "apps/train/4001"], {"missing_field:input_output": 1}),
    "livecodebench": (["livecodebench/abc000_a", "livecodebench/3000"], {"bad_encoding:private_test_cases": 1}),
    "mbpp": (["mbpp/601", "mbpp/602"], {"no_tests": 1}),
    "mbppplus": (["mbppplus/601", "mbppplus/604", "mbppplus/605"], {"bad_syntax:test": 1}),
}

LIVECODEBENCH_SOLUTIONS = {
    "livecodebench/abc000_a": "print(2 * int(input()))\n",
    "livecodebench/3000": "from typing import List\n\nclass Solution:\n"
    "    def maxSum(self, nums: List[int], k: int) -> int:\n        return sum(nums)\n",
}


def fixture_rows(name: str) -> list[dict]:
    return list(read_rows(FIXTURES / f"{name}.jsonl"))


def reference_solutions(name: str, rows: list[dict]) -> dict[str, str]:
    """Problem id -> a correct program, from the rows' own solution fields."""
    if name == "livecodebench":
        return LIVECODEBENCH_SOLUTIONS
    problems, _ = convert_rows(name, rows)
    by_id = {}
    for problem, row in zip(problems, [r for r in rows if _converts(name, r)], strict=True):
        if name == "code_contests":
            by_id[problem["id"]] = row["solutions"]["solution"][0]
        elif name in ("taco", "apps"):
            by_id[problem["id"]] = json.loads(row["solutions"])[0]
        else:
            by_id[problem["id"]] = row["code"]
    return by_id


def _converts(name: str, row: dict) -> bool:
    return bool(convert_rows(name, [row])[0])


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2) as shared:
        yield shared


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_rows_convert_and_their_tests_judge_solutions(name, pool):
    rows = fixture_rows(name)
    problems, rejected = convert_rows(name, rows)
    ids, reasons = EXPECTED[name]
    assert [p["id"] for p in problems] == ids
    assert dict(rejected) == reasons
    assert len(problems) + sum(rejected.values()) == len(rows)
    RL_PROBLEM.from_records(problems)
    assert all(p["tests"] and p["prompt"].strip() for p in problems)

    solutions = reference_solutions(name, rows)
    requests = []
    for problem in problems:
        tests = [TestCase.from_record(t) for t in problem["tests"]]
        limits = Limits(cpu_seconds=problem["time_limit_seconds"])
        requests.append((solutions[problem["id"]], "python", tests, limits))
        requests.append(("print('no answer')\n", "python", tests, limits))  # a wrong program
    verdicts = pool.run_programs(requests)
    for problem, correct, wrong in zip(problems, verdicts[::2], verdicts[1::2], strict=True):
        assert all(v.passed for v in correct), (problem["id"], [(v.verdict, v.detail) for v in correct])
        assert not any(v.passed for v in wrong), problem["id"]


@pytest.mark.parametrize("name", ["code_contests", "taco", "mbpp"])
def test_parquet_files_as_on_the_hub_give_the_same_problems(name, tmp_path):
    rows = fixture_rows(name)
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert convert_rows(name, read_rows(path)) == convert_rows(name, rows)


def test_kinds_of_tests_match_each_format():
    kinds = {}
    for name in EXPECTED:
        problems, _ = convert_rows(name, fixture_rows(name))
        kinds[name] = {
            p["id"]: Counter("assert" if t["assert_code"] else "stdio" for t in p["tests"]) for p in problems
        }
    assert kinds["code_contests"]["code_contests/train/1000_A. Sum of Two"] == {"stdio": 4}
    assert kinds["taco"]["taco/train/1"] == {"assert": 2}  # fn_name: call-based
    assert kinds["apps"]["apps/train/4001"] == {"assert": 2}
    assert kinds["livecodebench"]["livecodebench/abc000_a"] == {"stdio": 3}  # 1 public + 2 private
    assert kinds["livecodebench"]["livecodebench/3000"] == {"assert": 3}
    assert kinds["mbpp"]["mbpp/602"] == {"assert": 4}  # test_list + challenge_test_list
    assert kinds["mbppplus"]["mbppplus/601"] == {"assert": 3}  # one per input
    assert kinds["mbppplus"]["mbppplus/605"] == {"assert": 1}  # inputs are not literals: the whole program


def test_mbppplus_tests_keep_their_atol_and_imports():
    problems, _ = convert_rows("mbppplus", fixture_rows("mbppplus"))
    circle = next(p for p in problems if p["id"] == "mbppplus/604")
    assert all(t["assert_code"].startswith("import math\n") for t in circle["tests"])
    assert not any("numpy" in t["assert_code"] for t in circle["tests"])  # the sandbox has the standard library only
    last_line = circle["tests"][1]["assert_code"].rstrip().rsplit("\n", 1)[-1]
    assert last_line == "assertion(circle_area(*[2.5]), 19.634954084936208, 0.0001)"


def test_mbppplus_tolerance_rejects_a_wrong_float(pool):
    problems, _ = convert_rows("mbppplus", fixture_rows("mbppplus"))
    circle = next(p for p in problems if p["id"] == "mbppplus/604")
    tests = [TestCase.from_record(t) for t in circle["tests"]]
    close = "import math\ndef circle_area(r):\n    return 3.14159265 * r * r\n"
    off = "def circle_area(r):\n    return 3.2 * r * r\n"
    verdicts = pool.run_programs([(close, "python", tests, Limits()), (off, "python", tests, Limits())])
    assert all(v.passed for v in verdicts[0])
    assert [v.passed for v in verdicts[1]] == [False, False, True]  # r = 0 is right whatever pi is


def test_livecodebench_private_tests_refuse_pickles_that_load_globals():
    cases = [{"input": "1\n", "output": "1\n", "testtype": "stdin"}]
    encoded = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()
    assert decode_livecodebench_tests(encoded) == cases
    assert decode_livecodebench_tests(json.dumps(cases)) == cases  # early releases: plain JSON
    hostile = base64.b64encode(zlib.compress(pickle.dumps(print))).decode()  # a pickle that loads a global
    with pytest.raises(MalformedRow, match="bad_encoding"):
        decode_livecodebench_tests(hostile)


def test_humaneval_is_not_a_training_set():
    for name in ("humaneval", "openai_humaneval", "openai/openai_humaneval"):
        with pytest.raises(ValueError, match="evaluation set"):
            dataset_spec(name)
    assert dataset_spec("BAAI/TACO").name == "taco"


def test_prepare_writes_shards_that_grpo_loads(tmp_path):
    out = tmp_path / "taco"
    summary = prepare_dataset("BAAI/TACO", out, local=FIXTURES / "taco.jsonl", max_tests=1)
    assert summary["rows"] == 4 and summary["problems"] == 2 and summary["tests"] == 2
    assert summary["rejected"] == {"bad_json:input_output": 1, "unequal_inputs_outputs": 1}
    assert json.loads((out / "summary.json").read_text()) == summary
    problems = load_problems(str(out))
    assert [p["id"] for p in problems] == ["taco/train/0", "taco/train/1"]


def test_rl_prepare_command(tmp_path, capsys):
    out = tmp_path / "lcb"
    source = str(FIXTURES / "livecodebench.jsonl")
    code = main(["rl", "prepare", "livecodebench", "--from", source, "--out", str(out), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["problems"] == 2 and summary["rejected"] == {"bad_encoding:private_test_cases": 1}
    assert main(["rl", "prepare", "humaneval", "--from", str(FIXTURES), "--out", str(out)]) == 1
    assert "evaluation set" in capsys.readouterr().err


def test_a_line_that_is_not_json_is_counted_and_the_rest_load(tmp_path):
    path = tmp_path / "apps.jsonl"
    path.write_text((FIXTURES / "apps.jsonl").read_text() + "{not json\n")
    summary = prepare_dataset("apps", tmp_path / "out", local=path)
    assert summary["problems"] == 2 and summary["rows"] == 4
    assert summary["rejected"] == {"missing_field:input_output": 1, "not_json": 1}
