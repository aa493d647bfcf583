"""The GRPO loop on a plain DeepSpeed engine: generate, score in the sandbox, then several clipped updates.

    loopcoder train grpo --config jobs/rl/mined_tiny.yaml                               # one process
    torchrun --nproc_per_node 2 -m loopcoder.jobs.cli train grpo --config ... zero_stage=2

One step (docs/grpo.md):
1. every rank takes the same `prompts_per_step` problems from the seeded stream and keeps its slice;
2. it samples `num_generations` completions per problem with the model's own `generate` (cached, batched,
   left-padded, cross-loop-parallel decode);
3. the sandbox scores them (pass rate); overlong shaping is added; with dynamic sampling, groups whose
   rewards are all equal are dropped and more problems are drawn until the slice is full;
4. group-normalised advantages; the rollout log-probabilities π_old (of the temperature-scaled distribution the
   tokens were sampled from) are computed once (when more than one optimizer step follows);
5. `steps_per_generation x num_iterations` optimizer steps, each over one mini-batch accumulated from
   micro-batches, with the clipped surrogate aggregated over all completion tokens of the mini-batch on all
   ranks (the denominator is all-reduced before the first backward);
6. with an evaluation set, pass@1 on it before the first step, every `eval_interval` steps and after the last.

The process group, the DeepSpeed engine, the model builder, the run loop, the checkpoints and the metric files
are the shared runtime's (`loopcoder.postrain.runtime`), so SFT and GRPO launch, resume and log the same way.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from loopcoder.postrain.runtime import collectives
from loopcoder.postrain.runtime.distributed import deepspeed_config
from loopcoder.postrain.runtime.logprobs import TokenScores, token_log_probs
from loopcoder.postrain.runtime.model import build_model, build_tokenizer
from loopcoder.postrain.runtime.trainer import Callback, Trainer, TrainResult
from loopcoder.postrain.sandbox.runners import VERDICTS

from .config import GRPOConfig
from .data import ProblemStream, load_problems, split_heldout
from .evaluation import PassAtOneEvaluator
from .loss import (
    clipped_surrogate,
    group_advantages,
    kl_k3,
    loss_denominator,
    loss_numerator,
    overlong_penalty,
    zero_variance_groups,
)
from .metrics import Collected, step_metrics
from .rollout import sample_problems, score_completions

logger = logging.getLogger(__name__)


@dataclass
class Sample:
    """One completion with everything the update needs; rows of a group are consecutive."""

    prompt: list[int]
    completion: list[int]  # up to and including EOS
    truncated: bool
    text: str
    problem: dict
    reward: float = 0.0  # what the advantage is computed from (score + overlong penalty); NaN = left out
    score: float = 0.0  # the reward functions' value alone (the pass rate); NaN = not scored and excluded
    advantage: float = 0.0
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    infra_error: bool = False  # a reward was None (sandbox infrastructure error, failed or hung reward call)


def local_world_size() -> int:
    """Processes on this node: LOCAL_WORLD_SIZE (torchrun), LOCAL_SIZE (the deepspeed launcher), else WORLD_SIZE."""
    for name in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "WORLD_SIZE"):
        if os.environ.get(name):
            return max(1, int(os.environ[name]))
    return 1


def default_sandbox_workers(cores: int | None = None, processes: int | None = None) -> int:
    """The node's usable cores divided among its processes, at least 1: CPU-time limits assume a core per
    execution, so the ranks of a node must not each size their pool to every core."""
    from loopcoder.postrain.sandbox.pool import usable_cores

    cores = usable_cores() if cores is None else cores
    processes = local_world_size() if processes is None else processes
    return max(1, cores // max(1, processes))


def build_sandbox_pool(config: GRPOConfig):
    """The trainer's sandbox pool: `sandbox_isolation`, `sandbox_workers` (default `default_sandbox_workers()`)."""
    from loopcoder.postrain.sandbox import SandboxConfig, SandboxPool

    workers = config.sandbox_workers or default_sandbox_workers()
    return SandboxPool(workers=workers, config=SandboxConfig(isolation=config.sandbox_isolation))


def pass_rate_function(config: GRPOConfig, pool) -> Callable:
    from loopcoder.postrain.rewards import make_pass_rate_reward

    fn = make_pass_rate_reward(max_tests=config.max_tests, max_timeouts=config.max_timeouts, pool=pool)
    fn.__name__ = "pass_rate"
    return fn


