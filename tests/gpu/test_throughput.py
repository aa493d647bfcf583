"""Training throughput on this GPU: tokens/s and model FLOPs utilisation of forward+backward, in bf16, for a model
with the released layer shapes (hidden 5120, 40/8 heads of 128, MLP 27648, window 64, 2 loops, vocabulary 76800;
`LOOPCODER_GPU_LAYERS` layers, default 2) on packed rows of `LOOPCODER_GPU_SEQ_LEN` tokens (default 4096), for
each attention implementation. Printed and written to runs/gpu_throughput.json; nothing is asserted about speed
(speed targets live in tests/bench/), only that the FLOPs count is consistent (utilisation in (0, 1]).

Peak dense bf16 TFLOPS come from the table below by device name, or from LOOPCODER_PEAK_TFLOPS.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from loopcoder.model import LoopCoderConfig, LoopCoderForCausalLM

ROOT = Path(__file__).resolve().parents[2]
# dense bf16 tensor-core peaks (no sparsity), most specific names first
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("H800", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 6000 Ada", 364.0),
    ("RTX A6000", 155.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
)


def peak_tflops(device_name: str) -> float | None:
    if os.environ.get("LOOPCODER_PEAK_TFLOPS"):
        return float(os.environ["LOOPCODER_PEAK_TFLOPS"])
    return next((peak for name, peak in PEAK_BF16_TFLOPS if name in device_name), None)


def training_flops_per_token(config: LoopCoderConfig, doc_lengths: list[int]) -> float:
    """Matmul FLOPs per token of forward + backward (3x forward) through every loop, for packed documents."""
    d, heads, kv, dim = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
    projections = d * heads * dim * 2 + d * kv * dim * 2  # q, o; k, v
    mlp = 3 * d * config.intermediate_size
    gate = heads * d  # loops >= 1 only
    tokens = sum(doc_lengths)
    # keys a query sees: causal within its document (loop 0 and the global branch), the window for the local one
    causal_keys = sum(n * (n + 1) / 2 for n in doc_lengths) / tokens
    window_keys = sum(sum(min(t + 1, config.loop_window + 1) for t in range(n)) for n in doc_lengths) / tokens
    attention = 4 * heads * dim  # QK^T and AV: 2 FLOPs per multiply-add, per key
    loop0 = 2 * (projections + mlp) + attention * causal_keys
    later = 2 * (projections + mlp + gate) + attention * (causal_keys + window_keys)
    forward = config.num_hidden_layers * (loop0 + (config.num_loops - 1) * later) + 2 * d * config.vocab_size
    return 3 * forward


def measure(model, inputs: dict[str, torch.Tensor], implementation: str, steps: int = 5) -> float:
    model.config._attn_implementation = implementation
    for _ in range(2):  # warm-up: kernel compilation and autotuning
        model(**inputs).loss.backward()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        model(**inputs).loss.backward()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


@pytest.mark.gpu
def test_throughput_report(capsys):
    layers = int(os.environ.get("LOOPCODER_GPU_LAYERS", "2"))
    seq_len = int(os.environ.get("LOOPCODER_GPU_SEQ_LEN", "4096"))
    config = LoopCoderConfig(num_hidden_layers=layers, max_position_embeddings=max(seq_len, 4096))
    doc_lengths = [seq_len // 4, seq_len // 2, seq_len - seq_len // 4 - seq_len // 2]
    try:
        model = LoopCoderForCausalLM(config).to("cuda", torch.bfloat16)
        ids = torch.randint(0, config.vocab_size, (1, seq_len), device="cuda")
        position_ids = torch.cat([torch.arange(n) for n in doc_lengths])[None].cuda()
        inputs = {"input_ids": ids, "position_ids": position_ids, "labels": ids}
        seconds = {impl: measure(model, inputs, impl) for impl in ("sdpa", "fused_gated")}
    except torch.OutOfMemoryError:
        pytest.skip(f"{layers} layers at {seq_len} tokens do not fit on this GPU: lower LOOPCODER_GPU_SEQ_LEN/LAYERS")
    device_name = torch.cuda.get_device_name()
    peak = peak_tflops(device_name)
    flops = training_flops_per_token(config, doc_lengths)
    rows = []
    for impl, step in seconds.items():
        tokens_per_s = seq_len / step
        mfu = tokens_per_s * flops / (peak * 1e12) if peak else None
        rows.append({"attention": impl, "seconds_per_step": step, "tokens_per_s": tokens_per_s, "mfu": mfu})
    report = {
        "device": device_name,
        "peak_bf16_tflops": peak,
        "layers": layers,
        "seq_len": seq_len,
        "documents": doc_lengths,
        "parameters": sum(p.numel() for p in model.parameters()),
        "training_flops_per_token": flops,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "rows": rows,
    }
    out = ROOT / "runs" / "gpu_throughput.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    with capsys.disabled():
        print(f"\nthroughput on {device_name} (peak {peak} TFLOPS bf16), {layers} layers, {seq_len} tokens per row:")
        for row in rows:
            mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a (set LOOPCODER_PEAK_TFLOPS)"
            print(f"  {row['attention']:>12}: {row['tokens_per_s']:,.0f} tokens/s, MFU {mfu}")
        print(f"  written to {out}")
    for row in rows:
        assert row["tokens_per_s"] > 0
        if row["mfu"] is not None:
            assert 0 < row["mfu"] <= 1, f"utilisation {row['mfu']:.2f} > 1: the FLOPs count or the peak is wrong"


def test_flops_count_of_a_dense_model_is_six_n_plus_attention():
    """The counter against the usual 6N + causal attention estimate on a one-loop (plain dense) model. Needs no GPU."""
    config = LoopCoderConfig(num_loops=1, num_hidden_layers=2, vocab_size=1000)
    d, layers = config.hidden_size, config.num_hidden_layers
    kv_width = config.num_key_value_heads * config.head_dim
    matmul_params = layers * (2 * d * d + 2 * d * kv_width + 3 * d * config.intermediate_size) + d * config.vocab_size
    seq = 1000
    attention = 3 * layers * 4 * config.num_attention_heads * config.head_dim * (seq + 1) / 2
    assert training_flops_per_token(config, [seq]) == pytest.approx(6 * matmul_params + attention, rel=1e-12)
