"""`SFTConfig`: every knob of the SFT / looped pre-training trainer, loaded from YAML with CLI overrides.

    config = SFTConfig.from_yaml("jobs/sft/sample_tiny.yaml", overrides=["max_steps=20", "zero_stage=3"])

Precedence: field defaults < YAML < overrides. Overrides are `name=value` with the value read as
YAML (`lr=3e-4`, `mixture={sft: 1.0}`); an unknown name is an error that lists the valid ones. The
resolved config (with the values derived at start-up, such as the gradient accumulation) is saved
as `config.yaml` in the output directory and in every checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from loopcoder.postrain.runtime.config import TrainerConfig
from loopcoder.schemas.config_file import parse_override

MODES = ("sft", "pretrain")
ACTIONS = ("stop", "warn")


@dataclass
class SFTConfig(TrainerConfig):
    r"""Configuration of `loopcoder train sft` (`mode: sft`) and of looped continued pre-training (`mode: pretrain`).

    Parameters that control the model:
        model_name_or_path (str | None, defaults to None): Hugging Face directory to start from (a folded or released
            looped checkpoint). None initialises a fresh model from `model_config` with `seed`.
        model_config (dict, defaults to {}): `LoopCoderConfig` keyword arguments for a fresh model (ignored when
            `model_name_or_path` is set).
        loop_grad_scale (float | None, defaults to None): BPTT gradient scale between loops (the model's
            `loop_grad_scale`: the gradient from loop r into loop r - 1 is multiplied by it; 1.0 = exact). None keeps
            the checkpoint's value.
        loop_detach (bool | None, defaults to None): truncated BPTT (the model's `loop_detach`). None keeps it.
        attn_implementation (str | None, defaults to None): attention backend ("eager", "sdpa", "fused_gated");
            None keeps the model's default.
        gradient_checkpointing (bool, defaults to False): recompute each layer's activations in the backward pass.

    Parameters that control the data:
        mode (str, defaults to "sft"): "sft" trains where each row's `loss_mask` is 1 (assistant tokens);
            "pretrain" trains on every token of every document (raw packed text).
        datasets (dict[str, str], defaults to {}): named shard sets: name -> directory of `packed_sequence` shards
            (`*.parquet` or `*.arrow`, searched recursively).
        mixture (dict[str, float], defaults to {}): weights of the training shard sets when there is no curriculum.
        curriculum (list[dict], defaults to []): named phases `{name, steps, mixture}` run in order (easy -> hard);
            each phase draws its rows from its mixture for `steps` optimizer steps.
        replay (dict[str, float], defaults to {}): weights of the pre-training shard sets replayed during SFT.
        replay_fraction (float, defaults to 0.0): share of every global batch drawn from `replay` (against the
            alignment tax); rounded per step so that the long-run share is exact.
        eval_datasets (list[str], defaults to []): held-out shard sets for the eval loss.
        eval_interval (int, defaults to 0): steps between eval losses (0 = only at the end when `eval_datasets`).
        eval_max_rows (int, defaults to 64): rows read from each eval set.
        seed (int, defaults to 0): seeds the model initialisation and the data order.

    Parameters that control the training:
        max_steps (int | None, defaults to None): optimizer steps; None = the sum of the curriculum's steps.
        micro_batch_size (int, defaults to 1): packed rows per process per forward.
        global_batch_size (int | None, defaults to None): rows per optimizer step over all processes; the gradient
            accumulation is derived from it (`global / (micro * world)`), so one and many processes see the same
            batches. None = `micro_batch_size * gradient_accumulation_steps * world`.
        gradient_accumulation_steps (int, defaults to 1): used when `global_batch_size` is None.
        learning_rate (float, defaults to 2e-5): peak learning rate.
        warmup_steps (int, defaults to 0): linear warm-up from `lr / warmup_steps` to `lr`.
        min_lr_ratio (float, defaults to 0.1): cosine floor as a fraction of the peak (OpenRLHF's
            `cosine_with_min_lr` default).
        anneal_steps (int, defaults to 0): length of the low-rate annealing tail after the cosine.
        anneal_lr_ratio (float | None, defaults to None): learning rate at the end of the tail as a fraction of the
            peak; the tail goes linearly from the floor to it. None = stay at the floor.
        weight_decay (float, defaults to 0.0), adam_beta1 (0.9), adam_beta2 (0.95), adam_epsilon (1e-8): AdamW
            (the torch implementation, so nothing is compiled at start-up).
        max_grad_norm (float, defaults to 1.0): gradient clipping at every ZeRO stage and precision (0 = off);
            the logged `grad_norm` is the global norm before clipping.
        precision (str, defaults to "auto"): "auto" = bf16 on GPU, fp32 on CPU.
        deepspeed_config (str | None, defaults to None): DeepSpeed JSON (`jobs/deepspeed/zero{0,1,2,3}.json`);
            None = the packaged `zero{zero_stage}.json`. `"auto"` values are filled from this config.
        zero_stage (int | None, defaults to None): overrides the JSON's ZeRO stage; None with no JSON means 0.
        cpu_threads (int | None, defaults to None): torch threads per process on CPU; None = cores / local
            processes. On a shared machine 1 is often fastest (busy cores make torch's thread pool spin).

    Parameters that control checkpoints and logging:
        output_dir (str, defaults to "runs/sft"): checkpoints, metrics, final model.
        save_interval (int, defaults to 0): steps between checkpoints (0 = only at the end).
        keep_checkpoints (int, defaults to 2): complete checkpoints kept (older ones are deleted).
        resume (str, defaults to "auto"): "auto" resumes from the newest complete checkpoint in `output_dir` if there
            is one, "never" starts fresh, or a checkpoint directory.
        save_final_model (bool, defaults to True): write `output_dir/final` as a Hugging Face directory.
        tokenizer (str | None, defaults to "auto"): tokenizer saved beside the final model: "auto" (the model
            directory's, else the bundled one), "bundled", a directory, or None.
        released_format (bool, defaults to False): write the final model in the released LoopCoder-V2 format
            (`model_type: iquestpltcoder`).
        log_interval (int, defaults to 1): steps between metric records (JSONL, trackers, progress bar).
        report_to (list[str], defaults to ["tensorboard"]): trackers that get every metric record besides
            `metrics.jsonl`: "tensorboard", "wandb", "mlflow" (rank 0 only; docs/training.md); "none" or [] for
            none. A tracker whose package is missing is an error when the config is built.
        run_name (str | None, defaults to None): the trackers' run name (None: the name of `output_dir`).
        progress_bar (bool, defaults to True): a tqdm bar on rank 0.
        log_gate_means (bool, defaults to True): record the per-loop mean gate at each log step.

    Parameters of the silent-error detection:
        fingerprint_interval (int, defaults to 50): steps between parameter fingerprints compared across
            data-parallel ranks before the forward (0 = off; needs more than one process).
        recompute_interval (int, defaults to 100): steps between deterministic recomputations of a micro-batch
            (0 = off).
        recompute_tolerance (float | None, defaults to None): allowed relative difference of the recomputed loss.
            None = 0 (bitwise) on CPU or with `deterministic`, else 1e-3 (GPU kernels need not be deterministic).
        deterministic (bool, defaults to False): deterministic kernels (`torch.use_deterministic_algorithms`, cuBLAS
            workspace config set before CUDA starts), so that a GPU recomputation is bitwise equal and the
            default tolerance is 0. Slower on GPU; CPU runs are bitwise reproducible without it.
        silent_error_action (str, defaults to "stop"): "stop" raises with a report, "warn" logs it and goes on.

    Parameters of memory:
        logprob_chunk_size (int, defaults to 1024): tokens (of the flattened micro-batch) whose fp32 logits exist at
            once when the loss is computed, in training and evaluation; each chunk is recomputed in the backward
            pass. 0 = the whole micro-batch at once.
    """

    output_dir: str = field(default="runs/sft", metadata={"help": "checkpoints, metrics, final model"})

    mode: str = field(default="sft", metadata={"help": "sft (loss mask) or pretrain (every token)"})
    datasets: dict[str, str] = field(default_factory=dict, metadata={"help": "name -> shard directory"})
    mixture: dict[str, float] = field(default_factory=dict, metadata={"help": "name -> weight (no curriculum)"})
    curriculum: list[dict[str, Any]] = field(default_factory=list, metadata={"help": "phases {name, steps, mixture}"})
    replay: dict[str, float] = field(default_factory=dict, metadata={"help": "pre-training sets to replay"})
    replay_fraction: float = field(default=0.0, metadata={"help": "share of each batch from replay"})
    eval_datasets: list[str] = field(default_factory=list, metadata={"help": "held-out shard sets"})
    eval_interval: int = field(default=0, metadata={"help": "steps between eval losses"})
    eval_max_rows: int = field(default=64, metadata={"help": "rows per eval set"})

    global_batch_size: int | None = field(default=None, metadata={"help": "rows per optimizer step, all processes"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "used without global_batch_size"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine floor / peak"})
    anneal_steps: int = field(default=0, metadata={"help": "low-rate annealing tail"})
    anneal_lr_ratio: float | None = field(default=None, metadata={"help": "lr at the end of the tail / peak"})

    log_gate_means: bool = field(default=True, metadata={"help": "per-loop gate means at log steps"})

    fingerprint_interval: int = field(default=50, metadata={"help": "steps between replica fingerprints"})
    recompute_interval: int = field(default=100, metadata={"help": "steps between recomputations"})
    recompute_tolerance: float | None = field(
        default=None, metadata={"help": "relative tolerance of the recomputation"}
    )
    silent_error_action: str = field(default="stop", metadata={"help": "stop or warn"})

    def validate(self) -> None:
        """Raises a ValueError naming the field for any inconsistent setting."""
        super().validate()
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.silent_error_action not in ACTIONS:
            raise ValueError(f"silent_error_action must be one of {ACTIONS}, got {self.silent_error_action!r}")
        if not 0.0 <= self.replay_fraction < 1.0:
            raise ValueError(f"replay_fraction must be in [0, 1), got {self.replay_fraction}")
        if self.replay_fraction > 0 and not self.replay:
            raise ValueError("replay_fraction > 0 needs `replay` shard sets")
        for name in ("gradient_accumulation_steps",):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("anneal_steps", "eval_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.fingerprint_interval < 0 or self.recompute_interval < 0:
            raise ValueError("fingerprint_interval and recompute_interval must be >= 0")
        if self.recompute_tolerance is not None and self.recompute_tolerance < 0:
            raise ValueError(f"recompute_tolerance must be >= 0, got {self.recompute_tolerance}")
        if self.curriculum and self.mixture:
            raise ValueError("set either `mixture` or `curriculum` (each phase has its own mixture), not both")
        for phase in self.curriculum:
            missing = {"name", "steps", "mixture"} - set(phase)
            if missing:
                raise ValueError(f"curriculum phase {phase.get('name', phase)!r} lacks {', '.join(sorted(missing))}")
        names = set(self.datasets)
        used = [*self.mixture, *self.replay, *self.eval_datasets]
        used += [name for phase in self.curriculum for name in phase["mixture"]]
        unknown = sorted(set(used) - names)
        if unknown:
            raise ValueError(f"unknown shard set(s) {unknown}; `datasets` defines {sorted(names)}")
        for weights in [self.mixture, self.replay, *(p["mixture"] for p in self.curriculum)]:
            if any(w < 0 for w in weights.values()) or (weights and not math.isfinite(sum(weights.values()))):
                raise ValueError(f"mixture weights must be finite and >= 0, got {weights}")
            if weights and sum(weights.values()) <= 0:
                raise ValueError(f"mixture weights must not all be 0, got {weights}")

    @property
    def phases(self) -> list[dict[str, Any]]:
        """The curriculum, or one phase `main` over `mixture` for `max_steps`."""
        if self.curriculum:
            return [dict(p) for p in self.curriculum]
        return [{"name": "main", "steps": self.total_steps, "mixture": dict(self.mixture)}]

    @property
    def total_steps(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        if self.curriculum:
            return sum(int(p["steps"]) for p in self.curriculum)
        raise ValueError("set max_steps (or a curriculum whose phases give the steps)")


__all__ = ["SFTConfig", "parse_override"]
