"""The benchmark registry and its three users (clean job, SFT, RL mining) on real benchmark rows."""

import json
import re
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopcoder.pipelines.io import filesystem as fs
from loopcoder.pipelines.rl.mining import decontaminate_candidates
from loopcoder.pipelines.samples.sft_dedup import SftDecontaminationConfig, SftDecontaminator
from loopcoder.pipelines.steps.benchmarks import (
    BUILTIN_BENCHMARKS,
    benchmark_spec,
    benchmark_specs,
    humaneval_rows,
    infilling_rows,
    load_benchmark,
)
from loopcoder.pipelines.steps.decontamination import Decontaminator

REPO_ROOT = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
MBPP_ROWS = REPO_ROOT / "tests" / "fixtures" / "benchmarks" / "mbpp.jsonl"
MULTI_LINE = "humaneval_infilling_multi_line"
SINGLE_LINE = "humaneval_infilling_single_line"


def doc(content: str) -> dict:
    size = len(content.encode())
    return {
        "id": "i",
        "repo": "r",
        "path": "a.py",
        "language": "Python",
        "content": content,
        "size_bytes": size,
        "decisions": [],
    }


def chat(conversation_id: str, user: str, assistant: str) -> dict:
    return {
        "id": conversation_id,
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
        "source": "t", "difficulty": None, "difficulty_tier": None, "kind": "user", "language": None,
    }  # fmt: skip


def fim_document(task: dict) -> str:
    """An infilling task as a FIM training example, prefix-suffix-middle order."""
    return f"<fim_prefix>{task['prompt']}<fim_suffix>{task['suffix']}<fim_middle>{task['canonical_solution']}"


def rename_first_variable(text: str) -> str:
    names = re.findall(r"\bfor (\w+) in|\b(\w+) = ", text)
    if not names:
        return text
    name = names[0][0] or names[0][1]
    return re.sub(rf"\b{name}\b", f"{name}_renamed", text)


def unrelated_sources() -> list[str]:
    files = sorted((STDLIB / "json").glob("*.py")) + [STDLIB / "statistics.py", STDLIB / "textwrap.py"]
    files += sorted((REPO_ROOT / "pipelines").rglob("*.py"))
    return [path.read_text() for path in files]


@pytest.fixture(scope="module")
def humaneval():
    return humaneval_rows()


def test_infilling_variants_are_derived_as_published(humaneval):
    counts = {variant: len(infilling_rows(variant, humaneval)) for variant in ("single_line", "multi_line")}
    assert counts == {"single_line": 1033, "multi_line": 5815}  # the published task counts
    spans = infilling_rows("random_span", humaneval)
    assert len(spans) == 1640 and len(infilling_rows("random_span_light", humaneval)) == 164
    assert spans == infilling_rows("random_span", humaneval)  # seeded by task id: the same on every run
    by_id = {p["task_id"]: p for p in humaneval}
    for task in infilling_rows("multi_line", humaneval) + spans:
        source = by_id[re.search(r"HumanEval/\d+", task["task_id"]).group(0)]
        assert (
            task["prompt"] + task["canonical_solution"] + task["suffix"]
            == source["prompt"] + source["canonical_solution"]
        )
        assert task["canonical_solution"]
    single = [t for t in infilling_rows("single_line", humaneval) if t["task_id"].startswith("SingleLine")]
    assert all(t["canonical_solution"].count("\n") <= 1 and t["canonical_solution"].strip() for t in single)
    assert single[0]["task_id"] == "SingleLineInfilling/HumanEval/0/L0"
    problems = load_benchmark(BUILTIN_BENCHMARKS[SINGLE_LINE])
    assert len(problems) == 164 and problems[0].key == "HumanEval/0"  # tasks grouped by their HumanEval problem


@pytest.fixture(scope="module")
def infilling_step():
    return Decontaminator(benchmarks=[SINGLE_LINE, MULTI_LINE])


def test_an_edited_infilling_task_is_removed_and_counted_under_its_variant(humaneval, infilling_step):
    multi = [t for t in infilling_rows("multi_line", humaneval) if t["canonical_solution"].count("\n") >= 3]
    leaked = multi[::97]
    assert len(leaked) >= 20
    for task in leaked:
        edited = dict(task, canonical_solution="    # fill in\n" + rename_first_variable(task["canonical_solution"]))
        edited["prompt"] = edited["prompt"].replace('"""', "'''")
        assert infilling_step.run(doc(fim_document(edited))) in ("benchmark_substring", "benchmark_ngram")
    assert sum(infilling_step.stats.extra.values()) == len(leaked)
    assert {key.split(":")[1] for key in infilling_step.stats.extra} <= {SINGLE_LINE, MULTI_LINE}
    hit = infilling_step.match(fim_document(leaked[0]))
    assert hit.benchmark in (SINGLE_LINE, MULTI_LINE)
    assert hit.problem == re.search(r"HumanEval/\d+", leaked[0]["task_id"]).group(0)


def test_unrelated_code_and_single_solution_lines_are_kept(humaneval, infilling_step):
    for text in unrelated_sources():
        assert infilling_step.match(text) is None
    # a middle of 50+ characters alone is ordinary code, not the task
    line = "    return [x for x in strings if x.startswith(prefix)]\n"
    assert line in {t["canonical_solution"] for t in infilling_rows("single_line", humaneval)}
    assert infilling_step.match("def starting_with(strings, prefix):\n" + line) is None


