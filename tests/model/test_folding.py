"""Dense-to-loop folding: exact on identical groups, identity at one loop, representative selection."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from loopcoder.model.folding import fold_dense, layer_groups


def _unroll(looped, lc, grouping):
    """A dense Llama whose layer groups are copies of the looped model's physical layers."""
    num_physical = looped.config.num_hidden_layers
    dense_layers = num_physical * looped.config.num_loops
    dense = LlamaForCausalLM(LlamaConfig(**dict(lc.TINY, num_hidden_layers=dense_layers), rope_theta=500000.0)).eval()
    state = {}
    for physical, group in enumerate(layer_groups(dense_layers, num_physical, grouping)):
        for dense_idx in group:
            for name, tensor in looped.state_dict().items():
                prefix = f"model.layers.{physical}."
                if name.startswith(prefix) and ".plt_gate." not in name:
                    state[f"model.layers.{dense_idx}." + name[len(prefix) :]] = tensor
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        state[name] = looped.state_dict()[name]
    dense.load_state_dict(state, strict=True)
    return dense


def _with_fold_gates(model):
    with torch.no_grad():
        for i in range(model.config.num_hidden_layers):
            gate = model.model.loop_gate(i)
            gate.weight.zero_()
            gate.bias.fill_(model.config.gate_bias_init)
            gate.gate_norm.weight.fill_(1.0)
    return model


@pytest.mark.parametrize("method", ["average", "select"])
@pytest.mark.parametrize("grouping", ["consecutive", "strided"])
def test_folding_identical_groups_reproduces_the_looped_model(method, grouping, lc):
    looped = _with_fold_gates(lc.make_model(lc.v2_config(emb_scale=None, hidden_scale=None)))
    dense = _unroll(looped, lc, grouping)
    folded = fold_dense(dense, num_loops=2, method=method, grouping=grouping, loop_window=4)
    ids = lc.random_ids(2, 12)
    with torch.no_grad():
        assert torch.equal(folded(ids).logits, looped(ids).logits)


def test_one_loop_fold_is_the_dense_model(lc):
    torch.manual_seed(0)
    dense = LlamaForCausalLM(LlamaConfig(**lc.TINY, rope_theta=10000.0)).eval()
    folded = fold_dense(dense, num_loops=1, num_layers=2)
    ids = lc.random_ids(2, 10)
    with torch.no_grad():
        assert (folded(ids).logits - dense(ids).logits).abs().max().item() < 1e-5


def test_average_and_select_take_the_right_tensors(lc):
    torch.manual_seed(0)
    dense = LlamaForCausalLM(LlamaConfig(**dict(lc.TINY, num_hidden_layers=4))).eval()
    name = "model.layers.{}.mlp.up_proj.weight"
    averaged = fold_dense(dense, num_loops=2, method="average").state_dict()
    expected = (dense.state_dict()[name.format(2)] + dense.state_dict()[name.format(3)]) / 2
    assert torch.allclose(averaged[name.format(1)], expected)
    selected = fold_dense(dense, num_loops=2, method="select", layers=[3, 0]).state_dict()
    assert torch.equal(selected[name.format(0)], dense.state_dict()[name.format(3)])
    assert torch.equal(selected[name.format(1)], dense.state_dict()[name.format(0)])
    gate = fold_dense(dense, num_loops=2).model.layers[0].self_attn.plt_gate
    assert torch.all(gate.weight == 0) and torch.allclose(
        torch.sigmoid(gate.bias), torch.full((4,), 0.8808), atol=1e-4
    )


def test_qwen2_folds_with_its_biases(lc):
    torch.manual_seed(0)
    dense = Qwen2ForCausalLM(Qwen2Config(**dict(lc.TINY, num_hidden_layers=2))).eval()
    folded = fold_dense(dense, num_loops=1, num_layers=2)
    ids = lc.random_ids(1, 9)
    with torch.no_grad():
        assert (folded(ids).logits - dense(ids).logits).abs().max().item() < 1e-5


def test_fold_rejects_bad_requests(lc):
    dense = LlamaForCausalLM(LlamaConfig(**dict(lc.TINY, num_hidden_layers=3)))
    with pytest.raises(ValueError, match="equal groups"):
        fold_dense(dense, num_loops=2, num_layers=2)
    with pytest.raises(ValueError, match="method"):
        fold_dense(dense, num_loops=3, method="median")
