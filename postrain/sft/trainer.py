"""The SFT / looped pre-training loop: a plain DeepSpeed engine over packed shards.

    loopcoder train sft --config jobs/sft/sample_tiny.yaml                        # one process
    torchrun --nproc_per_node 2 -m loopcoder.jobs.cli train sft --config ...      # data parallel
    deepspeed --num_gpus 8 $(which loopcoder) train sft --config ...              # deepspeed launcher

One step: set the learning rate, plan the global batch, build this rank's micro-batches, count
the trained tokens of the whole step (all-reduce), compare parameter replicas (at the fingerprint
interval), then forward / backward each micro-batch and let DeepSpeed step at the boundary.
docs/training.md explains each part; `SFTConfig` lists every knob.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .checkpoint import (
    full_state_dict,
    load_checkpoint,
    prepare_run,
    save_checkpoint,
    save_hf_model,
)
from .config import SFTConfig
from .data import MicroBatch, ShardStream, collate, discover_shards
from .distributed import device, init_distributed, initialize_engine, set_cpu_threads
from .loss import category_sums, merge_sums, token_losses
from .metrics import MetricsLogger
from .plan import BatchPlanner, learning_rate, phase_at, rank_share
from .silent_errors import SilentErrorDetector

logger = logging.getLogger(__name__)

Callback = Callable[["SFTTrainer", int], None]


class NonFiniteLossError(FloatingPointError):
    """A micro-batch's loss is NaN or inf; the message gives the step and the rows (shard#row) it came from."""


@dataclass
class TrainResult:
    steps: int
    losses: list[float]  # loss of each step run by this call
    history: list[dict[str, Any]] = field(default_factory=list)
    output_dir: Path | None = None
    final_model: Path | None = None


def build_model(config: SFTConfig):
    from loopcoder.model import LoopCoderConfig, LoopCoderForCausalLM

    torch.manual_seed(config.seed)
    if config.model_name_or_path:
        kwargs = {"attn_implementation": config.attn_implementation} if config.attn_implementation else {}
        model = LoopCoderForCausalLM.from_pretrained(config.model_name_or_path, dtype=torch.float32, **kwargs)
    else:
        if not config.model_config:
            raise ValueError("set model_name_or_path or model_config")
        model = LoopCoderForCausalLM(LoopCoderConfig(**config.model_config))
        if config.attn_implementation:
            model.set_attn_implementation(config.attn_implementation)
    if config.loop_grad_scale is not None:
        model.config.loop_grad_scale = float(config.loop_grad_scale)
    if config.loop_detach is not None:
        model.config.loop_detach = bool(config.loop_detach)
    if config.gradient_checkpointing:
        # transformers >= 5.x names it activation checkpointing; the old name is a deprecated alias
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model


