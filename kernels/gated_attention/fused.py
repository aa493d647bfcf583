"""Fused gated global/local attention in Triton: forward and backward.

    O = g * softmax(Q K0^T * scale) V0  +  (1 - g) * softmax_window(Q Kr^T * scale) Vr

One forward program owns a block of queries of one head and runs two online softmaxes: the
global branch over loop 0's keys (causal, including the token itself), the local branch over the
current loop's keys inside the window `t - window <= j <= t`, visiting only the key blocks that
overlap the window. The gate mixes both before the single write of O. See docs/kernels.md.

Layering: `@triton.jit` kernels -> host launchers (`gated_attn_fwd`, `gated_attn_bwd`) ->
`GatedAttentionFunction` -> the public `gated_attention`.

Without a GPU the kernels run in Triton's interpreter, which must be switched on before this
module is imported: `export TRITON_INTERPRET=1`. The module reads the setting once, when it
defines the kernels.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .reference import gated_attention_reference

# scores are kept in the log2 domain: exp(x) = exp2(x * log2(e))
LOG2E = tl.constexpr(1.4426950408889634)
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 256


@triton.jit
def _visible(o_t, o_s, window):
    # key j is visible to query t iff t - window <= j <= t
    b_dist = o_t[:, None] - o_s[None, :]
    return (b_dist >= 0) & (b_dist <= window)


@triton.jit
def _sequence_bounds(i_b, i_blk, cu_seqlens, block_indices, T, IS_VARLEN: tl.constexpr):
    # (first token of the sequence in the flattened [B * T] rows, its length, block index inside it)
    if IS_VARLEN:
        i_n = tl.load(block_indices + i_blk * 2).to(tl.int32)
        i_blk = tl.load(block_indices + i_blk * 2 + 1).to(tl.int32)
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        seq_len = (tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos).to(tl.int32)
    else:
        bos = i_b.to(tl.int64) * T
        seq_len = T
    return bos, seq_len, i_blk


@triton.jit
def _fwd_branch(
    b_acc,
    b_l,
    b_m,
    b_q,
    k,
    v,
    bos,
    i_hkv,
    o_t,
    lo,
    hi,
    window,
    qk_scale,
    HKV: tl.constexpr,
    D: tl.constexpr,
    BS: tl.constexpr,
    BD: tl.constexpr,
    MASK: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # online softmax over the key tiles [lo, hi); MASK=False for tiles every query of the tile sees
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    for i_s in range(lo, hi, BS):
        o_s = i_s + tl.arange(0, BS)
        m_s = o_s < hi
        p_kv = ((bos + o_s) * HKV + i_hkv)[:, None] * D + o_d[None, :]
        b_k = tl.load(k + p_kv, mask=m_s[:, None] & m_d[None, :], other=0.0)  # [BS, BD]
        b_v = tl.load(v + p_kv, mask=m_s[:, None] & m_d[None, :], other=0.0)  # [BS, BD]
        if UPCAST:
            b_k = b_k.to(tl.float32)
            b_v = b_v.to(tl.float32)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION) * qk_scale  # [BT, BS]
        if MASK:
            b_s = tl.where(_visible(o_t, o_s, window) & m_s[None, :], b_s, float("-inf"))
        # -- update m, l and the accumulator (log2 domain)
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_alpha = tl.exp2(b_m - b_m_new)
        b_p = tl.exp2(b_s - b_m_new[:, None])
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v, input_precision=DOT_PRECISION)
        b_m = b_m_new
    return b_acc, b_l, b_m


@triton.heuristics(
    {
        "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
        "STORE_GLOBAL": lambda args: args["og"] is not None,
    }
)
@triton.jit(do_not_specialize=["T", "window"])
def gated_attn_fwd_kernel(
    q,
    k0,
    v0,
    kr,
    vr,
    gate,
    o,
    og,
    lse_g,
    lse_l,
    cu_seqlens,
    block_indices,
    scale,
    window,
    T,
    HQ: tl.constexpr,
    HKV: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    BT: tl.constexpr,
    BS: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    STORE_GLOBAL: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # the last query blocks see the most keys: launch them first to shorten the tail
    i_blk, i_bh = tl.num_programs(0) - 1 - tl.program_id(0), tl.program_id(1)
    i_b, i_hq = i_bh // HQ, i_bh % HQ
    i_hkv = i_hq // (HQ // HKV)
    bos, seq_len, i_t = _sequence_bounds(i_b, i_blk, cu_seqlens, block_indices, T, IS_VARLEN)
    qk_scale = scale * LOG2E

    o_t = i_t * BT + tl.arange(0, BT)
    o_d = tl.arange(0, BD)
    m_t = o_t < seq_len
    m_td = m_t[:, None] & (o_d < D)[None, :]
    p_qo = ((bos + o_t) * HQ + i_hq)[:, None] * D + o_d[None, :]  # [BT, BD]
    p_row = (bos + o_t) * HQ + i_hq  # [BT]
    b_q = tl.load(q + p_qo, mask=m_td, other=0.0)
    if UPCAST:
        b_q = b_q.to(tl.float32)

    # a finite floor keeps exp2(m_old - m_new) defined for rows with no visible key in a tile
    b_m_g = tl.full([BT], -1.0e30, dtype=tl.float32)
    b_l_g = tl.zeros([BT], dtype=tl.float32)
    b_acc_g = tl.zeros([BT, BD], dtype=tl.float32)
    b_m_l, b_l_l, b_acc_l = b_m_g, b_l_g, b_acc_g

    hi = tl.minimum((i_t + 1) * BT, seq_len)
    # global branch, stage 1: key tiles before the query tile, visible to all its rows (no mask)
    mid = i_t * BT // BS * BS
    b_acc_g, b_l_g, b_m_g = _fwd_branch(
        b_acc_g, b_l_g, b_m_g, b_q, k0, v0, bos, i_hkv, o_t, 0, mid, seq_len, qk_scale,
        HKV, D, BS, BD, False, UPCAST, DOT_PRECISION,
    )  # fmt: skip
    # global branch, stage 2: the tiles on the diagonal (causal mask)
    b_acc_g, b_l_g, b_m_g = _fwd_branch(
        b_acc_g, b_l_g, b_m_g, b_q, k0, v0, bos, i_hkv, o_t, mid, hi, seq_len, qk_scale,
        HKV, D, BS, BD, True, UPCAST, DOT_PRECISION,
    )  # fmt: skip
    # local branch: only the key tiles that overlap [first query - window, last query]
    lo = tl.maximum(i_t * BT - window, 0) // BS * BS
    b_acc_l, b_l_l, b_m_l = _fwd_branch(
        b_acc_l, b_l_l, b_m_l, b_q, kr, vr, bos, i_hkv, o_t, lo, hi, window, qk_scale,
        HKV, D, BS, BD, True, UPCAST, DOT_PRECISION,
    )  # fmt: skip

    # rows past the end of the sequence may see no key: keep their (unstored) values finite
    b_l_g = tl.where(m_t, b_l_g, 1.0)
    b_l_l = tl.where(m_t, b_l_l, 1.0)
    b_og = b_acc_g / b_l_g[:, None]
    b_ol = b_acc_l / b_l_l[:, None]
    b_g = tl.load(gate + p_row, mask=m_t, other=0.0).to(tl.float32)[:, None]
    b_o = b_g * b_og + (1.0 - b_g) * b_ol
    tl.store(o + p_qo, b_o.to(o.dtype.element_ty), mask=m_td)
    if STORE_GLOBAL:
        tl.store(og + p_qo, b_og.to(og.dtype.element_ty), mask=m_td)
    tl.store(lse_g + p_row, b_m_g + tl.log2(b_l_g), mask=m_t)
    tl.store(lse_l + p_row, b_m_l + tl.log2(b_l_l), mask=m_t)


@triton.heuristics({"IS_VARLEN": lambda args: args["cu_seqlens"] is not None})
@triton.jit(do_not_specialize=["T", "window"])
def gated_attn_bwd_kernel_preprocess(
    q,
    kr,
    vr,
    gate,
    og,
    do,
    lse_l,
    delta_g,
    delta_l,
    dg,
    cu_seqlens,
    block_indices,
    scale,
    window,
    T,
    HQ: tl.constexpr,
    HKV: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    BT: tl.constexpr,
    BS: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # rowsum(dO * Og) from the saved global output, rowsum(dO * Ol) from a recomputed local
    # output (the window makes it cheap); they give dg and the two branches' Delta terms
    i_blk, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_hq = i_bh // HQ, i_bh % HQ
    i_hkv = i_hq // (HQ // HKV)
    bos, seq_len, i_t = _sequence_bounds(i_b, i_blk, cu_seqlens, block_indices, T, IS_VARLEN)
    qk_scale = scale * LOG2E

    o_t = i_t * BT + tl.arange(0, BT)
    o_d = tl.arange(0, BD)
    m_t = o_t < seq_len
    m_d = o_d < D
    m_td = m_t[:, None] & m_d[None, :]
    p_qo = ((bos + o_t) * HQ + i_hq)[:, None] * D + o_d[None, :]  # [BT, BD]
    p_row = (bos + o_t) * HQ + i_hq  # [BT]
    b_q = tl.load(q + p_qo, mask=m_td, other=0.0)
    if UPCAST:
        b_q = b_q.to(tl.float32)
    b_do = tl.load(do + p_qo, mask=m_td, other=0.0).to(tl.float32)
    b_og = tl.load(og + p_qo, mask=m_td, other=0.0).to(tl.float32)
    b_lse = tl.load(lse_l + p_row, mask=m_t, other=0.0)

    b_ol = tl.zeros([BT, BD], dtype=tl.float32)
    hi = tl.minimum((i_t + 1) * BT, seq_len)
    lo = tl.maximum(i_t * BT - window, 0) // BS * BS
    for i_s in range(lo, hi, BS):
        o_s = i_s + tl.arange(0, BS)
        m_s = o_s < hi
        p_kv = ((bos + o_s) * HKV + i_hkv)[:, None] * D + o_d[None, :]
        b_k = tl.load(kr + p_kv, mask=m_s[:, None] & m_d[None, :], other=0.0)  # [BS, BD]
        b_v = tl.load(vr + p_kv, mask=m_s[:, None] & m_d[None, :], other=0.0)  # [BS, BD]
        if UPCAST:
            b_k = b_k.to(tl.float32)
            b_v = b_v.to(tl.float32)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION) * qk_scale  # [BT, BS]
        b_vis = _visible(o_t, o_s, window) & m_s[None, :] & m_t[:, None]
        b_p = tl.where(b_vis, tl.exp2(b_s - b_lse[:, None]), 0.0)
        b_ol += tl.dot(b_p.to(b_v.dtype), b_v, input_precision=DOT_PRECISION)

    b_dog = tl.sum(b_do * b_og, 1)  # [BT]
    b_dol = tl.sum(b_do * b_ol, 1)  # [BT]
    b_g = tl.load(gate + p_row, mask=m_t, other=0.0).to(tl.float32)
    tl.store(dg + p_row, (b_dog - b_dol).to(dg.dtype.element_ty), mask=m_t)
    tl.store(delta_g + p_row, b_g * b_dog, mask=m_t)
    tl.store(delta_l + p_row, (1.0 - b_g) * b_dol, mask=m_t)


@triton.jit
def _dq_branch(
    b_dq,
    b_q,
    b_do,
    b_lse,
    b_delta,
    k,
    v,
    bos,
    i_hkv,
    o_t,
    m_t,
    lo,
    hi,
    window,
    qk_scale,
    HKV: tl.constexpr,
    D: tl.constexpr,
    BS: tl.constexpr,
    BD: tl.constexpr,
    MASK: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    for i_s in range(lo, hi, BS):
        o_s = i_s + tl.arange(0, BS)
        m_s = o_s < hi
        p_kv = ((bos + o_s) * HKV + i_hkv)[:, None] * D + o_d[None, :]
        b_k = tl.load(k + p_kv, mask=m_s[:, None] & m_d[None, :], other=0.0)  # [BS, BD]
        b_v = tl.load(v + p_kv, mask=m_s[:, None] & m_d[None, :], other=0.0)  # [BS, BD]
        if UPCAST:
            b_k = b_k.to(tl.float32)
            b_v = b_v.to(tl.float32)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION) * qk_scale  # [BT, BS]
        b_p = tl.exp2(b_s - b_lse[:, None])
        if MASK:
            b_p = tl.where(_visible(o_t, o_s, window) & m_s[None, :] & m_t[:, None], b_p, 0.0)
        b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PRECISION)  # [BT, BS]
        b_ds = b_p * (b_dp - b_delta[:, None])
        b_dq += tl.dot(b_ds.to(b_k.dtype), b_k, input_precision=DOT_PRECISION)
    return b_dq


@triton.heuristics({"IS_VARLEN": lambda args: args["cu_seqlens"] is not None})
@triton.jit(do_not_specialize=["T", "window"])
def gated_attn_bwd_kernel_dq(
    q,
    k0,
    v0,
    kr,
    vr,
    gate,
    do,
    lse_g,
    lse_l,
    delta_g,
    delta_l,
    dq,
    cu_seqlens,
    block_indices,
    scale,
    window,
    T,
    HQ: tl.constexpr,
    HKV: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    BT: tl.constexpr,
    BS: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # the last query blocks see the most keys: launch them first to shorten the tail
    i_blk, i_bh = tl.num_programs(0) - 1 - tl.program_id(0), tl.program_id(1)
    i_b, i_hq = i_bh // HQ, i_bh % HQ
    i_hkv = i_hq // (HQ // HKV)
    bos, seq_len, i_t = _sequence_bounds(i_b, i_blk, cu_seqlens, block_indices, T, IS_VARLEN)
    qk_scale = scale * LOG2E

    o_t = i_t * BT + tl.arange(0, BT)
    o_d = tl.arange(0, BD)
    m_t = o_t < seq_len
    m_td = m_t[:, None] & (o_d < D)[None, :]
    p_qo = ((bos + o_t) * HQ + i_hq)[:, None] * D + o_d[None, :]  # [BT, BD]
    p_row = (bos + o_t) * HQ + i_hq  # [BT]
    b_q = tl.load(q + p_qo, mask=m_td, other=0.0)
    if UPCAST:
        b_q = b_q.to(tl.float32)
    b_do = tl.load(do + p_qo, mask=m_td, other=0.0).to(tl.float32)
    b_g = tl.load(gate + p_row, mask=m_t, other=0.0).to(tl.float32)
    # each branch sees its share of the output gradient: dOg = g dO, dOl = (1 - g) dO
    b_do_g = (b_do * b_g[:, None]).to(b_q.dtype)
    b_do_l = (b_do * (1.0 - b_g)[:, None]).to(b_q.dtype)

    # rows past the end of the sequence get p = exp2(s - inf) = 0, also in the unmasked tiles
    b_lse_g = tl.load(lse_g + p_row, mask=m_t, other=float("inf"))
    b_delta_g = tl.load(delta_g + p_row, mask=m_t, other=0.0)
    b_lse_l = tl.load(lse_l + p_row, mask=m_t, other=float("inf"))
    b_delta_l = tl.load(delta_l + p_row, mask=m_t, other=0.0)
    hi = tl.minimum((i_t + 1) * BT, seq_len)
    mid = i_t * BT // BS * BS
    lo = tl.maximum(i_t * BT - window, 0) // BS * BS
    b_dq = tl.zeros([BT, BD], dtype=tl.float32)
    # global branch: unmasked tiles before the query tile, then the diagonal tiles
    b_dq = _dq_branch(
        b_dq, b_q, b_do_g, b_lse_g, b_delta_g, k0, v0, bos, i_hkv, o_t, m_t, 0, mid, seq_len, qk_scale,
        HKV, D, BS, BD, False, UPCAST, DOT_PRECISION,
    )  # fmt: skip
    b_dq = _dq_branch(
        b_dq, b_q, b_do_g, b_lse_g, b_delta_g, k0, v0, bos, i_hkv, o_t, m_t, mid, hi, seq_len, qk_scale,
        HKV, D, BS, BD, True, UPCAST, DOT_PRECISION,
    )  # fmt: skip
    # local branch: the tiles overlapping the window
    b_dq = _dq_branch(
        b_dq, b_q, b_do_l, b_lse_l, b_delta_l, kr, vr, bos, i_hkv, o_t, m_t, lo, hi, window, qk_scale,
        HKV, D, BS, BD, True, UPCAST, DOT_PRECISION,
    )  # fmt: skip
    tl.store(dq + p_qo, (b_dq * scale).to(dq.dtype.element_ty), mask=m_td)


@triton.heuristics({"IS_VARLEN": lambda args: args["cu_seqlens"] is not None})
@triton.jit(do_not_specialize=["T", "window"])
def gated_attn_bwd_kernel_dkv(
    q,
    k0,
    v0,
    kr,
    vr,
    gate,
    do,
    lse_g,
    lse_l,
    delta_g,
    delta_l,
    dk0,
    dv0,
    dkr,
    dvr,
    cu_seqlens,
    block_indices,
    scale,
    window,
    T,
    HQ: tl.constexpr,
    HKV: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    BT: tl.constexpr,
    BS: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # one program per (key block, batch and KV head, branch); the query heads of the GQA group
    # are visited in a loop, so dK and dV are accumulated without atomics (deterministic)
    i_blk, i_bh, i_branch = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_hkv = i_bh // HKV, i_bh % HKV
    G: tl.constexpr = HQ // HKV
    bos, seq_len, i_s = _sequence_bounds(i_b, i_blk, cu_seqlens, block_indices, T, IS_VARLEN)
    qk_scale = scale * LOG2E

    if i_branch == 0:
        k, v, dk, dv, lse, delta = k0, v0, dk0, dv0, lse_g, delta_g
        win = seq_len
        hi = seq_len
    else:
        k, v, dk, dv, lse, delta = kr, vr, dkr, dvr, lse_l, delta_l
        win = window
        hi = tl.minimum((i_s + 1) * BS + window, seq_len)
    # the gate share of this branch is g for the global branch and 1 - g for the local one
    gate_sign = 1.0 - 2.0 * i_branch.to(tl.float32)
    gate_bias = i_branch.to(tl.float32)

    o_s = i_s * BS + tl.arange(0, BS)
    o_d = tl.arange(0, BD)
    m_s = o_s < seq_len
    m_d = o_d < D
    p_kv = ((bos + o_s) * HKV + i_hkv)[:, None] * D + o_d[None, :]  # [BS, BD]
    b_k = tl.load(k + p_kv, mask=m_s[:, None] & m_d[None, :], other=0.0)
    b_v = tl.load(v + p_kv, mask=m_s[:, None] & m_d[None, :], other=0.0)
    if UPCAST:
        b_k = b_k.to(tl.float32)
        b_v = b_v.to(tl.float32)
    b_dk = tl.zeros([BS, BD], dtype=tl.float32)
    b_dv = tl.zeros([BS, BD], dtype=tl.float32)

    # queries before the key block never see it (causal)
    lo = i_s * BS // BT * BT
    for i_g in range(G):
        i_hq = i_hkv * G + i_g
        for i_t in range(lo, hi, BT):
            o_t = i_t + tl.arange(0, BT)
            m_t = o_t < hi
            p_qo = ((bos + o_t) * HQ + i_hq)[:, None] * D + o_d[None, :]  # [BT, BD]
            p_row = (bos + o_t) * HQ + i_hq  # [BT]
            b_q = tl.load(q + p_qo, mask=m_t[:, None] & m_d[None, :], other=0.0)
            if UPCAST:
                b_q = b_q.to(tl.float32)
            b_do = tl.load(do + p_qo, mask=m_t[:, None] & m_d[None, :], other=0.0).to(tl.float32)
            b_g = tl.load(gate + p_row, mask=m_t, other=0.0).to(tl.float32)
            b_do = (b_do * (gate_bias + gate_sign * b_g)[:, None]).to(b_q.dtype)
            b_lse = tl.load(lse + p_row, mask=m_t, other=0.0)
            b_delta = tl.load(delta + p_row, mask=m_t, other=0.0)
            # transposed scores: keys along rows
            b_st = tl.dot(b_k, tl.trans(b_q), input_precision=DOT_PRECISION) * qk_scale  # [BS, BT]
            b_dist = o_t[None, :] - o_s[:, None]  # [BS, BT]
            b_vis = (b_dist >= 0) & (b_dist <= win) & m_t[None, :] & m_s[:, None]
            b_pt = tl.where(b_vis, tl.exp2(b_st - b_lse[None, :]), 0.0)
            b_dv += tl.dot(b_pt.to(b_do.dtype), b_do, input_precision=DOT_PRECISION)
            b_dpt = tl.dot(b_v, tl.trans(b_do), input_precision=DOT_PRECISION)  # [BS, BT]
            b_dst = b_pt * (b_dpt - b_delta[None, :])
            b_dk += tl.dot(b_dst.to(b_q.dtype), b_q, input_precision=DOT_PRECISION)
    tl.store(dk + p_kv, (b_dk * scale).to(dk.dtype.element_ty), mask=m_s[:, None] & m_d[None, :])
    tl.store(dv + p_kv, b_dv.to(dv.dtype.element_ty), mask=m_s[:, None] & m_d[None, :])


# decided once, by how the decorator above defined the kernels (TRITON_INTERPRET at import time)
INTERPRET = not isinstance(gated_attn_fwd_kernel.fn, triton.runtime.JITFunction)


# (BT, BS, num_warps) of each kernel by element type, padded head dim and GPU generation (8: sm_80,
# 9: sm_90 and later). Every entry compiles within the shared memory of its GPU and without register
# spills (the ahead-of-time tests check both); they are starting points, not timed. Half-precision
# entries run on tensor cores; float32 ones use exact FMA dots, whose register use varies more.
TILES = {
    ("half", 32, 8): {"fwd": (64, 64, 4), "pre": (64, 64, 4), "dq": (64, 32, 4), "dkv": (32, 32, 4)},
    ("half", 32, 9): {"fwd": (128, 32, 4), "pre": (64, 64, 4), "dq": (64, 32, 4), "dkv": (64, 64, 4)},
    ("half", 64, 8): {"fwd": (64, 64, 4), "pre": (64, 32, 4), "dq": (64, 32, 4), "dkv": (64, 32, 4)},
    ("half", 64, 9): {"fwd": (128, 32, 4), "pre": (64, 64, 4), "dq": (64, 32, 4), "dkv": (64, 64, 4)},
    ("half", 128, 8): {"fwd": (64, 64, 8), "pre": (64, 64, 8), "dq": (64, 32, 8), "dkv": (64, 64, 8)},
    ("half", 128, 9): {"fwd": (128, 32, 8), "pre": (64, 64, 8), "dq": (64, 32, 8), "dkv": (64, 64, 8)},
    ("half", 256, 8): {"fwd": (32, 32, 8), "pre": (32, 32, 8), "dq": (64, 32, 8), "dkv": (32, 32, 8)},
    ("half", 256, 9): {"fwd": (32, 32, 8), "pre": (32, 32, 8), "dq": (64, 32, 8), "dkv": (32, 32, 8)},
    ("fp32", 32, 8): {"fwd": (32, 32, 4), "pre": (64, 32, 8), "dq": (32, 32, 4), "dkv": (32, 32, 4)},
    ("fp32", 32, 9): {"fwd": (32, 32, 4), "pre": (32, 32, 4), "dq": (64, 32, 8), "dkv": (16, 32, 4)},
    ("fp32", 64, 8): {"fwd": (32, 32, 4), "pre": (64, 32, 8), "dq": (32, 32, 4), "dkv": (32, 32, 8)},
    ("fp32", 64, 9): {"fwd": (32, 32, 4), "pre": (64, 32, 8), "dq": (64, 32, 8), "dkv": (16, 32, 4)},
    ("fp32", 128, 8): {"fwd": (32, 32, 8), "pre": (16, 32, 4), "dq": (32, 32, 8), "dkv": (16, 16, 4)},
    ("fp32", 128, 9): {"fwd": (16, 16, 4), "pre": (16, 32, 4), "dq": (32, 32, 4), "dkv": (32, 32, 8)},
    ("fp32", 256, 8): {"fwd": (32, 32, 8), "pre": (32, 32, 8), "dq": (16, 32, 8), "dkv": (16, 32, 8)},
    ("fp32", 256, 9): {"fwd": (16, 16, 4), "pre": (32, 32, 8), "dq": (16, 32, 8), "dkv": (16, 16, 8)},
}


def block_config(kind: str, head_dim: int, dtype: torch.dtype, capability: tuple[int, int] | None) -> dict:
    """Tile sizes and launch options of one kernel (see `TILES`).

    Args:
        kind (str): `"fwd"` (forward), `"pre"` (backward pre-pass), `"dq"` or `"dkv"`.
        head_dim (int): `D`; the tiles are looked up for `max(32, next_power_of_2(D))`.
        dtype (torch.dtype): element type of q, k, v.
        capability (tuple[int, int], Optional): CUDA compute capability, `None` in the interpreter.

    Returns:
        dict: `BT` (query rows per tile), `BS` (key rows per tile), `num_warps`, `num_stages`.
    """
    if capability is None:
        # the interpreter pays per operation, not per element: few, large tiles are fastest
        return {"BT": 32, "BS": 32, "num_warps": 1, "num_stages": 1}
    padded = max(32, triton.next_power_of_2(head_dim))
    precision = "fp32" if dtype == torch.float32 else "half"
    block_t, block_s, num_warps = TILES[(precision, padded, min(capability[0], 9))][kind]
    return {"BT": block_t, "BS": block_s, "num_warps": num_warps, "num_stages": 2}


def prepare_block_indices(cu_seqlens: torch.Tensor, block: int) -> torch.Tensor:
    """`[NB, 2]` int32 pairs (document, block inside the document) covering every packed token."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    num_blocks = (lengths + block - 1) // block  # [N]
    documents = torch.repeat_interleave(torch.arange(len(lengths), device=cu_seqlens.device), num_blocks)
    first_block = torch.cumsum(num_blocks, 0) - num_blocks
    blocks = torch.arange(len(documents), device=cu_seqlens.device) - first_block[documents]
    return torch.stack([documents, blocks], 1).to(torch.int32).contiguous()


