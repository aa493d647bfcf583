"""Metrics go to metrics.jsonl and to TensorBoard event files, readable back as scalars."""

import json
from types import SimpleNamespace

from loopcoder.postrain.runtime.metrics import MetricsLogger


def test_metrics_reach_jsonl_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = SimpleNamespace(tensorboard=True, progress_bar=False)
    metrics = MetricsLogger(tmp_path, enabled=True, total_steps=3, start_step=0, config=config)
    for step, loss in enumerate([9.0, 7.5, 6.25]):
        metrics.log({"step": step, "loss": loss, "lr": 1e-3, "category_loss/sft": float("nan")})
    metrics.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["loss"] for line in lines] == [9.0, 7.5, 6.25]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(0, 9.0), (1, 7.5), (2, 6.25)]
    assert "category_loss/sft" not in events.Tags()["scalars"]  # non-finite values are left out
