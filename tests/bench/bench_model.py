"""Benchmark of the looped model against a dense model of the same depth and width.

    python tests/bench/bench_model.py [--hidden 512] [--layers 4] [--loops 2] [--threads 1]

Measured side by side in one run and printed as one table:

* training step (forward + backward) of the R-loop model / the dense model (aim <= 2.1 for R = 2);
* decode time per token: cross-loop-parallel / sequential schedule (aim <= 0.6), parallel / dense (aim <= 1.2);
* cache bytes after 4,096 tokens / the dense model's cache (aim <= 1.05).

Two dense references with the same layers run once: our model with `num_loops=1` (same code path,
same cache class) and transformers' `LlamaForCausalLM` loaded from the same weights. Timings are the
minimum over interleaved rounds (training) and the median over interleaved single steps (decoding),
so a busy machine affects all contenders alike. A correctness gate runs first: the cached decode of both schedules must
reproduce the full forward, otherwise no figure is printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from loopcoder.model import LoopCoderCache, LoopCoderConfig, LoopCoderForCausalLM


def build(args) -> dict[str, torch.nn.Module]:
    shape = dict(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=int(args.hidden * 2.75),
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(args.hidden // 256, 1),
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    looped = LoopCoderForCausalLM(
        LoopCoderConfig(**shape, num_loops=args.loops, loop_window=64, emb_scale=0.707, hidden_scale=0.053)
    )
    # dense references: the same layers run once, through our code and through transformers' Llama
    dense = LoopCoderForCausalLM(LoopCoderConfig(**shape, num_loops=1))
    dense.load_state_dict(looped.state_dict(), strict=False)
    llama = LlamaForCausalLM(LlamaConfig(**shape, rope_theta=500000.0, attn_implementation="sdpa"))
    llama.load_state_dict(looped.state_dict(), strict=False)
    for model in (looped, dense):
        model.set_attn_implementation("sdpa")
    return {"looped": looped.eval(), "dense": dense.eval(), "llama": llama.eval()}


def side_by_side(functions: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Runs the functions in interleaved rounds (so load changes hit all alike); the minimum per function."""
    for fn in functions.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in samples.items()}


def correctness_gate(model: LoopCoderForCausalLM) -> float:
    ids = torch.randint(0, model.config.vocab_size, (1, 80))
    worst = 0.0
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        for schedule in ("sequential", "parallel"):
            cache = LoopCoderCache(model.config)
            steps = [model(ids[:, :8], past_key_values=cache).logits]
            steps += [
                model(ids[:, t : t + 1], past_key_values=cache, decode_schedule=schedule).logits for t in range(8, 80)
            ]
            worst = max(worst, (torch.cat(steps, 1) - full).abs().max().item())
    if worst > 1e-3:
        raise SystemExit(f"correctness gate failed: cached decode differs from the full forward by {worst:.2e}")
    return worst


def train_step(model, ids):
    def step():
        model.train()
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids, use_cache=False).loss.backward()

    return step