def _launch_setup(q: torch.Tensor, kind: str) -> dict:
    capability = None if INTERPRET else torch.cuda.get_device_capability(q.device)
    config = block_config(kind, q.shape[-1], q.dtype, capability)
    config["BD"] = max(16, triton.next_power_of_2(q.shape[-1]))
    config["UPCAST"] = INTERPRET and q.dtype != torch.float32
    # full fp32 products for fp32 inputs; tensor cores for 16-bit inputs
    config["DOT_PRECISION"] = "ieee" if q.dtype == torch.float32 else "tf32"
    return config


def _grid_blocks(cu_seqlens: torch.Tensor | None, batch: int, seq_len: int, block: int):
    """(number of blocks along the sequence axis, block index table or None)."""
    if cu_seqlens is None:
        return triton.cdiv(seq_len, block), None
    indices = prepare_block_indices(cu_seqlens, block)
    return indices.shape[0], indices


def gated_attn_fwd(
    q: torch.Tensor,
    k0: torch.Tensor,
    v0: torch.Tensor,
    kr: torch.Tensor,
    vr: torch.Tensor,
    gate: torch.Tensor,
    *,
    scale: float,
    window: int,
    cu_seqlens: torch.Tensor | None,
    store_global: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Launch the forward kernel on contiguous inputs.

    Returns:
        tuple: `o [B, T, HQ, D]`; the global branch output `og [B, T, HQ, D]` (None unless
        `store_global`); the log2-domain logsumexps `lse_g`, `lse_l` `[B, T, HQ]` float32.
    """
    batch, seq_len, num_heads, head_dim = q.shape
    config = _launch_setup(q, "fwd")
    num_blocks, block_indices = _grid_blocks(cu_seqlens, batch, seq_len, config["BT"])
    o = torch.empty_like(q)
    og = torch.empty_like(q) if store_global else None
    lse_g = torch.empty(batch, seq_len, num_heads, dtype=torch.float32, device=q.device)
    lse_l = torch.empty_like(lse_g)
    gated_attn_fwd_kernel[(num_blocks, batch * num_heads)](
        q=q,
        k0=k0,
        v0=v0,
        kr=kr,
        vr=vr,
        gate=gate,
        o=o,
        og=og,
        lse_g=lse_g,
        lse_l=lse_l,
        cu_seqlens=cu_seqlens,
        block_indices=block_indices,
        scale=scale,
        window=window,
        T=seq_len,
        HQ=num_heads,
        HKV=k0.shape[2],
        D=head_dim,
        **config,
    )
    return o, og, lse_g, lse_l


def gated_attn_bwd(
    q: torch.Tensor,
    k0: torch.Tensor,
    v0: torch.Tensor,
    kr: torch.Tensor,
    vr: torch.Tensor,
    gate: torch.Tensor,
    og: torch.Tensor,
    lse_g: torch.Tensor,
    lse_l: torch.Tensor,
    do: torch.Tensor,
    *,
    scale: float,
    window: int,
    cu_seqlens: torch.Tensor | None,
) -> tuple[torch.Tensor, ...]:
    """Launch the three backward kernels; returns `dq, dk0, dv0, dkr, dvr, dg` in the inputs' dtypes."""
    batch, seq_len, num_heads, head_dim = q.shape
    num_kv_heads = k0.shape[2]
    shapes = {"T": seq_len, "HQ": num_heads, "HKV": num_kv_heads, "D": head_dim}
    common = {"cu_seqlens": cu_seqlens, "scale": scale, "window": window}

    config = _launch_setup(q, "pre")
    num_blocks, block_indices = _grid_blocks(cu_seqlens, batch, seq_len, config["BT"])
    delta_g = torch.empty_like(lse_g)
    delta_l = torch.empty_like(lse_g)
    dg = torch.empty_like(gate)
    gated_attn_bwd_kernel_preprocess[(num_blocks, batch * num_heads)](
        q=q,
        kr=kr,
        vr=vr,
        gate=gate,
        og=og,
        do=do,
        lse_l=lse_l,
        delta_g=delta_g,
        delta_l=delta_l,
        dg=dg,
        block_indices=block_indices,
        **common,
        **shapes,
        **config,
    )

    config = _launch_setup(q, "dq")
    num_blocks, block_indices = _grid_blocks(cu_seqlens, batch, seq_len, config["BT"])
    dq = torch.empty_like(q)
    gated_attn_bwd_kernel_dq[(num_blocks, batch * num_heads)](
        q=q,
        k0=k0,
        v0=v0,
        kr=kr,
        vr=vr,
        gate=gate,
        do=do,
        lse_g=lse_g,
        lse_l=lse_l,
        delta_g=delta_g,
        delta_l=delta_l,
        dq=dq,
        block_indices=block_indices,
        **common,
        **shapes,
        **config,
    )

    config = _launch_setup(q, "dkv")
    num_blocks, block_indices = _grid_blocks(cu_seqlens, batch, seq_len, config["BS"])
    dk0, dv0 = torch.empty_like(k0), torch.empty_like(v0)
    dkr, dvr = torch.empty_like(kr), torch.empty_like(vr)
    gated_attn_bwd_kernel_dkv[(num_blocks, batch * num_kv_heads, 2)](
        q=q,
        k0=k0,
        v0=v0,
        kr=kr,
        vr=vr,
        gate=gate,
        do=do,
        lse_g=lse_g,
        lse_l=lse_l,
        delta_g=delta_g,
        delta_l=delta_l,
        dk0=dk0,
        dv0=dv0,
        dkr=dkr,
        dvr=dvr,
        block_indices=block_indices,
        **common,
        **shapes,
        **config,
    )
    return dq, dk0, dv0, dkr, dvr, dg


class GatedAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: the forward keeps the global branch output and both logsumexps."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, q, k0, v0, kr, vr, gate, window: int, scale: float, cu_seqlens, needs_grad: bool):
        q, k0, v0, kr, vr, gate = (x.contiguous() for x in (q, k0, v0, kr, vr, gate))
        # ctx.needs_input_grad is also set under torch.no_grad: the caller decides
        store_global = needs_grad and any(ctx.needs_input_grad[:6])
        o, og, lse_g, lse_l = gated_attn_fwd(
            q, k0, v0, kr, vr, gate, scale=scale, window=window, cu_seqlens=cu_seqlens, store_global=store_global
        )
        ctx.save_for_backward(q, k0, v0, kr, vr, gate, og, lse_g, lse_l, cu_seqlens)
        ctx.window, ctx.scale = window, scale
        return o

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, do):
        q, k0, v0, kr, vr, gate, og, lse_g, lse_l, cu_seqlens = ctx.saved_tensors
        grads = gated_attn_bwd(
            q,
            k0,
            v0,
            kr,
            vr,
            gate,
            og,
            lse_g,
            lse_l,
            do.contiguous(),
            scale=ctx.scale,
            window=ctx.window,
            cu_seqlens=cu_seqlens,
        )
        return (*grads, None, None, None, None)


