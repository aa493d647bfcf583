"""The trainers' config base: the fields SFT and GRPO share, and one YAML loader (defaults < YAML < overrides).

    @dataclass
    class SFTConfig(TrainerConfig): ...       # adds its own fields, may change a shared field's default
    config = SFTConfig.from_yaml("jobs/sft/sample_tiny.yaml", overrides=["max_steps=20", "learning_rate=3e-4"])

The loader is `loopcoder.schemas.config_file.ConfigFile`, shared with the data jobs: unknown keys are errors
that list the valid ones; float fields accept YAML 1.1's `3e-4`, which PyYAML reads as a string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loopcoder.schemas.config_file import ConfigFile

from .adapters import PeftSettings
from .trackers import check_report_to, normalise_report_to

PRECISIONS = ("auto", "fp32", "bf16")
TOKENIZER_HELP = "auto, bundled, a directory or null"


@dataclass
class TrainerConfig(ConfigFile):
    r"""The fields every trainer has; `SFTConfig` and `GRPOConfig` add their own and document these too.

    Model: `model_name_or_path` (a Hugging Face directory) or `model_config` (`LoopCoderConfig` keyword arguments
    for a fresh model seeded with `seed`); `attn_implementation`, `loop_grad_scale`, `loop_detach` (None keeps the
    model's value) and `gradient_checkpointing`. `tokenizer` is the run's tokenizer, saved beside the final model:
    "auto" (the model directory's tokenizer if it has one, else the bundled one), "bundled", a directory, or None
    (no tokenizer; GRPO needs one). `peft` (None = every weight trains) is a mapping of LoRA settings, `r` (16),
    `alpha` (32), `dropout` (0.05), `target_modules` (the attention and MLP projections), `modules_to_save`, `bias`
    ("none"), `merge_on_export` (False): see `adapters.py`.
    Optimisation: `max_steps`, `micro_batch_size`, `learning_rate`, `warmup_steps`, AdamW's `weight_decay`,
    `adam_beta1`, `adam_beta2`, `adam_epsilon`; `max_grad_norm` (clipping at every ZeRO stage and precision, 0 =
    off); `precision` ("auto" = bf16 on GPU, fp32 on CPU); `deepspeed_config` and `zero_stage`; `cpu_threads`;
    `deterministic` (deterministic kernels: bitwise-reproducible GPU forwards, slower); `logprob_chunk_size`
    (tokens whose fp32 logits exist at once when the loss and log-probabilities are computed, 0 = the whole batch).
    Run: `output_dir`, `save_interval` (0 = only at the end), `keep_checkpoints`, `resume` ("auto", "never" or a
    checkpoint directory), `save_final_model`, `released_format`, `log_interval`, `report_to` (trackers:
    "tensorboard", "wandb", "mlflow"; default ["tensorboard"]; a missing package is an error here), `run_name`,
    `progress_bar`.
    """

    model_name_or_path: str | None = field(default=None, metadata={"help": "starting checkpoint (HF directory)"})
    model_config: dict[str, Any] = field(default_factory=dict, metadata={"help": "LoopCoderConfig kwargs"})
    attn_implementation: str | None = field(default=None, metadata={"help": "eager, sdpa or fused_gated"})
    loop_grad_scale: float | None = field(default=None, metadata={"help": "BPTT gradient scale between loops"})
    loop_detach: bool | None = field(default=None, metadata={"help": "truncate BPTT between loops"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward"})
    tokenizer: str | None = field(default="auto", metadata={"help": TOKENIZER_HELP})
    seed: int = field(default=0, metadata={"help": "model init and data order seed"})
    peft: PeftSettings | None = field(default=None, metadata={"help": "LoRA adapters (r, alpha, dropout, ...)"})

    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps"})
    micro_batch_size: int = field(default=1, metadata={"help": "rows per process per forward"})
    learning_rate: float = field(default=2e-5, metadata={"help": "peak learning rate"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2"})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping, 0 = off"})
    precision: str = field(default="auto", metadata={"help": "auto, fp32 or bf16"})
    deepspeed_config: str | None = field(default=None, metadata={"help": "DeepSpeed JSON"})
    zero_stage: int | None = field(default=None, metadata={"help": "ZeRO stage override"})
    cpu_threads: int | None = field(default=None, metadata={"help": "torch threads per process on CPU"})
    deterministic: bool = field(default=False, metadata={"help": "deterministic kernels (bitwise recomputation)"})
    logprob_chunk_size: int = field(default=1024, metadata={"help": "tokens per fp32 logits chunk (0 = whole batch)"})

    output_dir: str = field(default="runs/train", metadata={"help": "checkpoints, metrics, final model"})
    save_interval: int = field(default=0, metadata={"help": "steps between checkpoints (0 = end only)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "complete checkpoints kept"})
    resume: str = field(default="auto", metadata={"help": "auto, never or a checkpoint directory"})
    save_final_model: bool = field(default=True, metadata={"help": "write output_dir/final"})
    released_format: bool = field(default=False, metadata={"help": "final model as iquestpltcoder"})
    log_interval: int = field(default=1, metadata={"help": "steps between metric records"})
    report_to: list[str] = field(
        default_factory=lambda: ["tensorboard"], metadata={"help": "trackers: tensorboard, wandb, mlflow (or none)"}
    )
    run_name: str | None = field(default=None, metadata={"help": "run name for the trackers (None: output_dir's)"})
    progress_bar: bool = field(default=True, metadata={"help": "tqdm bar on rank 0"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises a ValueError naming the field for an inconsistent shared setting; subclasses extend it."""
        self.report_to = normalise_report_to(self.report_to)
        check_report_to(self.report_to)
        self.peft = PeftSettings.from_value(self.peft)
        if self.peft is not None and not self.model_name_or_path:
            raise ValueError("peft: LoRA adapts a trained model: set model_name_or_path (a Hugging Face directory)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.zero_stage is not None and self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        for name in ("micro_batch_size", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "save_interval", "max_grad_norm", "logprob_chunk_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")

    @property
    def total_steps(self) -> int:
        if self.max_steps is None:
            raise ValueError("set max_steps")
        return self.max_steps


__all__ = ["PRECISIONS", "TrainerConfig"]