class SFTTrainer:
    def __init__(self, config: SFTConfig, callbacks: list[Callback] | None = None):
        self.config = config
        self.callbacks = list(callbacks or [])
        self.rank, self.world = init_distributed()
        set_cpu_threads(config.cpu_threads)
        self.device = device()
        self.output_dir = Path(config.output_dir)
        self.checkpoint_root = self.output_dir / "checkpoints"

        micro = config.micro_batch_size
        if config.global_batch_size is not None:
            if config.global_batch_size % (micro * self.world):
                raise ValueError(
                    f"global_batch_size {config.global_batch_size} is not a multiple of "
                    f"micro_batch_size x processes = {micro} x {self.world}"
                )
            self.accumulation = config.global_batch_size // (micro * self.world)
        else:
            self.accumulation = config.gradient_accumulation_steps
        self.global_batch = micro * self.world * self.accumulation
        self.total_steps = config.total_steps

        # every shard is opened and checked before the model is built: a bad shard fails in seconds
        used = {*config.mixture, *config.replay, *config.eval_datasets}
        used |= {name for phase in config.curriculum for name in phase["mixture"]}
        self.streams = {
            name: ShardStream(name, discover_shards(name, config.datasets[name]), config.seed) for name in sorted(used)
        }
        self.planner = BatchPlanner(
            phases=config.phases,
            replay=dict(config.replay),
            replay_fraction=config.replay_fraction,
            global_batch_size=self.global_batch,
            seed=config.seed,
        )
        if not any(w > 0 for p in config.phases for w in p["mixture"].values()):
            raise ValueError("no training data: set `mixture` or a `curriculum`")

        model = build_model(config)
        self.model_config = model.config
        self.engine, self.ds_config, self.zero_stage = initialize_engine(model, config, self.accumulation)
        self.detector = SilentErrorDetector(config, self.rank, self.world)
        self.step = 0
        self.resumed_from: Path | None = None
        self.resumed_step = -1

    # -- helpers ------------------------------------------------------------------------------
    def resolved_config(self) -> str:
        import yaml

        resolved = self.config.to_dict() | {
            "resolved": {
                "world_size": self.world,
                "gradient_accumulation_steps": self.accumulation,
                "global_batch_size": self.global_batch,
                "total_steps": self.total_steps,
                "zero_stage": self.zero_stage,
                "bf16": bool(self.ds_config["bf16"]["enabled"]),
            }
        }
        return yaml.safe_dump(resolved, sort_keys=False)

    def _all_reduce(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor.tolist()

    def _set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def _grad_norm(self) -> float:
        if self.zero_stage == 0:
            # stage 0: DeepSpeed does not report the norm, so the trainer clips (the DS config has clipping 0)
            params = [p for p in self.engine.module.parameters() if p.grad is not None]
            max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
            return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        return float("nan")

    def _record_gates(self, on: bool) -> None:
        for layer in self.engine.module.model.layers:
            layer.self_attn.recorded_gates = [] if on else None

    def _gate_means(self, real: torch.Tensor) -> list[float]:
        """Mean gate per loop >= 1 over layers, heads and non-padding tokens of the last forward."""
        per_loop: dict[int, list[float]] = {}
        mask = real.to(torch.float32)
        for layer in self.engine.module.model.layers:
            for loop, gate in enumerate(layer.self_attn.recorded_gates or [], start=1):
                value = (gate.mean(-1).cpu() * mask).sum() / mask.sum().clamp_min(1)
                per_loop.setdefault(loop, []).append(float(value))
        return [sum(v) / len(v) for _, v in sorted(per_loop.items())]

    def _check_finite(self, loss_sum: torch.Tensor, step: int, micro: int, batch: MicroBatch) -> None:
        bad = 0.0 if torch.isfinite(loss_sum).item() else 1.0
        flags = self._all_reduce([bad])
        if flags[0] > 0:
            where = ", ".join(batch.sources) if bad else "another rank"
            raise NonFiniteLossError(
                f"non-finite loss at step {step} (micro-batch {micro}, rank {self.rank}): "
                f"loss sum {float(loss_sum.detach())!r} on rows {where}; data position {self.planner.state_dict()['consumed']}"
            )

    # -- eval -----------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.engine.module.eval()
        results = {}
        micro = self.config.micro_batch_size
        for name in self.config.eval_datasets:
            stream = self.streams[name]
            count = min(self.config.eval_max_rows, stream.num_rows)
            # the first `count` rows of epoch 0, split across ranks; every rank runs the same number of forwards
            indices = list(range(count))
            mine = indices[self.rank :: self.world]
            total = [0.0, 0.0]
            for start in range(0, math.ceil(count / self.world), micro):
                rows = [stream.row(i) for i in mine[start : start + micro]]
                if rows:
                    batch = collate(rows, self.config.mode)
                    losses = token_losses(self.engine, batch, self.device)
                    total[0] += float(losses.sum())
                    total[1] += float(batch.weights.sum())
                elif self.zero_stage == 3:
                    # ZeRO-3 forwards are collective: run a dummy row so the gathers match
                    token_losses(self.engine, collate([stream.row(0)], self.config.mode), self.device)
            loss_sum, tokens = self._all_reduce(total)
            results[name] = loss_sum / max(tokens, 1.0)
        self.engine.module.train()
        return results

    # -- the loop -------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        config = self.config
        resume = prepare_run(config, self.rank, self.output_dir, self.checkpoint_root, self.resolved_config())
        if resume is not None:
            state = load_checkpoint(self.engine, resume)
            self.step = int(state["step"])
            self.planner.load_state_dict(state["data"])
            self.resumed_from, self.resumed_step = resume, self.step
            if self.rank == 0:
                logger.info("resumed from %s at step %d", resume, self.step)
        metrics = MetricsLogger(self.output_dir, self.rank == 0, self.total_steps, self.step, config)
        losses: list[float] = []
        self.engine.module.train()
        world, accumulation = self.world, self.accumulation
        try:
            while self.step < self.total_steps:
                step = self.step
                for callback in self.callbacks:
                    callback(self, step)
                started = time.perf_counter()
                lr = learning_rate(
                    step,
                    self.total_steps,
                    config.learning_rate,
                    config.warmup_steps,
                    config.min_lr_ratio,
                    config.anneal_steps,
                    config.anneal_lr_ratio,
                )
                self._set_lr(lr)
                plan = self.planner.plan(step)
                micro_batches = [
                    collate([self.streams[name].row(index) for name, index in rows], config.mode)
                    for rows in rank_share(plan, self.rank, world, config.micro_batch_size)
                ]
                local_tokens = sum(b.num_loss_tokens for b in micro_batches)
                local_real = sum(int(b.real.sum()) for b in micro_batches)
                global_tokens, global_real = self._all_reduce([local_tokens, local_real])
                if self.detector.fingerprint_due(step):
                    self.detector.check_replicas(self.engine.module, step, self.zero_stage)
                log_now = step % config.log_interval == 0 or step == self.total_steps - 1
                gates: list[float] = []
                step_loss, by_category = 0.0, {}
                for micro, batch in enumerate(micro_batches):
                    record_gates = log_now and micro == 0 and config.log_gate_means and self.model_config.num_loops > 1
                    self._record_gates(record_gates)
                    losses_t = token_losses(self.engine, batch, self.device)
                    if record_gates:
                        gates = self._gate_means(batch.real)
                        self._record_gates(False)
                    loss_sum = losses_t.sum()
                    self._check_finite(loss_sum, step, micro, batch)
                    if micro == 0 and self.detector.recompute_due(step):
                        with torch.no_grad():
                            again = token_losses(self.engine, batch, self.device).sum()
                        self.detector.check_recompute(loss_sum.detach(), again, step, batch.sources[0])
                    # token mean over the global batch; DeepSpeed averages over ranks, hence * world
                    self.engine.backward(loss_sum * (world / max(global_tokens, 1.0)), scale_wrt_gas=False)
                    if micro == accumulation - 1:
                        grad_norm = self._grad_norm()
                    self.engine.step()
                    step_loss += float(loss_sum.detach())
                    merge_sums(by_category, category_sums(losses_t, batch))
                if self.zero_stage > 0:
                    norm = self.engine.get_global_grad_norm()
                    grad_norm = float(norm) if norm is not None else float("nan")
                loss = self._all_reduce([step_loss])[0] / max(global_tokens, 1.0)
                losses.append(loss)
                self.step = step + 1
                elapsed = time.perf_counter() - started
                if log_now:
                    record = self._record(
                        step, loss, lr, grad_norm, global_real / elapsed, elapsed, by_category, gates
                    )
                    metrics.log(record)
                if config.eval_datasets and config.eval_interval and self.step % config.eval_interval == 0:
                    metrics.log({"step": step, **self._eval_record()})
                metrics.advance()
                if config.save_interval and self.step % config.save_interval == 0 and self.step < self.total_steps:
                    self.save(metrics.history)
            final_eval = {}
            if config.eval_datasets and not (config.eval_interval and self.total_steps % config.eval_interval == 0):
                final_eval = self._eval_record()
                if final_eval:
                    metrics.log({"step": self.total_steps - 1, **final_eval})
            if self.step > self.resumed_step:
                self.save(metrics.history)
            final_model = self.export() if config.save_final_model else None
        finally:
            metrics.close()
        return TrainResult(self.step, losses, metrics.history, self.output_dir, final_model)

    def _record(self, step, loss, lr, grad_norm, tokens_per_s, elapsed, by_category, gates) -> dict[str, Any]:
        record: dict[str, Any] = {
            "step": step,
            "phase": phase_at(self.config.phases, step)["name"],
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_s,
            "step_time_s": elapsed,
        }
        merged: dict[str, list[float]] = {}
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, by_category)
            for part in gathered:
                merge_sums(merged, part)
        else:
            merged = by_category
        for category, (loss_sum, count) in sorted(merged.items()):
            if count:
                record[f"loss/{category}"] = loss_sum / count
        for loop, value in enumerate(gates, start=1):
            record[f"gate_mean/loop{loop}"] = value
        return record

    def _eval_record(self) -> dict[str, float]:
        results = self.evaluate()
        if not results:
            return {}
        tokens_weighted = sum(results.values()) / len(results)
        return {"eval_loss": tokens_weighted, **{f"eval_loss/{k}": v for k, v in results.items()}}

    def save(self, history: list[dict[str, Any]]) -> Path:
        state = {
            "step": self.step,
            "data": self.planner.state_dict(),
            "world_size": self.world,
            "last_metrics": history[-1] if history else None,
        }
        return save_checkpoint(
            self.engine, self.checkpoint_root, self.step, state, self.resolved_config(), self.config.keep_checkpoints
        )

    def export(self) -> Path | None:
        state = full_state_dict(self.engine, self.zero_stage)
        out = self.output_dir / "final"
        if self.rank == 0:
            from loopcoder.model.tokenizer import load_tokenizer

            tokenizer = None
            if self.config.tokenizer:
                tokenizer = load_tokenizer(None if self.config.tokenizer == "bundled" else self.config.tokenizer)
            save_hf_model(state, self.model_config, out, self.config.released_format, tokenizer)
            (out / "training_config.yaml").write_text(self.resolved_config(), encoding="utf-8")
        dist.barrier()
        return out


def train(config: SFTConfig, callbacks: list[Callback] | None = None) -> TrainResult:
    return SFTTrainer(config, callbacks).train()


__all__ = ["SFTTrainer", "TrainResult", "NonFiniteLossError", "build_model", "train"]
