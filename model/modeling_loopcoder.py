"""LoopCoder: looped Llama-style decoders (LoopCoder-V2 "PLT" and IQuest-Coder-V1 "Loop").

The `L` physical layers run `R = config.num_loops` times with shared weights. Loop 0 is an
ordinary causal pass; in every later loop each layer's attention is a per-head sigmoid-gated blend
of a global branch (the loop's queries over loop 0's K/V of the same layer) and a local branch (the
loop's own K/V inside a short causal window). V2 feeds loop r at token t with
`a * E[t] + b * norm(H_{r-1}[t-1])` (the cross-loop position offset), V1 with `H_{r-1}[t]`.
docs/model.md explains the layout, the cache and the two decode schedules.

Three execution paths share the layers:

* full sequence (`_forward_full`): training and prefill, loops one after the other over all
  tokens, looped attention from `LOOPED_ATTENTION_FUNCTIONS[config._attn_implementation]`;
  packed documents (position ids that restart, or `cu_seqlens`) and padding are masked;
* cached steps (`_forward_cached`): decoding and chunked prefill over a `LoopCoderCache`, either
  sequential (loop after loop) or cross-loop parallel (all loops of a token through each layer in
  one batched step; for chunks, a wavefront where loop r processes chunk c - r).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel

from loopcoder.model.attention import cached_attention, get_looped_attention, per_document
from loopcoder.model.cache import LoopCoderCache
from loopcoder.model.checkpoint import GATE_KEY_ALIASES
from loopcoder.model.configuration_loopcoder import IQuestLoopCoderConfig, IQuestPLTCoderConfig, LoopCoderConfig


class LoopCoderRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class LoopCoderRotaryEmbedding(nn.Module):
    def __init__(self, config: LoopCoderConfig):
        super().__init__()
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.config = config
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init_fn: Callable = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: LoopCoderConfig, **kwargs) -> tuple[torch.Tensor, float]:
        base = config.rope_parameters["rope_theta"]
        dim = config.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # force float32 for the angles
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim: int = 2):
    """Rotate-half RoPE on `[B, T, H, D]` tensors (`unsqueeze_dim=2`); cos/sin are `[B, T, D]`."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class LoopCoderMLP(nn.Module):
    def __init__(self, config: LoopCoderConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class LoopCoderGate(nn.Module):
    """Share of the global branch, one sigmoid per (token, query head).

    * "hidden" (released V2, `plt_gate`): `sigmoid(W RMSNorm(x; gate_norm) + b)`, `W [H, d]`, where `x` is
      the layer's residual input (before `input_layernorm`);
    * "query" (V1 `gate_projections.{i}`, or V2 with `plt_gate_use_hidden_states: false`):
      `sigmoid(<q_h, w_h> + b_h)` on the post-RoPE query, `w [H, D]`.
    """

    def __init__(self, config: LoopCoderConfig):
        super().__init__()
        self.gate_input = config.gate_input
        in_features = config.hidden_size if self.gate_input == "hidden" else config.head_dim
        self.weight = nn.Parameter(torch.zeros(config.num_attention_heads, in_features))
        self.bias = nn.Parameter(torch.zeros(config.num_attention_heads))
        if self.gate_input == "hidden":
            self.gate_norm = LoopCoderRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """hidden_states `[B, T, d]`, query `[B, T, H, D]` -> gate `[B, T, H]` in (0, 1)."""
        if self.gate_input == "hidden":
            logits = nn.functional.linear(self.gate_norm(hidden_states), self.weight, self.bias)
        else:
            logits = torch.einsum("bthd,hd->bth", query, self.weight.to(query.dtype)) + self.bias.to(query.dtype)
        return torch.sigmoid(logits)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain causal attention of loop 0: `[B, H, T, D]` inputs, additive mask, `[B, T, H, D]` output.

    Without a mask the attention is causal, as SDPA's `is_causal`.
    """
    group = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    if attention_mask is None and query.shape[2] > 1:
        attention_mask = _additive(_causal_visible(query.shape[2], query.device), query.dtype)
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


@dataclass
class SequenceLayout:
    """Masking facts of a full-sequence forward, computed once and shared by every layer and loop.

    Attributes:
        loop0_mask: additive `[B, 1, T, T]` mask for loop 0 of a padded batch, or None when plain causal
            attention is exact or the documents are packed.
        cu_seqlens: `[N + 1]` document boundaries of the flattened batch when documents are packed, else None.
        key_padding_mask: `[B, T]` False at padding, or None (always None when flattened).
        flatten: attend on the batch flattened into one row of documents (packed documents).
        history_reset: `[B, T]` True where the cross-loop history must be zero (a document's first token).
    """

    loop0_mask: torch.Tensor | None
    cu_seqlens: torch.Tensor | None
    key_padding_mask: torch.Tensor | None
    flatten: bool
    history_reset: torch.Tensor


@dataclass
class StepRow:
    """One (loop, chunk) row of a cached step: `hidden [B, n, d]` at sequence positions `start ... start + n - 1`.

    `global_mask` / `local_mask` (boolean `[B or 1, 1, n, keys]`) are filled once per step by
    `LoopCoderModel._step_masks`; None means every key is visible.
    """

    loop: int
    hidden: torch.Tensor
    start: int
    position_ids: torch.Tensor
    global_mask: torch.Tensor | None = None
    local_mask: torch.Tensor | None = None


class LoopCoderAttention(nn.Module):
    """GQA attention shared by all loops; loops >= 1 blend a global and a local branch with a gate."""

    def __init__(self, config: LoopCoderConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=config.attention_bias)
        self.k_proj = nn.Linear(
            config.hidden_size, self.num_key_value_heads * self.head_dim, bias=config.attention_bias
        )
        self.v_proj = nn.Linear(
            config.hidden_size, self.num_key_value_heads * self.head_dim, bias=config.attention_bias
        )
        output_bias = config.attention_bias if config.attention_output_bias is None else config.attention_output_bias
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=output_bias)
        if config.num_loops > 1 and not config.gate_in_model:
            self.plt_gate = LoopCoderGate(config)
        self.recorded_gates: list[torch.Tensor] | None = None

    def project(self, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """`[B, T, d]` -> post-RoPE q `[B, T, H, D]`, k, v `[B, T, HKV, D]`."""
        batch, seq_len, _ = normed.shape
        q = self.q_proj(normed).view(batch, seq_len, self.num_heads, self.head_dim)
        k = self.k_proj(normed).view(batch, seq_len, self.num_key_value_heads, self.head_dim)
        v = self.v_proj(normed).view(batch, seq_len, self.num_key_value_heads, self.head_dim)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v

    def gate(self, gate_module: nn.Module, residual: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        g = gate_module(residual, q)
        if self.recorded_gates is not None:
            self.recorded_gates.append(g.detach().float())
        return g

    def causal_attention(self, q, k, v, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Loop 0's attention through transformers' `ALL_ATTENTION_FUNCTIONS`: `[B, T, H(KV), D]` -> `[B, T, H, D]`.

        Causal without `mask` (SDPA's `is_causal`, or `eager_attention_forward`'s own causal mask).
        """
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, _ = attention(
            self,
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
        )
        return out

    def forward(
        self,
        residual: torch.Tensor,
        normed: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key0: torch.Tensor | None,
        value0: torch.Tensor | None,
        loop: int,
        layout: SequenceLayout,
        gate_module: nn.Module | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full-sequence attention; returns (output `[B, T, d]`, this loop's k, v `[B, T, HKV, D]`)."""
        batch, seq_len, _ = normed.shape
        q, k, v = self.project(normed, cos, sin)
        tensors = (q, k, v) if loop == 0 else (q, key0, value0, k, v, self.gate(gate_module, residual, q))
        if layout.flatten:
            # packed documents: one row of documents (rows never share one), each attended alone
            tensors = tuple(t.reshape(1, batch * seq_len, *t.shape[2:]) for t in tensors)
        if loop == 0:
            if layout.flatten:
                out = per_document(self.causal_attention, layout.cu_seqlens, *tensors)
            else:
                out = self.causal_attention(*tensors, mask=layout.loop0_mask)
        else:
            out = get_looped_attention(self.config._attn_implementation)(
                *tensors,
                window=self.config.loop_window,
                scale=self.scaling,
                cu_seqlens=layout.cu_seqlens,
                key_padding_mask=layout.key_padding_mask,
            )
        out = out.reshape(batch, seq_len, -1).contiguous()
        return self.o_proj(out), k, v

    def forward_step(
        self,
        residual: torch.Tensor,
        normed: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        rows: list[StepRow],
        cache: LoopCoderCache,
        slot_valid: torch.Tensor | None,
        gate_module: nn.Module | None,
    ) -> torch.Tensor:
        """Cached attention of several rows concatenated on the token axis (`[B, sum n, d]`).

        Rows are ordered by loop, so loop 0's K/V of this layer are in the cache before any later
        loop's global branch reads them.
        """
        batch = normed.shape[0]
        q, k, v = self.project(normed, cos, sin)
        g = self.gate(gate_module, residual, q) if gate_module is not None and any(r.loop for r in rows) else None
        if all(row.hidden.shape[1] == 1 and row.global_mask is None and row.local_mask is None for row in rows):
            out = self._single_token_step(q, k, v, g, rows, cache)
            return self.o_proj(out.reshape(batch, len(rows), -1))
        outputs, offset = [], 0
        for row in rows:
            n = row.hidden.shape[1]
            piece = slice(offset, offset + n)
            offset += n
            q_i = q[:, piece].transpose(1, 2)
            k_i, v_i = k[:, piece].transpose(1, 2), v[:, piece].transpose(1, 2)
            if row.loop == 0:
                keys0, values0 = cache.update_loop0(k_i, v_i, self.layer_idx)
            else:
                keys0, values0 = cache.loop0(self.layer_idx)
            out = cached_attention(q_i, keys0, values0, row.global_mask, self.scaling)
            if row.loop > 0:
                keys, values, _ = cache.local_with(k_i, v_i, row.loop, self.layer_idx)
                local = cached_attention(q_i, keys, values, row.local_mask, self.scaling)
                g_i = g[:, piece].transpose(1, 2)[..., None].to(out.dtype)  # [B, H, n, 1]
                out = g_i * out + (1 - g_i) * local
            outputs.append(out.transpose(1, 2).reshape(batch, n, -1))
        return self.o_proj(torch.cat(outputs, dim=1))

    def _single_token_step(self, q, k, v, g, rows, cache) -> torch.Tensor:
        """All rows are the same new token in different loops, nothing masked: one attention call per branch.

        q `[B, R, H, D]` (R rows on the token axis) -> `[B, R, H, D]`.
        """
        q_ = q.transpose(1, 2)  # [B, H, R, D]
        k_, v_ = k.transpose(1, 2), v.transpose(1, 2)
        if rows[0].loop == 0:
            keys0, values0 = cache.update_loop0(k_[:, :, :1], v_[:, :, :1], self.layer_idx)
        else:
            keys0, values0 = cache.loop0(self.layer_idx)
        # loop 0's causal attention and every later loop's global branch read the same keys
        out = cached_attention(q_, keys0, values0, None, self.scaling)  # [B, H, R, D]
        later = [i for i, row in enumerate(rows) if row.loop > 0]
        if later:
            # the window: the new key and at most W earlier ones
            size = self.config.local_cache_size
            buffers = []
            for i in later:
                keys, values, _ = cache.local_with(
                    k_[:, :, i : i + 1], v_[:, :, i : i + 1], rows[i].loop, self.layer_idx
                )
                buffers.append((keys[..., -size:, :], values[..., -size:, :]))
            q_later = q_[:, :, later]  # [B, H, R', D]
            if len({b[0].shape[-2] for b in buffers}) == 1:
                # equal buffer lengths: the loops become a batch dimension
                keys = torch.stack([b[0] for b in buffers], dim=1).flatten(0, 1)  # [B * R', HKV, S, D]
                values = torch.stack([b[1] for b in buffers], dim=1).flatten(0, 1)
                queries = q_later.permute(0, 2, 1, 3).flatten(0, 1)[:, :, None]  # [B * R', H, 1, D]
                local = cached_attention(queries, keys, values, None, self.scaling)
                local = local.view(q.shape[0], len(later), self.num_heads, -1).transpose(1, 2)  # [B, H, R', D]
            else:
                local = torch.cat(
                    [
                        cached_attention(q_later[:, :, j : j + 1], b[0], b[1], None, self.scaling)
                        for j, b in enumerate(buffers)
                    ],
                    dim=2,
                )
            gate = g[:, later].transpose(1, 2)[..., None].to(out.dtype)  # [B, H, R', 1]
            blended = gate * out[:, :, later] + (1 - gate) * local
            out = torch.cat([out[:, :, : later[0]], blended], dim=2) if later[0] > 0 else blended
        return out.transpose(1, 2)


def _causal_visible(seq_len: int, device: torch.device) -> torch.Tensor:
    positions = torch.arange(seq_len, device=device)
    return positions[:, None] >= positions[None, :]


def _additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(~visible, torch.finfo(dtype).min)


def _slot_visible(
    query_slots: torch.Tensor, key_slots: torch.Tensor, window: int | None, slot_valid: torch.Tensor | None
) -> torch.Tensor:
    """`[B or 1, 1, n, K]`: causal (and windowed) by sequence slot, padded keys hidden, own slot always kept."""
    distance = query_slots[:, None] - key_slots[None, :]
    visible = distance >= 0
    if window is not None:
        visible = visible & (distance <= window)
    visible = visible[None, None]
    if slot_valid is not None:
        visible = visible & slot_valid[:, key_slots][:, None, None, :]
    return visible | (distance == 0)[None, None]


class LoopCoderDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: LoopCoderConfig, layer_idx: int):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.self_attn = LoopCoderAttention(config=config, layer_idx=layer_idx)
        self.mlp = LoopCoderMLP(config)
        self.input_layernorm = LoopCoderRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LoopCoderRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key0: torch.Tensor | None = None,
        value0: torch.Tensor | None = None,
        *,
        loop: int,
        layout: SequenceLayout,
        gate_module: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One layer over a full sequence in loop `loop`; returns (hidden, k, v) of this loop."""
        residual = hidden_states
        attn_out, key, value = self.self_attn(
            residual, self.input_layernorm(hidden_states), cos, sin, key0, value0, loop, layout, gate_module
        )
        hidden_states = residual + attn_out
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, key, value

    def forward_step(self, hidden_states, cos, sin, rows, cache, slot_valid, gate_module):
        residual = hidden_states
        attn_out = self.self_attn.forward_step(
            residual, self.input_layernorm(hidden_states), cos, sin, rows, cache, slot_valid, gate_module
        )
        hidden_states = residual + attn_out
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `factor` in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    return x if factor == 1.0 else _ScaleGrad.apply(x, factor)


class LoopCoderPreTrainedModel(PreTrainedModel):
    config: LoopCoderConfig
    config_class = LoopCoderConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LoopCoderDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = False
    _supports_sdpa = True
    _supports_flex_attn = False
    _can_compile_fullgraph = False
    _supports_attention_backend = False
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]

    def post_init(self) -> None:
        if self.config.num_loops == 1:
            # one loop has no gates: a looped checkpoint loaded as a dense model leaves them out on purpose
            gates = [r"\.plt_gate\.", r"\.loop_gate_proj\.", r"gate_projections?\."]
            self._keys_to_ignore_on_load_unexpected = [*type(self)._keys_to_ignore_on_load_unexpected, *gates]
        super().post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LoopCoderGate):
            # small weights, bias at gate_bias_init: every loop starts global-dominated (sigmoid(2) = 0.88)
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            init.constant_(module.bias, self.config.gate_bias_init)
        elif isinstance(module, LoopCoderRotaryEmbedding):
            inv_freq, _ = module.compute_default_rope_parameters(module.config)
            if module.rope_type == "default":
                init.copy_(module.inv_freq, inv_freq)
                init.copy_(module.original_inv_freq, inv_freq)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, also accepting the alternative gate spellings of released files."""
        kwargs.setdefault("key_mapping", GATE_KEY_ALIASES)
        loaded = super().from_pretrained(*args, **kwargs)
        # save in the released spelling, not in the one we happened to read
        (loaded[0] if isinstance(loaded, tuple) else loaded)._weight_conversions = None  # (model, info) on request
        return loaded


@dataclass
class LoopCoderModelOutput(BaseModelOutputWithPast):
    """`BaseModelOutputWithPast` plus, with `output_loop_states=True`, each loop's raw output `[B, T, d]`."""

    loop_hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class LoopCoderCausalLMOutput(CausalLMOutputWithPast):
    loop_hidden_states: tuple[torch.Tensor, ...] | None = None


class LoopCoderModel(LoopCoderPreTrainedModel):
    def __init__(self, config: LoopCoderConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [LoopCoderDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        if config.num_loops > 1 and config.gate_in_model:
            self.gate_projections = nn.ModuleList([LoopCoderGate(config) for _ in range(config.num_hidden_layers)])
        self.norm = LoopCoderRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LoopCoderRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value

    def loop_gate(self, layer_idx: int) -> nn.Module | None:
        """The gate of a physical layer (shared by loops >= 1), wherever the checkpoint layout keeps it."""
        if self.config.num_loops == 1:
            return None
        if self.config.gate_in_model:
            return self.gate_projections[layer_idx]
        return self.layers[layer_idx].self_attn.plt_gate

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cu_seqlens: torch.Tensor | None = None,
        decode_schedule: str | None = None,
        output_loop_states: bool = False,
        **kwargs,
    ) -> LoopCoderModelOutput:
        r"""
        Args:
            attention_mask: `[B, past + T]` 1 = token, 0 = padding (2D only).
            position_ids: `[B, T]`; within a row, a position that does not follow its predecessor by one
                starts a new packed document (no attention, no cross-loop history across it).
            cu_seqlens: `[N + 1]` cumulative document lengths of a packed row (B = 1), instead of position ids.
            decode_schedule: "parallel" or "sequential" for cached steps; default `config.decode_schedule`.
            output_loop_states: also return every loop's raw output (`loop_hidden_states`).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"attention_mask must be 2D [batch, length], got shape {tuple(attention_mask.shape)}")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if past_key_values is not None and not isinstance(past_key_values, LoopCoderCache):
            if past_key_values.get_seq_length() > 0:
                raise TypeError(
                    f"LoopCoderModel needs a LoopCoderCache, got a filled {type(past_key_values).__name__}"
                )
            past_key_values = None
        if use_cache and past_key_values is None:
            past_key_values = LoopCoderCache(self.config)
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        batch, seq_len = inputs_embeds.shape[:2]

        if position_ids is None:
            if cu_seqlens is not None:
                starts = torch.repeat_interleave(cu_seqlens[:-1], cu_seqlens[1:] - cu_seqlens[:-1])
                position_ids = (torch.arange(seq_len, device=inputs_embeds.device) - starts)[None]
            else:
                position_ids = torch.arange(past, past + seq_len, device=inputs_embeds.device)[None]
        position_ids = position_ids.expand(batch, -1)

        if past == 0:
            hidden, loop_states = self._forward_full(
                inputs_embeds, attention_mask, position_ids, cu_seqlens, past_key_values, output_loop_states
            )
        else:
            if cu_seqlens is not None:
                raise ValueError("cu_seqlens (packed documents) cannot be combined with a filled cache")
            hidden, loop_states = self._forward_cached(
                inputs_embeds, attention_mask, position_ids, past_key_values, decode_schedule
            )
        return LoopCoderModelOutput(
            last_hidden_state=hidden,
            past_key_values=past_key_values if use_cache else None,
            loop_hidden_states=loop_states if output_loop_states else None,
        )

    # -- helpers shared by both paths ------------------------------------------------------
    def _history(self, loop_output: torch.Tensor) -> torch.Tensor:
        """What loop r + 1 reads of loop r: normed (V2 with per-loop norm) or raw, with the BPTT knobs applied."""
        history = self.norm(loop_output) if self.config.normalize_per_loop else loop_output
        if self.config.loop_detach:
            return history.detach()
        return scale_grad(history, self.config.loop_grad_scale)

    def _loop_input(self, embeds: torch.Tensor, shifted_history: torch.Tensor) -> torch.Tensor:
        if not self.config.clp_shift:
            return shifted_history
        return self.config.loop_emb_scale * embeds + self.config.loop_hidden_scale * shifted_history

    # -- full sequence -----------------------------------------------------------------------
    def _layout(self, attention_mask, position_ids, cu_seqlens, dtype) -> SequenceLayout:
        batch, seq_len = position_ids.shape
        device = position_ids.device
        if cu_seqlens is not None:
            if batch != 1:
                raise ValueError(f"cu_seqlens needs batch size 1, got {batch}")
            new_doc = torch.zeros(1, seq_len, dtype=torch.bool, device=device)
            new_doc[0, cu_seqlens[:-1].clamp(max=seq_len - 1)] = True
        else:
            new_doc = torch.ones(batch, seq_len, dtype=torch.bool, device=device)
            new_doc[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
        new_doc[:, 0] = True
        valid = None if attention_mask is None else attention_mask.bool()
        history_reset = new_doc.clone()
        if valid is not None:
            history_reset[:, 1:] |= ~valid[:, :-1]
            if bool(valid.all()):
                valid = None
        starts_in_valid = new_doc if valid is None else new_doc & valid
        packed = bool((starts_in_valid.sum(-1) > 1).any())

        if packed:
            # one row of documents; padded tokens become one-token documents, so no padding mask is needed
            doc_starts = new_doc if valid is None else new_doc | ~valid | history_reset
            flat_starts = doc_starts.reshape(-1).nonzero().flatten()
            cu = torch.cat([flat_starts, flat_starts.new_tensor([batch * seq_len])]).to(torch.int32)
            return SequenceLayout(None, cu, None, True, history_reset)
        loop0_mask = None
        if valid is not None:
            visible = _causal_visible(seq_len, device)[None] & valid[:, None, :]
            visible = visible | torch.eye(seq_len, dtype=torch.bool, device=device)[None]
            loop0_mask = _additive(visible[:, None], dtype)
        return SequenceLayout(loop0_mask, None, valid, False, history_reset)

    def _forward_full(self, embeds, attention_mask, position_ids, cu_seqlens, cache, output_loop_states):
        config = self.config
        layout = self._layout(attention_mask, position_ids, cu_seqlens, embeds.dtype)
        cos, sin = self.rotary_emb(embeds, position_ids)
        keys0, values0 = [None] * config.num_hidden_layers, [None] * config.num_hidden_layers
        fill_cache = cache is not None and not layout.flatten
        loop_states, hidden = [], embeds
        for loop in range(config.num_loops):
            if loop > 0:
                history = self._history(hidden)
                if config.clp_shift:
                    history = torch.cat([torch.zeros_like(history[:, :1]), history[:, :-1]], dim=1)
                    history = torch.where(layout.history_reset[..., None], torch.zeros_like(history), history)
                hidden = self._loop_input(embeds, history)
            for layer_idx, layer in enumerate(self.layers):
                hidden, key, value = layer(
                    hidden,
                    cos,
                    sin,
                    keys0[layer_idx],
                    values0[layer_idx],
                    loop=loop,
                    layout=layout,
                    gate_module=self.loop_gate(layer_idx),
                )
                if loop == 0:
                    keys0[layer_idx], values0[layer_idx] = key, value
                if fill_cache:
                    key, value = key.transpose(1, 2), value.transpose(1, 2)
                    if loop == 0:
                        cache.update_loop0(key, value, layer_idx)
                    else:
                        cache.local_with(key, value, loop, layer_idx)
            loop_states.append(hidden)
            if fill_cache:
                cache.advance(loop, hidden.shape[1])
                if config.clp_shift:
                    # the carries of every position only when a rollback may need them
                    kept = hidden if cache.record_past else hidden[:, -1:]
                    cache.set_carry(loop, self._history(kept).detach())
        return self.norm(hidden), tuple(loop_states)

    # -- cached steps -------------------------------------------------------------------------
    def _step_masks(self, rows: list[StepRow], cache: LoopCoderCache, slot_valid) -> None:
        """Fills each row's masks (the same for every layer); None where every key is visible."""
        device = rows[0].hidden.device
        keys0 = cache.seen[0] + sum(row.hidden.shape[1] for row in rows if row.loop == 0)
        for row in rows:
            n = row.hidden.shape[1]
            if slot_valid is None and n == 1 and keys0 == row.start + 1:
                # one query at the newest position; the local buffer holds at most W earlier keys plus itself
                row.global_mask = row.local_mask = None
                continue
            query_slots = torch.arange(row.start, row.start + n, device=device)
            row.global_mask = _slot_visible(query_slots, torch.arange(keys0, device=device), None, slot_valid)
            if row.loop > 0:
                first = cache.seen[row.loop] - cache.local_length(row.loop)
                key_slots = torch.arange(first, row.start + n, device=device)
                row.local_mask = _slot_visible(query_slots, key_slots, self.config.loop_window, slot_valid)

    def _run_step(self, rows: list[StepRow], cache: LoopCoderCache, slot_valid) -> list[torch.Tensor]:
        """Runs all layers once over `rows` batched on the token axis; returns each row's output."""
        self._step_masks(rows, cache, slot_valid)
        hidden = torch.cat([row.hidden for row in rows], dim=1)
        positions = torch.cat([row.position_ids for row in rows], dim=1)
        cos, sin = self.rotary_emb(hidden, positions)
        for layer_idx, layer in enumerate(self.layers):
            hidden = layer.forward_step(hidden, cos, sin, rows, cache, slot_valid, self.loop_gate(layer_idx))
        for row in rows:
            cache.advance(row.loop, row.hidden.shape[1])
        return list(hidden.split([row.hidden.shape[1] for row in rows], dim=1))

    def _shifted(self, loop: int, history: torch.Tensor, cache: LoopCoderCache, reset: torch.Tensor | None):
        """Loop `loop`'s history input for a chunk: [carry of loop - 1, history[:, :-1]] (zeros where reset)."""
        carry = cache.carry[loop - 1]
        if carry is None:
            carry = torch.zeros_like(history[:, 0])
        shifted = torch.cat([carry[:, None].to(history.dtype), history[:, :-1]], dim=1)
        if reset is not None:
            shifted = torch.where(reset[..., None], torch.zeros_like(shifted), shifted)
        return shifted

    def _forward_cached(self, embeds, attention_mask, position_ids, cache, decode_schedule):
        config = self.config
        schedule = decode_schedule or config.decode_schedule
        if schedule not in ("parallel", "sequential"):
            raise ValueError(f"decode_schedule must be 'parallel' or 'sequential', got {schedule!r}")
        past = cache.get_seq_length()
        seq_len = embeds.shape[1]
        slot_valid = None
        reset = None
        if attention_mask is not None:
            if attention_mask.shape[1] != past + seq_len:
                raise ValueError(
                    f"attention_mask covers {attention_mask.shape[1]} positions, expected past + new = {past + seq_len}"
                )
            slot_valid = attention_mask.bool()
            if bool(slot_valid.all()):
                slot_valid = None
            else:
                reset = ~slot_valid[:, past - 1 : past + seq_len - 1]
        if schedule == "sequential" or not config.clp_shift or config.num_loops == 1:
            return self._cached_sequential(embeds, position_ids, cache, slot_valid, reset)
        return self._cached_parallel(embeds, position_ids, cache, slot_valid, reset)

    def _cached_sequential(self, embeds, position_ids, cache, slot_valid, reset):
        config = self.config
        hidden, loop_states = embeds, []
        for loop in range(config.num_loops):
            if loop > 0:
                history = self._history(hidden)
                if config.clp_shift:
                    shifted = self._shifted(loop, history, cache, reset)
                    cache.set_carry(loop - 1, history)
                    history = shifted
                hidden = self._loop_input(embeds, history)
            (hidden,) = self._run_step([StepRow(loop, hidden, cache.seen[loop], position_ids)], cache, slot_valid)
            loop_states.append(hidden)
        return self.norm(hidden), tuple(loop_states)

    def _cached_parallel(self, embeds, position_ids, cache, slot_valid, reset):
        """Cross-loop-parallel schedule.

        One token: every loop's input is known from the carries, so all loops run through each layer as
        one batched step. A chunk of n tokens is cut into chunks of `clp_chunk_size`; step s runs loop r
        on chunk s - r for every r at once (loop r needs loop r - 1's output of the same chunk, ready one
        step earlier); a chunk of one token degenerates into the single-token case.
        """
        config = self.config
        num_loops, seq_len = config.num_loops, embeds.shape[1]
        size = 1 if seq_len == 1 else min(config.clp_chunk_size, seq_len)
        bounds = list(range(0, seq_len, size)) + [seq_len]
        chunks = [slice(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
        outputs: dict[tuple[int, int], torch.Tensor] = {}
        # lag of loop r behind loop 0, in chunks: 0 when a chunk is one token (carries make loops independent)
        lag = 0 if size == 1 else 1
        for step in range(len(chunks) + lag * (num_loops - 1)):
            rows = []
            for loop in range(num_loops):
                chunk_idx = step - lag * loop
                if not 0 <= chunk_idx < len(chunks):
                    continue
                piece = chunks[chunk_idx]
                embeds_c = embeds[:, piece]
                if loop == 0:
                    hidden = embeds_c
                else:
                    previous = outputs[(loop - 1, chunk_idx)] if lag else None
                    history = self._chunk_history(loop, chunk_idx, previous, embeds_c, cache, outputs, lag)
                    if reset is not None:
                        history = torch.where(reset[:, piece][..., None], torch.zeros_like(history), history)
                    hidden = self._loop_input(embeds_c, history)
                rows.append(StepRow(loop, hidden, cache.seen[loop], position_ids[:, piece]))
            results = self._run_step(rows, cache, slot_valid)
            for row, out in zip(rows, results, strict=True):
                chunk_idx = step - lag * row.loop
                outputs[(row.loop, chunk_idx)] = out
                if row.loop < num_loops - 1:
                    # the carry loop r + 1 reads at its next chunk: loop r's output at this chunk's last token
                    if lag == 0:
                        cache.set_carry(row.loop, self._history(out))
        final = torch.cat([outputs[(num_loops - 1, c)] for c in range(len(chunks))], dim=1)
        if lag:
            for loop in range(num_loops - 1):
                if cache.record_past:
                    produced = torch.cat([outputs[(loop, c)] for c in range(len(chunks))], dim=1)
                else:
                    produced = outputs[(loop, len(chunks) - 1)][:, -1:]
                cache.set_carry(loop, self._history(produced))
        return self.norm(final), None

    def _chunk_history(self, loop, chunk_idx, previous, embeds_c, cache, outputs, lag):
        if not lag:
            # one token: loop - 1's output at the previous token is the carry
            carry = cache.carry[loop - 1]
            return torch.zeros_like(embeds_c) if carry is None else carry[:, None].to(embeds_c.dtype)
        history = self._history(previous)
        if chunk_idx == 0:
            carry = cache.carry[loop - 1]
            first = torch.zeros_like(history[:, :1]) if carry is None else carry[:, None].to(history.dtype)
        else:
            first = self._history(outputs[(loop - 1, chunk_idx - 1)][:, -1:])
        return torch.cat([first, history[:, :-1]], dim=1)


class LoopCoderForCausalLM(LoopCoderPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: LoopCoderConfig):
        super().__init__(config)
        self.model = LoopCoderModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cu_seqlens: torch.Tensor | None = None,
        decode_schedule: str | None = None,
        output_loop_states: bool = False,
        **kwargs,
    ) -> LoopCoderCausalLMOutput:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            cu_seqlens=cu_seqlens,
            decode_schedule=decode_schedule,
            output_loop_states=output_loop_states,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return LoopCoderCausalLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            loop_hidden_states=outputs.loop_hidden_states,
        )

    def generate(self, *args, **kwargs):
        """`GenerationMixin.generate`; a cache that assisted decoding set recording is handed back at constant size."""
        output = super().generate(*args, **kwargs)
        config = kwargs.get("generation_config") or self.generation_config
        if not getattr(config, "is_assistant", False):  # an assistant's cache is taken back by its caller
            cache = kwargs.get("past_key_values") or getattr(output, "past_key_values", None)
            if isinstance(cache, LoopCoderCache) and cache.record_past:
                cache.deactivate_past_recording()
        return output

    def _prepare_cache_for_generation(
        self, generation_config, model_kwargs, generation_mode, batch_size, max_cache_length, *args, **kwargs
    ):
        # loop 0's buffers sized once for the whole generation: decode steps write in place, never copy
        given = model_kwargs.get("past_key_values")
        if isinstance(given, LoopCoderCache):
            given.reserve(max_cache_length)
        if given is None and generation_config.use_cache is not False:
            model_kwargs["past_key_values"] = LoopCoderCache(self.config, max_cache_len=max_cache_length)
            if getattr(generation_config, "is_assistant", False):
                # an assistant's candidates are taken back when the main model rejects them
                model_kwargs["past_key_values"].activate_past_recording()
            return
        return super()._prepare_cache_for_generation(
            generation_config, model_kwargs, generation_mode, batch_size, max_cache_length, *args, **kwargs
        )


class IQuestPLTCoderForCausalLM(LoopCoderForCausalLM):
    """LoopCoder-V2 under its released architecture name (`model_type: "iquestpltcoder"`)."""

    config_class = IQuestPLTCoderConfig


class IQuestLoopCoderForCausalLM(LoopCoderForCausalLM):
    """IQuest-Coder-V1-Loop under its released architecture name (`model_type: "iquestloopcoder"`)."""

    config_class = IQuestLoopCoderConfig


__all__ = [
    "LoopCoderPreTrainedModel",
    "LoopCoderModel",
    "LoopCoderForCausalLM",
    "IQuestPLTCoderForCausalLM",
    "IQuestLoopCoderForCausalLM",
    "LoopCoderCache",
    "scale_grad",
]
