"""Checkpoint formats: the released tensor names, declared once.

The model's parameter names *are* the released ones (plt_architecture.md §3), so loading and
saving need no renaming; this module states that layout as data (`{}` = physical layer index), so
tests and tools can check a directory or a model against it, and lists the alternative gate
spellings accepted on load.
"""

from __future__ import annotations

import json
from pathlib import Path

from loopcoder.model.configuration_loopcoder import LoopCoderConfig

# name template -> shape as a function of the config (`[out, in]` as stored)
COMMON_TENSORS = {
    "model.embed_tokens.weight": lambda c: (c.vocab_size, c.hidden_size),
    "model.layers.{}.input_layernorm.weight": lambda c: (c.hidden_size,),
    "model.layers.{}.self_attn.q_proj.weight": lambda c: (c.num_attention_heads * c.head_dim, c.hidden_size),
    "model.layers.{}.self_attn.k_proj.weight": lambda c: (c.num_key_value_heads * c.head_dim, c.hidden_size),
    "model.layers.{}.self_attn.v_proj.weight": lambda c: (c.num_key_value_heads * c.head_dim, c.hidden_size),
    "model.layers.{}.self_attn.o_proj.weight": lambda c: (c.hidden_size, c.num_attention_heads * c.head_dim),
    "model.layers.{}.post_attention_layernorm.weight": lambda c: (c.hidden_size,),
    "model.layers.{}.mlp.gate_proj.weight": lambda c: (c.intermediate_size, c.hidden_size),
    "model.layers.{}.mlp.up_proj.weight": lambda c: (c.intermediate_size, c.hidden_size),
    "model.layers.{}.mlp.down_proj.weight": lambda c: (c.hidden_size, c.intermediate_size),
    "model.norm.weight": lambda c: (c.hidden_size,),
    "lm_head.weight": lambda c: (c.vocab_size, c.hidden_size),
}

# V2: one gate per physical layer, shared by loops >= 1
PLT_HIDDEN_GATE_TENSORS = {
    "model.layers.{}.self_attn.plt_gate.weight": lambda c: (c.num_attention_heads, c.hidden_size),
    "model.layers.{}.self_attn.plt_gate.bias": lambda c: (c.num_attention_heads,),
    "model.layers.{}.self_attn.plt_gate.gate_norm.weight": lambda c: (c.hidden_size,),
}
PLT_QUERY_GATE_TENSORS = {
    "model.layers.{}.self_attn.plt_gate.weight": lambda c: (c.num_attention_heads, c.head_dim),
    "model.layers.{}.self_attn.plt_gate.bias": lambda c: (c.num_attention_heads,),
}
# V1: gates stored beside the layers
LOOP_GATE_TENSORS = {
    "model.gate_projections.{}.weight": lambda c: (c.num_attention_heads, c.head_dim),
    "model.gate_projections.{}.bias": lambda c: (c.num_attention_heads,),
}

# Alternative spellings accepted on load (regex -> released name); saving always writes the released name.
GATE_KEY_ALIASES = {
    r"model\.layers\.(\d+)\.self_attn\.loop_gate_proj\.": r"model.layers.\1.self_attn.plt_gate.",
    r"model\.layers\.(\d+)\.gate_projection\.": r"model.gate_projections.\1.",
}


def released_tensor_shapes(config: LoopCoderConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of `config` holds, with its shape, in the released naming."""
    templates = dict(COMMON_TENSORS)
    if config.num_loops > 1:
        if config.gate_in_model:
            templates.update(LOOP_GATE_TENSORS)
        elif config.gate_input == "hidden":
            templates.update(PLT_HIDDEN_GATE_TENSORS)
        else:
            templates.update(PLT_QUERY_GATE_TENSORS)
    if config.tie_word_embeddings:
        templates.pop("lm_head.weight")
    shapes = {}
    for template, shape in templates.items():
        names = [template.format(i) for i in range(config.num_hidden_layers)] if "{}" in template else [template]
        for name in names:
            shapes[name] = tuple(shape(config))
    return shapes


def checkpoint_tensor_names(directory: str | Path) -> list[str]:
    """Tensor names stored in a safetensors checkpoint directory (single file or sharded)."""
    from safetensors import safe_open

    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.exists():
        return sorted(json.loads(index.read_text())["weight_map"])
    names = []
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            names += list(handle.keys())
    return sorted(names)


__all__ = ["released_tensor_shapes", "checkpoint_tensor_names", "GATE_KEY_ALIASES"]