def _validate(q, k0, v0, kr, vr, gate, window, scale, cu_seqlens, key_padding_mask) -> None:
    named = {"q": q, "k0": k0, "v0": v0, "kr": kr, "vr": vr, "gate": gate}
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if q.dim() != 4:
        raise ValueError(f"q must be [B, T, HQ, D], got shape {tuple(q.shape)}")
    batch, seq_len, num_heads, head_dim = q.shape
    if k0.dim() != 4 or k0.shape[:2] != q.shape[:2] or k0.shape[3] != head_dim:
        raise ValueError(f"k0 must be [B, T, HKV, D] = [{batch}, {seq_len}, HKV, {head_dim}], got {tuple(k0.shape)}")
    for name in ("v0", "kr", "vr"):
        if named[name].shape != k0.shape:
            raise ValueError(f"{name} must have the shape of k0 {tuple(k0.shape)}, got {tuple(named[name].shape)}")
    if gate.shape != q.shape[:3]:
        raise ValueError(f"gate must be [B, T, HQ] = {tuple(q.shape[:3])}, got {tuple(gate.shape)}")
    num_kv_heads = k0.shape[2]
    if num_kv_heads == 0 or num_heads % num_kv_heads:
        raise ValueError(f"query heads ({num_heads}) must be a multiple of key/value heads ({num_kv_heads})")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim must be in [1, {MAX_HEAD_DIM}], got {head_dim}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"q must be float32, bfloat16 or float16, got {q.dtype}")
    for name in ("k0", "v0", "kr", "vr"):
        if named[name].dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {named[name].dtype}")
    if gate.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"gate must be float32, bfloat16 or float16, got {gate.dtype}")
    for name, x in named.items():
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device}, q on {q.device}: all inputs must share a device")
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an int, got {type(window).__name__}")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    if cu_seqlens is not None:
        if key_padding_mask is not None:
            raise ValueError("pass either cu_seqlens (packed input) or key_padding_mask (padded input), not both")
        if batch != 1:
            raise ValueError(f"packed input (cu_seqlens) needs batch size 1, got {batch}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.is_floating_point():
            raise ValueError(
                f"cu_seqlens must be a 1-D integer tensor [N + 1], got {cu_seqlens.dtype} {tuple(cu_seqlens.shape)}"
            )
        first, last = int(cu_seqlens[0]), int(cu_seqlens[-1])
        if first != 0 or last != seq_len or bool((cu_seqlens[1:] < cu_seqlens[:-1]).any()):
            raise ValueError(f"cu_seqlens must rise from 0 to T = {seq_len}, got {cu_seqlens.tolist()}")
    if key_padding_mask is not None and key_padding_mask.shape != q.shape[:2]:
        raise ValueError(
            f"key_padding_mask must be [B, T] = {tuple(q.shape[:2])}, got {tuple(key_padding_mask.shape)}"
        )
    if q.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(
            "the Triton kernels need a CUDA device; to run them on CPU set TRITON_INTERPRET=1 "
            "before loopcoder.kernels.gated_attention is first used"
        )


def _unpad(key_padding_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, T]` mask -> (flat indices of the kept tokens `[N]`, cu_seqlens `[B + 1]` int32)."""
    mask = key_padding_mask.bool()
    # the window counts positions, so each row's tokens must be one run (left or right padding)
    starts = mask[:, 1:] & ~mask[:, :-1]
    runs = starts.sum(1) + mask[:, 0].long()
    if bool((runs > 1).any()):
        raise ValueError("key_padding_mask must keep one contiguous run of tokens per row (left or right padding)")
    lengths = mask.sum(1, dtype=torch.int32)
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
    return mask.flatten().nonzero().squeeze(1), cu_seqlens


def gated_attention(
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
    """Fused gated global/local attention (Triton), differentiable in every tensor input.

    `O = g * softmax(Q K0^T * scale) V0 + (1 - g) * softmax_window(Q Kr^T * scale) Vr`, with the
    semantics of `gated_attention_reference`.

    Args:
        q (torch.Tensor): queries of the current loop, post-RoPE, `[B, T, HQ, D]`.
        k0, v0 (torch.Tensor): loop 0's keys (post-RoPE) and values of the same layer, `[B, T, HKV, D]`.
        kr, vr (torch.Tensor): the current loop's keys (post-RoPE) and values, `[B, T, HKV, D]`.
            `HQ` must be a multiple of `HKV`; query head h reads KV head `h // (HQ // HKV)`.
            float32, bfloat16 or float16, all five the same dtype; `D` up to 256.
        gate (torch.Tensor): share of the global branch, in (0, 1), `[B, T, HQ]`; any of the
            three dtypes (its gradient comes back in it).
        window (int): left extent of the local branch: key j is visible to query t iff
            `t - window <= j <= t` (`window + 1` keys including t). Must be >= 0.
        scale (float, Optional): score scale. Default: `D ** -0.5`.
        cu_seqlens (torch.Tensor, Optional): `[N + 1]` cumulative lengths of N documents packed
            into one row (then B must be 1); neither branch attends across documents.
        key_padding_mask (torch.Tensor, Optional): `[B, T]`, False at padded positions; each row
            must keep one contiguous run (left or right padding). The batch is packed into one
            row, run with cu_seqlens and scattered back; rows of padded queries are zeros.

    Returns:
        torch.Tensor: `[B, T, HQ, D]` in q's dtype.
    """
    _validate(q, k0, v0, kr, vr, gate, window, scale, cu_seqlens, key_padding_mask)
    batch, seq_len, num_heads, head_dim = q.shape
    scale = head_dim**-0.5 if scale is None else float(scale)
    if q.numel() == 0:
        return gated_attention_reference(q, k0, v0, kr, vr, gate, window=window, scale=scale)
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
    inputs = (q, k0, v0, kr, vr, gate)
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in inputs)
    if key_padding_mask is None:
        return GatedAttentionFunction.apply(*inputs, window, scale, cu_seqlens, needs_grad)

    indices, cu_seqlens = _unpad(key_padding_mask.to(q.device))

    def pack(x: torch.Tensor) -> torch.Tensor:
        # [B, T, ...] -> [1, N, ...] keeping only the tokens of the mask
        return x.reshape(batch * seq_len, *x.shape[2:]).index_select(0, indices)[None]

    packed = GatedAttentionFunction.apply(*(pack(x) for x in inputs), window, scale, cu_seqlens, needs_grad)
    out = q.new_zeros(batch * seq_len, num_heads, head_dim).index_copy(0, indices, packed[0])
    return out.view(batch, seq_len, num_heads, head_dim)


# the jitted kernels by name, for ahead-of-time compilation
KERNELS = {
    "gated_attn_fwd_kernel": gated_attn_fwd_kernel,
    "gated_attn_bwd_kernel_preprocess": gated_attn_bwd_kernel_preprocess,
    "gated_attn_bwd_kernel_dq": gated_attn_bwd_kernel_dq,
    "gated_attn_bwd_kernel_dkv": gated_attn_bwd_kernel_dkv,
}
