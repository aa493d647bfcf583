"""SFT dedup on the distributed dedup stages, and decontamination against real HumanEval rows."""

import gzip
import json
import re
import sysconfig
from collections import Counter
from pathlib import Path

import pytest

from loopcoder.pipelines.dedup.minhash import MinhashConfig, MinhashSignatures, tokens
from loopcoder.pipelines.dedup.stages import run_dedup
from loopcoder.pipelines.samples.conversations import code_block, docstring_conversations
from loopcoder.pipelines.samples.sft_dedup import (
    SftDecontaminationConfig,
    SftDecontaminator,
    conversation_text,
    drop_duplicates,
    write_dedup_inputs,
)
from loopcoder.pipelines.steps.benchmarks import humaneval_path

REPO_ROOT = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def chat(conversation_id: str, user: str, assistant: str) -> dict:
    return {
        "id": conversation_id,
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
        "source": "t",
        "difficulty": None,
        "difficulty_tier": None,
        "kind": "user",
        "language": None,
    }


def real_conversations(paths: list[Path], repo: str) -> list[dict]:
    rows = [
        {"id": str(p), "repo": repo, "path": p.name, "language": "Python", "content": p.read_text()} for p in paths
    ]
    return docstring_conversations(rows)[0]


@pytest.fixture(scope="module")
def humaneval():
    with gzip.open(humaneval_path(), "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def decontaminator():
    return SftDecontaminator()


def small_edits(solution: str) -> str:
    """Renames the first assigned or loop variable everywhere and adds a comment line."""
    names = [a or b for a, b in re.findall(r"\bfor (\w+) in|\b(\w+) = ", solution)]
    if names:
        solution = re.sub(rf"\b{names[0]}\b", f"{names[0]}_renamed", solution)
    lines = solution.split("\n")
    lines.insert(1, "    # walk the input once and keep what the docstring asks for")
    return "\n".join(lines)


def test_every_humaneval_problem_with_an_edited_solution_is_removed(humaneval, decontaminator):
    records = []
    for number, problem in enumerate(humaneval):
        answer = "Here is one way:\n\n" + code_block(
            problem["prompt"] + small_edits(problem["canonical_solution"]), "python"
        )
        records.append(chat(f"c{number}", "Solve this:\n" + code_block(problem["prompt"], "python"), answer))
    kept, removed = decontaminator(records)
    assert kept == [] and removed == {"contamination:humaneval": len(humaneval)}
    assert decontaminator.match(records[17]) == ("humaneval", "HumanEval/17")


def test_an_edited_solution_alone_is_removed_when_it_is_long_enough_to_be_specific(humaneval, decontaminator):
    long_solutions = [p for p in humaneval if len(tokens(p["canonical_solution"])) >= 40]
    assert len(long_solutions) >= 20
    records = [
        chat(p["task_id"], "Write the function, please.", code_block(small_edits(p["canonical_solution"]), "python"))
        for p in long_solutions
    ]
    kept, removed = decontaminator(records)
    assert kept == [] and removed == {"contamination:humaneval": len(long_solutions)}


def test_unrelated_conversations_are_kept(humaneval, decontaminator):
    records = real_conversations(sorted((REPO_ROOT / "pipelines").rglob("*.py")), "loopcoder")
    records += real_conversations(sorted((STDLIB / "json").glob("*.py")), "json")
    records.append(
        chat(
            "names", "What does has_close_elements in HumanEval check?", "Whether two numbers are closer than a bound."
        )
    )
    whole_file = (STDLIB / "statistics.py").read_text()  # long, numeric, full of loops over lists
    records.append(chat("file", "Show me statistics.py", code_block(whole_file, "python")))
    assert len(records) >= 60
    kept, removed = decontaminator(records)
    assert removed == Counter() and kept == records


def test_a_benchmark_file_of_its_own_is_counted_under_its_name(tmp_path):
    solution = (
        "def checksum(blocks, modulus=65521):\n    acc, weight = 17, 1\n    for block in blocks:\n"
        "        weight = (weight + block) % modulus\n        acc = (acc * 31 + weight) % modulus\n"
        "    return (acc << 16) | weight\n"
    )
    path = tmp_path / "private.jsonl"
    path.write_text(json.dumps({"question": "Compute the rolling checksum.", "answer": solution}) + "\n")
    config = SftDecontaminationConfig(
        benchmarks=[{"name": "private", "path": str(path), "fields": ["question", "answer"]}]
    )
    decontaminator = SftDecontaminator(config)
    leaked = chat("leak", "checksum?", code_block(small_edits(solution), "python"))
    clean = chat("clean", "sum?", code_block("def total(xs):\n    return sum(xs)\n", "python"))
    kept, removed = decontaminator([leaked, clean])
    assert kept == [clean] and removed == {"contamination:private": 1}
    with pytest.raises(ValueError, match="unknown built-in"):
        SftDecontaminator(SftDecontaminationConfig(benchmarks=["mbpp_offline"]))


def test_exact_and_near_duplicates_are_removed_by_the_distributed_dedup_stages(ray_local, tmp_path):
    stdlib = real_conversations(sorted((STDLIB / "json").glob("*.py")), "json")

    def defining(name):
        return [r for r in stdlib if r["messages"][1]["content"].startswith(f"```python\ndef {name}(")]

    # json.dump and json.dumps share most of their docstring: a near-duplicate pair found in real code
    [dump], [dumps] = defining("dump"), defining("dumps")
    others = [r for r in stdlib if r not in (dump, dumps)][:4]
    long_answer = code_block("\n".join(f"def f{i}(x):\n    return x * {i} + {i * i}\n" for i in range(40)), "python")
    near_a = chat("near-a", "Write forty helpers.", long_answer)
    near_b = chat("near-b", "Write forty helpers.", long_answer.replace("x * 7 + 49", "x * 7 + 50"))
    copy = dict(others[0], id="0-copy")  # sorts before the original's id
    copy["messages"] = [m | {"content": m["content"].replace("\n", "  \r\n")} for m in copy["messages"]]
    assert conversation_text(copy) != conversation_text(others[0])
    tasks = {0: [*others[:2], dumps, near_b], 1: [*others[2:], dump, near_a, copy]}
    work = tmp_path / "sft_dedup"
    minhash = MinhashConfig()
    signer = MinhashSignatures(minhash)
    for task, records in tasks.items():
        write_dedup_inputs(work, task, records, signer)
    stats = run_dedup(work, exact=True, minhash=minhash, partitions=2)
    assert stats["exact"]["removed"] == 1 and stats["verified"]["duplicate_pairs"] >= 2
    removed = Counter()
    survivors = [r["id"] for task, records in tasks.items() for r in drop_duplicates(records, work, task, removed)]
    assert removed == {"exact_duplicate": 1, "near_duplicate": 2}
    # of each group the smallest id stays, whichever task holds it
    expected = [r["id"] for r in others[1:]] + ["near-a", "0-copy", min(dump["id"], dumps["id"])]
    assert sorted(survivors) == sorted(expected)
