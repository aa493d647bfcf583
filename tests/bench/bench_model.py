"""Benchmark of the looped model against a dense model of the same depth and width.

    python tests/bench/bench_model.py [--hidden 512] [--layers 4] [--loops 2] [--threads 1]
                                      [--sections compare packed-memory decode-growth]

Three sections, each printed as one table (all by default):

* compare, measured side by side in one run:
  training step (forward + backward) of the R-loop model / the dense model (aim <= 2.1 for R = 2);
  decode time per token: cross-loop-parallel / sequential schedule (aim <= 0.6), parallel / dense (aim <= 1.2);
  cache bytes after 4,096 tokens / the dense model's cache (aim <= 1.05).
* packed-memory: peak memory of a forward (no grad) and of a forward + backward over one packed row
  of 16K tokens / of 4K tokens (aim <= 5; a `[T, T]` mask gives 16). Documents of 256 to 2,048
  tokens, the same distribution at every length; each length runs in its own process, its peak
  resident memory (VmHWM, reset after a warm-up) above the resident memory before the row.
* decode-growth: time of one decode step after 128 and after 2,048 generated tokens, loop 0 in
  preallocated buffers (`LoopCoderCache(config, max_cache_len=n)`, what `generate` uses) against
  loop 0 grown by concatenation (the cache before preallocation), the steps interleaved.

Two dense references with the same layers run once: our model with `num_loops=1` (same code path,
same cache class) and transformers' `LlamaForCausalLM` loaded from the same weights. Timings are the
minimum over interleaved rounds (training) and the median over interleaved single steps (decoding),
so a busy machine affects all contenders alike. A correctness gate runs first: the cached decode of both schedules must
reproduce the full forward, otherwise no figure is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
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


def packed_row(length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Position ids `[1, T]` of documents of 256 to 2,048 tokens (the last one cut at T), and their count."""
    generator = torch.Generator().manual_seed(seed)
    lengths = []
    while sum(lengths) < length:
        lengths.append(min(int(torch.randint(256, 2049, (1,), generator=generator)), length - sum(lengths)))
    return torch.cat([torch.arange(n) for n in lengths])[None], torch.tensor(len(lengths))


def _resident_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def packed_row_child(args) -> None:
    """Runs in its own process: prints the peak memory above the baseline of one packed-row pass, as JSON."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LoopCoderForCausalLM(
        LoopCoderConfig(
            vocab_size=1024,
            hidden_size=args.packed_hidden,
            intermediate_size=int(args.packed_hidden * 2.75),
            num_hidden_layers=args.packed_layers,
            num_attention_heads=args.packed_hidden // 64,
            num_key_value_heads=1,
            max_position_embeddings=4096,
            num_loops=2,
            loop_window=64,
            emb_scale=0.707,
            hidden_scale=0.053,
            attn_implementation="sdpa",
        )
    )

    def run(length: int) -> None:
        positions, _ = packed_row(length)
        ids = torch.randint(0, 1024, (1, length))
        if args.packed_row_child_backward:
            model.train()
            model(ids, position_ids=positions, labels=ids, use_cache=False).loss.backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model.eval()(ids, position_ids=positions, use_cache=False)

    run(1024)  # warm-up: kernels, allocator, gradient buffers
    baseline = _resident_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets the peak (VmHWM) to the current resident size
    start = time.perf_counter()
    run(args.packed_row_child)
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_mib": (_resident_kib("VmHWM") - baseline) / 1024, "seconds": seconds}))


def packed_memory(args) -> list[tuple]:
    """Peak memory of a packed row at each length, each in a fresh process (glibc returns large blocks)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    results = {}
    for backward in (False, True):
        for length in args.packed_lengths:
            command = [sys.executable, __file__, "--packed-row-child", str(length), "--threads", str(args.threads)]
            command += ["--packed-hidden", str(args.packed_hidden), "--packed-layers", str(args.packed_layers)]
            command += ["--packed-row-child-backward"] if backward else []
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
            results[backward, length] = json.loads(out.strip().splitlines()[-1])
    rows = []
    short, long = args.packed_lengths[0], args.packed_lengths[-1]
    for backward in (False, True):
        name = "forward + backward" if backward else "forward (no grad)"
        for length in args.packed_lengths:
            documents = int(packed_row(length)[1])
            result = results[backward, length]
            rows.append((f"{name}, T = {length} ({documents} documents)", result["peak_mib"], result["seconds"]))
        ratio = results[backward, long]["peak_mib"] / results[backward, short]["peak_mib"]
        rows.append((f"{name}: peak at {long} / at {short}", ratio, None))
    return rows


