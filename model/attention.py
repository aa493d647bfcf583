"""Attention backends of the looped layers.

Two registries, both keyed by `config._attn_implementation`:

* transformers' `ALL_ATTENTION_FUNCTIONS` serves loop 0 (an ordinary causal attention). The name
  "fused_gated" is registered there too, mapped to SDPA, so that
  `from_pretrained(..., attn_implementation="fused_gated")` is accepted.
* `LOOPED_ATTENTION_FUNCTIONS` serves loops >= 1 on full sequences (training, prefill): the gated
  blend of a global branch over loop 0's K/V and a local sliding-window branch over the loop's own
  K/V. Every function has the signature of `gated_attention_reference`:

      fn(q, k0, v0, kr, vr, gate, *, window, scale=None, cu_seqlens=None, key_padding_mask=None) -> o

  with `[B, T, H, D]` tensors, `gate [B, T, HQ]` already in (0, 1), and `window` the left extent.
  "eager" is the reference, "sdpa" two `scaled_dot_product_attention` calls, "fused_gated" the
  Triton kernel of `loopcoder.kernels.gated_attention` (imported on first use). Every function takes
  packed rows itself (`cu_seqlens`, B = 1) in memory linear in the row length: the kernel natively,
  "eager" and "sdpa" one document at a time (`per_document`).

Loop 0 of packed rows goes through `per_document` too, with transformers' causal attention on each
document: no `[T, T]` mask is built for a packed row in any loop.

Decoding and chunked prefill (fewer queries than keys, cached K/V) use `cached_attention` below.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from loopcoder.kernels.gated_attention import gated_attention_reference

LoopedAttention = Callable[..., torch.Tensor]

FUSED_GATED = "fused_gated"


def per_document(fn: Callable[..., torch.Tensor], cu_seqlens: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
    """Runs `fn` on each document of a packed row alone; memory grows with the documents, not the row.

    Args:
        fn: takes the tensors of G documents of one length n, `[G, n, ...]`, and returns `[G, n, ...]`
            (documents of equal length share one call).
        cu_seqlens (torch.Tensor): `[N + 1]` document boundaries of the row, from 0 to T.
        tensors: `[1, T, ...]`, the token axis second.

    Returns:
        torch.Tensor: `[1, T, ...]`, each document's output at its tokens.
    """
    bounds = cu_seqlens.tolist()
    starts_by_length: dict[int, list[int]] = {}
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        if end > start:
            starts_by_length.setdefault(end - start, []).append(start)
    device = tensors[0].device
    outputs, token_order = [], []
    for length, starts in starts_by_length.items():
        index = (torch.tensor(starts, device=device)[:, None] + torch.arange(length, device=device)).flatten()
        out = fn(*(t[0, index].unflatten(0, (len(starts), length)) for t in tensors))
        outputs.append(out.flatten(0, 1))
        token_order.append(index)
    out = torch.cat(outputs)
    if len(outputs) > 1:  # one group lists the tokens in row order already
        order = torch.cat(token_order)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=device)
        out = out.index_select(0, inverse)
    return out[None]


def _visible(
    seq_len: int,
    window: int | None,
    key_padding_mask: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """Boolean mask `[B or 1, 1, T, T]`; the diagonal is always kept so no row is empty (SDPA would return NaN)."""
    positions = torch.arange(seq_len, device=device)
    distance = positions[:, None] - positions[None, :]
    visible = distance >= 0
    if window is not None:
        visible = visible & (distance <= window)
    visible = visible[None, None]
    if key_padding_mask is not None:
        visible = visible & key_padding_mask[:, None, None, :].bool()
    return visible | (distance == 0)


# The local branch is computed in query blocks of `_band_block(window)` rows, each against the
# `block + window` keys it can see, once the sequence holds this many blocks: T * (block + window)
# scores instead of T * T.
BANDED_MIN_BLOCKS = 4


def _band_block(window: int) -> int:
    return max(64, window)


def _banded_local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    key_padding_mask: torch.Tensor | None,
    scale: float | None,
    gqa: bool,
) -> torch.Tensor:
    """Sliding-window attention `[B, H, T, D]` (keys at distance 0..window, not padding)."""
    batch, heads, seq_len, dim = q.shape
    block = _band_block(window)
    blocks = -(-seq_len // block)
    padded = blocks * block
    device = q.device
    # key index j of block b is the padded position b * block + j, i.e. the token b * block + j - window
    key_index = torch.arange(blocks, device=device)[:, None] * block + torch.arange(block + window, device=device)
    key_pos = key_index - window
    query_pos = torch.arange(padded, device=device).view(blocks, block)
    distance = query_pos[:, :, None] - key_pos[:, None, :]
    inside = (key_pos >= 0) & (key_pos < seq_len)
    visible = ((distance >= 0) & (distance <= window) & inside[:, None, :])[None, :, None]  # [1, nb, 1, C, C+W]
    if key_padding_mask is not None:
        keep = F.pad(key_padding_mask.bool(), (window, padded - seq_len), value=False)[:, key_index]
        visible = visible & keep[:, :, None, None, :]
    visible = visible | (distance == 0)[None, :, None]

    def key_blocks(x: torch.Tensor) -> torch.Tensor:  # [B, HKV, T, D] -> [B, nb, HKV, C+W, D]
        return F.pad(x, (0, 0, window, padded - seq_len))[:, :, key_index].transpose(1, 2)

    query_blocks = F.pad(q, (0, 0, 0, padded - seq_len)).view(batch, heads, blocks, block, dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(
        query_blocks, key_blocks(k), key_blocks(v), attn_mask=visible, scale=scale, enable_gqa=gqa
    )
    return out.transpose(1, 2).reshape(batch, heads, padded, dim)[:, :, :seq_len]


def sdpa_gated_attention(
    q: torch.Tensor,
    k0: torch.Tensor,
    v0: torch.Tensor,
    kr: torch.Tensor,
    vr: torch.Tensor,
    gate: torch.Tensor,
    *,
    window: int,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as `gated_attention_reference`, computed with two SDPA calls in the input dtype.

    A packed row runs one document at a time (`per_document`): a causal global branch and a banded
    local branch per document, no `[T, T]` mask. Rows of padded queries attend to themselves only
    (the reference returns zeros there); both are ignored downstream.
    """
    if cu_seqlens is not None:
        _check_packed(q, cu_seqlens, key_padding_mask)
        documents = functools.partial(sdpa_gated_attention, window=window, scale=scale)
        return per_document(documents, cu_seqlens, q, k0, v0, kr, vr, gate)
    seq_len, num_heads = q.shape[1], q.shape[2]
    group = num_heads // k0.shape[2]
    q_, k0_, v0_, kr_, vr_ = (x.transpose(1, 2) for x in (q, k0, v0, kr, vr))
    gqa = group > 1
    if key_padding_mask is None:
        global_out = F.scaled_dot_product_attention(q_, k0_, v0_, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        causal = _visible(seq_len, None, key_padding_mask, q.device)
        global_out = F.scaled_dot_product_attention(q_, k0_, v0_, attn_mask=causal, scale=scale, enable_gqa=gqa)
    if seq_len >= BANDED_MIN_BLOCKS * _band_block(window):
        local_out = _banded_local_attention(q_, kr_, vr_, window, key_padding_mask, scale, gqa)
    else:
        local = _visible(seq_len, window, key_padding_mask, q.device)
        local_out = F.scaled_dot_product_attention(q_, kr_, vr_, attn_mask=local, scale=scale, enable_gqa=gqa)
    g = gate.transpose(1, 2)[..., None].to(q.dtype)  # [B, HQ, T, 1]
    out = g * global_out + (1 - g) * local_out
    return out.transpose(1, 2)


def eager_gated_attention(
    q: torch.Tensor,
    k0: torch.Tensor,
    v0: torch.Tensor,
    kr: torch.Tensor,
    vr: torch.Tensor,
    gate: torch.Tensor,
    *,
    window: int,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """`gated_attention_reference`, on a packed row one document at a time (its masks are `[n, n]` per document)."""
    reference = functools.partial(gated_attention_reference, window=window, scale=scale)
    if cu_seqlens is None:
        return reference(q, k0, v0, kr, vr, gate, key_padding_mask=key_padding_mask)
    _check_packed(q, cu_seqlens, key_padding_mask)
    return per_document(reference, cu_seqlens, q, k0, v0, kr, vr, gate)


def _check_packed(q: torch.Tensor, cu_seqlens: torch.Tensor, key_padding_mask: torch.Tensor | None) -> None:
    if q.shape[0] != 1:
        raise ValueError(f"packed input (cu_seqlens) needs batch size 1, got {q.shape[0]}")
    if key_padding_mask is not None:
        raise ValueError("pass either cu_seqlens (packed input) or key_padding_mask (padded input), not both")
    if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != q.shape[1]:
        raise ValueError(f"cu_seqlens must run from 0 to T = {q.shape[1]}, got {cu_seqlens.tolist()}")


def fused_gated_attention(q, k0, v0, kr, vr, gate, **kwargs) -> torch.Tensor:
    """The Triton kernel of `loopcoder.kernels.gated_attention`, imported on first use."""
    from loopcoder.kernels import gated_attention as kernel_module

    if not hasattr(kernel_module, "gated_attention"):
        raise RuntimeError(
            "attn_implementation='fused_gated' needs loopcoder.kernels.gated_attention.gated_attention, "
            "which this installation does not provide; use 'sdpa' or 'eager'"
        )
    return kernel_module.gated_attention(q, k0, v0, kr, vr, gate, **kwargs)


LOOPED_ATTENTION_FUNCTIONS: dict[str, LoopedAttention] = {
    "eager": eager_gated_attention,
    "sdpa": sdpa_gated_attention,
    FUSED_GATED: fused_gated_attention,
}


def register_looped_attention(name: str, fn: LoopedAttention) -> None:
    """Adds (or replaces) a looped-attention backend; `name` becomes a valid `attn_implementation`.

    The name is also registered in transformers' `AttentionInterface` (mapped to SDPA for loop 0)
    unless it is already known there.
    """
    LOOPED_ATTENTION_FUNCTIONS[name] = fn
    if name != "eager" and name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, sdpa_attention_forward)


def get_looped_attention(name: str) -> LoopedAttention:
    try:
        return LOOPED_ATTENTION_FUNCTIONS[name]
    except KeyError:
        raise ValueError(
            f"no looped attention registered for attn_implementation={name!r}; "
            f"known: {sorted(LOOPED_ATTENTION_FUNCTIONS)} (see register_looped_attention)"
        ) from None


AttentionInterface.register(FUSED_GATED, sdpa_attention_forward)


def cached_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    visible: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Attention of a few new queries over cached keys (decode, chunked prefill).

    Args:
        q (torch.Tensor): `[B, HQ, Tq, D]`.
        k, v (torch.Tensor): `[B, HKV, Tk, D]`.
        visible (torch.Tensor, Optional): boolean `[B, 1, Tq, Tk]`, every row seeing at least one key;
            None = every key visible.
        scale (float): score scale.

    Returns:
        torch.Tensor: `[B, HQ, Tq, D]`.
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


__all__ = [
    "LOOPED_ATTENTION_FUNCTIONS",
    "register_looped_attention",
    "get_looped_attention",
    "sdpa_gated_attention",
    "eager_gated_attention",
    "fused_gated_attention",
    "per_document",
    "cached_attention",
]
