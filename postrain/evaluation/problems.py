"""pass@k on `rl_problem` sets (HumanEval or any file of that schema): generate, run in the sandbox, estimate.

    from loopcoder.postrain.evaluation.problems import evaluate_problems
    from loopcoder.postrain.sandbox.problems import load_humaneval
    result = evaluate_problems(load_humaneval(), generator, n=10, temperature=0.8, ks=(1, 10))
    result.summary["pass@1"], result.rows[0]["c"]

A completion becomes a program in one of two ways (`program_mode`):

* `continue`: the prompt is code and the model continues it (HumanEval): program = prompt + completion,
  the completion cut at the HumanEval stop sequences (a new top-level `def`, `class`, `if`, `print`, `#`);
* `fenced`: the model answers in prose with code (chat models, contest statements): the program is the last
  fenced code block of the completion, as for the GRPO reward; no block = failed;
* `auto` (default): `fenced` when the completion holds a fenced block, else `continue`.

A sample passes when every test of its problem passes. A sandbox failure (`sandbox_error`, an
infrastructure fault, never the program's) counts as failed and is counted in `summary["sandbox_errors"]`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from loopcoder.postrain.rewards.code_rewards import extract_code
from loopcoder.postrain.sandbox.execution import Limits
from loopcoder.postrain.sandbox.pool import SandboxPool, get_pool
from loopcoder.postrain.sandbox.runners import TestCase

from .generation import Generator
from .metrics import pass_at_k

logger = logging.getLogger(__name__)

HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
PROGRAM_MODES = ("auto", "continue", "fenced")


@dataclass
class ProblemsResult:
    summary: dict
    rows: list[dict] = field(default_factory=list)  # one per problem: id, n, c, pass@k, samples


def build_program(prompt: str, completion: str, mode: str = "auto") -> str | None:
    """The program a completion stands for (see the module docstring); None when there is none."""
    if mode not in PROGRAM_MODES:
        raise ValueError(f"program_mode must be one of {PROGRAM_MODES}, got {mode!r}")
    code = extract_code(completion) if mode in ("auto", "fenced") else None
    if code is not None:
        return code
    if mode == "fenced":
        return None
    return prompt + completion


def evaluate_problems(
    problems: Sequence[dict],
    generator: Generator,
    n: int = 1,
    temperature: float = 0.0,
    ks: Sequence[int] = (1,),
    max_new_tokens: int = 384,
    stop: Sequence[str] | None = None,
    program_mode: str = "auto",
    prompt_template=None,
    pool: SandboxPool | None = None,
) -> ProblemsResult:
    """Generates `n` samples per problem, runs them on the problem's tests and reports pass@k for each k <= n.

    Args:
        stop: stop sequences; default the HumanEval ones when `program_mode` is `continue`/`auto`, none for `fenced`.
        prompt_template: optional callable prompt -> model input (e.g. a chat template); the program is still
            built from the problem's own prompt.
        pool: the sandbox pool; default the process-wide one.
    """
    ks = sorted({int(k) for k in ks if int(k) <= n})
    if not ks:
        raise ValueError(f"no k in the requested list is <= n = {n}; sample more (--n-samples)")
    if stop is None:
        stop = () if program_mode == "fenced" else HUMANEVAL_STOP
    inputs = [prompt_template(p["prompt"]) if prompt_template else p["prompt"] for p in problems]
    started = time.perf_counter()
    completions = generator.generate(inputs, n=n, temperature=temperature, max_new_tokens=max_new_tokens, stop=stop)
    generation_seconds = time.perf_counter() - started
    requests, slots = [], []
    for index, (problem, samples) in enumerate(zip(problems, completions, strict=True)):
        tests = [TestCase.from_record(t) for t in problem["tests"]]
        limits = Limits(
            cpu_seconds=float(problem.get("time_limit_seconds") or 2.0),
            memory_mb=int(problem.get("memory_limit_mb") or 1024),
        )
        for sample_index, completion in enumerate(samples):
            program = build_program(problem["prompt"], completion, program_mode)
            if program is not None and tests:
                requests.append((program, problem.get("language") or "python", tests, limits))
                slots.append((index, sample_index, program))
    started = time.perf_counter()
    verdict_lists = (pool or get_pool()).run_programs(requests)
    sandbox_seconds = time.perf_counter() - started
    outcome: dict[tuple[int, int], tuple[str, list]] = {}
    sandbox_errors = 0
    for (index, sample_index, program), verdicts in zip(slots, verdict_lists, strict=True):
        sandbox_errors += any(v.infrastructure_error for v in verdicts)
        outcome[(index, sample_index)] = (program, verdicts)
    rows = []
    for index, (problem, samples) in enumerate(zip(problems, completions, strict=True)):
        records = []
        for sample_index, completion in enumerate(samples):
            program, verdicts = outcome.get((index, sample_index), (None, []))
            passed = bool(verdicts) and all(v.passed for v in verdicts)
            records.append(
                {
                    "completion": completion,
                    "passed": passed,
                    "verdicts": [v.verdict for v in verdicts] if verdicts else ["no_program"],
                    "detail": next((v.detail for v in verdicts if not v.passed and v.detail), ""),
                }
            )
        c = sum(r["passed"] for r in records)
        row = {"id": problem["id"], "n": len(samples), "c": c}
        row.update({f"pass@{k}": pass_at_k(len(samples), c, k) for k in ks})
        row["samples"] = records
        rows.append(row)
    summary = {f"pass@{k}": sum(r[f"pass@{k}"] for r in rows) / len(rows) if rows else float("nan") for k in ks}
    summary.update(
        problems=len(rows),
        samples_per_problem=n,
        temperature=temperature,
        solved=sum(r["c"] > 0 for r in rows),
        sandbox_errors=sandbox_errors,
        generation_seconds=round(generation_seconds, 3),
        sandbox_seconds=round(sandbox_seconds, 3),
    )
    logger.info("%s", {k: v for k, v in summary.items() if k.startswith("pass@")})
    return ProblemsResult(summary, rows)


__all__ = ["HUMANEVAL_STOP", "PROGRAM_MODES", "ProblemsResult", "build_program", "evaluate_problems"]
