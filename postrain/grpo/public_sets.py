"""Public problem sets -> `rl_problem` shards: CodeContests, TACO, APPS, LiveCodeBench, MBPP and MBPP+.

    loopcoder rl prepare deepmind/code_contests --out data/rl/code_contests        # from the Hub
    loopcoder rl prepare taco --from TACO/ALL --out data/rl/taco                    # local files

    from loopcoder.postrain.grpo.public_sets import convert_rows
    problems, rejected = convert_rows("apps", rows)         # rejected: Counter of reasons

Rows are read in each dataset's own format (its Hub files: Parquet or JSONL; a local copy may also be
JSON or Arrow), one converter per dataset:

| dataset | Hub id | tests |
|---|---|---|
| `code_contests` | `deepmind/code_contests` | `public_tests`, `private_tests`, `generated_tests`: `{"input": [...], "output": [...]}` -> stdio |
| `taco` | `BAAI/TACO` | `input_output` JSON string: `inputs`, `outputs`, optional `fn_name` (call-based -> assert) |
| `apps` | `codeparrot/apps` | as TACO |
| `livecodebench` | `livecodebench/code_generation_lite` | `public_test_cases` JSON, `private_test_cases` base64(zlib(pickle(JSON))); `testtype` `stdin` or `functional` (`metadata.func_name`) |
| `mbpp` | `google-research-datasets/mbpp` | `test_list` + `challenge_test_list` asserts after `test_setup_code` (`sanitized`: `test_imports`) |
| `mbppplus` | `evalplus/mbppplus` | the `test` program: one assert test per `inputs`/`results` pair with its `atol` |

CodeContests, TACO and APPS rows go through `loopcoder.postrain.sandbox.problems.contest_row_to_problem`,
the loader `loopcoder sandbox convert` uses. A row that cannot become a problem is counted under its
reason (`missing_field:<name>`, `bad_json:<field>`, `no_tests`, `unequal_inputs_outputs`, `file_io`, ...)
and the other rows load. HumanEval is an evaluation set: it has no converter here.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import pickle
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from loopcoder.pipelines.io.row_files import ROW_FILE_SUFFIXES, read_rows
from loopcoder.postrain.sandbox.problems import DEFAULT_MEMORY_MB, _call_assert, _problem, contest_row_to_problem
from loopcoder.schemas import RL_PROBLEM, SchemaError

MBPP_TIME_LIMIT = 3.0
LIVECODEBENCH_TIME_LIMIT = 6.0  # LiveCodeBench's own per-test timeout


class MalformedRow(ValueError):
    """A row that cannot become a problem; the message is the counted reason."""


def _require(row: dict, *fields: str) -> None:
    for name in fields:
        if row.get(name) in (None, ""):
            raise MalformedRow(f"missing_field:{name}")


def _json_field(row: dict, name: str) -> Any:
    value = row.get(name)
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else None
        except json.JSONDecodeError:
            raise MalformedRow(f"bad_json:{name}") from None
    return value


def _limit_tests(problem: dict, max_tests: int | None) -> dict:
    if not problem["tests"]:
        raise MalformedRow("no_tests")
    if max_tests is not None:
        problem["tests"] = problem["tests"][:max_tests]
    return problem


def convert_code_contests(row: dict, index: int, split: str) -> dict:
    _require(row, "name", "description")
    if row.get("input_file") or row.get("output_file"):
        raise MalformedRow("file_io")  # the problem reads or writes named files, not stdin/stdout
    for block in ("public_tests", "private_tests", "generated_tests"):
        tests = row.get(block) or {}
        if len(tests.get("input") or []) != len(tests.get("output") or []):
            raise MalformedRow("unequal_inputs_outputs")
    problem = contest_row_to_problem(row, index, source="code_contests")
    problem["id"] = f"code_contests/{split}/{row['name']}"
    problem["source"] = "code_contests"  # the row's own `source` is the contest site's enum number
    return problem


def _convert_apps_style(row: dict, index: int, split: str, source: str, id_field: str | None) -> dict:
    _require(row, "question", "input_output")
    spec = _json_field(row, "input_output")
    if not isinstance(spec, dict):
        raise MalformedRow("bad_json:input_output")
    inputs, outputs = spec.get("inputs"), spec.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise MalformedRow("missing_field:input_output.inputs")
    if len(inputs) != len(outputs):
        raise MalformedRow("unequal_inputs_outputs")
    identifier = row.get(id_field) if id_field else None
    problem = contest_row_to_problem(
        {"question": row["question"], "input_output": spec, "time_limit": row.get("time_limit"),
         "memory_limit": row.get("memory_limit")},
        index, source=source,
    )  # fmt: skip
    problem["id"] = f"{source}/{split}/{identifier if identifier is not None else index}"
    starter = (row.get("starter_code") or "").strip()
    if starter:
        problem["prompt"] += f"\n\nUse this starter code:\n```python\n{starter}\n```\n"
    return problem


def convert_taco(row: dict, index: int, split: str) -> dict:
    return _convert_apps_style(row, index, split, "taco", None)


def convert_apps(row: dict, index: int, split: str) -> dict:
    return _convert_apps_style(row, index, split, "apps", "problem_id")


class _StringsOnlyUnpickler(pickle.Unpickler):
    """LiveCodeBench's private tests are a pickled JSON string: no global may be loaded, so a pickle that
    tries to call anything (code execution) fails instead of running."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"global {module}.{name} refused")


