"""The fused gated attention kernel against its PyTorch reference in bf16, at the released LoopCoder-V2 shapes:
40 query heads, 8 KV heads, head dim 128, local window 64 (65 keys), forward and every gradient."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

HEADS, KV_HEADS, HEAD_DIM, WINDOW = 40, 8, 128, 64
NAMES = ("o", "dq", "dk0", "dv0", "dkr", "dvr", "dg")
BF16_TOLERANCE = 1e-2  # relative RMS error, as the CPU kernel tests


def make_inputs(batch: int, seq_len: int, seed: int = 0):
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device="cuda").to(torch.bfloat16)

    q = randn(batch, seq_len, HEADS, HEAD_DIM)
    k0, v0, kr, vr = (randn(batch, seq_len, KV_HEADS, HEAD_DIM) for _ in range(4))
    gate = torch.sigmoid(randn(batch, seq_len, HEADS).float() * 2).to(torch.bfloat16)
    grad = randn(batch, seq_len, HEADS, HEAD_DIM)
    return [q, k0, v0, kr, vr, gate], grad


def forward_backward(fn, inputs, grad, **kwargs):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*leaves, **kwargs)
    out.backward(grad)
    return [out.detach()] + [x.grad for x in leaves]


@pytest.mark.parametrize(
    ("batch", "seq_len"), [(2, 1024), (1, 2048), (1, 1000)], ids=["B2-T1024", "B1-T2048", "B1-T1000"]
)
def test_kernel_matches_reference_at_released_shapes(assert_close, batch, seq_len):
    from loopcoder.kernels.gated_attention import gated_attention, gated_attention_reference

    inputs, grad = make_inputs(batch, seq_len)
    reference = forward_backward(gated_attention_reference, [x.float() for x in inputs], grad.float(), window=WINDOW)
    fused = forward_backward(gated_attention, inputs, grad, window=WINDOW)
    for name, expected, value in zip(NAMES, reference, fused, strict=True):
        assert value.dtype == torch.bfloat16, f"{name} came back as {value.dtype}"
        assert_close(f"B{batch}-T{seq_len} {name}", expected, value, BF16_TOLERANCE)


def test_packed_documents_match_the_reference_per_document(assert_close):
    from loopcoder.kernels.gated_attention import gated_attention, gated_attention_reference

    lengths = [1, 63, 65, 700, 300, 919]  # 2048 tokens in one row, documents shorter and longer than the window
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    inputs, grad = make_inputs(1, sum(lengths), seed=1)
    fused = forward_backward(gated_attention, inputs, grad, window=WINDOW, cu_seqlens=cu_seqlens)

    leaves = [x.detach().float().requires_grad_() for x in inputs]
    starts, ends = cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()
    out = torch.cat(
        [
            gated_attention_reference(*(x[:, s:e] for x in leaves), window=WINDOW)
            for s, e in zip(starts, ends, strict=True)
        ],
        dim=1,
    )
    out.backward(grad.float())
    reference = [out.detach()] + [x.grad for x in leaves]
    for name, expected, value in zip(NAMES, reference, fused, strict=True):
        assert_close(f"packed {name}", expected, value, BF16_TOLERANCE)
