"""What every data job runs on: a session (Ray, or this process) and per-task stages (`Session.run_tasks`).

    with job_session(job.ray, input_at_most) as session:
        summaries = session.run_tasks("documents", DocumentsWorker, (job_dict, output), specs)

`job_session` picks where the job runs from the `ray:` block's `executor`:

- `ray`: connect to the cluster named by `RAY_ADDRESS`, or start a local Ray for the job (never
  joining one some other `ray start` left running) (`ray_session`); the dedup stages set Ray
  Data's shuffle when they use it (`configure_ray_data`);
- `local`: every stage in this process, one task after another (`executor/local.py`);
- `auto` (the default): `local` when no cluster is named (`RAY_ADDRESS` unset, no Ray already
  started in this process) and the input is at most `local_max_input_mb`, else `ray`. Starting a
  local Ray and Ray Data's first shuffle cost more than the whole work of a job over a few
  megabytes; above that size the job's cores repay them.

The outputs are the same bytes on either (`tests/pipelines/test_executor.py`).

A stage is a list of task specs (JSON-able dicts) and a worker class built from JSON-able
arguments, whose `run(spec)` writes the task's files under deterministic names, then its marker,
and returns a small summary. Each task is one Ray task with one CPU; at most `workers` run at
once (default: the cluster's CPUs), counted over every stage in flight: `run_tasks_meanwhile`
runs a stage on the workers while the driver does work that needs nothing from it (which may
include another stage), and both stages take their tasks' slots from the session's `slots`.

Why Ray tasks and not an actor pool per stage: an actor is a new process that imports the
pipeline modules and builds the job's steps again, which costs seconds per stage and per job; a
Ray task runs in a pooled worker process that Ray keeps between tasks. Each worker process keeps
the worker object it built last (`_WARM_WORKER`: the steps, grammars, tokenizer and permutations of
one job and stage) for its next task with the same class and arguments, so a job with many
tasks builds its steps once per process, as an actor would, and a stage or a job that follows
starts on warm processes.

A task whose process dies (a killed worker, a lost node) is retried by Ray (`max_retries`); a
retried task overwrites its own files under the same names, so the outcome equals an
uninterrupted run. An exception raised by a task is not retried: it fails the stage with the
task's error.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loopcoder.pipelines.executor.local import TasksHere, WarmWorker

if TYPE_CHECKING:
    from loopcoder.pipelines.clean.job import RayConfig

logger = logging.getLogger(__name__)

# Retries of a task whose worker process died; an exception in the task itself is never retried.
MAX_RETRIES = 3
PROGRESS_INTERVAL_SECONDS = 10.0

# The worker object this process built last, reused by the next task with the same class and arguments.
_WARM_WORKER = WarmWorker()


EXECUTORS = ("auto", "ray", "local")
SHUFFLE_STRATEGIES = ("sort", "hash")


@dataclass(frozen=True)
class Session:
    """Where a job's stages run: Ray tasks and Ray Data (`local` False), or this process."""

    settings: RayConfig
    local: bool
    cpus: int
    here: TasksHere = field(default_factory=TasksHere, repr=False)

    # Task slots shared by the stages in flight at once, so that together they run at most `workers` tasks.
    slots: threading.Semaphore = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "slots", threading.Semaphore(max(1, self.settings.workers or self.cpus)))

    def run_tasks(
        self, stage: str, worker_class: type, arguments: tuple, specs: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """`worker_class(*arguments).run(spec)` for every spec; the summaries in spec order."""
        if self.local:
            return self.here.run(stage, worker_class, arguments, specs)
        return run_tasks(stage, worker_class, arguments, specs, slots=self.slots)

    def run_tasks_meanwhile(
        self,
        stage: str,
        worker_class: type,
        arguments: tuple,
        specs: list[dict[str, Any]],
        meanwhile: Callable[[], None],
    ) -> list[dict[str, Any]]:
        """`run_tasks`, while this process runs `meanwhile()`, which needs nothing from these tasks.

        On Ray the workers run the stage while this process does its own part of the job (a dedup
        in the driver, another stage's tasks, which share the `workers` slots), so that neither
        waits at the barrier of the other. In this process: the tasks, then `meanwhile()`.
        """
        if self.local:
            summaries = self.here.run(stage, worker_class, arguments, specs)
            meanwhile()
            return summaries
        with ThreadPoolExecutor(1, thread_name_prefix=f"{stage}-tasks") as pool:
            running = pool.submit(run_tasks, stage, worker_class, arguments, specs, slots=self.slots)
            try:
                meanwhile()
            finally:
                summaries = running.result()  # the stage's tasks end (and write their markers) either way
        return summaries

    def dedup_here(self, input_bytes: int) -> bool:
        """Whether the dedup stages run in this process: always when local, else when their input is small.

        The dedup stages' input is a few dozen bytes of keys and band hashes per document, not
        the documents: at most `dedup_here_max_mb` of it is held by this process at once.
        """
        return self.local or input_bytes <= self.settings.dedup_here_max_mb * 2**20


def runs_here(settings: RayConfig, input_at_most: Callable[[int], bool] | None) -> bool:
    """`executor: auto` -> local when no cluster is named and `input_at_most(local_max_input_mb)` holds."""
    if settings.executor not in EXECUTORS:
        raise ValueError(f"ray.executor must be one of {', '.join(EXECUTORS)}, got '{settings.executor}'")
    if settings.executor != "auto":
        return settings.executor == "local"
    if os.environ.get("RAY_ADDRESS"):
        return False
    ray = sys.modules.get("ray")  # a Ray this process already started (a notebook, a test) is used, not bypassed
    if ray is not None and ray.is_initialized():
        return False
    return input_at_most is not None and input_at_most(int(settings.local_max_input_mb * 2**20))


@contextmanager
def job_session(settings: RayConfig, input_at_most: Callable[[int], bool] | None = None) -> Iterator[Session]:
    """The session a job runs in (module docstring); `input_at_most(n)` says whether the input is at most n bytes."""
    if runs_here(settings, input_at_most):
        why = "" if settings.executor == "local" else f"; the input is at most {settings.local_max_input_mb} MB"
        logger.info("executor: this process (ray.executor: %s%s)", settings.executor, why)
        session = Session(settings, local=True, cpus=1)
        try:
            yield session
        finally:
            session.here.close()
        return
    with ray_session(settings):
        import ray

        yield Session(settings, local=False, cpus=int(ray.cluster_resources().get("CPU", 1)))


@contextmanager
def ray_session(settings: RayConfig):
    """Connects to the cluster named by RAY_ADDRESS, or starts local Ray sized to the machine (the `ray:` block)."""
    import ray

    if settings.shuffle_strategy not in SHUFFLE_STRATEGIES:
        raise ValueError(
            f"ray.shuffle_strategy must be one of {', '.join(SHUFFLE_STRATEGIES)}, got '{settings.shuffle_strategy}'"
        )
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = False
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        else:
            # address="local": a new instance for this job, never a cluster some other `ray start` left running
            ray.init(
                address="local",
                num_cpus=settings.num_cpus or os.cpu_count(),
                include_dashboard=False,
                log_to_driver=False,
            )
        started = True
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def configure_ray_data(settings: RayConfig) -> None:
    """Ray Data's shuffle for this process's datasets (the `ray:` block); called where Ray Data is used.

    Not in `ray_session`: importing Ray Data costs about a second, which a job whose stages are
    all Ray tasks (or whose dedup runs in the driver) need not pay.
    """
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    context = DataContext.get_current()
    if settings.shuffle_partitions:
        context.default_hash_shuffle_parallelism = settings.shuffle_partitions
    strategies = {"sort": ShuffleStrategy.SORT_SHUFFLE_PULL_BASED, "hash": ShuffleStrategy.HASH_SHUFFLE}
    context.shuffle_strategy = strategies[settings.shuffle_strategy]


def _run_task(worker_class: type, arguments: tuple, spec: dict[str, Any]) -> dict[str, Any]:
    # A task holds one CPU (Ray already sets OMP_NUM_THREADS=1). The tokenizers' Rust thread pool
    # would otherwise spread one task's batch encoding over every core of the node, so N workers
    # would compete for the cores that one of them already took.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    return _WARM_WORKER.get(worker_class, arguments).run(spec)


def run_tasks(
    stage: str,
    worker_class: type,
    arguments: tuple,
    specs: list[dict[str, Any]],
    workers: int | None = None,
    slots: threading.Semaphore | None = None,
) -> list[dict[str, Any]]:
    """Runs `worker_class(*arguments).run(spec)` for every spec on Ray; returns the summaries in spec order.

    A task is submitted when it holds one of `slots` (shared with the other stages in flight), or
    else one of `workers` of its own (default: the cluster's CPUs); progress is logged as tasks finish.
    """
    import ray

    if not specs:
        return []
    if slots is None:
        slots = threading.Semaphore(max(1, workers or int(ray.cluster_resources().get("CPU", 1))))
    remote = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_run_task)
    arguments_ref = ray.put(arguments)  # one copy of the job config in the object store, not one per task
    summaries: list[dict[str, Any] | None] = [None] * len(specs)
    running: dict[Any, int] = {}
    submitted = done = 0
    start = last_report = time.monotonic()
    try:
        while done < len(specs):
            # without a task of its own in flight, the stage waits for a slot; with one, it takes free ones only
            while submitted < len(specs) and slots.acquire(blocking=not running):
                running[remote.remote(worker_class, arguments_ref, specs[submitted])] = submitted
                submitted += 1
            finished, _ = ray.wait(list(running), num_returns=1)
            for ref in finished:
                index = running.pop(ref)
                slots.release()
                summaries[index] = ray.get(ref)
                done += 1
            now = time.monotonic()
            if done == len(specs) or now - last_report >= PROGRESS_INTERVAL_SECONDS:
                logger.info("%s stage: %d of %d task(s) done (%.1f s)", stage, done, len(specs), now - start)
                last_report = now
    finally:
        for _ in running:  # a failed stage gives its slots back to the stages still running
            slots.release()
    return summaries
