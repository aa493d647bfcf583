"""Rewards in TRL's shape: pass rate k/n (timeouts included), code extraction, format reward, combination."""

import doctest

import pytest

from loopcoder.postrain.rewards import code_rewards
from loopcoder.postrain.rewards.code_rewards import (
    combine_rewards,
    extract_code,
    format_reward,
    get_reward_function,
    make_pass_rate_reward,
    select_tests,
)
from loopcoder.postrain.sandbox import runners
from loopcoder.postrain.sandbox.pool import SandboxPool
from loopcoder.postrain.sandbox.runners import INFRA_ERROR, TestVerdict

pytestmark = pytest.mark.timeout(180)

# passes even inputs, prints a wrong answer for odd ones, sleeps forever on 0
PROGRAM = """n = int(input())
if n == 0:
    import time
    time.sleep(100)
print(n * 2 if n % 2 == 0 else -1)
"""


def fenced(code: str, language: str = "python") -> str:
    return f"Let me think.\n```{language}\n{code}```\nDone."


def problem_tests(values):
    return [{"stdin": f"{n}\n", "expected_stdout": f"{n * 2}\n", "assert_code": None} for n in values]


@pytest.fixture
def pool(sandbox):
    box = SandboxPool(workers=2, sandbox=sandbox)
    yield box
    box.close()


def test_pass_rate_is_k_over_n_including_timeouts(pool):
    reward = make_pass_rate_reward(pool=pool)
    # 2 pass (2, 4), 2 wrong (1, 3), 1 timeout (0)
    tests = problem_tests([2, 4, 1, 3, 0])
    rewards = reward([fenced(PROGRAM)], tests=[tests], time_limit_seconds=[0.5], memory_limit_mb=[512])
    assert rewards == [pytest.approx(2 / 5)]
    assert pool.stats.verdicts.get("timeout") == 1


def test_pass_rate_batch_in_trl_shape(pool):
    reward = make_pass_rate_reward(pool=pool)
    tests = problem_tests([2, 4, 6, 1])
    completions = [
        fenced("print(int(input()) * 2)"),  # 4/4
        fenced(PROGRAM),  # 3/4
        [{"role": "assistant", "content": fenced("print(0)")}],  # conversational, 0/4
        "no code at all",  # 0
        fenced("raise SystemExit(1)"),  # 0
    ]
    rewards = reward(
        prompts=["p"] * 5,
        completions=completions,
        completion_ids=[[1]] * 5,
        tests=[tests] * 5,
        language=["python"] * 5,
        time_limit_seconds=[1.0] * 5,
        memory_limit_mb=[512] * 5,
        id=["a"] * 5,
        trainer_state=None,
        log_metric=lambda name, value: None,
    )
    assert rewards == [1.0, 0.75, 0.0, 0.0, 0.0]
    assert reward.__name__ == "pass_rate"


def test_pass_rate_uses_at_most_max_tests(pool):
    reward = make_pass_rate_reward(pool=pool, max_tests=5)
    tests = problem_tests(range(2, 32))
    assert reward([fenced("print(int(input()) * 2)")], tests=[tests], time_limit_seconds=[1.0]) == [1.0]
    assert pool.stats.requests == 5


def test_pass_rate_is_none_for_infrastructure_errors_and_problems_without_tests(pool, monkeypatch):
    reward = make_pass_rate_reward(pool=pool)
    assert reward([fenced("print(1)")], tests=[[]]) == [None]
    monkeypatch.setattr(pool, "run_programs", lambda requests, max_timeouts=None: [[TestVerdict(INFRA_ERROR)]])
    assert reward([fenced("print(1)")], tests=[problem_tests([1])]) == [None]


def test_select_tests_is_deterministic_per_problem():
    tests = problem_tests(range(40))
    first = select_tests(tests, 20, "problem-1")
    assert first == select_tests(tests, 20, "problem-1")
    assert len(first) == 20 and first != select_tests(tests, 20, "problem-2")
    assert len(select_tests(tests, None)) == 40


def test_extract_code_takes_the_last_closed_block():
    text = "```python\nfirst()\n```\ntext\n```cpp\nint main() {}\n```\n```python\nunclosed"
    assert extract_code(text) == "int main() {}\n"
    assert extract_code("```\n\n```") is None
    assert extract_code([{"role": "assistant", "content": "```py\nx = 1\n```"}]) == "x = 1\n"


def test_format_reward():
    completions = [fenced("print(1)\n"), fenced("def f(:\n"), "no fence", fenced("int main() {}\n", "cpp")]
    assert format_reward(completions) == [1.0, 0.0, 0.0, 1.0]
    assert format_reward(completions, language=["python", "python", "python", "cpp"]) == [1.0, 0.0, 0.0, 1.0]


def test_combine_rewards_weights_and_propagates_none():
    def constant(value):
        def reward(completions, **kwargs):
            return [value] * len(completions)

        return reward

    combined = combine_rewards([(constant(1.0), 0.8), (constant(0.5), 0.2)], name="mix")
    assert combined(["a", "b"]) == [pytest.approx(0.9)] * 2 and combined.__name__ == "mix"
    assert combine_rewards([(constant(None), 1.0), (constant(1.0), 1.0)])(["a"]) == [None]


def test_reward_lookup_by_name_or_dotted_path():
    assert get_reward_function("format") is format_reward
    assert get_reward_function("loopcoder.postrain.rewards.code_rewards.format_reward") is format_reward
    with pytest.raises(ValueError, match="known: format, pass_rate"):
        get_reward_function("nope")


def test_docstring_examples():
    for module in (code_rewards, runners):
        assert doctest.testmod(module).failed == 0