def test_sft_conversation_holding_an_infilling_task_is_removed(humaneval):
    decontaminator = SftDecontaminator(SftDecontaminationConfig(benchmarks=[MULTI_LINE]))
    tasks = [t for t in infilling_rows("multi_line", humaneval) if t["canonical_solution"].count("\n") >= 2][::131]
    records = [
        chat(
            f"fim{number}",
            f"Fill in the missing lines:\n```python\n{task['prompt']}# TODO\n{task['suffix']}```",
            "```python\n" + rename_first_variable(task["canonical_solution"]) + "```",
        )
        for number, task in enumerate(tasks)
    ]
    unrelated = [
        chat(f"u{n}", "Explain this file.", f"```python\n{text}```") for n, text in enumerate(unrelated_sources())
    ]
    kept, removed = decontaminator(records + unrelated)
    assert kept == unrelated and removed == {f"contamination:{MULTI_LINE}": len(tasks)}


@pytest.fixture(scope="module")
def mbpp_rows():
    return [json.loads(line) for line in MBPP_ROWS.read_text().splitlines()]


def edited_mbpp_solution(row: dict) -> str:
    code = row["code"].replace("\r\n", "\n").replace("ch", "char")
    return "# " + row["text"].lower() + "\n" + code + "\n\n" + "\n".join(row["test_list"]) + "\n"


def test_mbpp_from_its_own_jsonl_and_from_hub_parquet(tmp_path, mbpp_rows):
    hub = tmp_path / "mbpp" / "full"  # the Hub dataset's layout
    hub.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(mbpp_rows), hub / "test-00000-of-00001.parquet")
    for location in (MBPP_ROWS, tmp_path / "mbpp"):
        step = Decontaminator(benchmarks=[{"name": "mbpp", "path": str(location), "format": "mbpp"}])
        assert [p.key for p in step.problems] == ["2", "11", "12"]
        assert step.run(doc(edited_mbpp_solution(mbpp_rows[1]))) is not None
        assert step.match(edited_mbpp_solution(mbpp_rows[1])).problem == "11"
        assert all(step.run(doc(text)) is None for text in unrelated_sources())
        assert sum(step.stats.extra.values()) == 1 and all(k.endswith(":mbpp") for k in step.stats.extra)


def test_a_benchmark_folder_in_object_storage_is_read_through_the_file_system_layer(s3_bucket, mbpp_rows):
    folder = f"{s3_bucket}/google-research-datasets/mbpp/full"
    fs.atomic_write_parquet(pa.Table.from_pylist(mbpp_rows), f"{folder}/test-00000-of-00001.parquet")
    step = Decontaminator(benchmarks=[{"name": "mbpp", "path": folder, "format": "mbpp"}])
    assert step.match(edited_mbpp_solution(mbpp_rows[2])).problem == "12"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Decontaminator(benchmarks=[{"name": "mbpp", "path": f"{s3_bucket}/missing", "format": "mbpp"}])


def test_mbpp_in_sft_and_rl_mining(mbpp_rows):
    benchmarks = [{"name": "mbpp", "path": str(MBPP_ROWS), "format": "mbpp"}]
    sft = SftDecontaminator(SftDecontaminationConfig(benchmarks=benchmarks))
    leaked = chat("leak", mbpp_rows[1]["text"], "```python\n" + edited_mbpp_solution(mbpp_rows[1]) + "```")
    kept, removed = sft([leaked, chat("ok", "Sum a list.", "```python\ndef total(xs):\n    return sum(xs)\n```")])
    assert [r["id"] for r in kept] == ["ok"] and removed == {"contamination:mbpp": 1}
    candidates = [
        {"id": "mined/a::remove_Occ", "kind": "unit_test", "prompt": 'def remove_Occ(s, char):\n    """Remove."""\n',
         "reference": edited_mbpp_solution(mbpp_rows[1])},
        {"id": "mined/a::clamp", "kind": "doctest", "prompt": "def clamp(x, lo, hi):\n",
         "reference": "def clamp(x, lo, hi):\n    return max(lo, min(x, hi))\n"},
    ]  # fmt: skip
    clean, contaminated = decontaminate_candidates(candidates, benchmarks + ["humaneval"])
    assert [c["id"] for c in clean] == ["mined/a::clamp"]
    assert [(c["id"], c["benchmark"], c["problem"]) for c in contaminated] == [("mined/a::remove_Occ", "mbpp", "11")]


def test_bad_benchmark_entries_fail_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="unknown built-in"):
        benchmark_spec("humaneval_plus_plus")
    with pytest.raises(ValueError, match="unknown format 'apps'"):
        benchmark_spec({"name": "x", "path": "x.jsonl", "format": "apps"})
    with pytest.raises(ValueError, match="repeated: humaneval"):
        benchmark_specs(["humaneval", "humaneval"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Decontaminator(benchmarks=[{"name": "x", "path": str(tmp_path / "missing.jsonl")}])
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "fine"}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2 is not JSON"):
        load_benchmark(benchmark_spec({"name": "x", "path": str(broken)}))
    other = tmp_path / "other.jsonl"
    other.write_text('{"question": "a benchmark of another shape"}\n')
    with pytest.raises(ValueError, match="no row holds any of the fields text, prompt, code, test_list"):
        load_benchmark(benchmark_spec({"name": "x", "path": str(other), "format": "mbpp"}))
