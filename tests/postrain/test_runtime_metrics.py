"""Metrics go to metrics.jsonl and to every tracker of `report_to` (offline), readable back as scalars."""

import json
import struct
import time
from pathlib import Path

import pytest

from loopcoder.postrain.grpo import GRPOConfig
from loopcoder.postrain.runtime.metrics import MetricsLogger
from loopcoder.postrain.sft import SFTConfig

RECORDS = [
    {"step": 0, "loss": 9.0, "lr": 1e-3, "category_loss/sft": float("nan"), "phase": "easy"},
    {"step": 1, "loss": 7.5, "lr": 1e-3, "eval/pass@1": 0.25},
    {"step": 2, "loss": 6.25, "lr": 5e-4},
]


def log_records(tmp_path, report_to, **fields):
    config = SFTConfig(output_dir=str(tmp_path), report_to=report_to, progress_bar=False, run_name="tiny", **fields)
    metrics = MetricsLogger(tmp_path, enabled=True, total_steps=3, start_step=0, config=config)
    for record in RECORDS:
        metrics.log(record)
    metrics.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["loss"] for line in lines] == [9.0, 7.5, 6.25]


def test_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_records(tmp_path, ["tensorboard"])
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(0, 9.0), (1, 7.5), (2, 6.25)]
    assert [(e.step, e.value) for e in events.Scalars("eval/pass@1")] == [(1, 0.25)]
    assert "category_loss/sft" not in events.Tags()["scalars"]  # non-finite values are left out


def wandb_records(run_file: Path) -> list:
    """The `Record` protobufs of an offline W&B run file (LevelDB log blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    position, block, pending, records = 7, 32768, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if length == 0 and kind == 0:
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            records.append(record)
    return records


def wandb_history(run_file: Path, seconds: float = 30.0) -> list[dict]:
    """The history rows of a finished offline run; W&B's service process may still be writing the file for a moment
    after `finish()` returns, so this waits for the run's exit record."""
    deadline = time.monotonic() + seconds
    while True:
        records = wandb_records(run_file)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]


def test_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    log_records(tmp_path, "wandb")
    run_ids = json.loads((tmp_path / "trackers.json").read_text())
    (run_file,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_ids['wandb']}/run-*.wandb")
    rows = wandb_history(run_file)
    assert [(row["_step"], row["loss"]) for row in rows] == [(0, 9.0), (1, 7.5), (2, 6.25)]
    assert rows[1]["eval/pass@1"] == 0.25 and "category_loss/sft" not in rows[0] and "phase" not in rows[0]


@pytest.mark.parametrize("tracking_uri", [False, True])
def test_mlflow_file_store(tmp_path, monkeypatch, tracking_uri):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "elsewhere" if tracking_uri else tmp_path / "run" / "mlruns"
    if tracking_uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    log_records(tmp_path / "run", ["mlflow"], model_name_or_path="base", peft={"r": 4})
    assert store.is_dir() and (tmp_path / "run" / "mlruns").exists() is not tracking_uri
    client = MlflowClient(tracking_uri=store.as_uri())
    run = client.get_run(json.loads((tmp_path / "run" / "trackers.json").read_text())["mlflow"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 9.0), (1, 7.5), (2, 6.25)]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval/pass_1")] == [(1, 0.25)]
    assert run.data.params["peft.r"] == "4" and run.data.params["report_to"] == "['mlflow']"


def test_a_missing_tracker_package_is_a_config_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match=r"report_to: wandb needs the `wandb` package.*loopcoder\[tracking\]"):
        GRPOConfig(report_to=["tensorboard", "wandb"])
    with pytest.raises(ValueError, match="unknown tracker 'comet'"):
        SFTConfig(report_to=["comet"])
    assert SFTConfig(report_to="none").report_to == [] and SFTConfig().report_to == ["tensorboard"]