def decode_livecodebench_tests(value: str) -> list[dict]:
    """`private_test_cases`: plain JSON in early releases, else base64 of zlib of a pickled JSON string."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    try:
        raw = _StringsOnlyUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(value.encode("utf-8"))))).load()
        return json.loads(raw)
    except Exception:  # noqa: BLE001 - any decoding failure is one counted reason
        raise MalformedRow("bad_encoding:private_test_cases") from None


def convert_livecodebench(row: dict, index: int, split: str) -> dict:
    _require(row, "question_id", "question_content", "public_test_cases")
    cases = _json_field(row, "public_test_cases")
    if not isinstance(cases, list):
        raise MalformedRow("bad_json:public_test_cases")
    if row.get("private_test_cases"):
        private = decode_livecodebench_tests(row["private_test_cases"])
        if not isinstance(private, list):
            raise MalformedRow("bad_encoding:private_test_cases")
        cases = cases + private
    metadata = _json_field(row, "metadata") or {}
    tests = []
    for case in cases:
        if not isinstance(case, dict) or "input" not in case or "output" not in case:
            raise MalformedRow("bad_test_case")
        if case.get("testtype") == "functional":
            function = metadata.get("func_name")
            if not function:
                raise MalformedRow("missing_field:metadata.func_name")
            try:
                arguments = [json.loads(line) for line in case["input"].split("\n")]
                expected = json.loads(case["output"])
            except json.JSONDecodeError:
                raise MalformedRow("bad_json:functional_test") from None
            tests.append({"assert_code": _call_assert(function, arguments, expected)})
        else:
            tests.append({"stdin": case["input"], "expected_stdout": case["output"]})
    starter = (row.get("starter_code") or "").strip()
    prompt = row["question_content"].rstrip() + "\n"
    if starter:
        prompt += f"\nUse this starter code:\n```python\n{starter}\n```\n"
    else:
        prompt += "\nRead the input from standard input and write the answer to standard output.\n"
    return _problem(
        f"livecodebench/{row['question_id']}", prompt, "python", tests, LIVECODEBENCH_TIME_LIMIT,
        DEFAULT_MEMORY_MB, "livecodebench",
    )  # fmt: skip


def convert_mbpp(row: dict, index: int, split: str) -> dict:
    """`full` rows (text, test_setup_code, challenge_test_list) and `sanitized` rows (prompt, test_imports)."""
    _require(row, "task_id", "test_list")
    text = row.get("text") or row.get("prompt")
    if not text:
        raise MalformedRow("missing_field:text")
    test_list = list(row["test_list"])
    setup = row.get("test_setup_code") or ""
    setup += "".join(f"{line}\n" for line in row.get("test_imports") or [])
    asserts = test_list + list(row.get("challenge_test_list") or [])
    tests = [{"assert_code": (setup.rstrip() + "\n" if setup.strip() else "") + code} for code in asserts if code]
    prompt = f"{text.strip()}\nYour code should pass this test:\n{test_list[0]}\n" if test_list else text
    return _problem(f"mbpp/{row['task_id']}", prompt, "python", tests, MBPP_TIME_LIMIT, DEFAULT_MEMORY_MB, "mbpp")


# MBPP+'s `assertion` helper without numpy (the sandbox's interpreter has the standard library only): the
# same rule, exact equality unless a tolerance applies, then |out - exp| within atol + rtol * |exp| per value.
STDLIB_ASSERTION = """import math


def is_floats(x) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    return False


def _allclose(out, exp, rtol, atol):
    if isinstance(exp, (list, tuple)):
        return isinstance(out, (list, tuple)) and len(out) == len(exp) and all(
            _allclose(o, e, rtol, atol) for o, e in zip(out, exp)
        )
    if isinstance(out, bool) or not isinstance(out, (int, float)):
        return False
    return math.isfinite(out) and abs(out - exp) <= atol + rtol * abs(exp)


def assertion(out, exp, atol):
    if atol == 0 and is_floats(exp):
        atol = 1e-6
    if out != exp and atol != 0:
        assert _allclose(out, exp, 1e-07, atol), f"out: {out}, exp: {exp}"
    else:
        assert out == exp, f"out: {out}, exp: {exp}"
