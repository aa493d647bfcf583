"""`loopcoder sandbox` commands: check, export-humaneval, run, convert."""

import json

import pytest

from loopcoder.jobs.cli import main
from loopcoder.postrain.sandbox.problems import load_humaneval, write_problems_jsonl

pytestmark = pytest.mark.timeout(300)


def test_check_prints_the_active_layers(capsys):
    assert main(["sandbox", "check"]) == 0
    out = capsys.readouterr().out
    assert "isolation" in out and "unprivileged uid" in out and "probe: ran as uid" in out


def test_run_scores_solutions_and_prints_a_summary(tmp_path, capsys):
    problems = load_humaneval()[:4]
    problems_path = tmp_path / "problems.jsonl"
    write_problems_jsonl(problems, problems_path)
    solutions = tmp_path / "solutions.jsonl"
    rows = [
        {"problem_id": problems[0]["id"], "code": problems[0]["prompt"] + "    return False\n"},
        {"problem_id": problems[1]["id"], "completion": "```python\nimport sys\nsys.exit(1)\n```"},
        {"problem_id": problems[2]["id"], "completion": "no code"},
    ]
    solutions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "results.jsonl"
    assert (
        main(
            [
                "sandbox",
                "run",
                "--problems",
                str(problems_path),
                "--solutions",
                str(solutions),
                "--json",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["solutions"] == 3 and summary["problems"] == 3
    assert summary["verdicts"]["runtime_error"] >= 2
    assert len(out.read_text().splitlines()) == 3
    assert main(["sandbox", "run", "--problems", str(problems_path), "--solutions", str(solutions)]) == 0
    assert "pass rate by problem" in capsys.readouterr().out


def test_export_humaneval_then_run_canonical_subset(tmp_path, capsys):
    problems, solutions = tmp_path / "he.jsonl", tmp_path / "he_solutions.jsonl"
    assert main(["sandbox", "export-humaneval", "--out", str(problems), "--solutions", str(solutions)]) == 0
    assert len(problems.read_text().splitlines()) == 164
    subset = tmp_path / "subset.jsonl"
    subset.write_text("".join(solutions.read_text().splitlines(keepends=True)[:10]))
    capsys.readouterr()
    assert main(["sandbox", "run", "--problems", str(problems), "--solutions", str(subset), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mean_pass_rate"] == 1.0 and summary["fully_passed"] == 10


def test_convert_and_unknown_problem_ids(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"name": "a", "description": "d", "public_tests": {"input": ["1\n"], "output": ["1\n"]}}) + "\n"
    )
    out = tmp_path / "problems.jsonl"
    assert main(["sandbox", "convert", "--input", str(rows), "--out", str(out)]) == 0
    assert "wrote 1 problems (1 tests)" in capsys.readouterr().out
    solutions = tmp_path / "solutions.jsonl"
    solutions.write_text(json.dumps({"problem_id": "missing", "code": "print(1)"}) + "\n")
    assert main(["sandbox", "run", "--problems", str(out), "--solutions", str(solutions)]) == 1
    assert "unknown problem id 'missing'" in capsys.readouterr().err
