"""Code rewards for GRPO: pass rate over sandboxed tests, a format reward, and weighted combinations.

Every reward is a plain function `(completions, **kwargs) -> list[float | None]`, the shape TRL's
`GRPOTrainer(reward_funcs=[...])` calls: `completions` is a list of strings, or of message lists
(`[{"role": "assistant", "content": ...}]`) for conversational data, and every other dataset column comes
as a keyword argument holding one value per completion. The pass-rate reward reads the `rl_problem`
columns `tests`, `language`, `time_limit_seconds`, `memory_limit_mb` and `id`.

`None` means "could not be scored" (a sandbox failure, or a problem without tests): TRL turns it into NaN
and leaves the completion out of the group baseline. A program's own failure is never `None`: no code
block, a compile error or a crash all score 0.

    >>> format_reward(["Here:\\n```python\\nprint(1)\\n```", "no code"])
    [1.0, 0.0]
"""

from __future__ import annotations

import ast
import hashlib
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

from loopcoder.postrain.sandbox.execution import Limits
from loopcoder.postrain.sandbox.pool import SandboxPool, get_pool
from loopcoder.postrain.sandbox.runners import TestCase, normalize_language

RewardFunction = Callable[..., list[float | None]]

DEFAULT_MAX_TESTS = 20
_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)


def completion_text(completion: str | list[dict] | dict) -> str:
    """The text of a completion, whether plain or conversational (the last message's content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    if completion:
        return str(completion[-1].get("content") or "")
    return ""


def extract_code(completion: str | list[dict], language: str | None = None) -> str | None:
    """The code of the last closed fenced block, or None when there is none.

    >>> extract_code("plan\\n```python\\nx = 1\\n```\\nthen\\n```python\\nprint(2)\\n```")
    'print(2)\\n'
    >>> extract_code("no fence") is None
    True
    """
    block = _last_block(completion)
    return block[1] if block is not None else None


def _last_block(completion: str | list[dict]) -> tuple[str, str] | None:
    """(language tag, code) of the last closed fenced block with non-blank code."""
    blocks = _FENCE.findall(completion_text(completion))
    if not blocks or not blocks[-1][1].strip():
        return None
    return blocks[-1][0], blocks[-1][1]


def format_reward(completions: Sequence, language: Sequence[str] | str | None = None, **kwargs: Any) -> list[float]:
    """1.0 when the completion has a closed, non-empty fenced code block whose last one parses, else 0.0.

    Python (the `language` column, else the fence's tag; untagged blocks count as Python) is checked with
    `ast.parse`; other languages only need a non-empty block.
    """
    languages = _per_completion(language, len(completions))
    rewards = []
    for completion, lang in zip(completions, languages, strict=True):
        block = _last_block(completion)
        if block is None:
            rewards.append(0.0)
            continue
        tag, code = block
        if normalize_language_or_none(lang or tag or "python") == "python":
            try:
                ast.parse(code)
            except (SyntaxError, ValueError):
                rewards.append(0.0)
                continue
        rewards.append(1.0)
    return rewards


def normalize_language_or_none(language: str | None) -> str | None:
    try:
        return normalize_language(language)
    except ValueError:
        return None


def _per_completion(value: Any, count: int) -> list:
    if isinstance(value, list | tuple):
        if len(value) != count:
            raise ValueError(f"got {len(value)} values for {count} completions")
        return list(value)
    return [value] * count


def select_tests(tests: Sequence[dict | TestCase], max_tests: int | None, seed_text: str = "") -> list[TestCase]:
    """At most `max_tests` tests, chosen deterministically per problem (seeded by its id) and kept in order."""
    cases = [t if isinstance(t, TestCase) else TestCase.from_record(t) for t in tests]
    if max_tests is None or len(cases) <= max_tests:
        return cases
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "little")
    chosen = sorted(random.Random(seed).sample(range(len(cases)), max_tests))
    return [cases[i] for i in chosen]


def make_pass_rate_reward(
    max_tests: int | None = DEFAULT_MAX_TESTS,
    max_timeouts: int | None = None,
    pool: SandboxPool | None = None,
    default_time_limit: float = 2.0,
    default_memory_mb: int = 1024,
) -> RewardFunction:
    """A pass-rate reward with its own settings.

    Args:
        max_tests: tests per problem (a deterministic subset when there are more); None for all.
        max_timeouts: early stop: after this many timeouts a program's remaining tests are skipped (and count
            as failed). None runs every test.
        pool: the sandbox pool; default the process-wide one from `get_pool()`.
        default_time_limit, default_memory_mb: used when the problem row does not give them.
    """

    def pass_rate(
        completions: Sequence,
        tests: Sequence[Sequence[dict]] | None = None,
        language: Sequence[str] | str | None = "python",
        time_limit_seconds: Any = None,
        memory_limit_mb: Any = None,
        id: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        """Fraction of the problem's tests passed by the code in each completion's last fenced block."""
        count = len(completions)
        if tests is None:
            raise ValueError("pass_rate needs the `tests` column of the rl_problem dataset")
        tests = _per_completion(tests, count) if not _is_single_problem(tests) else [tests] * count
        languages = _per_completion(language, count)
        time_limits = _per_completion(time_limit_seconds, count)
        memory_limits = _per_completion(memory_limit_mb, count)
        ids = _per_completion(id, count)
        requests, slots = [], []
        rewards: list[float | None] = [0.0] * count
        for index, completion in enumerate(completions):
            selected = select_tests(tests[index] or [], max_tests, str(ids[index] or ""))
            if not selected:
                rewards[index] = None
                continue
            code = extract_code(completion)
            if code is None:
                continue
            limits = Limits(
                cpu_seconds=float(time_limits[index] or default_time_limit),
                memory_mb=int(memory_limits[index] or default_memory_mb),
            )
            requests.append((code, languages[index] or "python", selected, limits))
            slots.append(index)
        sandbox_pool = pool or get_pool()
        verdict_counts: dict[str, int] = {}
        for index, verdicts in zip(slots, sandbox_pool.run_programs(requests, max_timeouts), strict=True):
            for verdict in verdicts:
                verdict_counts[verdict.verdict] = verdict_counts.get(verdict.verdict, 0) + 1
            if any(v.infrastructure_error for v in verdicts):
                rewards[index] = None
            else:
                rewards[index] = sum(v.passed for v in verdicts) / len(verdicts)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and verdict_counts:
            total = sum(verdict_counts.values())
            for name, value in verdict_counts.items():
                log_metric(f"sandbox/{name}_frac", value / total)
        return rewards

    return pass_rate


def _is_single_problem(tests: Any) -> bool:
    """True when `tests` is one problem's list of test dicts rather than one list per completion."""
    return bool(tests) and isinstance(tests[0], dict | TestCase)


