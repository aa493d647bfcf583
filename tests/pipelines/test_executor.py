"""The per-task executor: summaries in spec order, warm workers, the concurrency cap, task errors; where a job runs."""

import json
import os
import sys
import time
import types
from pathlib import Path

import pytest

from loopcoder.pipelines.clean.job import RayConfig
from loopcoder.pipelines.executor.local import TasksHere
from loopcoder.pipelines.executor.tasks import Session, run_tasks, runs_here


class RecordingWorker:
    """Records its construction and each task's process and running interval under `folder`."""

    def __init__(self, folder: str, tag: str):
        self.folder = Path(folder)
        (self.folder / f"built-{os.getpid()}-{time.monotonic_ns()}").touch()

    def close(self) -> None:
        (self.folder / f"closed-{os.getpid()}-{time.monotonic_ns()}").touch()

    def run(self, spec: dict) -> dict:
        if spec.get("fail"):
            raise ValueError(f"task {spec['n']} has a bad input")
        start = time.monotonic()
        time.sleep(spec.get("sleep", 0.0))
        record = {"n": spec["n"], "pid": os.getpid(), "start": start, "end": time.monotonic()}
        (self.folder / f"task-{spec['n']}.json").write_text(json.dumps(record))
        return {"n": spec["n"], "square": spec["n"] ** 2}


def _records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("task-*.json"))]


def test_summaries_come_back_in_spec_order_and_each_process_builds_its_worker_once(ray_local, tmp_path):
    specs = [{"n": n, "sleep": 0.05} for n in (5, 3, 8, 1, 9, 2, 7, 4)]
    summaries = run_tasks("squares", RecordingWorker, (str(tmp_path), "a"), specs)
    assert summaries == [{"n": s["n"], "square": s["n"] ** 2} for s in specs]
    processes = {r["pid"] for r in _records(tmp_path)}
    built = list(tmp_path.glob("built-*"))
    assert len(built) == len(processes) < len(specs)  # one worker object per process, not per task


def test_other_arguments_build_a_new_worker(ray_local, tmp_path):
    run_tasks("first", RecordingWorker, (str(tmp_path), "a"), [{"n": 1}], workers=1)
    run_tasks("again", RecordingWorker, (str(tmp_path), "a"), [{"n": 2}], workers=1)
    first_builds = len(list(tmp_path.glob("built-*")))
    run_tasks("other", RecordingWorker, (str(tmp_path), "b"), [{"n": 3}], workers=1)
    assert len(list(tmp_path.glob("built-*"))) > first_builds


def test_at_most_workers_tasks_run_at_once(ray_local, tmp_path):
    run_tasks("serial", RecordingWorker, (str(tmp_path), "a"), [{"n": n, "sleep": 0.3} for n in range(4)], workers=1)
    intervals = sorted((r["start"], r["end"]) for r in _records(tmp_path))
    assert len(intervals) == 4
    assert all(previous_end <= start for (_, previous_end), (start, _) in zip(intervals, intervals[1:], strict=False))


@pytest.mark.parametrize("local", [False, True], ids=["ray", "here"])
def test_a_stage_runs_while_this_process_works_and_stages_in_flight_share_the_workers(ray_local, tmp_path, local):
    session = Session(RayConfig(workers=1), local=local, cpus=2)
    arguments = (str(tmp_path), "a")
    meanwhile_interval = []

    def meanwhile():
        start = time.monotonic()
        second = session.run_tasks("second", RecordingWorker, arguments, [{"n": n, "sleep": 0.4} for n in (10, 11)])
        assert second == [{"n": 10, "square": 100}, {"n": 11, "square": 121}]
        meanwhile_interval.extend([start, time.monotonic()])

    first = session.run_tasks_meanwhile(
        "first", RecordingWorker, arguments, [{"n": n, "sleep": 0.4} for n in (1, 2)], meanwhile
    )
    assert first == [{"n": 1, "square": 1}, {"n": 2, "square": 4}]
    records = {r["n"]: r for r in _records(tmp_path)}
    intervals = sorted((r["start"], r["end"]) for r in records.values())
    assert len(intervals) == 4  # one worker's slot for both stages: never two tasks at once
    assert all(previous_end <= start for (_, previous_end), (start, _) in zip(intervals, intervals[1:], strict=False))
    first_end = max(records[1]["end"], records[2]["end"])
    if local:  # in this process: the stage's tasks, then the rest
        assert meanwhile_interval[0] >= first_end
    else:  # on Ray: this process worked while the first stage was still running
        assert meanwhile_interval[0] < first_end


