"""RL problem mining on a small fixed corpus: every kept problem's reference passes all its tests in the sandbox
and its stub fails every one; broken, non-runnable, duplicate and benchmark-overlapping candidates are rejected
with their reason."""

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from loopcoder.pipelines.clean.job import JobConfig
from loopcoder.pipelines.clean.runner import run_job
from loopcoder.pipelines.rl.mining import (
    MiningConfig,
    ModuleIndex,
    doctest_tests,
    read_references,
    run_mining,
    strip_doctest_answers,
)
from loopcoder.pipelines.sample_corpus import SampleCorpusConfig, build_sample_corpus, default_config_path
from loopcoder.postrain.grpo.data import load_problems
from loopcoder.postrain.sandbox import Limits, SandboxPool, TestCase
from loopcoder.postrain.sandbox.problems import _humaneval_rows
from loopcoder.schemas import SOURCE_FILE

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "fixtures" / "rl_mining"
REPO = "fixture/toolbox"


def corpus_rows() -> list[dict]:
    rows = []
    for path in sorted(CORPUS.rglob("*.py")):
        relative = path.relative_to(CORPUS).as_posix()
        rows.append(_row(relative, path.read_text()))
    # a file holding HumanEval/0 (prompt and solution): a doctest candidate that must be reported, not kept
    first = _humaneval_rows()[0]
    rows.append(_row("toolbox/similar.py", first["prompt"] + first["canonical_solution"]))
    return rows


def _row(path: str, content: str) -> dict:
    return {
        "id": path, "repo": REPO, "path": path, "language": "Python", "content": content,
        "size_bytes": len(content.encode()), "license": None, "revision": None,
    }  # fmt: skip


