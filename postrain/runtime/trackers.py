"""Experiment trackers a run reports its metric records to (`report_to`), on rank 0 only.

| name | package | where |
|---|---|---|
| `tensorboard` | `tensorboard` (a core dependency) | `output_dir/tensorboard/` event files |
| `wandb` | `wandb` (extra `tracking`) | a Weights & Biases run; `WANDB_MODE=offline` keeps it in `output_dir/wandb/` |
| `mlflow` | `mlflow-skinny` (extra `tracking`) | `MLFLOW_TRACKING_URI`, else the file store `output_dir/mlruns/` |

`metrics.jsonl` is always written (`metrics.py`); the trackers get the same records: every finite number except
`step`, at that step. A tracker whose package is missing is a configuration error (`check_report_to`, called when
the config is built), never a silent fallback. A resumed run continues the same W&B run and MLflow run: their
ids are kept in `output_dir/trackers.json`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

TRACKERS = ("tensorboard", "wandb", "mlflow")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
INSTALL_HINTS = {
    "tensorboard": "pip install tensorboard",
    "wandb": "pip install 'loopcoder[tracking]' (or wandb)",
    "mlflow": "pip install 'loopcoder[tracking]' (or mlflow-skinny)",
}


def normalise_report_to(value: Any) -> list[str]:
    """`report_to` as a list of tracker names: a single name, a list, or "none" / None / [] for none."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else list(value)
    names = [str(n).strip().lower() for n in names]
    return [] if names in (["none"], [""]) else names


def check_report_to(names: list[str]) -> None:
    """ValueError for an unknown tracker or one whose package is not installed."""
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"report_to: unknown tracker {name!r}; choose from {', '.join(TRACKERS)} (or none)")
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ValueError(
                f"report_to: {name} needs the `{PACKAGES[name]}` package, which is not installed: {INSTALL_HINTS[name]}"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"report_to names a tracker twice: {names}")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metric record, without `step` (booleans and strings are not metrics)."""
    return {
        key: float(value)
        for key, value in record.items()
        if key != "step" and isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


class TensorBoardTracker:
    def __init__(self, output_dir: Path, run_name: str, config: dict[str, Any], ids: dict[str, str]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(output_dir / "tensorboard"))

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run in `output_dir` (project `WANDB_PROJECT`, default "loopcoder"); every W&B environment variable
    (`WANDB_MODE=offline`, `WANDB_ENTITY`, ...) applies as usual."""

    def __init__(self, output_dir: Path, run_name: str, config: dict[str, Any], ids: dict[str, str]):
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "loopcoder"),
            name=run_name,
            dir=str(output_dir),
            config=config,
            id=ids.get("wandb"),
            resume="allow",
        )
        ids["wandb"] = self.run.id

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


MLFLOW_NAME = re.compile(r"[^\w\-. :/]")


class MLflowTracker:
    """An MLflow run in experiment `MLFLOW_EXPERIMENT_NAME` (default "loopcoder") at `MLFLOW_TRACKING_URI`, or in the
    file store `output_dir/mlruns/` when that is unset. Characters MLflow refuses in a metric name become `_`
    (`eval/pass@1` is `eval/pass_1`)."""

    def __init__(self, output_dir: Path, run_name: str, config: dict[str, Any], ids: dict[str, str]):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (output_dir / "mlruns").resolve().as_uri()
            # MLflow 3 keeps the file store behind an opt-in; it is the one backend needing no server or database
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        run_id = ids.get("mlflow")
        if run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "loopcoder")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            params = [Param(key, str(value)[:6000]) for key, value in flatten(config).items()]
            for start in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[start : start + 100])
            ids["mlflow"] = run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [Metric(MLFLOW_NAME.sub("_", key), value, timestamp, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"peft": {"r": 8}}` -> `{"peft.r": 8}` (MLflow parameters are flat)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


CLASSES = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MLflowTracker}


def open_trackers(names: list[str], output_dir: Path, run_name: str, config: dict[str, Any]) -> list:
    """The trackers of `names` for this run (rank 0 calls it), continuing the runs recorded in trackers.json."""
    ids_file = output_dir / "trackers.json"
    ids = json.loads(ids_file.read_text()) if ids_file.exists() else {}
    opened = [CLASSES[name](output_dir, run_name, config, ids) for name in names]
    if ids:
        ids_file.write_text(json.dumps(ids, indent=2, sort_keys=True), encoding="utf-8")
    return opened


__all__ = ["TRACKERS", "check_report_to", "normalise_report_to", "open_trackers", "scalars"]
