"""Dense-to-loop folding: initialise a looped model from a dense Llama/Qwen2-style checkpoint.

A dense model of `N` layers becomes a looped model of `L` physical layers run `R` times (by default
`L = N / R`, the same effective depth). Each physical layer is built from a group of dense layers:

* grouping "consecutive" (default): physical layer l <- dense layers `l*G ... l*G + G - 1`, `G = N / L`
  (neighbouring layers are the most similar, so their average stays close to each of them);
* grouping "strided": physical layer l <- dense layers `l, l + L, l + 2L, ...` (the layers it replaces in
  the unrolled order `loop 0: 0..L-1, loop 1: L..2L-1, ...`).

and aggregated by a method:

* "average": the element-wise mean of the group's tensors;
* "select": one representative layer (`layers=[...]` dense indices, default the first of each group).

Everything outside the layers (embeddings, final norm, LM head) is copied. The mapping is the
declarative `LAYER_TENSORS` list below (`{}` = layer index); the names are the same on both sides.

Gate initialisation: weights 0 and bias `config.gate_bias_init` (2.0), gate norm 1. Every head of
every later loop then starts at sigmoid(2) = 0.88, global-dominated (the global branch attends to
all of loop 0's keys like the dense attention did; 0.88 is also where the released V1 gates sit),
while the sigmoid is far from saturation so the gate learns from the first step.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from loopcoder.model.configuration_loopcoder import LoopCoderConfig
from loopcoder.model.modeling_loopcoder import LoopCoderForCausalLM

LAYER_TENSORS = [
    "model.layers.{}.input_layernorm.weight",
    "model.layers.{}.self_attn.q_proj.weight",
    "model.layers.{}.self_attn.q_proj.bias",
    "model.layers.{}.self_attn.k_proj.weight",
    "model.layers.{}.self_attn.k_proj.bias",
    "model.layers.{}.self_attn.v_proj.weight",
    "model.layers.{}.self_attn.v_proj.bias",
    "model.layers.{}.self_attn.o_proj.weight",
    "model.layers.{}.self_attn.o_proj.bias",
    "model.layers.{}.post_attention_layernorm.weight",
    "model.layers.{}.mlp.gate_proj.weight",
    "model.layers.{}.mlp.gate_proj.bias",
    "model.layers.{}.mlp.up_proj.weight",
    "model.layers.{}.mlp.up_proj.bias",
    "model.layers.{}.mlp.down_proj.weight",
    "model.layers.{}.mlp.down_proj.bias",
]
GLOBAL_TENSORS = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
METHODS = ("average", "select")
GROUPINGS = ("consecutive", "strided")


def layer_groups(num_dense: int, num_layers: int, grouping: str = "consecutive") -> list[list[int]]:
    """Dense layer indices feeding each physical layer."""
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
    if num_layers < 1 or num_dense % num_layers:
        raise ValueError(f"{num_dense} dense layers cannot be split into {num_layers} equal groups")
    size = num_dense // num_layers
    if grouping == "consecutive":
        return [list(range(i * size, (i + 1) * size)) for i in range(num_layers)]
    return [list(range(i, num_dense, num_layers)) for i in range(num_layers)]


def looped_config_from_dense(
    dense_config, num_loops: int, num_layers: int | None = None, **loop_options
) -> LoopCoderConfig:
    """A `LoopCoderConfig` with the dense model's width, heads, vocabulary and RoPE."""
    num_dense = dense_config.num_hidden_layers
    num_layers = num_layers or num_dense // num_loops
    rope = dict(getattr(dense_config, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0})
    attention_bias = bool(getattr(dense_config, "attention_bias", False))
    output_bias = attention_bias
    if dense_config.model_type.startswith("qwen2"):
        attention_bias, output_bias = True, False
    return LoopCoderConfig(
        vocab_size=dense_config.vocab_size,
        hidden_size=dense_config.hidden_size,
        intermediate_size=dense_config.intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=dense_config.num_attention_heads,
        num_key_value_heads=getattr(dense_config, "num_key_value_heads", None) or dense_config.num_attention_heads,
        head_dim=getattr(dense_config, "head_dim", None)
        or dense_config.hidden_size // dense_config.num_attention_heads,
        hidden_act=dense_config.hidden_act,
        max_position_embeddings=dense_config.max_position_embeddings,
        rms_norm_eps=dense_config.rms_norm_eps,
        rope_parameters=rope,
        attention_bias=attention_bias,
        attention_output_bias=output_bias,
        mlp_bias=bool(getattr(dense_config, "mlp_bias", False)),
        tie_word_embeddings=bool(getattr(dense_config, "tie_word_embeddings", False)),
        bos_token_id=dense_config.bos_token_id,
        eos_token_id=dense_config.eos_token_id,
        pad_token_id=dense_config.pad_token_id,
        num_loops=num_loops,
        **loop_options,
    )