def test_a_task_error_fails_the_stage_with_its_message(ray_local, tmp_path):
    specs = [{"n": 0}, {"n": 1, "fail": True}, {"n": 2}]
    with pytest.raises(ValueError, match="task 1 has a bad input"):
        run_tasks("failing", RecordingWorker, (str(tmp_path), "a"), specs, workers=1)


def test_tasks_here_run_in_order_in_this_process_and_share_a_worker_across_stages(tmp_path):
    here = TasksHere()
    first = here.run("first", RecordingWorker, (str(tmp_path), "a"), [{"n": 3}, {"n": 1}, {"n": 2}])
    assert first == [{"n": 3, "square": 9}, {"n": 1, "square": 1}, {"n": 2, "square": 4}]
    assert {r["pid"] for r in _records(tmp_path)} == {os.getpid()}
    here.run("second", RecordingWorker, (str(tmp_path), "a"), [{"n": 4}])
    assert len(list(tmp_path.glob("built-*"))) == 1 and not list(tmp_path.glob("closed-*"))
    here.run("other", RecordingWorker, (str(tmp_path), "b"), [{"n": 5}])
    assert len(list(tmp_path.glob("built-*"))) == 2 and len(list(tmp_path.glob("closed-*"))) == 1
    here.close()
    assert len(list(tmp_path.glob("closed-*"))) == 2
    with pytest.raises(ValueError, match="task 1 has a bad input"):
        here.run("failing", RecordingWorker, (str(tmp_path), "a"), [{"n": 1, "fail": True}])


@pytest.mark.parametrize(
    ("executor", "ray_address", "ray_started", "input_bytes", "expected"),
    [
        ("auto", None, False, 10 * 2**20, True),  # small, no cluster: this process
        ("auto", None, False, 17 * 2**20, False),  # larger than local_max_input_mb
        ("auto", "ray://head:10001", False, 1, False),  # a cluster is named
        ("auto", None, True, 1, False),  # this process already started Ray: use it
        ("local", "ray://head:10001", True, 2**40, True),
        ("ray", None, False, 1, False),
    ],
)
def test_where_a_job_runs(monkeypatch, executor, ray_address, ray_started, input_bytes, expected):
    if ray_address:
        monkeypatch.setenv("RAY_ADDRESS", ray_address)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: ray_started))
    asked = []

    def input_at_most(limit: int) -> bool:
        asked.append(limit)
        return input_bytes <= limit

    assert runs_here(RayConfig(executor=executor, local_max_input_mb=16), input_at_most) is expected
    assert asked in ([], [16 * 2**20])


def test_an_unknown_executor_is_refused():
    with pytest.raises(ValueError, match="ray.executor must be one of auto, ray, local"):
        runs_here(RayConfig(executor="spark"), None)


def test_local_dataset_runs_parts_at_once_when_asked_and_keeps_their_order():
    import threading

    import pyarrow as pa

    from loopcoder.pipelines.executor.local import LocalDataset

    items = [{"key": k % 5, "value": k} for k in range(40)]
    seen_threads: set[int] = set()

    def slow_double(batch: pa.Table) -> pa.Table:
        seen_threads.add(threading.get_ident())
        time.sleep(0.01)
        return pa.table({"value": pa.compute.multiply(batch.column("value"), 2)})

    def group_sum(group: pa.Table) -> pa.Table:
        seen_threads.add(threading.get_ident())
        return pa.table(
            {"key": [group.column("key")[0].as_py()], "total": [pa.compute.sum(group.column("value")).as_py()]}
        )

    results = {}
    for threads in (1, 4):
        seen_threads.clear()
        dataset = LocalDataset.from_items(items, threads=threads)
        doubled = [row["value"] for row in dataset.map_batches(slow_double, batch_size=3).iter_rows()]
        totals = list(dataset.groupby("key").map_groups(group_sum).iter_rows())
        results[threads] = (doubled, totals, len(seen_threads))
    assert results[1][:2] == results[4][:2]
    assert results[1][0] == [2 * k for k in range(40)]
    assert results[1][2] == 1 and results[4][2] > 1