"""


def _without_numpy(helpers: list[tuple[ast.stmt, str]]) -> list[str]:
    """The helpers' sources, with numpy's import and the `is_floats`/`assertion` helpers replaced by
    `STDLIB_ASSERTION` when nothing else uses numpy."""
    imports_numpy = [
        h for h, _ in helpers
        if isinstance(h, ast.Import | ast.ImportFrom) and any("numpy" in (a.name or "") for a in h.names)
        or isinstance(h, ast.ImportFrom) and (h.module or "").startswith("numpy")
    ]  # fmt: skip
    if not imports_numpy:
        return [source for _, source in helpers]
    replaced = {"is_floats", "assertion"}
    kept = [(h, s) for h, s in helpers if h not in imports_numpy and getattr(h, "name", None) not in replaced]
    if any(isinstance(n, ast.Name) and n.id in ("np", "numpy") for h, _ in kept for n in ast.walk(h)):
        return [source for _, source in helpers]
    return [STDLIB_ASSERTION] + [source for _, source in kept]


def split_mbppplus_test(test: str) -> list[str]:
    """MBPP+'s `test` program as one assert test per input.

    The program defines its helpers (`assertion(out, exp, atol)`, ...), then `inputs = [...]`,
    `results = [...]` and a loop calling `assertion(<fn>(*inp), exp, <atol>)`. Each test is the helpers
    plus one call; when the inputs are not literals (`inf`, `float("nan")`) or the loop has another shape,
    the whole program is one test. The numpy-based `assertion` helper becomes `STDLIB_ASSERTION`.
    """
    tree = ast.parse(test)
    assigned, helpers, rest, loop = {}, [], [], None
    for statement in tree.body:
        is_name = isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Name)
        if is_name and statement.targets[0].id in ("inputs", "results"):
            assigned[statement.targets[0].id] = statement.value
            rest.append(ast.get_source_segment(test, statement))
        elif isinstance(statement, ast.For | ast.Assign | ast.Expr):
            loop = statement if isinstance(statement, ast.For) else loop
            rest.append(ast.get_source_segment(test, statement))
        else:
            helpers.append((statement, ast.get_source_segment(test, statement)))
    prelude = "\n\n".join(_without_numpy(helpers)).rstrip() + "\n\n"
    whole = [prelude + "\n".join(rest) + "\n"]
    if loop is None or set(assigned) != {"inputs", "results"}:
        return whole
    calls = [n for n in ast.walk(loop) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "assertion"]
    if len(calls) != 1 or len(calls[0].args) != 3 or not isinstance(calls[0].args[0], ast.Call):
        return whole
    function = ast.unparse(calls[0].args[0].func)
    atol = ast.unparse(calls[0].args[2])
    try:
        inputs = ast.literal_eval(assigned["inputs"])
        results = ast.literal_eval(assigned["results"])
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return whole
    if len(inputs) != len(results):
        raise MalformedRow("unequal_inputs_outputs")
    return [
        f"{prelude}assertion({function}(*{inp!r}), {exp!r}, {atol})\n"
        for inp, exp in zip(inputs, results, strict=True)
    ]


def convert_mbppplus(row: dict, index: int, split: str) -> dict:
    _require(row, "task_id", "prompt", "test")
    try:
        programs = split_mbppplus_test(row["test"])
    except SyntaxError:
        raise MalformedRow("bad_syntax:test") from None
    imports = "".join(f"{line}\n" for line in row.get("test_imports") or [])
    tests = [{"assert_code": imports + program} for program in programs]
    task = str(row["task_id"]).removeprefix("Mbpp/")
    return _problem(
        f"mbppplus/{task}", row["prompt"].strip() + "\n", "python", tests, MBPP_TIME_LIMIT, DEFAULT_MEMORY_MB,
        "mbppplus",
    )  # fmt: skip


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    hub_id: str
    default_split: str
    patterns: tuple[str, ...]  # Hub files of a split, `{split}` filled in; the first pattern with files is read
    convert: Callable[[dict, int, str], dict]

    def hub_patterns(self, split: str) -> list[str]:
        return [p.format(split=split) for p in self.patterns]


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "code_contests", "deepmind/code_contests", "train", ("data/{split}-*.parquet",), convert_code_contests
        ),
        DatasetSpec("taco", "BAAI/TACO", "train", ("ALL/{split}-*.parquet",), convert_taco),
        DatasetSpec("apps", "codeparrot/apps", "train", ("{split}.jsonl",), convert_apps),
        DatasetSpec(
            "livecodebench", "livecodebench/code_generation_lite", "test", ("{split}*.jsonl",), convert_livecodebench
        ),
        DatasetSpec("mbpp", "google-research-datasets/mbpp", "train", ("full/{split}-*.parquet",), convert_mbpp),
        DatasetSpec(
            "mbppplus", "evalplus/mbppplus", "test", ("{split}.jsonl", "data/{split}-*.parquet"), convert_mbppplus
        ),
    )
}
EVALUATION_ONLY = {"humaneval", "openai_humaneval", "openai/openai_humaneval", "evalplus/humanevalplus"}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of a dataset by short name or Hub id; HumanEval is refused (it is the evaluation set)."""
    if name.lower() in EVALUATION_ONLY:
        raise ValueError(f"{name} is an evaluation set and is not prepared for training (see docs/rl_data.md)")
    for spec in DATASETS.values():
        if name in (spec.name, spec.hub_id):
            return spec
    known = ", ".join(f"{s.name} ({s.hub_id})" for s in DATASETS.values())
    raise ValueError(f"unknown dataset {name!r}; known: {known}")


