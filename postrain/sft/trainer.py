"""The SFT / looped pre-training loop: a plain DeepSpeed engine over packed shards.

    loopcoder train sft --config jobs/sft/sample_tiny.yaml                        # one process
    torchrun --nproc_per_node 2 -m loopcoder.jobs.cli train sft --config ...      # data parallel
    deepspeed --num_gpus 8 $(which loopcoder) train sft --config ...              # deepspeed launcher

One step: set the learning rate, plan the global batch, build this rank's micro-batches, count
the trained tokens of the whole step (all-reduce), compare parameter replicas (at the fingerprint
interval), then forward / backward each micro-batch and let DeepSpeed step at the boundary.
The run around the step (process group, engine, resume, logging, checkpoints, final model) is
`loopcoder.postrain.runtime.Trainer`'s. docs/training.md explains each part; `SFTConfig` lists every knob.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch

from loopcoder.postrain.runtime import collectives
from loopcoder.postrain.runtime.logprobs import causal_lm
from loopcoder.postrain.runtime.model import build_model
from loopcoder.postrain.runtime.trainer import Callback, Trainer, TrainResult

from .config import SFTConfig
from .data import MicroBatch, ShardStream, collate, discover_shards
from .loss import category_sums, merge_sums, token_losses
from .plan import BatchPlanner, learning_rate, phase_at, rank_share
from .silent_errors import SilentErrorDetector

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A micro-batch's loss is NaN or inf; the message gives the step and the rows (shard#row) it came from."""


class SFTTrainer(Trainer):
    def __init__(self, config: SFTConfig, callbacks: list[Callback] | None = None):
        super().__init__(config, callbacks)
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

        self.setup_engine(build_model(config, self.accumulation), self.accumulation)
        self.detector = SilentErrorDetector(config, self.rank, self.world, self.device)

    def resolved_fields(self) -> dict[str, Any]:
        return {
            "gradient_accumulation_steps": self.accumulation,
            "global_batch_size": self.global_batch,
            "total_steps": self.total_steps,
        }

    def trainer_state(self) -> dict[str, Any]:
        return {"data": self.planner.state_dict()}

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        self.planner.load_state_dict(state["data"])

    def _record_gates(self, on: bool) -> None:
        for layer in causal_lm(self.engine).model.layers:
            layer.self_attn.recorded_gates = [] if on else None

    def _gate_means(self, real: torch.Tensor) -> list[float]:
        """Mean gate per loop >= 1 over layers, heads and non-padding tokens of the last forward."""
        per_loop: dict[int, list[float]] = {}
        mask = real.to(torch.float32)
        for layer in causal_lm(self.engine).model.layers:
            for loop, gate in enumerate(layer.self_attn.recorded_gates or [], start=1):
                value = (gate.mean(-1).cpu() * mask).sum() / mask.sum().clamp_min(1)
                per_loop.setdefault(loop, []).append(float(value))
        return [sum(v) / len(v) for _, v in sorted(per_loop.items())]

    def _check_finite(self, loss_sum: torch.Tensor, step: int, micro: int, batch: MicroBatch) -> None:
        bad = 0.0 if torch.isfinite(loss_sum).item() else 1.0
        flags = collectives.all_reduce([bad])
        if flags[0] > 0:
            where = ", ".join(batch.sources) if bad else "another rank"
            raise NonFiniteLossError(
                f"non-finite loss at step {step} (micro-batch {micro}, rank {self.rank}): "
                f"loss sum {float(loss_sum.detach())!r} on rows {where}; data position {self.planner.state_dict()['consumed']}"
            )

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
                    losses = token_losses(self.engine, batch, self.device, self.config.logprob_chunk_size)
                    total[0] += float(losses.sum())
                    total[1] += float(batch.weights.sum())
                elif self.zero_stage == 3:
                    # ZeRO-3 forwards are collective: run a dummy row so the gathers match
                    token_losses(
                        self.engine,
                        collate([stream.row(0)], self.config.mode),
                        self.device,
                        self.config.logprob_chunk_size,
                    )
            loss_sum, tokens = collectives.all_reduce(total)
            results[name] = loss_sum / max(tokens, 1.0)
        self.engine.module.train()
        return results

    def train_step(self, step: int) -> dict[str, Any]:
        config, world, accumulation = self.config, self.world, self.accumulation
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
        self.set_lr(lr)
        plan = self.planner.plan(step)
        micro_batches = [
            collate([self.streams[name].row(index) for name, index in rows], config.mode)
            for rows in rank_share(plan, self.rank, world, config.micro_batch_size)
        ]
        local_tokens = sum(b.num_loss_tokens for b in micro_batches)
        local_real = sum(int(b.real.sum()) for b in micro_batches)
        global_tokens, global_real = collectives.all_reduce([local_tokens, local_real])
        if self.detector.fingerprint_due(step):
            self.detector.check_replicas(self.engine.module, step, self.zero_stage)
        log_now = self.log_due(step)
        gates: list[float] = []
        step_loss, by_category, grad_norm = 0.0, {}, math.nan
        for micro, batch in enumerate(micro_batches):
            record_gates = log_now and micro == 0 and config.log_gate_means and self.model_config.num_loops > 1
            self._record_gates(record_gates)
            losses_t = token_losses(self.engine, batch, self.device, self.config.logprob_chunk_size)
            if record_gates:
                gates = self._gate_means(batch.real)
                self._record_gates(False)
            loss_sum = losses_t.sum()
            self._check_finite(loss_sum, step, micro, batch)
            if micro == 0 and self.detector.recompute_due(step):
                with torch.no_grad():
                    again = token_losses(self.engine, batch, self.device, self.config.logprob_chunk_size).sum()
                self.detector.check_recompute(loss_sum.detach(), again, step, batch.sources[0])
            # token mean over the global batch; DeepSpeed averages over ranks, hence * world
            self.engine.backward(loss_sum * (world / max(global_tokens, 1.0)), scale_wrt_gas=False)
            norm = self.engine_step(boundary=micro == accumulation - 1)
            grad_norm = grad_norm if norm is None else norm
            step_loss += float(loss_sum.detach())
            merge_sums(by_category, category_sums(losses_t, batch))
        loss = collectives.all_reduce([step_loss])[0] / max(global_tokens, 1.0)
        if not log_now:
            return {"step": step, "loss": loss}
        elapsed = time.perf_counter() - started
        return self._record(step, loss, lr, grad_norm, global_real / elapsed, elapsed, by_category, gates)

    def after_step(self, step: int, record: dict[str, Any], metrics) -> None:
        config = self.config
        if config.eval_datasets and config.eval_interval and self.step % config.eval_interval == 0:
            metrics.log({"step": step, **self._eval_record()})

    def before_final_save(self, metrics) -> None:
        config = self.config
        if config.eval_datasets and not (config.eval_interval and self.total_steps % config.eval_interval == 0):
            final_eval = self._eval_record()
            if final_eval:
                metrics.log({"step": self.total_steps - 1, **final_eval})

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
        for part in collectives.all_gather_objects(by_category):
            merge_sums(merged, part)
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


def train(config: SFTConfig, callbacks: list[Callback] | None = None) -> TrainResult:
    return SFTTrainer(config, callbacks).train()


__all__ = ["SFTTrainer", "TrainResult", "NonFiniteLossError", "train"]
