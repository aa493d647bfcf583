"""The run every trainer shares: process group, engine, resume, the step loop, logging, checkpoints, final model.

    class SFTTrainer(Trainer):
        def train_step(self, step) -> dict: ...          # one optimizer step (or RL step); its metric record
        def trainer_state(self) -> dict: ...             # what a checkpoint needs beyond the engine (data position)
        def load_trainer_state(self, state) -> None: ...

`Trainer.train()` resumes from the newest complete checkpoint, then for each step runs the callbacks,
`train_step`, logs the record every `log_interval` steps (and the last step), calls `after_step`, saves
every `save_interval` steps, and at the end saves (when it advanced since the resume) and writes
`output_dir/final` (the model, or with LoRA the adapter: `adapters.py`). `engine_step` steps DeepSpeed and returns the gradient norm (before clipping) at the
accumulation boundary: where DeepSpeed's bf16 or ZeRO optimizer holds the gradients, DeepSpeed clips and
the norm is its own (`get_global_grad_norm`); with the plain torch optimizer of fp32 ZeRO-0, where `p.grad`
is the whole gradient, the trainer clips it (`deepspeed_config` sets DeepSpeed's clipping to 0 there).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from loopcoder.pipelines.io.filesystem import atomic_write_bytes
from loopcoder.postrain.sharded_model import end_zero3_mode

from . import collectives
from .adapters import merged_state_dict, save_adapter
from .checkpoint import full_state_dict, load_checkpoint, prepare_run, save_checkpoint, save_hf_model
from .distributed import (
    device,
    init_distributed,
    initialize_engine,
    plain_torch_optimizer,
    set_cpu_threads,
    set_deterministic,
)
from .logprobs import causal_lm
from .metrics import MetricsLogger
from .model import build_tokenizer

logger = logging.getLogger(__name__)

Callback = Callable[[Any, int], None]


@dataclass
class TrainResult:
    steps: int
    losses: list[float]  # loss of each step run by this call
    history: list[dict[str, Any]] = field(default_factory=list)
    output_dir: Path | None = None
    final_model: Path | None = None

    def metric(self, key: str) -> list[float]:
        return [r[key] for r in self.history if key in r]


class Trainer:
    def __init__(self, config, callbacks: list[Callback] | None = None):
        self.config = config
        self.callbacks = list(callbacks or [])
        self.rank, self.world = init_distributed()
        set_cpu_threads(config.cpu_threads)
        set_deterministic(config.deterministic)
        self.device = device()
        self.output_dir = Path(config.output_dir)
        self.checkpoint_root = self.output_dir / "checkpoints"
        self.total_steps = config.total_steps
        self.tokenizer = None
        self.step = 0
        self.resumed_from: Path | None = None
        self.resumed_step = -1

    def setup_engine(self, model, gradient_accumulation_steps: int) -> None:
        self.model_config = model.config
        self.engine, self.ds_config, self.zero_stage = initialize_engine(
            model, self.config, gradient_accumulation_steps
        )
        # the optimizers of bf16 and ZeRO keep the norm they clipped with; the plain torch one does not
        self.engine_reports_norm = hasattr(self.engine.optimizer, "_global_grad_norm")
        if self.engine_reports_norm == plain_torch_optimizer(self.ds_config):
            raise RuntimeError(
                f"DeepSpeed chose {type(self.engine.optimizer).__name__} for this config: the gradient clipping "
                "would be done twice or not at all"
            )

    # the parts a trainer fills in
    def train_step(self, step: int) -> dict[str, Any]:
        raise NotImplementedError

    def trainer_state(self) -> dict[str, Any]:
        return {}

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        pass

    def resolved_fields(self) -> dict[str, Any]:
        """Values derived at start-up, saved under `resolved` in config.yaml."""
        return {}

    def after_step(self, step: int, record: dict[str, Any], metrics: MetricsLogger) -> None:
        pass

    def before_final_save(self, metrics: MetricsLogger) -> None:
        pass

    def close(self) -> None:
        pass

    # shared helpers
    def resolved_config(self) -> str:
        import yaml

        resolved = {
            "world_size": self.world,
            **self.resolved_fields(),
            "zero_stage": self.zero_stage,
            "bf16": bool(self.ds_config["bf16"]["enabled"]),
        }
        return yaml.safe_dump(self.config.to_dict() | {"resolved": resolved}, sort_keys=False)

    def set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def engine_step(self, boundary: bool) -> float | None:
        """`engine.step()`; at the accumulation boundary (`boundary`), the global gradient norm before clipping."""
        norm = None
        if boundary and not self.engine_reports_norm:
            params = [p for p in self.engine.module.parameters() if p.grad is not None]
            max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else math.inf
            norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0
        self.engine.step()
        if boundary and self.engine_reports_norm:
            reported = self.engine.get_global_grad_norm()
            norm = float(reported) if reported is not None else math.nan
        return norm

    def log_due(self, step: int) -> bool:
        return step % self.config.log_interval == 0 or step == self.total_steps - 1

    # the run
    def resume(self) -> None:
        path = prepare_run(self.config, self.rank, self.output_dir, self.checkpoint_root, self.resolved_config())
        if path is None:
            return
        state = load_checkpoint(self.engine, path)
        self.step = int(state["step"])
        self.load_trainer_state(state)
        self.resumed_from, self.resumed_step = path, self.step
        if self.rank == 0:
            logger.info("resumed from %s at step %d", path, self.step)

    def train(self) -> TrainResult:
        config = self.config
        self.resume()
        metrics = MetricsLogger(self.output_dir, self.rank == 0, self.total_steps, self.step, config)
        losses: list[float] = []
        self.engine.module.train()
        try:
            while self.step < self.total_steps:
                step = self.step
                for callback in self.callbacks:
                    callback(self, step)
                record = self.train_step(step)
                self.step = step + 1
                if "loss" in record:
                    losses.append(record["loss"])
                if self.log_due(step):
                    metrics.log(record)
                self.after_step(step, record, metrics)
                metrics.advance()
                if config.save_interval and self.step % config.save_interval == 0 and self.step < self.total_steps:
                    self.save(metrics.history)
            self.before_final_save(metrics)
            if self.step > self.resumed_step:
                self.save(metrics.history)
            final_model = self.export() if config.save_final_model else None
        finally:
            metrics.close()
            self.close()
            end_zero3_mode(causal_lm(self.engine))
        return TrainResult(self.step, losses, metrics.history, self.output_dir, final_model)

    def save(self, history: list[dict[str, Any]]) -> Path:
        state = {
            "step": self.step,
            "world_size": self.world,
            "last_metrics": history[-1] if history else None,
            **self.trainer_state(),
        }
        return save_checkpoint(
            self.engine, self.checkpoint_root, self.step, state, self.resolved_config(), self.config.keep_checkpoints
        )

    def export(self) -> Path:
        """Collective: the full model (and the tokenizer) as a Hugging Face directory `output_dir/final`; with LoRA
        the adapter there, and with `merge_on_export` the merged model in `output_dir/final_merged`."""
        state = full_state_dict(self.engine, self.zero_stage)
        out = self.output_dir / "final"
        if self.rank == 0:
            tokenizer = self.tokenizer if self.tokenizer is not None else build_tokenizer(self.config)
            if self.config.peft is None:
                save_hf_model(state, self.model_config, out, self.config.released_format, tokenizer)
            else:
                save_adapter(self.engine.module, state, out, tokenizer)
                if self.config.peft.merge_on_export:
                    merged = merged_state_dict(state, self.model_config, self.config.peft)
                    merged_dir = self.output_dir / "final_merged"
                    save_hf_model(merged, self.model_config, merged_dir, self.config.released_format, tokenizer)
                    atomic_write_bytes(merged_dir / "training_config.yaml", self.resolved_config().encode())
            atomic_write_bytes(out / "training_config.yaml", self.resolved_config().encode())
        collectives.barrier()
        return out


__all__ = ["Callback", "TrainResult", "Trainer"]
