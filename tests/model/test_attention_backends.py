"""The SDPA looped attention against the reference, on sequences long enough for its banded local branch."""

import pytest
import torch
import torch.nn.functional as F

from loopcoder.kernels.gated_attention import gated_attention_reference
from loopcoder.model.attention import (
    BANDED_MIN_BLOCKS,
    _band_block,
    _banded_local_attention,
    _visible,
    sdpa_gated_attention,
)


def inputs(batch, seq_len, heads, kv_heads, dim, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def tensor(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype).requires_grad_()

    q = tensor(batch, seq_len, heads, dim)
    k0, v0, kr, vr = (tensor(batch, seq_len, kv_heads, dim) for _ in range(4))
    gate = torch.rand(batch, seq_len, heads, generator=generator, dtype=torch.float64).to(dtype).requires_grad_()
    return q, k0, v0, kr, vr, gate


@pytest.mark.parametrize("window", [0, 1, 5, 64, 100])
@pytest.mark.parametrize("seq_len", [256, 300, 517])
@pytest.mark.parametrize("layout", ["plain", "padding"])
def test_banded_local_branch_equals_the_dense_mask(window, seq_len, layout):
    """float64, so any mask difference shows: the banded computation against the dense one."""
    q, _, _, kr, vr, _ = (x.detach().transpose(1, 2) for x in inputs(2, seq_len, 4, 2, 16, torch.float64))
    key_padding_mask = None
    if layout == "padding":
        key_padding_mask = torch.ones(2, seq_len, dtype=torch.bool)
        key_padding_mask[0, :37] = False  # left padding
        key_padding_mask[1, seq_len - 70 :] = False  # right padding
    banded = _banded_local_attention(q, kr, vr, window, key_padding_mask, None, True)
    mask = _visible(seq_len, window, key_padding_mask, q.device)
    dense = F.scaled_dot_product_attention(q, kr, vr, attn_mask=mask, enable_gqa=True)
    if key_padding_mask is not None:  # padded queries are ignored downstream
        banded, dense = banded * key_padding_mask[:, None, :, None], dense * key_padding_mask[:, None, :, None]
    assert banded.shape == dense.shape
    assert (banded - dense).abs().max().item() < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(4, 4, 16), (6, 2, 32)])
@pytest.mark.parametrize("packed", [False, True])
def test_sdpa_matches_the_reference_with_gradients(dtype, heads, kv_heads, dim, packed):
    window, seq_len = 64, 400
    assert seq_len >= BANDED_MIN_BLOCKS * _band_block(window)  # the banded branch is the one under test
    tensors = inputs(1 if packed else 2, seq_len, heads, kv_heads, dim, dtype)
    cu_seqlens = torch.tensor([0, 150, 151, 333, seq_len], dtype=torch.int32) if packed else None
    out = sdpa_gated_attention(*tensors, window=window, cu_seqlens=cu_seqlens)
    expected = gated_attention_reference(*tensors, window=window, cu_seqlens=cu_seqlens)
    assert out.dtype == dtype
    assert (out.float() - expected.float()).abs().max().item() < 1e-5
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    grads = torch.autograd.grad((out * weights).sum(), tensors)
    expected_grads = torch.autograd.grad((expected * weights).sum(), tensors)
    for name, got, want in zip(("q", "k0", "v0", "kr", "vr", "gate"), grads, expected_grads, strict=True):
        assert (got.float() - want.float()).abs().max().item() < 1e-4, name
