"""Benchmark of the SFT trainer on CPU: looped vs dense throughput, and the cost of the silent-error checks.

    python tests/bench/bench_sft.py [--steps 40] [--rounds 3] [--seq-len 128] [--work DIR]

Measured side by side in one run (one process, one thread) and printed as one table:

* trainer tokens/s of the tiny looped model (hidden 64, 2 layers, 2 loops) and of the dense model of the same
  depth and width (`num_loops=1`), full trainer steps (data, forward, backward, DeepSpeed step);
* the silent-error checks at the default intervals (fingerprint every 50 steps, recomputation every 100): the
  cost of one fingerprint (reduction of every parameter + all-gather) and of one recomputation (a forward), each
  timed over many repetitions, divided by their interval and by the median step time (aim <= 2%);
* an end-to-end run with the checks at every step, against a run with them off (the upper bound; in one
  process only the recomputation runs, a fingerprint needs replicas to compare).

Rounds are interleaved (looped, dense, checks on, ...) so a busy machine affects all contenders alike; the
figure is the median step time over the steps of every round, the first 3 steps of a run left out. A
correctness gate runs first: the looped loss must fall over a short run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from loopcoder.postrain.sft.data import collate
from loopcoder.postrain.sft.loss import token_losses
from loopcoder.postrain.sft.sample_data import build_stdlib_shards, tiny_run_config
from loopcoder.postrain.sft.trainer import SFTTrainer

DEFAULT_FINGERPRINT, DEFAULT_RECOMPUTE = 50, 100


def run(shards: Path, out: Path, steps: int, **overrides) -> tuple[list[float], list[float], SFTTrainer]:
    settings = dict(
        max_steps=steps,
        save_final_model=False,
        fingerprint_interval=0,
        recompute_interval=0,
        curriculum=[
            {"name": "main", "steps": steps, "mixture": {"sft_easy": 0.4, "sft_medium": 0.3, "sft_hard": 0.3}}
        ],
    )
    config = tiny_run_config(shards, out, **(settings | overrides))
    trainer = SFTTrainer(config)
    result = trainer.train()
    times = [r["step_time_s"] for r in result.history if "step_time_s" in r][3:]
    rates = [r["tokens_per_s"] for r in result.history if "tokens_per_s" in r][3:]
    return times, rates, trainer


def per_call(fn, repeats: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per packed row")
    parser.add_argument("--work", type=Path, default=None, help="directory for shards and runs (default: a temp dir)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_sft_"))
    shards = build_stdlib_shards(work / "shards", max_files=200, seq_len=args.seq_len)

    check = SFTTrainer(tiny_run_config(shards, work / "check", max_steps=30, save_final_model=False)).train()
    if not sum(check.losses[-5:]) / 5 < sum(check.losses[:5]) / 5 - 0.5:
        raise SystemExit(f"correctness gate failed: loss did not fall ({check.losses[:5]} -> {check.losses[-5:]})")

    contenders = {
        "looped (2 loops)": {},
        "dense (1 loop)": {"model_config": {**tiny_run_config(shards, work).model_config, "num_loops": 1}},
        "looped, checks every step": {"fingerprint_interval": 1, "recompute_interval": 1},
    }
    times = {name: [] for name in contenders}
    rates = {name: [] for name in contenders}
    trainer = None
    for round_ in range(args.rounds):
        for number, (name, overrides) in enumerate(contenders.items()):
            t, r, trainer_ = run(shards, work / f"round{round_}_run{number}", args.steps, **overrides)
            times[name] += t
            rates[name] += r
            if name.startswith("looped (2"):
                trainer = trainer_

    # one fingerprint and one recomputation, timed on the looped model as the trainer runs them
    batch = collate([trainer.streams["sft_hard"].row(i) for i in range(trainer.config.micro_batch_size)], "sft")
    module = trainer.engine.module
    fingerprint_s = per_call(lambda: trainer.detector.check_replicas(module, 0, trainer.zero_stage), 50)

    def recompute():
        with torch.no_grad():
            token_losses(trainer.engine, batch, trainer.device).sum()

    recompute_s = per_call(recompute, 20)
    step_s = statistics.median(times["looped (2 loops)"])
    overhead = (fingerprint_s / DEFAULT_FINGERPRINT + recompute_s / DEFAULT_RECOMPUTE) / step_s

    rows = [
        (name, statistics.median(times[name]) * 1e3, statistics.median(rates[name]), len(times[name]))
        for name in contenders
    ]
    print(f"SFT trainer on CPU, tiny model (hidden 64, 2 layers), rows of {args.seq_len} tokens, "
          f"global batch {trainer.global_batch} rows, {torch.get_num_threads()} thread(s)")  # fmt: skip
    print(f"| {'run':<28} | {'step ms (median)':>16} | {'tokens/s':>9} | {'steps':>5} |")
    print(f"|{'-' * 30}|{'-' * 18}|{'-' * 11}|{'-' * 7}|")
    for name, ms, rate, n in rows:
        print(f"| {name:<28} | {ms:>16.1f} | {rate:>9.0f} | {n:>5} |")
    dense_ratio = statistics.median(times["looped (2 loops)"]) / statistics.median(times["dense (1 loop)"])
    every_step = statistics.median(times["looped, checks every step"]) / step_s - 1
    print()
    print(f"looped / dense step time:                     {dense_ratio:.2f}x")
    print(f"one fingerprint (all parameters, all-gather): {fingerprint_s * 1e3:.2f} ms")
    print(f"one recomputation (forward of a micro-batch): {recompute_s * 1e3:.2f} ms")
    print(
        f"silent-error overhead at the defaults (fingerprint /{DEFAULT_FINGERPRINT}, recompute /{DEFAULT_RECOMPUTE}): "
        f"{overhead * 100:.2f}% of a step (aim <= 2%)"
    )
    print(
        f"checks at every step, end to end:             {every_step * 100:+.1f}% step time (upper bound; one process "
        "runs the recomputation only, the fingerprint needs replicas)"
    )


if __name__ == "__main__":
    main()
