"""Checkpoint compatibility: round trips, released V2/V1 directories, full-size names and shapes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from loopcoder.model import IQuestPLTCoderConfig, LoopCoderForCausalLM
from loopcoder.model.checkpoint import checkpoint_tensor_names, released_tensor_shapes


def _released_v2_dir(path, model, lc, gate_spelling="plt_gate"):
    """Writes a directory the way the released LoopCoder-V2 ships: vendor config keys, released tensor names."""
    config = {
        "architectures": ["IQuestPLTCoderForCausalLM"],
        "model_type": "iquestpltcoder",
        "vocab_size": lc.TINY["vocab_size"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": [2, 75864, 75869],
        "torch_dtype": "float32",
        "plt_num_loops": 2,
        "plt_window_size": [4, 0],
        "plt_normalize_per_loop": True,
        "plt_emb_scale": 0.707,
        "plt_hidden_scale": 0.6,
        "plt_gate_use_hidden_states": True,
        "transformers_version": "4.57.1",
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    state = {k.replace("plt_gate", gate_spelling): v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_save_and_load_round_trip(tmp_path, lc):
    model = lc.make_model(lc.v2_config())
    ids = lc.random_ids(2, 12)
    model.save_pretrained(tmp_path)
    loaded = LoopCoderForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


@pytest.mark.parametrize("spelling", ["plt_gate", "loop_gate_proj"])
def test_released_v2_directory_loads_and_saves_back(tmp_path, spelling, lc):
    reference = lc.make_model(lc.v2_config(loop_window=4, emb_scale=0.707, hidden_scale=0.6))
    _released_v2_dir(tmp_path / "released", reference, lc, spelling)
    ids = lc.random_ids(2, 12)
    for loader in (LoopCoderForCausalLM, AutoModelForCausalLM):
        model = loader.from_pretrained(tmp_path / "released").eval()
        assert isinstance(model.config, IQuestPLTCoderConfig)
        with torch.no_grad():
            assert torch.equal(model(ids).logits, reference(ids).logits)
    model.save_pretrained(tmp_path / "resaved")
    saved = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert saved["model_type"] == "iquestpltcoder"
    assert saved["architectures"] == ["IQuestPLTCoderForCausalLM"]
    assert saved["plt_window_size"] == [4, 0] and saved["plt_hidden_scale"] == 0.6
    assert saved["plt_gate_use_hidden_states"] is True
    assert "num_loops" not in saved and "loop_window" not in saved
    assert checkpoint_tensor_names(tmp_path / "resaved") == sorted(released_tensor_shapes(model.config))


@pytest.mark.parametrize("spelling", ["model.gate_projections.{}.", "model.layers.{}.gate_projection."])
def test_released_v1_directory_loads(tmp_path, spelling, lc):
    reference = lc.make_model(lc.v1_config())
    reference.config.save_pretrained(tmp_path)
    state = {}
    for name, tensor in reference.state_dict().items():
        if name.startswith("model.gate_projections."):
            index, rest = name.split(".")[2], name.split(".", 3)[3]
            name = spelling.format(index) + rest
        state[name] = tensor.contiguous()
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "iquestloopcoder" and saved["loop_window_size"] == 4 and saved["loop_num"] == 2
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = lc.random_ids(2, 10)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    model.save_pretrained(tmp_path / "resaved")
    assert checkpoint_tensor_names(tmp_path / "resaved") == sorted(released_tensor_shapes(model.config))


# The table of plt_architecture.md §3 for the released LoopCoder-V2, written out literally.
SPEC_V2_SHAPES = {
    "model.embed_tokens.weight": (76800, 5120),
    "model.layers.{}.input_layernorm.weight": (5120,),
    "model.layers.{}.self_attn.q_proj.weight": (5120, 5120),
    "model.layers.{}.self_attn.k_proj.weight": (1024, 5120),
    "model.layers.{}.self_attn.v_proj.weight": (1024, 5120),
    "model.layers.{}.self_attn.o_proj.weight": (5120, 5120),
    "model.layers.{}.post_attention_layernorm.weight": (5120,),
    "model.layers.{}.mlp.gate_proj.weight": (27648, 5120),
    "model.layers.{}.mlp.up_proj.weight": (27648, 5120),
    "model.layers.{}.mlp.down_proj.weight": (5120, 27648),
    "model.layers.{}.self_attn.plt_gate.weight": (40, 5120),
    "model.layers.{}.self_attn.plt_gate.bias": (40,),
    "model.layers.{}.self_attn.plt_gate.gate_norm.weight": (5120,),
    "model.norm.weight": (5120,),
    "lm_head.weight": (76800, 5120),
}


def test_full_size_v2_parameters_match_the_spec_on_meta_device():
    config = IQuestPLTCoderConfig(
        plt_num_loops=2,
        plt_window_size=[64, 0],
        plt_normalize_per_loop=True,
        plt_emb_scale=0.707,
        plt_hidden_scale=0.053,
        plt_gate_use_hidden_states=True,
        rope_theta=500000,
    )
    with torch.device("meta"):
        model = LoopCoderForCausalLM(config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    expected = {}
    for template, shape in SPEC_V2_SHAPES.items():
        for i in range(14) if "{}" in template else [None]:
            expected[template.format(i) if i is not None else template] = shape
    assert shapes == expected
    assert sum(p.numel() for p in model.parameters()) == 7_615_749_680
    assert released_tensor_shapes(config) == expected


@pytest.mark.parametrize("variant", ["v2", "v1"])
def test_looped_checkpoint_loads_as_one_loop_without_unexpected_keys(tmp_path, variant, lc):
    """The loop-count study loads a looped checkpoint with num_loops=1: its gates are left out on purpose."""
    model = lc.make_model(lc.config(variant))
    model.save_pretrained(tmp_path)
    one_loop, info = LoopCoderForCausalLM.from_pretrained(tmp_path, num_loops=1, output_loading_info=True)
    assert one_loop.config.num_loops == 1
    assert info["unexpected_keys"] == set() and info["missing_keys"] == set()
    ids = lc.random_ids(1, 9)
    with torch.no_grad():
        # the one-loop model is loop 0 of the looped one: same weights, nothing re-initialised
        expected = model(ids, output_loop_states=True).loop_hidden_states[0]
        got = one_loop(ids, output_loop_states=True).loop_hidden_states[0]
    assert torch.equal(got, expected)
    # a looped model still reports what does not belong to it
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "model.safetensors")
    save_file(saved | {"model.layers.0.self_attn.unknown.weight": torch.zeros(2)}, tmp_path / "model.safetensors")
    _, info = LoopCoderForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["unexpected_keys"] == {"model.layers.0.self_attn.unknown.weight"}
