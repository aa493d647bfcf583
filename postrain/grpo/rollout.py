"""Rollouts with the looped model's own `generate`, and their sandboxed rewards.

    rollout = generate_rollouts(model, tokenizer, prompts, num_generations=16, max_new_tokens=256)
    rewards, info = score_completions(rollout.texts, problems_per_completion, reward_fns, timeout=600)

Generation is batched and left-padded, runs with the model's cache and its cross-loop-parallel decode
schedule (`decode_schedule="parallel"`), and samples at the given temperature / top-p / top-k (temperature 0:
greedy). The trainer scores the sampled tokens with the same temperature-scaled distribution
(`runtime.logprobs.token_log_probs(..., temperature=...)`), for both the old and the new policy. A reward call
runs on a daemon thread with a deadline, so a call that hangs or crashes costs at most its timeout and its
completions come back as `None` (the trainer then applies `infra_error_reward`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

PROBLEM_COLUMNS = ("tests", "language", "time_limit_seconds", "memory_limit_mb", "id")


@dataclass
class Rollout:
    """G completions per prompt, group after group."""

    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, C] right-padded
    completion_mask: torch.Tensor  # [N, C] 1 up to and including the first EOS
    truncated: torch.Tensor  # [N] bool: no EOS within max_new_tokens
    texts: list[str]

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)

    def __len__(self) -> int:
        return self.completion_ids.shape[0]


def eos_ids(tokenizer, model) -> list[int]:
    ids = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(ids)


def encode_prompts(tokenizer, prompts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask; prompts longer than `max_length` keep their last tokens."""
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"][-max_length:] for p in prompts]
    width = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, tokens in enumerate(encoded):
        if tokens:
            ids[row, width - len(tokens) :] = torch.tensor(tokens)
            mask[row, width - len(tokens) :] = 1
    return ids, mask


