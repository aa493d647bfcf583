"""Packed rows attend one document at a time: the dense-mask results, and no `[T, T]` tensor anywhere."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from loopcoder.kernels.gated_attention import gated_attention_reference
from loopcoder.kernels.gated_attention.reference import document_ids_from_cu_seqlens
from loopcoder.model.attention import eager_gated_attention, per_document, sdpa_gated_attention

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def tensors(seq_len, heads, kv_heads, dim, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def tensor(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype).requires_grad_()

    q = tensor(1, seq_len, heads, dim)
    k0, v0, kr, vr = (tensor(1, seq_len, kv_heads, dim) for _ in range(4))
    gate = torch.rand(1, seq_len, heads, generator=generator, dtype=torch.float64).to(dtype).requires_grad_()
    return q, k0, v0, kr, vr, gate


# documents of one row: repeated lengths (grouped into one call), one-token documents, one longer than
# the banded threshold of the local branch (256 for W = 64)
ROWS = {
    "one document": [0, 37],
    "equal lengths": [0, 9, 18, 27],
    "mixed": [0, 1, 12, 13, 40, 300, 301, 309],
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(4, 4, 16), (6, 2, 32)])
@pytest.mark.parametrize("row", list(ROWS))
def test_causal_per_document_equals_the_block_diagonal_mask(dtype, heads, kv_heads, dim, row):
    cu_seqlens = torch.tensor(ROWS[row], dtype=torch.int32)
    q, k, v = tensors(int(cu_seqlens[-1]), heads, kv_heads, dim, dtype)[:3]

    def causal(q_, k_, v_):
        out = F.scaled_dot_product_attention(
            q_.transpose(1, 2), k_.transpose(1, 2), v_.transpose(1, 2), is_causal=True, enable_gqa=True
        )
        return out.transpose(1, 2)

    out = per_document(causal, cu_seqlens, q, k, v)
    documents = document_ids_from_cu_seqlens(cu_seqlens, q.shape[1])[0]
    positions = torch.arange(q.shape[1])
    visible = (documents[:, None] == documents[None, :]) & (positions[:, None] >= positions[None, :])
    dense = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=visible, enable_gqa=True
    ).transpose(1, 2)
    assert out.shape == dense.shape and out.dtype == dtype
    assert (out.double() - dense.double()).abs().max().item() < TOLERANCE[dtype]
    grads = torch.autograd.grad(out.double().square().sum(), (q, k, v))
    dense_grads = torch.autograd.grad(dense.double().square().sum(), (q, k, v))
    for got, want in zip(grads, dense_grads, strict=True):
        assert relative_error(got, want) < TOLERANCE[dtype]


@pytest.mark.parametrize("backend", [sdpa_gated_attention, eager_gated_attention])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("row", list(ROWS))
def test_looped_backends_per_document_equal_the_dense_reference(backend, dtype, row):
    """Against `gated_attention_reference` (float32), which masks the whole row with `[T, T]` document masks."""
    cu_seqlens = torch.tensor(ROWS[row], dtype=torch.int32)
    inputs = tensors(int(cu_seqlens[-1]), 6, 2, 32, dtype)
    out = backend(*inputs, window=64, cu_seqlens=cu_seqlens)
    expected = gated_attention_reference(*inputs, window=64, cu_seqlens=cu_seqlens)
    assert out.dtype == dtype
    assert relative_error(out, expected) < TOLERANCE[dtype]
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    grads = torch.autograd.grad((out * weights).sum(), inputs)
    expected_grads = torch.autograd.grad((expected * weights).sum(), inputs)
    for name, got, want in zip(("q", "k0", "v0", "kr", "vr", "gate"), grads, expected_grads, strict=True):
        assert relative_error(got, want) < TOLERANCE[dtype], name


def test_packed_input_is_validated():
    inputs = tensors(10, 4, 2, 16, torch.float32)
    with pytest.raises(ValueError, match="from 0 to T = 10"):
        sdpa_gated_attention(*inputs, window=4, cu_seqlens=torch.tensor([0, 4, 8], dtype=torch.int32))
    with pytest.raises(ValueError, match="not both"):
        eager_gated_attention(
            *inputs,
            window=4,
            cu_seqlens=torch.tensor([0, 10], dtype=torch.int32),
            key_padding_mask=torch.ones(1, 10, dtype=torch.bool),
        )


def _packed_rows(lc, lengths_per_row, seq_len):
    """Rows of documents of the given lengths, each row filled up to `seq_len` by one last document."""
    rows, positions, documents = [], [], []
    for r, lengths in enumerate(lengths_per_row):
        lengths = [*lengths, seq_len - sum(lengths)]
        docs = [lc.random_ids(1, n, seed=100 * r + i)[0] for i, n in enumerate(lengths)]
        rows.append(torch.cat(docs))
        positions.append(torch.cat([torch.arange(n) for n in lengths]))
        documents.append(docs)
    return torch.stack(rows), torch.stack(positions), documents


@pytest.mark.parametrize("variant", ["v2", "v1"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_with_different_document_counts_equal_documents_alone(variant, impl, dtype, lc):
    model = lc.make_model(lc.config(variant)).to(dtype)
    model.set_attn_implementation(impl)
    # 1, 3 and 6 documents per row; equal lengths across rows share one attention call
    ids, positions, documents = _packed_rows(lc, [[], [5, 9], [3, 1, 5, 5, 2]], 24)
    with torch.no_grad():
        logits = model(ids, position_ids=positions, use_cache=False).logits
        for row, docs in enumerate(documents):
            alone = torch.cat([model(doc[None], use_cache=False).logits[0] for doc in docs])
            limit = 1e-5 if dtype == torch.float32 else 0.1  # bf16: the same rounding as a separate forward, not bits
            assert (logits[row].float() - alone.float()).abs().max().item() < limit, f"row {row}"


class _LargestSquare(TorchDispatchMode):
    """Records every tensor an aten op returns that has two dimensions of at least `size`."""

    def __init__(self, size):
        super().__init__()
        self.size, self.found = size, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor) and sum(d >= self.size for d in tensor.shape) >= 2:
                self.found.append((str(func), tuple(tensor.shape)))
        return out


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("marker", ["position_ids", "cu_seqlens"])
def test_packed_row_allocates_no_row_by_row_tensor(impl, marker, lc):
    """Forward and backward of a packed row of 640 tokens: no op returns a T x T tensor (documents <= 300)."""
    model = lc.make_model(lc.v2_config(loop_window=64)).train()
    model.set_attn_implementation(impl)
    lengths = [300, 120, 1, 1, 100, 118]
    ids = lc.random_ids(1, sum(lengths), seed=4)
    inputs = {"input_ids": ids, "labels": ids, "use_cache": False}
    if marker == "cu_seqlens":
        inputs["cu_seqlens"] = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    else:
        inputs["position_ids"] = torch.cat([torch.arange(n) for n in lengths])[None]
    with _LargestSquare(ids.shape[1]) as watch:
        model(**inputs).loss.backward()
    assert watch.found == []
