"""Benchmark of the GRPO trainer on CPU: where a step's time goes, rollouts per second, decode schedules.

    python tests/bench/bench_grpo.py [--steps 6] [--prompts 4] [--generations 8] [--new-tokens 32]

One process, one thread, the tiny looped model (hidden 64, 2 layers, 2 loops, the bundled tokenizer) on the
`print_number` task with the sandbox computing the pass rate. Printed as one table:

* per trainer step (median over the steps, the first left out): generation, reward and update time, and
  rollouts per second of generation;
* generation alone, with the cross-loop-parallel decode schedule and with the sequential one, on the same
  prompts and seed (median of interleaved rounds), and their ratio (parallel / sequential, < 1 = faster).

A correctness gate runs first: the two schedules must sample the same tokens from the same seed (they are
two orders of the same computation), else no timing is reported.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from loopcoder.model import LoopCoderConfig, LoopCoderForCausalLM
from loopcoder.postrain.grpo import GRPOConfig
from loopcoder.postrain.grpo.data import render_prompt
from loopcoder.postrain.grpo.rollout import generate_rollouts
from loopcoder.postrain.grpo.synthetic import print_number_problems, supervised_warm_start
from loopcoder.postrain.grpo.trainer import GRPOTrainer
from loopcoder.postrain.sft.sample_data import TINY_MODEL
from loopcoder.schemas.tokens import load_tokenizer

TINY = dict(TINY_MODEL, max_position_embeddings=512)


def generation_seconds(model, tokenizer, prompts, generations, new_tokens, schedule, seed=0):
    torch.manual_seed(seed)
    started = time.perf_counter()
    rollout = generate_rollouts(model, tokenizer, prompts, generations, new_tokens, decode_schedule=schedule)
    return time.perf_counter() - started, rollout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokenizer = load_tokenizer()
    model = LoopCoderForCausalLM(LoopCoderConfig(**TINY))
    supervised_warm_start(model, tokenizer, steps=40, learning_rate=5e-3, count=4, batch_size=16)
    model.eval()
    prompts = [render_prompt(tokenizer, p, None, "") for p in print_number_problems(args.prompts)]

    # gate: both schedules sample the same completions
    _, parallel = generation_seconds(model, tokenizer, prompts, args.generations, args.new_tokens, "parallel")
    _, sequential = generation_seconds(model, tokenizer, prompts, args.generations, args.new_tokens, "sequential")
    if not torch.equal(parallel.completion_ids, sequential.completion_ids):
        raise SystemExit("gate failed: the parallel and sequential decode schedules sampled different tokens")

    times = {"parallel": [], "sequential": []}
    for _ in range(args.rounds):
        for schedule in times:
            seconds, _ = generation_seconds(model, tokenizer, prompts, args.generations, args.new_tokens, schedule)
            times[schedule].append(seconds)

    with tempfile.TemporaryDirectory() as work:
        model_dir = Path(work) / "model"
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        config = GRPOConfig(
            model_name_or_path=str(model_dir),
            problems="synthetic:print_number4",
            prompt_suffix="",
            prompts_per_step=args.prompts,
            num_generations=args.generations,
            max_completion_length=args.new_tokens,
            steps_per_generation=2,
            micro_batch_size=args.prompts * args.generations // 2,
            learning_rate=1e-3,
            max_steps=args.steps,
            output_dir=str(Path(work) / "run"),
            resume="never",
            save_interval=0,
            save_final_model=False,
            progress_bar=False,
            report_to=[],
            cpu_threads=1,
            sandbox_workers=1,
        )
        history = GRPOTrainer(config).train().history[1:]

    def median(key: str) -> float:
        return statistics.median(r[key] for r in history)

    completions = args.prompts * args.generations
    step = median("step_time_s")
    rows = [
        ("completions per step", f"{completions}", ""),
        ("step time (s)", f"{step:.3f}", "100%"),
        ("  generation (s)", f"{median('time/generation_s'):.3f}", f"{median('time/generation_s') / step:.0%}"),
        ("  reward, sandbox (s)", f"{median('time/reward_s'):.3f}", f"{median('time/reward_s') / step:.0%}"),
        ("  update (s)", f"{median('time/update_s'):.3f}", f"{median('time/update_s') / step:.0%}"),
        ("rollouts / s (generation)", f"{median('rollouts_per_s'):.1f}", ""),
        ("rollouts / s (whole step)", f"{completions / step:.1f}", ""),
        ("generate, parallel schedule (s)", f"{statistics.median(times['parallel']):.3f}", ""),
        ("generate, sequential schedule (s)", f"{statistics.median(times['sequential']):.3f}", ""),
        (
            "parallel / sequential",
            f"{statistics.median(times['parallel']) / statistics.median(times['sequential']):.2f}",
            "",
        ),
    ]
    print(f"GRPO on CPU, tiny looped model, {args.new_tokens} new tokens max, median of {len(history)} steps")
    print(f"| {'quantity':<34} | {'value':>9} | {'share':>5} |")
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 7}|")
    for name, value, share in rows:
        print(f"| {name:<34} | {value:>9} | {share:>5} |")


if __name__ == "__main__":
    main()