def completion_mask_from_eos(completions: torch.Tensor, eos: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [N, C] with 1 up to and including the first EOS, truncated [N]: no EOS at all)."""
    is_eos = torch.isin(completions, torch.tensor(list(eos), dtype=completions.dtype))
    seen_before = (is_eos.cumsum(-1) - is_eos.long()) > 0
    return (~seen_before).long(), ~is_eos.any(-1)


@contextlib.contextmanager
def _decode_schedule(model, schedule: str):
    previous = model.config.decode_schedule
    model.config.decode_schedule = schedule
    try:
        yield
    finally:
        model.config.decode_schedule = previous


@torch.no_grad()
def generate_rollouts(
    model,
    tokenizer,
    prompts: Sequence[str],
    num_generations: int,
    max_new_tokens: int,
    max_prompt_length: int = 512,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    batch_size: int | None = None,
    decode_schedule: str = "parallel",
) -> Rollout:
    """`num_generations` sampled completions of every prompt (consecutive rows form a group)."""
    from transformers import GenerationConfig

    eos = eos_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    ids, mask = encode_prompts(tokenizer, prompts, max_prompt_length)
    ids = ids.repeat_interleave(num_generations, 0)
    mask = mask.repeat_interleave(num_generations, 0)
    # temperature 0 is greedy decoding (evaluation); training always samples
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
    generation_config = GenerationConfig(
        **(sampling if temperature > 0 else dict(do_sample=False)),
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
        use_cache=True,
    )
    device = next(model.parameters()).device
    batch_size = batch_size or len(ids)
    pieces = []
    was_training = model.training
    model.eval()
    try:
        with _decode_schedule(model, decode_schedule):
            for start in range(0, len(ids), batch_size):
                chunk_ids = ids[start : start + batch_size].to(device)
                chunk_mask = mask[start : start + batch_size].to(device)
                out = model.generate(chunk_ids, attention_mask=chunk_mask, generation_config=generation_config)
                pieces.append(out[:, chunk_ids.shape[1] :].cpu())
    finally:
        model.train(was_training)
    width = max(max(p.shape[1] for p in pieces), 1)
    completions = torch.full((len(ids), width), pad, dtype=torch.long)
    row = 0
    for piece in pieces:
        completions[row : row + len(piece), : piece.shape[1]] = piece
        row += len(piece)
    completion_mask, truncated = completion_mask_from_eos(completions, eos)
    completions = completions.masked_fill(completion_mask == 0, pad)
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    return Rollout(ids, mask, completions, completion_mask, truncated, texts)


def sample_problems(
    model, tokenizer, problems: Sequence[dict], config, num_generations: int, temperature: float
) -> Rollout:
    """`num_generations` completions of each problem's chat prompt (`system_prompt`, `prompt_suffix`) with the run's
    generation settings (`max_completion_length`, `max_prompt_length`, `top_p`, `top_k`, `generation_batch_size`,
    `decode_schedule`): the rollouts of training and the completions of evaluation alike."""
    from .data import render_prompt

    prompts = [render_prompt(tokenizer, p, config.system_prompt, config.prompt_suffix) for p in problems]
    return generate_rollouts(
        model,
        tokenizer,
        prompts,
        num_generations=num_generations,
        max_new_tokens=config.max_completion_length,
        max_prompt_length=config.max_prompt_length,
        temperature=temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        batch_size=config.generation_batch_size,
        decode_schedule=config.decode_schedule,
    )


def _call_with_deadline(fn: Callable, timeout: float, *args, **kwargs) -> tuple[Any, str | None]:
    """(result, None) or (None, reason) when `fn` raised or did not return within `timeout` seconds.

    The call runs on a daemon thread: a call that never returns is abandoned (its sandboxed programs are
    bounded by their own limits) and does not keep the process alive at exit.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001 - any failure of a reward call is reported, not raised
            box["error"] = error

    thread = threading.Thread(target=target, name=f"reward-{getattr(fn, '__name__', 'fn')}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return None, f"timed out after {timeout:.0f} s"
    if "error" in box:
        return None, f"{type(box['error']).__name__}: {box['error']}"
    return box["result"], None


def score_completions(
    completions: Sequence[str],
    problems: Sequence[dict],
    reward_fns: Sequence[Callable],
    weights: Sequence[float] | None = None,
    timeout: float = 600.0,
) -> tuple[list[float | None], dict[str, float]]:
    """The weighted sum of the reward functions for each completion (`problems[i]` is completion i's problem).

    A reward function gets the `rl_problem` columns as keyword arguments with one value per completion, as TRL
    passes dataset columns. A completion is `None` if any reward gave None for it, or if a reward call failed or
    timed out. Returns (rewards, info) where info has `reward/<name>` means and `reward/errors`.
    """
    weights = list(weights) if weights is not None else [1.0] * len(reward_fns)
    columns = {column: [p.get(column) for p in problems] for column in PROBLEM_COLUMNS}
    totals: list[float | None] = [0.0] * len(completions)
    info: dict[str, float] = {"reward/errors": 0.0}
    for fn, weight in zip(reward_fns, weights, strict=True):
        name = getattr(fn, "__name__", "reward")
        values, error = _call_with_deadline(fn, timeout, list(completions), **columns)
        if error is None and (not isinstance(values, list | tuple) or len(values) != len(completions)):
            error = f"returned {type(values).__name__} of the wrong length"
        if error is not None:
            logger.warning("reward %s failed (%s): its %d completions are unscored", name, error, len(completions))
            info["reward/errors"] += 1.0
            values = [None] * len(completions)
        scored = [float(v) for v in values if v is not None]
        info[f"reward/{name}"] = sum(scored) / len(scored) if scored else float("nan")
        for index, value in enumerate(values):
            if totals[index] is None or value is None:
                totals[index] = None
            else:
                totals[index] += weight * float(value)
    return totals, info


def timed(fn: Callable, *args, **kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


__all__ = [
    "Rollout",
    "completion_mask_from_eos",
    "encode_prompts",
    "eos_ids",
    "generate_rollouts",
    "sample_problems",
    "score_completions",
]
