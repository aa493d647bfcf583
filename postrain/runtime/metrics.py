"""Metric records on rank 0: `metrics.jsonl` (one JSON object per log step), TensorBoard, a progress bar.

Keys: `step`, `phase`, `loss` (token mean over the global batch), `lr`, `grad_norm`, `tokens_per_s`
(non-padding tokens of all ranks per second), `step_time_s`, `loss/<category>`, `gate_mean/loop<r>`
(mean gate of loop r over layers, heads and tokens: the share of the global branch), `eval_loss` and
`eval_loss/<set>` when evaluated. The trackers of `report_to` (TensorBoard, W&B, MLflow: `trackers.py`)
get the same records' finite numbers at their step.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from .trackers import open_trackers, scalars

logger = logging.getLogger(__name__)


class MetricsLogger:
    def __init__(self, output_dir: Path, enabled: bool, total_steps: int, start_step: int, config):
        self.enabled = enabled
        self.history: list[dict[str, Any]] = []
        self._file = None
        self._trackers: list = []
        self._bar = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(output_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if config.report_to:
            run_name = config.run_name or output_dir.resolve().name
            self._trackers = open_trackers(config.report_to, output_dir, run_name, config.to_dict())
        if config.progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr)

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.enabled:
            return
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        values = scalars(record)
        for tracker in self._trackers:
            tracker.log(values, record["step"])
        if self._bar is not None:
            shown = {k: record[k] for k in ("loss", "lr", "tokens_per_s", "eval_loss") if k in record}
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        for tracker in self._trackers:
            tracker.close()
        self._trackers = []
        if self._file is not None:
            self._file.close()


__all__ = ["MetricsLogger"]
