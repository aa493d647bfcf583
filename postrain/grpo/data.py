"""Problems for GRPO: `rl_problem` records from JSONL, shards, HumanEval, contest rows or the synthetic task,
a seeded problem stream that resumes exactly, and chat-template prompts.

    problems = load_problems("humaneval")               # or "x.jsonl", "shards/", "contest:taco.jsonl",
                                                        # "synthetic:print_number"
    train, heldout = split_heldout(problems, 0.1)       # by problem id: the same split everywhere
    stream = ProblemStream(train, seed=0)
    batch = stream.take(64)                              # the same 64 on every rank
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

from loopcoder.pipelines.io.filesystem import discover_shards as finished_shards
from loopcoder.postrain.sandbox.problems import (
    load_contest_jsonl,
    load_humaneval,
    read_problems_jsonl,
    validate_problems,
)

from .synthetic import SYNTHETIC_TASKS


def _read_shards(path: Path) -> list[dict]:
    import pyarrow.dataset as ds

    files = [Path(p) for p in finished_shards(path, suffixes=(".parquet", ".arrow"))]
    if not files:
        raise FileNotFoundError(f"no *.parquet or *.arrow shards under {path}")
    rows: list[dict] = []
    for file in files:
        fmt = "parquet" if file.suffix == ".parquet" else "arrow"
        try:
            rows.extend(ds.dataset(str(file), format=fmt).to_table().to_pylist())
        except Exception:
            if fmt != "arrow":
                raise
            # Arrow IPC stream files (as opposed to the random-access file format)
            import pyarrow as pa

            with pa.memory_map(str(file)) as source:
                rows.extend(pa.ipc.open_stream(source).read_all().to_pylist())
    return validate_problems(rows)


def load_problems(source: str, max_problems: int | None = None) -> list[dict]:
    """`rl_problem` records from `source` (see `GRPOConfig.problems`); an unknown source lists the valid forms."""
    if source == "humaneval":
        problems = load_humaneval()
    elif source.startswith("synthetic:"):
        name = source.split(":", 1)[1]
        if name not in SYNTHETIC_TASKS:
            raise ValueError(f"unknown synthetic task {name!r}; known: {', '.join(sorted(SYNTHETIC_TASKS))}")
        problems = SYNTHETIC_TASKS[name]()
    elif source.startswith("contest:"):
        problems = load_contest_jsonl(source.split(":", 1)[1])
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(
                f"problems {source!r}: not a path; use a .jsonl file, a shard directory, 'humaneval', "
                f"'contest:<file.jsonl>' or 'synthetic:<{'|'.join(sorted(SYNTHETIC_TASKS))}>'"
            )
        problems = read_problems_jsonl(path) if path.suffix in (".jsonl", ".json") else _read_shards(path)
    problems = [p for p in problems if p.get("tests")]
    if max_problems is not None:
        problems = problems[:max_problems]
    if not problems:
        raise ValueError(f"problems {source!r}: no problem with tests")
    return problems


def heldout_score(problem_id: str) -> float:
    """A number in [0, 1) fixed by the id alone: the SHA-256 of the id read as a fraction of 2^64."""
    return int.from_bytes(hashlib.sha256(problem_id.encode("utf-8")).digest()[:8], "big") / 2.0**64


def split_heldout(problems: list[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    """(training problems, held-out problems): a problem is held out when `heldout_score(id) < fraction`.

    The decision depends on the id only, so it does not change with the order, the other problems, the rank or
    the machine, and a problem set that grows keeps its earlier problems on the same side.
    """
    train, heldout = [], []
    for problem in problems:
        (heldout if heldout_score(str(problem["id"])) < fraction else train).append(problem)
    return train, heldout


class ProblemStream:
    """Problems in a seeded order, reshuffled every epoch; `state_dict` / `load_state_dict` resume exactly."""

    def __init__(self, problems: list[dict], seed: int) -> None:
        self.problems = problems
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.problems)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, count: int) -> list[dict]:
        out = []
        for _ in range(count):
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            out.append(self.problems[self._order[self.position]])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._permutation(self.epoch)


def render_prompt(tokenizer, problem: dict, system_prompt: str | None, suffix: str) -> str:
    """The chat-template text of one problem, ending with the assistant header (generation prompt)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": problem["prompt"] + suffix})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


__all__ = ["ProblemStream", "heldout_score", "load_problems", "render_prompt", "split_heldout"]