def decode_per_token(contenders: dict, prompt: torch.Tensor, new_tokens: int) -> dict[str, float]:
    """Median time of one decode step per contender, the contenders interleaved step by step.

    `contenders` maps a name to `(model, make_cache, forward_kwargs)`; every contender prefills the
    same prompt, then decodes the same token sequence.
    """
    tokens = torch.randint(0, 100, (1, new_tokens))
    state = {}
    with torch.no_grad():
        for name, (model, make_cache, _kwargs) in contenders.items():
            model.eval()
            cache = make_cache()
            model(prompt, past_key_values=cache, use_cache=True)
            state[name] = cache
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        for step in range(new_tokens):
            token = tokens[:, step : step + 1]
            names = list(contenders)
            names = names[step % len(names) :] + names[: step % len(names)]  # rotate who goes first
            for name in names:
                model, _, kwargs = contenders[name]
                start = time.perf_counter()
                model(token, past_key_values=state[name], use_cache=True, **kwargs)
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def cache_bytes(looped, llama, length: int) -> tuple[int, int]:
    ids = torch.randint(0, looped.config.vocab_size, (1, length))
    with torch.no_grad():
        looped_cache = looped(ids, use_cache=True).past_key_values
        dense_cache = llama(ids, past_key_values=DynamicCache(config=llama.config), use_cache=True).past_key_values
    dense_total = sum(
        t.numel() * t.element_size()
        for layer in dense_cache.layers
        for t in (layer.keys, layer.values)
        if t is not None
    )
    return looped_cache.nbytes(), dense_total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--loops", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-length", type=int, default=256)
    parser.add_argument("--prompt-length", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--cache-length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="1: a shared 2-core box makes 2-thread matmuls erratic")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    models = build(args)
    looped, dense, llama = models["looped"], models["dense"], models["llama"]
    gate = correctness_gate(looped)

    ids = torch.randint(0, args.vocab, (args.train_batch, args.train_length))
    train = side_by_side({name: train_step(model, ids) for name, model in models.items()}, args.repeats)

    prompt = torch.randint(0, args.vocab, (1, args.prompt_length))
    n = args.new_tokens

    def loop_cache(model):
        return lambda: LoopCoderCache(model.config)

    per_token = decode_per_token(
        {
            "parallel": (looped, loop_cache(looped), {"decode_schedule": "parallel"}),
            "sequential": (looped, loop_cache(looped), {"decode_schedule": "sequential"}),
            "dense": (dense, loop_cache(dense), {}),
            "llama": (llama, lambda: DynamicCache(config=llama.config), {}),
        },
        prompt,
        n,
    )
    looped_bytes, dense_bytes = cache_bytes(looped, llama, args.cache_length)

    c = looped.config
    print(
        f"looped: {c.num_hidden_layers} layers x {c.num_loops} loops, hidden {c.hidden_size}, heads "
        f"{c.num_attention_heads}/{c.num_key_value_heads}, window {c.loop_window} | dense: the same {c.num_hidden_layers} "
        f"layers once (ours R=1, and transformers' Llama) | CPU, {args.threads} threads, float32, sdpa | "
        f"train batch {args.train_batch}x{args.train_length}, decode {n} tokens after {args.prompt_length} | "
        f"correctness gate max|diff| {gate:.1e}"
    )

    def ms(seconds: float) -> str:
        return f"{seconds * 1e3:.2f} ms"

    rows = [
        ("train step / dense (ours, R=1)", ms(train["looped"]), ms(train["dense"]), train["looped"] / train["dense"], "<= 2.1"),
        ("train step / dense (HF Llama)", ms(train["looped"]), ms(train["llama"]), train["looped"] / train["llama"], "<= 2.1"),
        ("decode/token parallel / sequential", ms(per_token["parallel"]), ms(per_token["sequential"]),
         per_token["parallel"] / per_token["sequential"], "<= 0.6"),
        ("decode/token parallel / dense (ours)", ms(per_token["parallel"]), ms(per_token["dense"]),
         per_token["parallel"] / per_token["dense"], "<= 1.2"),
        ("decode/token parallel / dense (Llama)", ms(per_token["parallel"]), ms(per_token["llama"]),
         per_token["parallel"] / per_token["llama"], "<= 1.2"),
        (f"cache bytes at {args.cache_length} tokens / dense", f"{looped_bytes / 2**20:.2f} MiB",
         f"{dense_bytes / 2**20:.2f} MiB", looped_bytes / dense_bytes, "<= 1.05"),
    ]  # fmt: skip
    print(f"| {'measure':<40} | {'looped':>11} | {'reference':>11} | {'ratio':>6} | {'aim':>7} |")
    print(f"|{'-' * 42}|{'-' * 13}:|{'-' * 13}:|{'-' * 7}:|{'-' * 9}|")
    for name, ours, reference, ratio, aim in rows:
        print(f"| {name:<40} | {ours:>11} | {reference:>11} | {ratio:>6.3f} | {aim:>7} |")


if __name__ == "__main__":
    main()
