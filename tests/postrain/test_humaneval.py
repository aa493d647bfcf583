"""HumanEval through the pass-rate reward: canonical solutions score 1.0, `pass` bodies score below 1.0.

All 164 problems run in the default suite (about 5 s per variant on 2 cores under bwrap); set
LOOPCODER_SLOW=1 to also run them under the rlimit fallback.
"""

import os

import pytest

from loopcoder.postrain.rewards.code_rewards import make_pass_rate_reward
from loopcoder.postrain.sandbox.pool import SandboxPool
from loopcoder.postrain.sandbox.problems import humaneval_solutions, load_humaneval
from loopcoder.schemas import RL_PROBLEM

from .conftest import make_sandbox

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def problems():
    return load_humaneval()


def score(pool, problems, variant):
    solutions = humaneval_solutions(variant)
    reward = make_pass_rate_reward(pool=pool)
    completions = [f"```python\n{solutions[p['id']]}```" for p in problems]
    columns = {
        key: [p[key] for p in problems] for key in ("tests", "language", "time_limit_seconds", "memory_limit_mb", "id")
    }
    return dict(zip([p["id"] for p in problems], reward(completions, **columns), strict=True))


def test_humaneval_loads_as_rl_problems(problems):
    assert len(problems) == 164
    RL_PROBLEM.from_records(problems)
    assert all(p["tests"][0]["assert_code"].rstrip().endswith(")") for p in problems)
    assert "check(has_close_elements)" in problems[0]["tests"][0]["assert_code"]


@pytest.mark.parametrize(
    "mode",
    [
        "bwrap",
        pytest.param(
            "rlimit",
            marks=[
                pytest.mark.slow,
                pytest.mark.skipif(os.environ.get("LOOPCODER_SLOW") != "1", reason="set LOOPCODER_SLOW=1"),
            ],
        ),
    ],
)
def test_all_canonical_solutions_score_one_and_pass_bodies_score_below(problems, mode):
    pool = SandboxPool(workers=None, sandbox=make_sandbox(mode))
    try:
        canonical = score(pool, problems, "canonical")
        assert [k for k, v in canonical.items() if v != 1.0] == []
        stubs = score(pool, problems, "pass")
        assert [k for k, v in stubs.items() if v is None or v >= 1.0] == []
    finally:
        pool.close()


def test_fast_subset_under_the_fallback(problems):
    pool = SandboxPool(workers=None, sandbox=make_sandbox("rlimit"))
    try:
        subset = problems[:20]
        assert set(score(pool, subset, "canonical").values()) == {1.0}
        assert max(score(pool, subset, "pass").values()) < 1.0
    finally:
        pool.close()


def test_checks_use_the_reference_helpers_of_the_prompt(problems, best_sandbox):
    """HumanEval/32 checks `find_zero` with the prompt's `poly`: a program that redefines `poly` to return 0 (so
    that any root "works") must not be believed."""
    problem = next(p for p in problems if p["id"] == "HumanEval/32")
    cheat = "def poly(xs, x):\n    return 0.0\n\ndef find_zero(xs):\n    return 0.0\n"
    pool = SandboxPool(workers=2, sandbox=best_sandbox)
    try:
        rewards = make_pass_rate_reward(pool=pool)([f"```python\n{cheat}```"], tests=[problem["tests"]])
    finally:
        pool.close()
    assert rewards == [0.0]
