"""Benchmark of the fused gated attention kernel against the unfused path.

    python tests/bench/bench_gated_attention.py                      # released shape, T = 1k ... 32k
    python tests/bench/bench_gated_attention.py --seq-lens 4096 --batch 2

Shape of the released model: 40 query heads, 8 KV heads, head dim 128, window 64, bfloat16.

On a CUDA machine it first runs the kernel's correctness tests (tests/kernels/test_gated_attention.py)
and a check at the benchmark shape; if either fails it refuses to report speed. It then prints
time and TFLOP/s of the fused kernel and of the unfused path (a global causal attention, a local
sliding-window attention, then the gate mix; FlashAttention when installed, otherwise PyTorch
SDPA), forward and forward+backward. SDPA's local branch needs a boolean mask, which can send it to
a kernel with O(T^2) memory: a length that runs out of memory is reported as nan.

Without CUDA nothing is timed: it prints the memory-traffic model instead, i.e. bytes read and
written by each path computed from a formula (see `traffic_model`), not measured.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

GIB = 1024**3
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def attention_pairs(seq_len: int, window: int | None) -> int:
    """Visible (query, key) pairs of one head: causal, and within `window` when given."""
    if window is None or window >= seq_len:
        return seq_len * (seq_len + 1) // 2
    return seq_len * (window + 1) - window * (window + 1) // 2


def flops(batch: int, seq_len: int, heads: int, head_dim: int, window: int, backward: bool) -> float:
    """Useful FLOPs of both branches: 2 matmuls of 2*D per visible pair forward, 2.5x that backward."""
    pairs = attention_pairs(seq_len, None) + attention_pairs(seq_len, window)
    forward = 4.0 * head_dim * pairs * heads * batch
    return forward * (3.5 if backward else 1.0)


def traffic_model(batch: int, seq_len: int, heads: int, kv_heads: int, head_dim: int, element: int) -> dict:
    """Compulsory HBM bytes of each path under an ideal-cache model (each kernel reads each operand
    once and writes each result once; re-reads of K/V tiles across query blocks hit in L2).

    Fused: one forward kernel reads Q, K0, V0, Kr, Vr, g and writes O (+ Og and two fp32
    logsumexps when training); backward = pre-pass (Q, dO, Og, g, lse_l, Kr, Vr -> dg, two fp32
    deltas), dq kernel, dkv kernel.
    Unfused: two attention calls (each reads Q, K, V, writes its branch output and, training, an
    fp32 logsumexp), the mix as one elementwise kernel (reads Og, Ol, g, writes O); backward = mix
    backward (reads dO, g, Og, Ol, writes dOg, dOl, dg), two attention backwards of the same
    structure as the fused one (Delta pre-pass reading O and dO; a dq pass and a dkv pass, each
    reading Q, K, V, dO, lse, Delta), and dQ = dQg + dQl.
    """
    tokens = batch * seq_len
    q = o = tokens * heads * head_dim * element
    kv = tokens * kv_heads * head_dim * element
    g = tokens * heads * element
    stat = tokens * heads * 4

    fused_infer = q + 4 * kv + g + o
    fused_train_fwd = fused_infer + o + 2 * stat
    fused_bwd = (
        (q + o + o + g + stat + 2 * kv)
        + (g + 2 * stat)  # pre-pass: reads, writes dg + deltas
        + (q + o + g + 4 * stat + 4 * kv)
        + q  # dq: reads, writes dQ
        + (2 * (q + o + g + 2 * stat) + 4 * kv)
        + 4 * kv  # dkv: both branches' reads, writes
    )
    attn = q + 2 * kv + o
    mix = 2 * o + g + o
    unfused_infer = 2 * attn + mix
    unfused_train_fwd = unfused_infer + 2 * stat
    attn_bwd = (2 * o + stat) + (q + 2 * kv + o + 2 * stat + q) + (q + 2 * kv + o + 2 * stat + 2 * kv)
    mix_bwd = (o + g + 2 * o) + (2 * o + g)
    unfused_bwd = mix_bwd + 2 * attn_bwd + 3 * q
    return {
        "fwd": (fused_infer, unfused_infer),
        "fwd+bwd": (fused_train_fwd + fused_bwd, unfused_train_fwd + unfused_bwd),
    }


def print_traffic_table(args) -> None:
    element = torch.empty((), dtype=DTYPES[args.dtype]).element_size()
    print("MEMORY-TRAFFIC MODEL (from a formula, not a measurement; no CUDA device, nothing was timed)")
    print(
        f"B={args.batch} HQ={args.heads} HKV={args.kv_heads} D={args.head_dim} W={args.window} {args.dtype}; "
        "ideal cache: every kernel reads each operand once and writes each result once (see traffic_model)"
    )
    header = f"{'T':>6} | {'fwd fused GiB':>13} {'unfused GiB':>11} {'ratio':>6} | {'fwd+bwd fused GiB':>17} {'unfused GiB':>11} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for seq_len in args.seq_lens:
        model = traffic_model(args.batch, seq_len, args.heads, args.kv_heads, args.head_dim, element)
        (ff, uf), (fb, ub) = model["fwd"], model["fwd+bwd"]
        print(
            f"{seq_len:>6} | {ff / GIB:>13.3f} {uf / GIB:>11.3f} {uf / ff:>5.2f}x | "
            f"{fb / GIB:>17.3f} {ub / GIB:>11.3f} {ub / fb:>5.2f}x"
        )


def unfused_path():
    """(name, fn) of the unfused gated attention: two attention calls and the gate mix."""
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        flash_attn_func = None

    if flash_attn_func is not None:

        def unfused(q, k0, v0, kr, vr, gate, window):
            global_out = flash_attn_func(q, k0, v0, causal=True)
            local_out = flash_attn_func(q, kr, vr, causal=True, window_size=(window, 0))
            g = gate[..., None]
            return g * global_out + (1 - g) * local_out

        return "FlashAttention x2 + mix", unfused

    import torch.nn.functional as F

    def unfused(q, k0, v0, kr, vr, gate, window):
        seq_len = q.shape[1]
        q_, k0_, v0_, kr_, vr_ = (x.transpose(1, 2) for x in (q, k0, v0, kr, vr))
        positions = torch.arange(seq_len, device=q.device)
        distance = positions[:, None] - positions[None, :]
        local = (distance >= 0) & (distance <= window)
        global_out = F.scaled_dot_product_attention(q_, k0_, v0_, is_causal=True, enable_gqa=True)
        local_out = F.scaled_dot_product_attention(q_, kr_, vr_, attn_mask=local, enable_gqa=True)
        g = gate.transpose(1, 2)[..., None]
        return (g * global_out + (1 - g) * local_out).transpose(1, 2)

    return "PyTorch SDPA x2 + mix", unfused


def make_inputs(args, seq_len: int, requires_grad: bool):
    dtype, device = DTYPES[args.dtype], "cuda"
    q = torch.randn(args.batch, seq_len, args.heads, args.head_dim, device=device, dtype=dtype)
    kv = [torch.randn(args.batch, seq_len, args.kv_heads, args.head_dim, device=device, dtype=dtype) for _ in range(4)]
    gate = torch.sigmoid(torch.randn(args.batch, seq_len, args.heads, device=device)).to(dtype)
    return [x.requires_grad_(requires_grad) for x in (q, *kv, gate)]


def correctness_gate(args) -> bool:
    """The kernel's tests, then fused vs reference at the benchmark's head shape (T = 1024)."""
    test_file = Path(__file__).resolve().parents[1] / "kernels" / "test_gated_attention.py"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", str(test_file)])
    if result.returncode != 0:
        print("correctness tests failed")
        return False
    from loopcoder.kernels.gated_attention import gated_attention, gated_attention_reference

    inputs = make_inputs(args, 1024, requires_grad=True)
    do = torch.randn_like(inputs[0])
    results = []
    for fn, cast in ((gated_attention, lambda x: x), (gated_attention_reference, lambda x: x.float())):
        leaves = [cast(x.detach()).requires_grad_() for x in inputs]
        out = fn(*leaves, window=args.window)
        out.backward(cast(do))
        results.append([out.detach()] + [x.grad for x in leaves])
    ok = True
    for name, tri, ref in zip(("o", "dq", "dk0", "dv0", "dkr", "dvr", "dg"), *results, strict=True):
        err = ((tri.float() - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()
        good = err == err and err <= (1e-3 if args.dtype == "float32" else 1e-2)
        ok &= good
        print(f"check T=1024 {name:>4}: relative RMS error {err:.2e} {'ok' if good else 'FAILED'}")
    return ok


def bench_cuda(args) -> None:
    import triton

    from loopcoder.kernels.gated_attention import gated_attention

    name, unfused = unfused_path()
    print(
        f"fused Triton kernel vs {name}; B={args.batch} HQ={args.heads} HKV={args.kv_heads} "
        f"D={args.head_dim} W={args.window} {args.dtype} on {torch.cuda.get_device_name()}"
    )
    header = (
        f"{'T':>6} {'mode':>8} | {'fused ms':>9} {'TFLOP/s':>8} | {'unfused ms':>10} {'TFLOP/s':>8} | {'speedup':>7}"
    )
    print(header)
    print("-" * len(header))
    for seq_len in args.seq_lens:
        for mode in args.modes:
            backward = mode == "fwd+bwd"
            inputs = make_inputs(args, seq_len, requires_grad=backward)
            do = torch.randn_like(inputs[0])
            row = []
            for fn in (gated_attention, unfused):

                def step(fn=fn, inputs=inputs, do=do, backward=backward):
                    out = fn(*inputs, window=args.window)
                    if backward:
                        out.backward(do)

                try:
                    ms = triton.testing.do_bench(step, warmup=args.warmup, rep=args.rep, grad_to_none=inputs)
                except torch.OutOfMemoryError:
                    ms = float("nan")
                torch.cuda.empty_cache()
                row.append(ms)
            work = flops(args.batch, seq_len, args.heads, args.head_dim, args.window, backward)
            fused_ms, unfused_ms = row
            print(
                f"{seq_len:>6} {mode:>8} | {fused_ms:>9.3f} {work / fused_ms / 1e9:>8.1f} | "
                f"{unfused_ms:>10.3f} {work / unfused_ms / 1e9:>8.1f} | {unfused_ms / fused_ms:>6.2f}x"
            )
    print("TFLOP/s from the useful FLOPs of both branches (4*D per visible pair forward, x3.5 with backward).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=40)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    parser.add_argument("--modes", nargs="+", choices=["fwd", "fwd+bwd"], default=["fwd", "fwd+bwd"])
    parser.add_argument("--warmup", type=int, default=25, help="ms of warm-up per measurement")
    parser.add_argument("--rep", type=int, default=100, help="ms of repetitions per measurement")
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print_traffic_table(args)
        return 0
    if not correctness_gate(args):
        print("correctness check failed: refusing to report speed")
        return 1
    bench_cuda(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