@torch.no_grad()
def fold_dense(
    dense: nn.Module | str | Path,
    num_loops: int = 2,
    method: str = "average",
    *,
    num_layers: int | None = None,
    grouping: str = "consecutive",
    layers: list[int] | None = None,
    **loop_options,
) -> LoopCoderForCausalLM:
    """Builds a `LoopCoderForCausalLM` from a dense causal LM (a model or a checkpoint directory).

    Args:
        dense (nn.Module | str | Path): a Llama/Qwen2-style `*ForCausalLM` or a directory loadable by
            `AutoModelForCausalLM`.
        num_loops (int): loops R of the folded model. Default: 2.
        method (str): "average" or "select". Default: "average".
        num_layers (int, Optional): physical layers L. Default: dense layers // num_loops.
        grouping (str): "consecutive" or "strided" (module docstring). Default: "consecutive".
        layers (list[int], Optional): with "select", the dense layer to copy into each physical layer.
        **loop_options: further `LoopCoderConfig` fields (e.g. `loop_window`, `emb_scale`, `gate_bias_init`).

    Returns:
        LoopCoderForCausalLM: in float32 unless the dense model had another dtype.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(dense, (str, Path)):
        from transformers import AutoModelForCausalLM

        dense = AutoModelForCausalLM.from_pretrained(dense)
    config = looped_config_from_dense(dense.config, num_loops, num_layers, **loop_options)
    groups = layer_groups(dense.config.num_hidden_layers, config.num_hidden_layers, grouping)
    if layers is not None:
        if method != "select":
            raise ValueError("layers=[...] chooses representatives and needs method='select'")
        if len(layers) != config.num_hidden_layers:
            raise ValueError(
                f"select needs one dense layer per physical layer ({config.num_hidden_layers}), got {layers}"
            )
        if not all(0 <= i < dense.config.num_hidden_layers for i in layers):
            raise ValueError(f"layer indices must be in 0..{dense.config.num_hidden_layers - 1}, got {layers}")

    source = dense.state_dict()
    dtype = next(dense.parameters()).dtype
    model = LoopCoderForCausalLM(config).to(dtype).eval()
    target = model.state_dict()
    folded = {}
    for name in GLOBAL_TENSORS:
        if name in target:
            folded[name] = source[name] if name in source else source["model.embed_tokens.weight"]
    for physical, group in enumerate(groups):
        members = [layers[physical]] if layers is not None else group[:1] if method == "select" else group
        for template in LAYER_TENSORS:
            name = template.format(physical)
            if name not in target:
                continue
            tensors = [source[template.format(i)] for i in members]
            folded[name] = torch.stack([t.float() for t in tensors]).mean(0).to(tensors[0].dtype)
    missing = [n for n in target if n not in folded and ".plt_gate." not in n and "gate_projections." not in n]
    if missing:
        raise ValueError(f"the dense checkpoint lacks tensors the looped model needs: {missing[:5]}")
    model.load_state_dict(folded, strict=False)
    _init_gates(model)
    return model


def _init_gates(model: LoopCoderForCausalLM) -> None:
    for layer_idx in range(model.config.num_hidden_layers):
        gate = model.model.loop_gate(layer_idx)
        if gate is None:
            continue
        gate.weight.zero_()
        gate.bias.fill_(model.config.gate_bias_init)
        if hasattr(gate, "gate_norm"):
            gate.gate_norm.weight.fill_(1.0)


__all__ = ["fold_dense", "layer_groups", "looped_config_from_dense", "LAYER_TENSORS"]
