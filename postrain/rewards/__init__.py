"""Reward functions for GRPO, in TRL's shape: `(completions, **kwargs) -> list[float | None]`."""

from .code_rewards import (
    REWARD_FUNCTIONS,
    combine_rewards,
    extract_code,
    format_reward,
    get_reward_function,
    make_pass_rate_reward,
    pass_rate_reward,
)

__all__ = [
    "REWARD_FUNCTIONS",
    "combine_rewards",
    "extract_code",
    "format_reward",
    "get_reward_function",
    "make_pass_rate_reward",
    "pass_rate_reward",
]
