"""`GRPOConfig`: every knob of `loopcoder train grpo`, loaded from YAML with `name=value` overrides.

    config = GRPOConfig.from_yaml("jobs/rl/print_number_tiny.yaml", overrides=["max_steps=5", "zero_stage=2"])

Precedence: field defaults < YAML < overrides (values read as YAML); an unknown name is an error listing
the valid ones. The resolved config is saved as `config.yaml` in the output directory and in every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loopcoder.postrain.runtime.config import TrainerConfig

LOSS_TYPES = ("dapo", "grpo", "dr_grpo")
SCALE_REWARDS = ("group", "none")
INFRA_ERROR_REWARDS = ("zero", "exclude")
SANDBOX_ISOLATIONS = ("auto", "bwrap", "rlimit")


@dataclass
class GRPOConfig(TrainerConfig):
    r"""Configuration of `loopcoder train grpo`: GRPO with DAPO's clip-higher and token-level loss, no KL.

    A *step* is one generation batch: `prompts_per_step` problems x `num_generations` rollouts are sampled and
    scored, then `steps_per_generation x num_iterations` optimizer steps are taken on them.

    Parameters that control the model:
        model_name_or_path (str | None, defaults to None): Hugging Face directory to start from (usually the SFT
            trainer's `output_dir/final`). None initialises a fresh model from `model_config` with `seed`.
        model_config (dict, defaults to {}): `LoopCoderConfig` keyword arguments for a fresh model.
        tokenizer (str, defaults to "auto"): "auto" (the model directory's tokenizer if it has one, else the bundled
            one), "bundled", or a tokenizer directory; saved beside the final model.
        attn_implementation (str | None, defaults to None), loop_grad_scale (float | None, defaults to None),
            loop_detach (bool | None, defaults to None): attention backend and BPTT knobs, as in `SFTConfig`.
        gradient_checkpointing (bool, defaults to False): recompute layer activations in the backward pass.

    Parameters that control the problems:
        problems (str, defaults to "synthetic:print_number"): where the `rl_problem` records come from: a `.jsonl`
            file, a directory or file of Parquet/Arrow shards, `humaneval`, `contest:<path.jsonl>` (CodeContests or
            TACO rows), or `synthetic:print_number` (the sandbox-scored toy task of `synthetic.py`).
        max_problems (int | None, defaults to None): keep the first N problems only.
        heldout_fraction (float, defaults to 0.0): share of `problems` held out of training, chosen by problem id
            (a problem is held out when the SHA-256 of its id, read as a fraction of 2^64, is below it), so the
            split is the same on every rank, run and machine.
        system_prompt (str | None, defaults to None): an optional system message before each problem.
        prompt_suffix (str, defaults to a request for one fenced Python block): appended to each problem statement.

    Parameters that control the rollouts:
        num_generations (int, defaults to 16): G, rollouts per problem (the group of GRPO).
        prompts_per_step (int, defaults to 64): problems per generation batch, over all processes. The recipe's
            64 x 16 = 1,024 completions per step. Must be a multiple of the number of processes.
        max_prompt_length (int, defaults to 512): longer prompts are cut from the left.
        max_completion_length (int, defaults to 1024): L_max, new tokens per rollout.
        temperature (float, defaults to 1.0): DAPO samples at 1.0; must be > 0. The log-probabilities of the
            importance ratio (old and new) are those of the same temperature-scaled distribution.
        top_p (float, defaults to 1.0), top_k (int, defaults to 0): nucleus / top-k sampling (1.0 and 0 are off).
        generation_batch_size (int | None, defaults to None): completions per `generate` call (None = a whole
            rank's share at once); smaller bounds the KV-cache memory.
        decode_schedule (str, defaults to "parallel"): the looped model's cached-decode schedule, "parallel"
            (cross-loop parallel) or "sequential".

    Parameters that control the rewards:
        reward_funcs (list[str], defaults to ["pass_rate"]): names from `loopcoder.postrain.rewards.REWARD_FUNCTIONS`
            or dotted paths to `(completions, **kwargs) -> list[float | None]` functions.
        reward_weights (list[float] | None, defaults to None): one weight per reward (None = all 1).
        max_tests (int | None, defaults to 20): tests per problem for the pass rate (the recipe's 20).
        max_timeouts (int | None, defaults to 2): a program's remaining tests are skipped (failed) after this many
            time-outs.
        sandbox_workers (int | None, defaults to None): concurrent sandboxed executions per process (None = the
            usable cores divided among the processes of the node, `LOCAL_WORLD_SIZE`).
        sandbox_isolation (str, defaults to "auto"): "bwrap", "rlimit", or "auto" (bwrap when it works, else the
            rlimit layer with a warning); see docs/sandbox.md.
        reward_timeout_seconds (float, defaults to 600.0): a reward call that has not returned by then is abandoned
            and its completions score `infra_error` (the run goes on).
        infra_error_reward (str, defaults to "exclude"): what a completion whose reward is None (sandbox failure,
            killed worker, crashed or hung reward call) gets: "exclude" (left out of its group's mean and std and
            out of the loss) or "zero" (scored 0, as a failed program).

    Parameters that control evaluation during RL (pass@1 through the same sandboxed pass-rate reward):
        eval_problems (str | None, defaults to None): the problems evaluated, any `problems` form; None = the
            held-out split of `problems` (no evaluation when `heldout_fraction` is 0).
        eval_max_problems (int | None, defaults to 64): evaluate the first N of them (ordered by id).
        eval_interval (int, defaults to 0): steps between evaluations; 0 = only before the first and after the last
            step. An evaluation logged at step s measures the policy that samples step s (s = max_steps: the final
            policy).
        eval_temperature (float, defaults to 0.0): 0 = greedy decoding (one completion per problem); > 0 samples
            `eval_samples` completions per problem at that temperature.
        eval_samples (int, defaults to 1): completions per problem when sampling; pass@1 is their mean.

    Parameters that control the objective (docs/grpo.md has the formulas):
        beta (float, defaults to 0.0): KL coefficient against a frozen reference model. 0.0 (the recipe, DAPO) loads
            no reference model at all; > 0 adds the k3 estimator per token.
        epsilon (float, defaults to 0.2): ε_low, lower clip range: the ratio is clipped at 1 - ε_low.
        epsilon_high (float | None, defaults to 0.28): ε_high, upper clip range ("clip-higher",
            [DAPO](https://arxiv.org/abs/2503.14476)); None = `epsilon` (symmetric PPO clipping).
        scale_rewards (str, defaults to "group"): "group" divides by the group's std (GRPO); "none" keeps R - mean
            ([Dr. GRPO](https://arxiv.org/abs/2503.20783)).
        advantage_epsilon (float, defaults to 1e-4): ε in Â = (R - mean) / (std + ε) (TRL's value).
        loss_type (str, defaults to "dapo"): aggregation: "dapo" = token mean over all completion tokens of the
            mini-batch; "grpo" = mean over sequences of per-sequence token means; "dr_grpo" = token sum / (N x L_max).
        steps_per_generation (int, defaults to 4): mini-batches per generation batch, one optimizer step each. With
            one step in total the importance ratio is exactly 1 and clipping never acts.
        num_iterations (int, defaults to 1): passes (μ) over the generation batch.

    Parameters that control dynamic sampling and overlong handling:
        dynamic_sampling (bool, defaults to False): DAPO dynamic sampling: drop groups whose rewards are all equal
            (no gradient) and sample more problems until the batch is full again.
        max_generation_rounds (int, defaults to 4): generation rounds per step at most when refilling (verl's
            `max_num_gen_batches`); if the batch is still short, it is filled with dropped groups (advantage 0).
        mask_truncated_completions (bool, defaults to False): overlong filtering: completions that hit
            `max_completion_length` without EOS are left out of the loss.
        overlong_buffer (int, defaults to 0): L_cache of DAPO's soft overlong punishment (0 = off): a completion
            longer than L_max - L_cache gets ((L_max - L_cache) - |o|) / L_cache x `overlong_penalty_factor` added.
        overlong_penalty_factor (float, defaults to 1.0): scale of that penalty.

    Parameters that control the optimisation:
        learning_rate (float, defaults to 1e-6), warmup_steps (int, defaults to 0, optimizer steps of linear warm-up),
        weight_decay (float, defaults to 0.0), adam_beta1 / adam_beta2 / adam_epsilon: the AdamW settings.
        max_grad_norm (float, defaults to 1.0): gradient clipping at every ZeRO stage and precision (0 = off);
            the logged `grad_norm` is the global norm before clipping.
        micro_batch_size (int, defaults to 8): completions per forward/backward; a mini-batch is accumulated from
            micro-batches.
        zero_stage (int | None, defaults to 0): DeepSpeed ZeRO stage (the SFT trainer's `jobs/deepspeed/zero<N>.json`).
        deepspeed_config (str | None, defaults to None): another DeepSpeed JSON ("auto" values are filled).
        precision (str, defaults to "auto"): "fp32", "bf16", or "auto" (bf16 on GPU, fp32 on CPU).
        cpu_threads (int | None, defaults to None): torch threads per process on CPU (None = cores / processes).
        deterministic (bool, defaults to False): deterministic kernels (`torch.use_deterministic_algorithms`).
        logprob_chunk_size (int, defaults to 1024): completion tokens whose fp32 logits exist at once when the
            rollout, reference and update log-probabilities (and the entropy) are computed; 0 = a micro-batch at once.

    Parameters that control the run:
        max_steps (int, defaults to 500): generation batches (RL steps); the recipe's ~500.
        seed (int, defaults to 0): seeds the model initialisation, problem order and sampling.
        output_dir (str, defaults to "runs/grpo"), save_interval (int, defaults to 50; 0 = only at the end),
        keep_checkpoints (int, defaults to 2), resume (str, defaults to "auto": newest complete checkpoint;
        "never"; or a checkpoint directory), save_final_model (bool, defaults to True, `output_dir/final`),
        released_format (bool, defaults to False: the final model as `iquestpltcoder`).
        log_interval (int, defaults to 1), log_completions (int, defaults to 2: completions printed to
            `completions.jsonl` per step), report_to (list[str], defaults to ["tensorboard"]: "tensorboard", "wandb",
            "mlflow" or none), run_name (str | None, defaults to None: the name of `output_dir`), progress_bar (bool,
            defaults to True).

    Defaults that differ from TRL's `GRPOConfig`: `steps_per_generation=4` (TRL: the accumulation steps, hence one
    optimizer step and no clipping), `epsilon_high=0.28` (TRL: `epsilon`), `num_generations=16` (TRL: 8).
    """

    # defaults that differ from the shared ones (TrainerConfig)
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate"})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    micro_batch_size: int = field(default=8, metadata={"help": "completions per forward/backward"})
    zero_stage: int | None = field(default=0, metadata={"help": "DeepSpeed ZeRO stage"})
    max_steps: int = field(default=500, metadata={"help": "generation batches (RL steps)"})
    output_dir: str = field(default="runs/grpo", metadata={"help": "output directory"})
    save_interval: int = field(default=50, metadata={"help": "steps between checkpoints (0 = end only)"})
    # problems
    problems: str = field(default="synthetic:print_number", metadata={"help": "problem source"})
    max_problems: int | None = field(default=None, metadata={"help": "keep the first N problems"})
    heldout_fraction: float = field(default=0.0, metadata={"help": "share of problems held out (by id)"})
    system_prompt: str | None = field(default=None, metadata={"help": "system message"})
    prompt_suffix: str = field(
        default="\n\nAnswer with one Python program in a ```python fenced block.",
        metadata={"help": "appended to each problem statement"},
    )
    # rollouts
    num_generations: int = field(default=16, metadata={"help": "G: rollouts per problem"})
    prompts_per_step: int = field(default=64, metadata={"help": "problems per generation batch (all ranks)"})
    max_prompt_length: int = field(default=512, metadata={"help": "prompt tokens kept (from the right)"})
    max_completion_length: int = field(default=1024, metadata={"help": "L_max: new tokens per rollout"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling"})
    top_k: int = field(default=0, metadata={"help": "top-k sampling (0 = off)"})
    generation_batch_size: int | None = field(default=None, metadata={"help": "completions per generate call"})
    decode_schedule: str = field(default="parallel", metadata={"help": "parallel or sequential"})
    # rewards
    reward_funcs: list[str] = field(default_factory=lambda: ["pass_rate"], metadata={"help": "reward names"})
    reward_weights: list[float] | None = field(default=None, metadata={"help": "one weight per reward"})
    max_tests: int | None = field(default=20, metadata={"help": "tests per problem"})
    max_timeouts: int | None = field(default=2, metadata={"help": "skip a program's tests after N time-outs"})
    sandbox_workers: int | None = field(default=None, metadata={"help": "executions per process"})
    sandbox_isolation: str = field(default="auto", metadata={"help": "auto, bwrap or rlimit"})
    reward_timeout_seconds: float = field(default=600.0, metadata={"help": "abandon a reward call after this"})
    infra_error_reward: str = field(default="exclude", metadata={"help": "exclude or zero"})
    # evaluation
    eval_problems: str | None = field(default=None, metadata={"help": "eval problems (None: the held-out split)"})
    eval_max_problems: int | None = field(default=64, metadata={"help": "eval problems used"})
    eval_interval: int = field(default=0, metadata={"help": "steps between evaluations (0: before and after)"})
    eval_temperature: float = field(default=0.0, metadata={"help": "0 = greedy"})
    eval_samples: int = field(default=1, metadata={"help": "completions per eval problem when sampling"})
    # objective
    beta: float = field(default=0.0, metadata={"help": "KL coefficient (0 = no reference model)"})
    epsilon: float = field(default=0.2, metadata={"help": "ε_low"})
    epsilon_high: float | None = field(default=0.28, metadata={"help": "ε_high (clip-higher)"})
    scale_rewards: str = field(default="group", metadata={"help": "group or none"})
    advantage_epsilon: float = field(default=1e-4, metadata={"help": "ε of the advantage normalisation"})
    loss_type: str = field(default="dapo", metadata={"help": "dapo, grpo or dr_grpo"})
    steps_per_generation: int = field(default=4, metadata={"help": "optimizer steps per generation batch"})
    num_iterations: int = field(default=1, metadata={"help": "passes over each generation batch"})
    # dynamic sampling, overlong
    dynamic_sampling: bool = field(default=False, metadata={"help": "drop zero-variance groups and refill"})
    max_generation_rounds: int = field(default=4, metadata={"help": "refill rounds per step at most"})
    mask_truncated_completions: bool = field(default=False, metadata={"help": "overlong filtering"})
    overlong_buffer: int = field(default=0, metadata={"help": "L_cache of the soft overlong penalty (0 = off)"})
    overlong_penalty_factor: float = field(default=1.0, metadata={"help": "scale of the overlong penalty"})
    log_completions: int = field(default=2, metadata={"help": "completions logged per step"})

    def validate(self) -> None:
        """Raises a ValueError naming the field for any inconsistent setting."""
        super().validate()
        if self.tokenizer is None:
            raise ValueError("tokenizer must not be null: GRPO renders prompts and decodes completions with it")
        if self.max_steps is None:
            raise ValueError("set max_steps (RL steps)")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {self.scale_rewards!r}")
        if self.infra_error_reward not in INFRA_ERROR_REWARDS:
            raise ValueError(f"infra_error_reward must be one of {INFRA_ERROR_REWARDS}")
        if self.sandbox_isolation not in SANDBOX_ISOLATIONS:
            raise ValueError(f"sandbox_isolation must be one of {SANDBOX_ISOLATIONS}, got {self.sandbox_isolation!r}")
        if self.sandbox_workers is not None and self.sandbox_workers < 1:
            raise ValueError(f"sandbox_workers must be >= 1 or null, got {self.sandbox_workers}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (rollouts are sampled), got {self.temperature}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.eval_interval < 0 or self.eval_samples < 1 or self.eval_temperature < 0:
            raise ValueError("eval_interval and eval_temperature must be >= 0 and eval_samples >= 1")
        if self.eval_temperature == 0 and self.eval_samples != 1:
            raise ValueError("greedy evaluation (eval_temperature 0) gives one completion per problem: eval_samples 1")
        if self.decode_schedule not in ("parallel", "sequential"):
            raise ValueError(f"decode_schedule must be parallel or sequential, got {self.decode_schedule!r}")
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2 (a group needs a baseline)")
        if self.beta < 0 or self.epsilon < 0 or (self.epsilon_high is not None and self.epsilon_high < 0):
            raise ValueError("beta, epsilon and epsilon_high must be >= 0")
        if self.steps_per_generation < 1 or self.num_iterations < 1:
            raise ValueError("steps_per_generation and num_iterations must be >= 1")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"{len(self.reward_weights)} reward_weights for {len(self.reward_funcs)} reward_funcs")
        if self.overlong_buffer < 0 or self.overlong_buffer >= max(self.max_completion_length, 1):
            if self.overlong_buffer != 0:
                raise ValueError("overlong_buffer must be in [0, max_completion_length)")

    @property
    def clip_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    @property
    def optimizer_steps_per_generation(self) -> int:
        return self.steps_per_generation * self.num_iterations

    @property
    def has_eval(self) -> bool:
        return self.eval_problems is not None or self.heldout_fraction > 0


__all__ = ["GRPOConfig", "LOSS_TYPES", "SANDBOX_ISOLATIONS"]