class ConcatLoop0Cache(LoopCoderCache):
    """Loop 0 grown by concatenation at every step (the cache before preallocation), for comparison only."""

    def update_loop0(self, key, value, layer_idx):
        if self.keys0[layer_idx] is None:
            self.keys0[layer_idx], self.values0[layer_idx] = key, value
        else:
            self.keys0[layer_idx] = torch.cat([self.keys0[layer_idx], key], dim=-2)
            self.values0[layer_idx] = torch.cat([self.values0[layer_idx], value], dim=-2)
        self.loop0_length[layer_idx] = self.keys0[layer_idx].shape[-2]
        return self.keys0[layer_idx], self.values0[layer_idx]


def decode_growth(model, args) -> dict[str, dict[int, float]]:
    """Median step time over the `window` steps ending at each mark of generated tokens, per cache."""
    marks, window = (128, args.growth_tokens), 32
    prompt = torch.randint(0, args.vocab, (1, 16))
    total = prompt.shape[1] + args.growth_tokens
    caches = {
        "preallocated": LoopCoderCache(model.config, max_cache_len=total),
        "concatenated": ConcatLoop0Cache(model.config),
    }
    tokens = torch.randint(0, args.vocab, (1, args.growth_tokens))
    samples: dict[str, list[float]] = {name: [] for name in caches}
    with torch.no_grad():
        logits = {name: model(prompt, past_key_values=cache, use_cache=True).logits for name, cache in caches.items()}
        for step in range(args.growth_tokens):
            names = list(caches) if step % 2 == 0 else list(reversed(caches))
            for name in names:
                start = time.perf_counter()
                logits[name] = model(tokens[:, step : step + 1], past_key_values=caches[name], use_cache=True).logits
                samples[name].append(time.perf_counter() - start)
        if not torch.allclose(logits["preallocated"], logits["concatenated"], atol=1e-5):
            raise SystemExit("the two caches decode different logits: no figure reported")
    return {
        name: {mark: statistics.median(times[mark - window : mark]) for mark in marks}
        for name, times in samples.items()
    }


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
    parser.add_argument(
        "--sections", nargs="+", choices=["compare", "packed-memory", "decode-growth"],
        default=["compare", "packed-memory", "decode-growth"],
    )  # fmt: skip
    parser.add_argument("--packed-lengths", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--packed-hidden", type=int, default=256)
    parser.add_argument("--packed-layers", type=int, default=2)
    parser.add_argument("--growth-tokens", type=int, default=2048)
    parser.add_argument("--packed-row-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--packed-row-child-backward", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.packed_row_child:
        packed_row_child(args)
        return
    torch.set_num_threads(args.threads)
    models = build(args)
    if "compare" in args.sections:
        compare(models, args)
    if "packed-memory" in args.sections:
        rows = packed_memory(args)
        print(
            f"packed row: 2 layers x 2 loops, hidden {args.packed_hidden}, {args.packed_hidden // 64}/1 heads, "
            f"window 64, SDPA, float32, CPU, {args.threads} thread(s); peak resident memory above the baseline"
        )
        print(f"| {'packed row':<52} | {'peak MiB / ratio':>16} | {'seconds':>8} |")
        print(f"|{'-' * 54}|{'-' * 17}:|{'-' * 9}:|")
        for name, value, seconds in rows:
            print(f"| {name:<52} | {value:>16.2f} | {'' if seconds is None else f'{seconds:.2f}':>8} |")
    if "decode-growth" in args.sections:
        growth = decode_growth(models["looped"], args)
        c = models["looped"].config
        print(
            f"decode step: {c.num_hidden_layers} layers x {c.num_loops} loops, hidden {c.hidden_size}, parallel "
            f"schedule, float32, CPU, {args.threads} thread(s); median of the 32 steps before each mark"
        )
        print(
            f"| {'loop-0 cache':<14} | {'step at 128':>12} | {'step at ' + str(args.growth_tokens):>13} | {'ratio':>6} |"
        )
        print(f"|{'-' * 16}|{'-' * 13}:|{'-' * 14}:|{'-' * 7}:|")
        for name, times in growth.items():
            short, long = times[128], times[args.growth_tokens]
            print(f"| {name:<14} | {short * 1e3:>9.2f} ms | {long * 1e3:>10.2f} ms | {long / short:>6.3f} |")
        ratio = growth["concatenated"][args.growth_tokens] / growth["preallocated"][args.growth_tokens]
        print(f"concatenated / preallocated at {args.growth_tokens} generated tokens: {ratio:.3f}")


def compare(models, args) -> None:
    looped, dense, llama = models["looped"], models["dense"], models["llama"]
    gate = correctness_gate(looped)

    ids = torch.randint(0, args.vocab, (args.train_batch, args.train_length))
    train = side_by_side({name: train_step(model, ids) for name, model in models.items()}, args.repeats)

    prompt = torch.randint(0, args.vocab, (1, args.prompt_length))
    n = args.new_tokens

    def loop_cache(model):
        return lambda: LoopCoderCache(model.config, max_cache_len=args.prompt_length + n)

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
