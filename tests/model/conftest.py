"""Helpers shared by the model tests, handed to tests through the `lc` fixture.

* tiny configurations (float32, CPU) of both released variants and a model with perturbed weights;
* `spec_forward`: an independent float64 forward written plainly from the spec
  (plt_architecture.md §4-5). It reads a state dict with the released tensor names, loops over heads
  with explicit masks, and shares no code with `loopcoder.model`. Its keyword switches reproduce the
  plausible misreadings the spec lists, so tests can show each one changes the output.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from loopcoder.model import IQuestLoopCoderConfig, LoopCoderConfig, LoopCoderForCausalLM

TINY = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    eos_token_id=None,
    pad_token_id=0,
)


def v2_config(**overrides) -> LoopCoderConfig:
    """Released V2 semantics (shift, hidden gate, per-loop norm, window W -> W + 1 keys) at tiny size."""
    settings = dict(TINY, num_loops=2, loop_window=4, emb_scale=0.707, hidden_scale=0.6)
    settings.update(overrides)
    return LoopCoderConfig(**settings)


def v1_config(**overrides) -> IQuestLoopCoderConfig:
    settings = dict(TINY, loop_num=2, loop_window_size=4)
    settings.update(overrides)
    return IQuestLoopCoderConfig(**settings)


def make_model(config, seed: int = 0, noise: float = 0.08) -> LoopCoderForCausalLM:
    """A model whose weights are perturbed away from the init (norm weights != 1, gates away from 0.88)."""
    torch.manual_seed(seed)
    model = LoopCoderForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * noise)
    return model


def random_ids(batch: int = 2, length: int = 14, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, TINY["vocab_size"], (batch, length), generator=generator)


def _rms(x, weight, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rope(x, positions, theta):
    # x [T, H, D], rotate-half
    dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    angles = positions[:, None].double() * inv_freq[None]
    emb = torch.cat([angles, angles], -1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]
    x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _attend(q, k, v, visible):
    # q [T, H, D], k/v [T, HKV, D], visible [T, T] bool
    heads, kv_heads, dim = q.shape[1], k.shape[1], q.shape[2]
    out = torch.zeros_like(q)
    for h in range(heads):
        kv = h // (heads // kv_heads)
        scores = q[:, h] @ k[:, kv].T / math.sqrt(dim)
        scores = scores.masked_fill(~visible, float("-inf"))
        out[:, h] = torch.softmax(scores, -1) @ v[:, kv]
    return out


def spec_forward(
    state: dict[str, torch.Tensor],
    cfg,
    ids: torch.Tensor,
    *,
    variant: str,
    shift: bool = True,
    window: int | None = None,
    per_loop_norm: bool = True,
    gate_per_dim: bool = False,
) -> torch.Tensor:
    """Logits `[T, V]` (float64) for one sequence `ids [T]`.

    variant "v2": CLP shift, `a E + b norm(H)`, hidden-state gate at `model.layers.{i}.self_attn.plt_gate`;
    variant "v1": no shift, raw H, query gate at `model.gate_projections.{i}`.
    `window` = left extent (keys t - window ... t); default from cfg.
    """
    sd = {k: v.double() for k, v in state.items()}
    eps, theta = cfg.rms_norm_eps, cfg.rope_parameters["rope_theta"]
    heads, kv_heads, dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    window = cfg.loop_window if window is None else window
    seq_len = ids.shape[0]
    positions = torch.arange(seq_len)
    causal = positions[:, None] >= positions[None, :]
    local = causal & (positions[:, None] - positions[None, :] <= window)
    a = 1.0 if cfg.emb_scale is None else cfg.emb_scale
    b = 1.0 if cfg.hidden_scale is None else cfg.hidden_scale
    generator = torch.Generator().manual_seed(123)

    def layer(x, i, loop, kv0):
        p = f"model.layers.{i}."
        n = _rms(x, sd[p + "input_layernorm.weight"], eps)
        q = (n @ sd[p + "self_attn.q_proj.weight"].T).view(seq_len, heads, dim)
        k = (n @ sd[p + "self_attn.k_proj.weight"].T).view(seq_len, kv_heads, dim)
        v = (n @ sd[p + "self_attn.v_proj.weight"].T).view(seq_len, kv_heads, dim)
        q, k = _rope(q, positions, theta), _rope(k, positions, theta)
        if loop == 0:
            attn = _attend(q, k, v, causal)
            kv0[i] = (k, v)
        else:
            if variant == "v2":
                g_pre = p + "self_attn.plt_gate."
                gate_in = _rms(x, sd[g_pre + "gate_norm.weight"], eps)
                weight, bias = sd[g_pre + "weight"], sd[g_pre + "bias"]
                if gate_per_dim:
                    # misreading: one gate per hidden dimension of the attention output
                    weight = weight.repeat_interleave(dim, 0)
                    weight = weight + 0.5 * torch.randn(weight.shape, generator=generator, dtype=torch.float64)
                    g = torch.sigmoid(gate_in @ weight.T + bias.repeat_interleave(dim)).view(seq_len, heads, dim)
                else:
                    g = torch.sigmoid(gate_in @ weight.T + bias)[..., None]  # [T, H, 1]
            else:
                w, bias = sd[f"model.gate_projections.{i}.weight"], sd[f"model.gate_projections.{i}.bias"]
                g = torch.sigmoid((q * w[None]).sum(-1) + bias)[..., None]
            global_out = _attend(q, kv0[i][0], kv0[i][1], causal)
            local_out = _attend(q, k, v, local)
            attn = g * global_out + (1 - g) * local_out
        h = x + attn.reshape(seq_len, heads * dim) @ sd[p + "self_attn.o_proj.weight"].T
        m = _rms(h, sd[p + "post_attention_layernorm.weight"], eps)
        gate = m @ sd[p + "mlp.gate_proj.weight"].T
        up = m @ sd[p + "mlp.up_proj.weight"].T
        return h + (torch.nn.functional.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T

    embeds = sd["model.embed_tokens.weight"][ids]
    kv0: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    norm_w = sd["model.norm.weight"]
    hidden = embeds
    for loop in range(cfg.num_loops):
        if loop > 0:
            if variant == "v2":
                prev = _rms(hidden, norm_w, eps) if per_loop_norm else hidden
                history = torch.zeros_like(prev)
                if shift:
                    history[1:] = prev[:-1]
                else:
                    history = prev
                hidden = a * embeds + b * history
            # v1: loop r reads loop r - 1's raw output at the same position
        for i in range(cfg.num_hidden_layers):
            hidden = layer(hidden, i, loop, kv0)
    return _rms(hidden, norm_w, eps) @ sd["lm_head.weight"].T


def config(variant: str, **overrides):
    return v2_config(**overrides) if variant == "v2" else v1_config(**overrides)


@pytest.fixture
def lc() -> SimpleNamespace:
    return SimpleNamespace(
        TINY=TINY,
        v2_config=v2_config,
        v1_config=v1_config,
        config=config,
        make_model=make_model,
        random_ids=random_ids,
        spec_forward=spec_forward,
    )


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny matmuls are fastest on one thread, and a busy shared box makes multi-threaded ones erratic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