def convert_rows(
    dataset: str, rows: Iterable[dict], split: str | None = None, max_tests: int | None = None
) -> tuple[list[dict], Counter]:
    """Valid `rl_problem` records of the rows that convert, and the others counted by reason."""
    spec = dataset_spec(dataset)
    split = split or spec.default_split
    problems, rejected, seen = [], Counter(), set()
    for index, row in enumerate(rows):
        try:
            if not isinstance(row, dict):
                raise MalformedRow("not_an_object")
            problem = _limit_tests(spec.convert(row, index, split), max_tests)
            RL_PROBLEM.from_records([problem])
        except MalformedRow as error:
            rejected[str(error)] += 1
            continue
        except (SchemaError, pa.ArrowInvalid, pa.ArrowTypeError):
            rejected["schema"] += 1
            continue
        if problem["id"] in seen:
            rejected["duplicate_id"] += 1
            continue
        seen.add(problem["id"])
        problems.append(problem)
    return problems, rejected


def dataset_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(ROW_FILE_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no {', '.join(ROW_FILE_SUFFIXES)} files under {path}")
    return files


def download(spec: DatasetSpec, split: str, revision: str | None = None) -> list[Path]:
    """The Hub files of one split (snapshot_download into the Hugging Face cache: a rerun does not fetch again)."""
    from fnmatch import fnmatch

    from huggingface_hub import snapshot_download

    patterns = spec.hub_patterns(split)
    folder = Path(snapshot_download(spec.hub_id, repo_type="dataset", revision=revision, allow_patterns=patterns))
    for pattern in patterns:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and fnmatch(str(p.relative_to(folder)), pattern))
        if files:
            return files
    raise FileNotFoundError(f"{spec.hub_id}: no file of split {split!r} matches {patterns}")


def prepare_dataset(
    dataset: str,
    out: str | Path,
    local: str | Path | None = None,
    split: str | None = None,
    revision: str | None = None,
    max_rows: int | None = None,
    max_tests: int | None = None,
    rows_per_shard: int = 2000,
) -> dict[str, Any]:
    """Reads a dataset (local files, else the Hub), converts it and writes `rl_problem` shards under `out`.

    Returns (and writes as `out/summary.json`) the counts: rows, problems, tests, rejected by reason.
    """
    from loopcoder.pipelines.io.writers import ShardWriter, atomic_write_json

    spec = dataset_spec(dataset)
    split = split or spec.default_split
    if local is not None:
        local = Path(local)
        if not local.exists():
            raise FileNotFoundError(f"{local} does not exist")
        files = dataset_files(local)
    else:
        files = download(spec, split, revision)
    rejected: Counter = Counter()

    def rows() -> Iterator[Any]:
        count = 0
        for path in files:
            for row in read_rows(path, rejected):
                if max_rows is not None and count >= max_rows:
                    return
                count += 1
                yield row

    counted = _Counted(rows())
    problems, conversion_rejects = convert_rows(spec.name, counted, split, max_tests)
    rejected.update(conversion_rejects)
    out = Path(out)
    for stale in out.glob("part-*.parquet"):
        stale.unlink()
    with ShardWriter(out, RL_PROBLEM, rows_per_shard) as writer:
        writer.write_all(problems)
    summary = {
        "dataset": spec.hub_id,
        "split": split,
        "files": [str(p) for p in files],
        "rows": counted.count + rejected.get("not_json", 0),
        "problems": len(problems),
        "tests": sum(len(p["tests"]) for p in problems),
        "tests_by_kind": dict(
            Counter("assert" if t["assert_code"] else "stdio" for p in problems for t in p["tests"])
        ),
        "rejected": dict(sorted(rejected.items())),
        "shards": [Path(p).name for p in writer.paths],
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


class _Counted:
    """Counts the items an iterator yields."""

    def __init__(self, items: Iterator[Any]):
        self.items = items
        self.count = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.items:
            self.count += 1
            yield item
