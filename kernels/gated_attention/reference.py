"""Plain PyTorch reference of the gated global/local attention of looped layers.

In every loop r >= 1 of a looped layer, a query mixes two attentions per head (see
docs/model.md, "One looped layer"):

    O = g * softmax(Q K0^T / sqrt(D)) V0  +  (1 - g) * softmax_window(Q Kr^T / sqrt(D)) Vr

* the global branch attends, causally and including the current token, to the keys and
  values that loop 0 produced in the same layer (K0, V0);
* the local branch attends to the current loop's own keys and values (Kr, Vr), only to the
  keys j with t - window <= j <= t, i.e. `window + 1` keys including the token itself;
* g is one sigmoid gate value per (token, query head), broadcast over the head dimension.

This file is written for clarity, not speed: it materialises both score matrices. The Triton
kernel beside it is tested against it, and the model's `eager` attention calls it.
"""

from __future__ import annotations

import torch


def _visible_keys(
    seq_len: int,
    window: int | None,
    document_ids: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """Boolean mask [B or 1, 1, T, T]: query t may see key j."""
    positions = torch.arange(seq_len, device=device)
    distance = positions[:, None] - positions[None, :]  # [T, T], t - j
    visible = distance >= 0
    if window is not None:
        visible = visible & (distance <= window)
    visible = visible[None, None]  # [1, 1, T, T]
    if document_ids is not None:  # [1, T]: no attention across packed documents
        same_document = document_ids[:, :, None] == document_ids[:, None, :]
        visible = visible & same_document[:, None]
    if key_padding_mask is not None:  # [B, T]: padded keys are never seen
        visible = visible & key_padding_mask[:, None, None, :].bool()
    return visible


def _masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor, scale: float):
    """softmax(q k^T * scale) v over the visible keys; rows that see no key return zeros."""
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bhkd->bhqd", probs, v)


def document_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """[N + 1] cumulative lengths -> [1, total] index of the document each token belongs to."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    return torch.repeat_interleave(torch.arange(len(lengths), device=cu_seqlens.device), lengths)[None]


def gated_attention_reference(
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
    """Gated global/local attention, computed in float32 and returned in q's dtype.

    Args:
        q (torch.Tensor): queries of the current loop, post-RoPE, `[B, T, HQ, D]`.
        k0, v0 (torch.Tensor): loop 0's keys (post-RoPE) and values of the same layer, `[B, T, HKV, D]`.
        kr, vr (torch.Tensor): the current loop's keys (post-RoPE) and values, `[B, T, HKV, D]`.
            `HQ` must be a multiple of `HKV`; query head h reads KV head `h // (HQ // HKV)`.
        gate (torch.Tensor): share of the global branch, in (0, 1), `[B, T, HQ]`.
        window (int): left extent of the local branch: key j is visible to query t iff
            `t - window <= j <= t` (`window + 1` keys including t). Must be >= 0.
        scale (float, Optional): score scale. Default: `D ** -0.5`.
        cu_seqlens (torch.Tensor, Optional): `[N + 1]` cumulative lengths of N documents packed
            into one row (then B must be 1); neither branch attends across documents.
        key_padding_mask (torch.Tensor, Optional): `[B, T]`, False at padded positions, which no
            query attends to. Rows of padded queries are returned as computed (ignore them).

    Returns:
        torch.Tensor: `[B, T, HQ, D]`.
    """
    batch, seq_len, num_heads, head_dim = q.shape
    num_kv_heads = k0.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"query heads ({num_heads}) must be a multiple of key/value heads ({num_kv_heads})")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    if cu_seqlens is not None and batch != 1:
        raise ValueError(f"packed input (cu_seqlens) needs batch size 1, got {batch}")
    scale = head_dim**-0.5 if scale is None else scale
    group = num_heads // num_kv_heads

    def heads_first(x: torch.Tensor, repeat: int = 1) -> torch.Tensor:
        # [B, T, H, D] -> [B, H * repeat, T, D] in float32 (repeat_kv layout for GQA)
        return x.float().transpose(1, 2).repeat_interleave(repeat, dim=1)

    document_ids = None if cu_seqlens is None else document_ids_from_cu_seqlens(cu_seqlens, seq_len)
    causal = _visible_keys(seq_len, None, document_ids, key_padding_mask, q.device)
    local = _visible_keys(seq_len, window, document_ids, key_padding_mask, q.device)

    q_ = heads_first(q)
    global_out = _masked_attention(q_, heads_first(k0, group), heads_first(v0, group), causal, scale)
    local_out = _masked_attention(q_, heads_first(kr, group), heads_first(vr, group), local, scale)
    g = gate.float().transpose(1, 2)[..., None]  # [B, HQ, T, 1]
    out = g * global_out + (1.0 - g) * local_out  # [B, HQ, T, D]
    return out.transpose(1, 2).to(q.dtype)