@pytest.fixture(scope="module")
def mined(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("mining")
    shard = root / "input" / "part-00000.parquet"
    shard.parent.mkdir()
    pq.write_table(SOURCE_FILE.from_records(corpus_rows()), shard)
    config = MiningConfig(name="test", input=str(shard.parent), output=str(root / "out"), sandbox_workers=2)
    stats = run_mining(config)
    return config, root / "out", stats


EXPECTED_KEPT = {
    ("toolbox/text.py", "slugify"): "doctest",
    ("toolbox/text.py", "word_counts"): "doctest",
    ("toolbox/text.py", "first_word"): "doctest",
    ("toolbox/numbers.py", "clamp"): "doctest",
    ("toolbox/numbers.py", "mean"): "doctest",
    ("toolbox/numbers.py", "Interval.width"): "doctest",
    ("toolbox/numbers.py", "Interval.contains"): "doctest",
    ("toolbox/text.py", "clamp_words"): "unit_test",
    ("toolbox/text.py", "is_even"): "unit_test",
}


def test_mined_set_is_what_the_corpus_supports(mined):
    _, out, stats = mined
    references = read_references(out)
    assert {(r["path"], r["function"]): r["kind"] for r in references} == EXPECTED_KEPT
    assert stats["kept"] == len(EXPECTED_KEPT)
    assert stats["kept_by_repo"] == {REPO: {"doctest": 7, "unit_test": 2}}
    rejections = stats["rejections"]
    # add_one: its example's answer is wrong; shout: its answer is printed, which the checks never see
    assert rejections["doctest:reference_fails_failed"] == 2
    assert rejections["doctest:non_stdlib_import"] == 1  # as_array needs numpy
    assert rejections["doctest:relative_import"] == 1  # scaled needs `from .numbers import clamp`
    assert rejections["doctest:near_duplicate"] == 1  # vendor.slugify repeats text.slugify
    assert rejections["doctest:no_checkable_example"] == 1  # noop: no example has an answer
    contaminated = [json.loads(line) for line in (out / "contaminated.jsonl").read_text().splitlines()]
    assert [c["id"] for c in contaminated] == [f"mined/{REPO}/toolbox/similar.py::has_close_elements"]
    assert (contaminated[0]["benchmark"], contaminated[0]["problem"]) == ("humaneval", "HumanEval/0")
    assert stats["contaminated"]["count"] == 1 and stats["contaminated"]["by_benchmark"] == {"humaneval": 1}
    assert (out / "problems_by_repo.png").stat().st_size > 0


def assert_references_pass_and_stubs_fail(config: MiningConfig, out: Path) -> None:
    """Over the whole mined set: each reference passes every test of its shard record, each stub fails every one."""
    problems = {p["id"]: p for p in load_problems(str(out / "problems"))}
    references = read_references(out)
    assert set(problems) == {r["id"] for r in references}
    limits = Limits(cpu_seconds=config.time_limit_seconds, memory_mb=config.memory_limit_mb)
    requests = []
    for reference in references:
        tests = [TestCase.from_record(t) for t in problems[reference["id"]]["tests"]]
        assert tests and all(t.kind == "assert" for t in tests)
        requests += [(reference["reference"], "python", tests, limits), (reference["stub"], "python", tests, limits)]
    with SandboxPool(workers=2) as pool:
        verdicts = pool.run_programs(requests)
    for reference, passing, stub in zip(references, verdicts[::2], verdicts[1::2], strict=True):
        assert all(v.passed for v in passing), (reference["id"], [v.detail for v in passing if not v.passed])
        assert not any(v.passed for v in stub), reference["id"]


def test_every_kept_reference_passes_and_every_stub_fails(mined):
    config, out, _ = mined
    assert_references_pass_and_stubs_fail(config, out)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LOOPCODER_SLOW") != "1", reason="slow: set LOOPCODER_SLOW=1")
def test_sample_corpus_mined_set(ray_local, tmp_path):
    """The packaged configs end to end: sample corpus, clean job, mining; then the check over every kept problem."""
    corpus = SampleCorpusConfig.from_yaml(default_config_path())
    build_sample_corpus(corpus, tmp_path / "sample")
    clean = JobConfig.from_yaml(
        ROOT / "jobs" / "data" / "clean_dedup.yaml",
        {"inputs": [{"kind": "parquet", "path": str(tmp_path / "sample" / "source_files")}]},
    )
    run_job(clean, tmp_path / "clean")
    config = MiningConfig.from_yaml(
        ROOT / "jobs" / "data" / "rl_mining.yaml",
        {"input": str(tmp_path / "clean" / "files"), "output": str(tmp_path / "mined")},
    )
    stats = run_mining(config)
    assert stats["kept"] > 0 and stats["kept_by_repo"]
    assert_references_pass_and_stubs_fail(config, tmp_path / "mined")


def test_prompts_hide_the_answers_and_keep_the_examples(mined):
    _, out, _ = mined
    problems = {p["id"]: p for p in load_problems(str(out / "problems"))}
    slugify = problems[f"mined/{REPO}/toolbox/text.py::slugify"]
    assert '>>> slugify("Hello World")' in slugify["prompt"]
    assert "'hello-world'" not in slugify["prompt"]
    assert "_SEPARATOR = re.compile" in slugify["prompt"] and "import re" in slugify["prompt"]
    assert "numpy" not in slugify["prompt"]  # only the context the function needs
    assert len(slugify["tests"]) == 2 and slugify["source"] == "mined:doctest"
    width = problems[f"mined/{REPO}/toolbox/numbers.py::Interval.width"]["prompt"]
    # the class's members the method and its examples use, then the method last
    assert "def __init__" in width and "def __repr__" in width
    assert "def contains" not in width and "def as_array" not in width
    assert width.rstrip().endswith('"""') and ">>> Interval(2, 5).width()" in width
    parity = problems[f"mined/{REPO}/toolbox/text.py::is_even"]
    # `assert not is_even(3)` is passed by the `pass` stub (None is falsy): dropped
    assert len(parity["tests"]) == 2


def test_importing_the_library_copy_does_not_pass():
    """A function mined from the standard library must be defined by the program, not imported from it."""
    tests, _, _ = doctest_tests("quote", ">>> quote('a b')\n\"'a b'\"\n", max_tests=10)
    cases = [TestCase(assert_code=code) for code in tests]
    written = 'def quote(s):\n    return "\'" + s + "\'"\n'
    with SandboxPool(workers=2) as pool:
        verdicts = pool.run_programs(
            [("from shlex import quote\n", "python", cases, Limits()), (written, "python", cases, Limits())]
        )
    assert [v.passed for v in verdicts[0]] == [False]
    assert [v.passed for v in verdicts[1]] == [True]


def test_answer_stripping_and_example_tests():
    source = '''def f(x):
    """Doubles.

    >>> f(2)
    4
    >>> for i in range(2):
    ...     print(f(i))
    0
    2
    >>> f(None)
    Traceback (most recent call last):
    ...
    TypeError: unsupported operand

    Done.
    """
    return 2 * x
'''
    module = ModuleIndex(source)
    node = module.statements[0]
    stripped = strip_doctest_answers("".join(module.lines[node.body[0].lineno - 1 : node.body[0].end_lineno]))
    assert ">>> f(2)" in stripped and "...     print(f(i))" in stripped and "Done." in stripped
    assert "    4\n" not in stripped and "    0\n" not in stripped
    assert ">>> f(None)" in stripped and "Traceback" not in stripped and "    ...\n" not in stripped
    tests, names, skipped = doctest_tests("f", ">>> f(2)\n4\n>>> y = f(1)\n>>> y + 1\n3\n", max_tests=10)
    assert len(tests) == 2 and not skipped
    assert "y = f(1)" in tests[1] and names == {"f"}