def build_reward_functions(config: GRPOConfig, pool) -> list[Callable]:
    """`reward_funcs` by name; `pass_rate` runs on `pool`."""
    from loopcoder.postrain.rewards import get_reward_function

    return [
        pass_rate_function(config, pool) if n == "pass_rate" else get_reward_function(n) for n in config.reward_funcs
    ]


def collate(samples: list[Sample], pad: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts followed by right-padded completions: input ids, masks, positions, [B, C] targets."""
    width_p = max(len(s.prompt) for s in samples)
    width_c = max(max(len(s.completion) for s in samples), 1)
    batch = len(samples)
    input_ids = torch.full((batch, width_p + width_c), pad, dtype=torch.long)
    attention = torch.zeros((batch, width_p + width_c), dtype=torch.long)
    completion_mask = torch.zeros((batch, width_c), dtype=torch.float32)
    for row, s in enumerate(samples):
        input_ids[row, width_p - len(s.prompt) : width_p] = torch.tensor(s.prompt, dtype=torch.long)
        attention[row, width_p - len(s.prompt) : width_p] = 1
        if s.completion:
            input_ids[row, width_p : width_p + len(s.completion)] = torch.tensor(s.completion, dtype=torch.long)
            attention[row, width_p : width_p + len(s.completion)] = 1
            completion_mask[row, : len(s.completion)] = 1.0
    # the positions `generate` used: counting real tokens from 0 (padding gets 1, it is masked anyway)
    positions = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 1)
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "position_ids": positions,
        "targets": input_ids[:, width_p:],
        "completion_mask": completion_mask,
        "prompt_width": torch.tensor(width_p),
    }


class GRPOTrainer(Trainer):
    def __init__(
        self, config: GRPOConfig, reward_fns: list[Callable] | None = None, callbacks: list[Callback] | None = None
    ):
        super().__init__(config, callbacks)
        if config.prompts_per_step % self.world:
            raise ValueError(f"prompts_per_step {config.prompts_per_step} is not a multiple of {self.world} processes")
        self.prompts_per_rank = config.prompts_per_step // self.world
        local = self.prompts_per_rank * config.num_generations
        if local % config.steps_per_generation:
            raise ValueError(
                f"{local} completions per process do not split into steps_per_generation={config.steps_per_generation}"
            )
        self.mini_batch = local // config.steps_per_generation
        if self.mini_batch % config.micro_batch_size:
            raise ValueError(
                f"a mini-batch of {self.mini_batch} completions per process is not a multiple of "
                f"micro_batch_size {config.micro_batch_size}"
            )
        self.accumulation = self.mini_batch // config.micro_batch_size
        if config.beta > 0 and config.peft is None and config.model_name_or_path:
            stage = int(deepspeed_config(config, self.accumulation)["zero_optimization"].get("stage", 0))
            if stage == 3:
                # the checkpoint is loaded partitioned, and a copy of a partitioned model holds only placeholders
                raise ValueError(
                    "beta > 0 needs a reference model, and under ZeRO-3 a checkpoint is loaded partitioned, which the "
                    "reference copy does not support: add a `peft:` block (the reference is then the base with the "
                    "adapters off), use zero_stage 0-2, or set beta 0 (the recipe's default)"
                )

        self.tokenizer = build_tokenizer(config)
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        train_problems, heldout = split_heldout(
            load_problems(config.problems, config.max_problems), config.heldout_fraction
        )
        if not train_problems:
            raise ValueError(f"heldout_fraction {config.heldout_fraction} leaves no training problem")
        self.stream = ProblemStream(train_problems, config.seed)
        # the pool exists when a reward or the evaluation runs programs; its verdict counts reach the metrics
        needs_pool = config.has_eval or (reward_fns is None and "pass_rate" in config.reward_funcs)
        self.sandbox_pool = build_sandbox_pool(config) if needs_pool else None
        self.reward_fns = reward_fns if reward_fns is not None else build_reward_functions(config, self.sandbox_pool)
        self.counts_verdicts = reward_fns is None and "pass_rate" in config.reward_funcs
        self.evaluator = None
        if config.has_eval:
            eval_set = heldout if config.eval_problems is None else load_problems(config.eval_problems)
            self.evaluator = PassAtOneEvaluator(eval_set, pass_rate_function(config, self.sandbox_pool), config)

        model = build_model(config, self.accumulation)
        # beta = 0: no reference model exists at all (nothing loaded, nothing kept in memory); with LoRA the
        # reference is the frozen base itself, the policy with its adapters switched off
        self.use_reference = config.beta > 0
        self.ref_model = None
        if self.use_reference and config.peft is None:
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False).to(self.device)
        self.setup_engine(model, self.accumulation)
        self.optimizer_steps = 0
        self.completions_log = None

    def resolved_fields(self) -> dict[str, Any]:
        return {
            "completions_per_step": self.config.prompts_per_step * self.config.num_generations,
            "mini_batch_per_process": self.mini_batch,
            "gradient_accumulation_steps": self.accumulation,
            "optimizer_steps_per_generation": self.config.optimizer_steps_per_generation,
        }

    def trainer_state(self) -> dict[str, Any]:
        return {"optimizer_steps": self.optimizer_steps, "problems": self.stream.state_dict()}

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        self.optimizer_steps = int(state["optimizer_steps"])
        self.stream.load_state_dict(state["problems"])

    def _gather(self, values: list[Any]) -> list[Any]:
        """Every rank's `values`, concatenated in rank order."""
        return [v for part in collectives.all_gather_objects(list(values)) for v in part]

    def _lr(self) -> float:
        config = self.config
        if config.warmup_steps > 0 and self.optimizer_steps < config.warmup_steps:
            return config.learning_rate * (self.optimizer_steps + 1) / config.warmup_steps
        return config.learning_rate

    def _scores(self, model, batch: dict[str, torch.Tensor], entropy: bool = False) -> TokenScores:
        """Log-probabilities (and entropies) of each completion token, `logprob_chunk_size` tokens at a time."""
        width_p = int(batch["prompt_width"])
        return token_log_probs(
            model,
            batch["targets"].to(self.device),
            chunk_size=self.config.logprob_chunk_size,
            temperature=self.config.temperature,
            entropy=entropy,
            positions=slice(width_p - 1, -1),
            input_ids=batch["input_ids"].to(self.device),
            attention_mask=batch["attention_mask"].to(self.device),
            position_ids=batch["position_ids"].to(self.device),
        )

    def reference_scores(self, batch: dict[str, torch.Tensor]) -> TokenScores:
        """Log-probabilities under the reference policy: the frozen copy, or with LoRA the base without adapters."""
        if self.ref_model is not None:
            return self._scores(self.ref_model, batch)
        with self.engine.module.disable_adapter():
            return self._scores(self.engine.module, batch)

    def generation_context(self):
        """Around `generate`: under ZeRO-3 the weights are gathered (a collective: every rank enters it)."""
        if self.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()), modifier_rank=None)
        return contextlib.nullcontext()

    def _rollout_round(self, problems: list[dict]) -> tuple[list[Sample], dict[str, float], float, float]:
        """(samples, the reward calls' info, generation seconds, reward seconds) of one round on this rank."""
        config = self.config
        started = time.perf_counter()
        with self.generation_context():
            rollout = sample_problems(
                self.engine.module, self.tokenizer, problems, config, config.num_generations, config.temperature
            )
        generation_time = time.perf_counter() - started
        per_completion = [p for p in problems for _ in range(config.num_generations)]
        started = time.perf_counter()
        rewards, info = score_completions(
            rollout.texts, per_completion, self.reward_fns, config.reward_weights, config.reward_timeout_seconds
        )
        reward_time = time.perf_counter() - started
        lengths = rollout.lengths
        penalty = overlong_penalty(
            lengths, config.max_completion_length, config.overlong_buffer, config.overlong_penalty_factor
        )
        samples = []
        for i, problem in enumerate(per_completion):
            value = rewards[i]
            if value is None:
                value = 0.0 if config.infra_error_reward == "zero" else float("nan")
            length = int(lengths[i])
            samples.append(
                Sample(
                    prompt=rollout.prompt_ids[i][rollout.prompt_mask[i].bool()].tolist(),
                    completion=rollout.completion_ids[i, :length].tolist(),
                    truncated=bool(rollout.truncated[i]),
                    text=rollout.texts[i],
                    problem=problem,
                    reward=value + float(penalty[i]) if not math.isnan(value) else value,
                    score=value,
                    infra_error=rewards[i] is None,
                )
            )
        return samples, info, generation_time, reward_time

    def collect(self) -> Collected:
        """This rank's `prompts_per_rank` groups for the step (refilled under dynamic sampling), with what the
        step's metrics need."""
        config = self.config
        group = config.num_generations
        kept: list[list[Sample]] = []
        dropped: list[list[Sample]] = []
        collected = Collected(samples=[], first_round_scores=[], first_round_shaped=[], rounds=0)
        verdicts_before = dict(self.sandbox_pool.stats.verdicts) if self.sandbox_pool is not None else {}
        while True:
            problems = self.stream.take(config.prompts_per_step)
            mine = problems[self.rank * self.prompts_per_rank : (self.rank + 1) * self.prompts_per_rank]
            # under ZeRO-3 generation gathers the weights (a collective): every rank generates every round
            if len(kept) < self.prompts_per_rank or self.zero_stage == 3:
                samples, info, generation_time, reward_time = self._rollout_round(mine)
                collected.generation_seconds += generation_time
                collected.reward_seconds += reward_time
                collected.infra_errors += sum(s.infra_error for s in samples)
                errors = collected.reward_info.get("reward/errors", 0.0) + info.pop("reward/errors", 0.0)
                rewards = torch.tensor([s.reward for s in samples])
                if collected.rounds == 0:
                    collected.first_round_scores = [s.score for s in samples]
                    collected.first_round_shaped = rewards.tolist()
                    collected.reward_info.update(info)
                collected.reward_info["reward/errors"] = errors
                flat = zero_variance_groups(rewards, group) if config.dynamic_sampling else None
                for g in range(len(mine)):
                    groups = samples[g * group : (g + 1) * group]
                    if flat is not None and bool(flat[g]):
                        dropped.append(groups)
                    else:
                        kept.append(groups)
            collected.rounds += 1
            short = collectives.all_reduce([float(len(kept) < self.prompts_per_rank)])[0]
            if short == 0 or collected.rounds >= max(1, config.max_generation_rounds) or not config.dynamic_sampling:
                break
        collected.filled_with_dropped = max(0, self.prompts_per_rank - len(kept))
        groups = kept[: self.prompts_per_rank] + dropped[: collected.filled_with_dropped]
        collected.samples = [s for g in groups for s in g]
        if self.sandbox_pool is not None:
            after = self.sandbox_pool.stats.verdicts
            collected.verdicts = {k: after[k] - verdicts_before.get(k, 0) for k in after}
        return collected

    @torch.no_grad()
    def rollout_log_probs(self, samples: list[Sample]) -> None:
        """Sets `old_logp` (when more than one optimizer step follows) and `ref_logp` (β > 0) of every sample:
        log-probabilities of its completion tokens under the temperature-scaled distribution it was sampled from."""
        config = self.config
        need_old = config.optimizer_steps_per_generation > 1
        if not need_old and not self.use_reference:
            return
        self.engine.module.eval()
        for start in range(0, len(samples), config.micro_batch_size):
            chunk = samples[start : start + config.micro_batch_size]
            batch = collate(chunk, self.pad)
            if need_old:
                logp = self._scores(self.engine.module, batch).log_probs
                for row, s in enumerate(chunk):
                    s.old_logp = logp[row, : len(s.completion)].cpu()
            if self.use_reference:
                logp = self.reference_scores(batch).log_probs
                for row, s in enumerate(chunk):
                    s.ref_logp = logp[row, : len(s.completion)].cpu()
        self.engine.module.train()

    def _padded(self, samples: list[Sample], attribute: str, width: int) -> torch.Tensor:
        out = torch.zeros((len(samples), width), dtype=torch.float32)
        for row, s in enumerate(samples):
            values = getattr(s, attribute)
            out[row, : len(values)] = values
        return out

    def _update(self, samples: list[Sample], step: int) -> dict[str, float]:
        """`steps_per_generation x num_iterations` optimizer steps over the generation batch."""
        config = self.config
        world = self.world
        sums = dict.fromkeys(("tokens", "clip_low", "clip_high", "entropy", "loss", "kl", "ratio_dev"), 0.0)
        grad_norms = []
        generator = random.Random(config.seed * 7919 + step)
        for _ in range(config.num_iterations):
            order = list(range(len(samples)))
            generator.shuffle(order)
            for mini in range(config.steps_per_generation):
                lr = self._lr()
                self.set_lr(lr)
                rows = [samples[i] for i in order[mini * self.mini_batch : (mini + 1) * self.mini_batch]]
                micro_batches = [
                    rows[i : i + config.micro_batch_size] for i in range(0, len(rows), config.micro_batch_size)
                ]
                masks = [self.loss_mask(chunk) for chunk in micro_batches]
                local_den = sum(loss_denominator(m, config.loss_type) for m in masks)
                denominator = max(collectives.all_reduce([local_den])[0], 1.0)
                grad_norm = float("nan")
                for micro, (chunk, mask) in enumerate(zip(micro_batches, masks, strict=True)):
                    batch = collate(chunk, self.pad)
                    scores = self._scores(self.engine, batch, entropy=True)
                    logp = scores.log_probs
                    width = logp.shape[1]
                    old = logp.detach() if chunk[0].old_logp is None else self._padded(chunk, "old_logp", width)
                    advantages = torch.tensor([s.advantage for s in chunk], dtype=torch.float32)
                    per_token, low, high = clipped_surrogate(
                        logp, old.to(self.device), advantages.to(self.device), config.epsilon, config.clip_high
                    )
                    if self.use_reference:
                        kl = kl_k3(logp, self._padded(chunk, "ref_logp", width).to(self.device))
                        per_token = per_token + config.beta * kl
                        sums["kl"] += float((kl.detach().cpu() * mask).sum())
                    numerator = loss_numerator(
                        per_token, mask.to(self.device), config.loss_type, config.max_completion_length
                    )
                    # exact token mean over the mini-batch of all ranks; DeepSpeed averages over ranks, hence * world
                    self.engine.backward(numerator * (world / denominator), scale_wrt_gas=False)
                    norm = self.engine_step(boundary=micro == self.accumulation - 1)
                    grad_norm = grad_norm if norm is None else norm
                    with torch.no_grad():
                        m = mask
                        sums["tokens"] += float(m.sum())
                        sums["clip_low"] += float((low.cpu().float() * m).sum())
                        sums["clip_high"] += float((high.cpu().float() * m).sum())
                        sums["entropy"] += float((scores.entropy.cpu() * m).sum())
                        sums["loss"] += float(numerator.detach()) / denominator
                        sums["ratio_dev"] += float(
                            ((logp.detach() - old.to(logp.device)).exp().cpu() - 1).abs().mul(m).sum()
                        )
                grad_norms.append(grad_norm)
                self.optimizer_steps += 1
        totals = collectives.all_reduce([sums[k] for k in sums])
        reduced = dict(zip(sums, totals, strict=True))
        tokens = max(reduced["tokens"], 1.0)
        updates = config.optimizer_steps_per_generation
        record = {
            "loss": reduced["loss"] / updates,
            "clip_ratio/low": reduced["clip_low"] / tokens,
            "clip_ratio/high": reduced["clip_high"] / tokens,
            "clip_ratio/total": (reduced["clip_low"] + reduced["clip_high"]) / tokens,
            "entropy": reduced["entropy"] / tokens,
            "ratio_abs_dev": reduced["ratio_dev"] / tokens,
            "grad_norm": sum(grad_norms) / len(grad_norms),
            "lr": self._lr(),
            "optimizer_steps": float(self.optimizer_steps),
        }
        if self.use_reference:
            record["kl"] = reduced["kl"] / tokens
        return record

    def loss_mask(self, chunk: list[Sample]) -> torch.Tensor:
        """[B, C] 1 on the completion tokens the loss uses: none of a completion that is unscored and excluded
        (`infra_error_reward: exclude`) or truncated under `mask_truncated_completions`."""
        width = max(max(len(s.completion) for s in chunk), 1)
        mask = torch.zeros((len(chunk), width), dtype=torch.float32)
        for row, s in enumerate(chunk):
            if math.isnan(s.reward) or (self.config.mask_truncated_completions and s.truncated):
                continue
            mask[row, : len(s.completion)] = 1.0
        return mask

    def assign_advantages(self, samples: list[Sample]) -> None:
        config = self.config
        rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
        advantages = group_advantages(rewards, config.num_generations, config.scale_rewards, config.advantage_epsilon)
        for s, a in zip(samples, advantages.tolist(), strict=True):
            s.advantage = a

    def eval_due(self, step: int) -> bool:
        """Before step `step`'s rollouts: at the first step and every `eval_interval` steps."""
        interval = self.config.eval_interval
        return self.evaluator is not None and (step == 0 or (interval > 0 and step % interval == 0))

    def train_step(self, step: int) -> dict[str, Any]:
        config = self.config
        started = time.perf_counter()
        # the policy that samples this step is the one evaluated, so eval/* and reward_mean describe the same one
        evaluation = self.evaluator.evaluate(self) if self.eval_due(step) else {}
        started_step = time.perf_counter()
        collected = self.collect()
        samples = collected.samples
        self.assign_advantages(samples)
        update_started = time.perf_counter()
        self.rollout_log_probs(samples)
        update_record = self._update(samples, step)
        update_time = time.perf_counter() - update_started

        times = collectives.all_reduce(
            [collected.generation_seconds, collected.reward_seconds, update_time], collectives.ReduceOp.MAX
        )
        counts = collectives.all_reduce(
            [
                float(collected.infra_errors),
                float(collected.filled_with_dropped),
                collected.reward_info.get("reward/errors", 0.0),
                *[float(collected.verdicts.get(name, 0)) for name in VERDICTS],
            ]
        )
        reward_info = dict(collected.reward_info, **{"reward/errors": counts[2]})
        trained = self._gather([(s.score, s.reward, len(s.completion), s.truncated) for s in samples])
        record = step_metrics(
            step=step,
            group_size=config.num_generations,
            first_round_scores=self._gather(collected.first_round_scores),
            first_round_shaped=self._gather(collected.first_round_shaped),
            trained=trained,
            infra_errors=counts[0],
            filled_with_dropped=counts[1],
            rounds=collected.rounds,
            reward_info=reward_info,
            verdicts=dict(zip(VERDICTS, counts[3:], strict=True)) if self.counts_verdicts else None,
            times=(times[0], times[1], times[2]),
            elapsed=time.perf_counter() - started_step,
            update_record=update_record,
        )
        record.update(evaluation)
        if evaluation:
            record["time/eval_s"] = started_step - started
        self.log_completions(step, samples)
        return record

    def log_completions(self, step: int, samples: list[Sample]) -> None:
        """The first `log_completions` completions of rank 0 go to `completions.jsonl` on log steps."""
        config = self.config
        if self.rank != 0 or config.log_completions <= 0 or not self.log_due(step):
            return
        if self.completions_log is None:
            self.completions_log = open(self.output_dir / "completions.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        for s in samples[: config.log_completions]:
            line = {"step": step, "problem": s.problem["id"], "reward": s.reward, "advantage": s.advantage}
            self.completions_log.write(json.dumps(line | {"completion": s.text}) + "\n")
        self.completions_log.flush()

    def after_step(self, step: int, record: dict[str, Any], metrics) -> None:
        # an evaluation is always logged, also on steps that `log_interval` skips
        if not self.log_due(step) and "eval/pass@1" in record:
            metrics.log({"step": step, **{k: v for k, v in record.items() if k.startswith("eval/")}})

    def before_final_save(self, metrics) -> None:
        """The final policy's evaluation, logged at step `max_steps` (unless this call trained no step)."""
        if self.evaluator is not None and self.step > self.resumed_step and self.step > 0:
            metrics.log({"step": self.step, **self.evaluator.evaluate(self)})

    def close(self) -> None:
        if self.completions_log is not None:
            self.completions_log.close()
            self.completions_log = None
        if self.sandbox_pool is not None:
            self.sandbox_pool.close()
            self.sandbox_pool = None


def train(config: GRPOConfig, reward_fns: list[Callable] | None = None, callbacks=None) -> TrainResult:
    return GRPOTrainer(config, reward_fns=reward_fns, callbacks=callbacks).train()


__all__ = ["Collected", "GRPOTrainer", "Sample", "TrainResult", "collate", "default_sandbox_workers", "train"]
