"""TRL's `GRPOTrainer` on the looped model, with the project's problems and rewards.

    from loopcoder.postrain.grpo import GRPOConfig
    from loopcoder.postrain.grpo.trl_compat import trl_grpo_trainer
    trainer = trl_grpo_trainer(GRPOConfig.from_yaml("jobs/rl/print_number_tiny.yaml"), use_cpu=True)
    trainer.train()

Nothing of the model needs wrapping: `LoopCoderForCausalLM` is a `PreTrainedModel` with `generate` (its own decode
cache) and takes `logits_to_keep`, which is all TRL calls. What TRL needs from the project is here:

* `problems_dataset`: `rl_problem` rows as a `datasets.Dataset` in TRL's conversational prompt format, with the
  columns the rewards read (`tests`, `language`, `time_limit_seconds`, `memory_limit_mb`, `id`); TRL passes every
  column to each reward function as a keyword argument, which is the project's reward contract too;
* `trl_grpo_args`: the project's `GRPOConfig` as TRL's, field by field (the units differ: ours counts RL steps and
  problems per step, TRL counts optimizer steps and completions per device);
* `trl_grpo_trainer`: model, tokenizer, dataset, reward functions (the sandboxed `pass_rate` on a pool that
  closes when training ends) and the LoRA config of a `peft` block, handed to `trl.GRPOTrainer`.

The project's own trainer (`trainer.py`) stays the one for DeepSpeed runs, resume and the sandbox metrics.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .config import GRPOConfig
from .data import load_problems
from .rollout import PROBLEM_COLUMNS


def problems_dataset(problems: list[dict], system_prompt: str | None = None, prompt_suffix: str = ""):
    """A `datasets.Dataset` with a conversational `prompt` and the reward columns of each problem."""
    from datasets import Dataset

    rows = []
    for problem in problems:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": problem["prompt"] + prompt_suffix})
        rows.append({"prompt": messages, **{column: problem.get(column) for column in PROBLEM_COLUMNS}})
    return Dataset.from_list(rows)


def trl_grpo_args(config: GRPOConfig, world_size: int | None = None, **overrides: Any):
    """TRL's `GRPOConfig` for the same run: the same generation batch, mini-batches, objective and optimiser.

    One of our RL steps (`prompts_per_step x num_generations` completions, `steps_per_generation x num_iterations`
    optimizer steps) is `steps_per_generation x num_iterations` TRL steps; a mini-batch is accumulated from
    `micro_batch_size` completions per device. `overrides` are TRL fields set as given (`use_cpu=True`, ...).
    """
    from trl import GRPOConfig as TRLGRPOConfig

    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    per_rank = config.prompts_per_step * config.num_generations // world
    mini_batch = per_rank // config.steps_per_generation
    if per_rank * world != config.prompts_per_step * config.num_generations or mini_batch % config.micro_batch_size:
        raise ValueError("prompts_per_step x num_generations must split into world x steps_per_generation x micro")
    accumulation = mini_batch // config.micro_batch_size
    fields: dict[str, Any] = dict(
        output_dir=config.output_dir,
        max_steps=config.total_steps * config.optimizer_steps_per_generation,
        per_device_train_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=config.steps_per_generation * accumulation,
        num_iterations=config.num_iterations,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        beta=config.beta,
        epsilon=config.epsilon,
        epsilon_high=config.clip_high,
        loss_type=config.loss_type,
        scale_rewards=config.scale_rewards,
        mask_truncated_completions=config.mask_truncated_completions,
        reward_weights=config.reward_weights,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type="constant_with_warmup",
        weight_decay=config.weight_decay,
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        adam_epsilon=config.adam_epsilon,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        logging_steps=config.log_interval,
        report_to=list(config.report_to) or "none",
        run_name=config.run_name,
        gradient_checkpointing=config.gradient_checkpointing,
        save_strategy="steps" if config.save_interval else "no",
        save_steps=max(config.save_interval, 1) * config.optimizer_steps_per_generation,
        save_total_limit=config.keep_checkpoints,
        disable_tqdm=not config.progress_bar,
    )
    fields.update(overrides)
    return TRLGRPOConfig(**fields)


def trl_grpo_trainer(
    config: GRPOConfig,
    model=None,
    reward_fns: list[Callable] | None = None,
    world_size: int | None = None,
    **overrides,
):
    """A `trl.GRPOTrainer` for `config`: the model of `model_name_or_path` (or `model`), the run's tokenizer, the
    problems of `problems`, the rewards of `reward_funcs` (or `reward_fns`) and LoRA when `peft` is set."""
    import torch
    from transformers import TrainerCallback
    from trl import GRPOTrainer as TRLGRPOTrainer

    from loopcoder.model import LoopCoderForCausalLM
    from loopcoder.postrain.runtime.model import build_tokenizer

    from .trainer import build_reward_functions, build_sandbox_pool

    if model is None:
        if not config.model_name_or_path:
            raise ValueError("TRL's GRPOTrainer starts from a trained model: set model_name_or_path")
        kwargs = {"attn_implementation": config.attn_implementation} if config.attn_implementation else {}
        model = LoopCoderForCausalLM.from_pretrained(config.model_name_or_path, dtype=torch.float32, **kwargs)
    pool = None
    if reward_fns is None:
        pool = build_sandbox_pool(config) if "pass_rate" in config.reward_funcs else None
        reward_fns = build_reward_functions(config, pool)
    problems = load_problems(config.problems, config.max_problems)
    callbacks = []
    if pool is not None:

        class ClosePool(TrainerCallback):
            def on_train_end(self, args, state, control, **kwargs):
                pool.close()

        callbacks.append(ClosePool())
    return TRLGRPOTrainer(
        model=model,
        reward_funcs=reward_fns,
        args=trl_grpo_args(config, world_size, **overrides),
        train_dataset=problems_dataset(problems, config.system_prompt, config.prompt_suffix),
        processing_class=build_tokenizer(config),
        callbacks=callbacks,
        peft_config=config.peft.lora_config(config.model_name_or_path) if config.peft else None,
    )


__all__ = ["problems_dataset", "trl_grpo_args", "trl_grpo_trainer"]