pass_rate_reward = make_pass_rate_reward()
pass_rate_reward.__doc__ = "Pass rate over up to 20 tests per problem, on the shared sandbox pool."


def combine_rewards(weighted: Sequence[tuple[RewardFunction, float]], name: str = "combined") -> RewardFunction:
    """One reward that is the weighted sum of others; None if any part is None.

    TRL can also weight several `reward_funcs` itself (`GRPOConfig.reward_weights`) and logs each one; use
    this when a single scalar must be logged or passed on.

    >>> combine_rewards([(format_reward, 0.5), (format_reward, 0.5)])(["```python\\nx = 1\\n```"])
    [1.0]
    """

    def combined(completions: Sequence, **kwargs: Any) -> list[float | None]:
        parts = [(fn(completions, **kwargs), weight) for fn, weight in weighted]
        out: list[float | None] = []
        for index in range(len(completions)):
            values = [(rewards[index], weight) for rewards, weight in parts]
            out.append(None if any(v is None for v, _ in values) else sum(v * w for v, w in values))
        return out

    combined.__name__ = name
    return combined


REWARD_FUNCTIONS: dict[str, RewardFunction] = {"pass_rate": pass_rate_reward, "format": format_reward}


def get_reward_function(name: str) -> RewardFunction:
    """A reward by registered name (`pass_rate`, `format`) or dotted path (`package.module.function`)."""
    if name in REWARD_FUNCTIONS:
        return REWARD_FUNCTIONS[name]
    if "." in name:
        import importlib

        module_name, _, attribute = name.rpartition(".")
        return getattr(importlib.import_module(module_name), attribute)
    raise ValueError(f"unknown reward {name!r}; known: {', '.join(sorted(REWARD_FUNCTIONS))}, or a dotted path")
