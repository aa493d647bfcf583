"""Gradients: every parameter is trained, the BPTT knobs act on the recurrent path only."""

from __future__ import annotations

import pytest
import torch

from loopcoder.model import LoopCoderForCausalLM


@pytest.mark.parametrize("variant", ["v2", "v1"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_every_parameter_gets_a_finite_gradient(variant, impl, lc):
    model = lc.make_model(lc.config(variant)).train()
    model.set_attn_implementation(impl)
    ids = lc.random_ids(2, 12)
    model(ids, labels=ids).loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def _loop0_output_grad(model, ids):
    model.zero_grad()
    out = model(ids, output_loop_states=True, use_cache=False)
    loop0 = out.loop_hidden_states[0]
    loop0.retain_grad()
    out.logits.float().pow(2).mean().backward()
    return torch.zeros_like(loop0) if loop0.grad is None else loop0.grad.clone()


def test_grad_scale_multiplies_the_recurrent_gradient(lc):
    """Loop 0's output H_0 reaches the loss only through loop 1's input, so d loss / d H_0 scales with the factor.

    (Loop 0's K/V, read by loop 1's global branch, are computed inside the layers and are not scaled.)
    """
    ids = lc.random_ids(1, 10)
    model = lc.make_model(lc.v2_config()).double()
    grads = {}
    for factor in (0.0, 0.25, 1.0):
        model.config.loop_grad_scale = factor
        grads[factor] = _loop0_output_grad(model, ids)
    assert grads[1.0].abs().max() > 1e-6
    assert grads[0.0].abs().max() == 0
    assert torch.allclose(grads[0.25], 0.25 * grads[1.0], atol=1e-15, rtol=1e-10)


def test_grad_scale_does_not_change_the_forward(lc):
    ids = lc.random_ids(1, 10)
    model = lc.make_model(lc.v2_config())
    with torch.no_grad():
        reference = model(ids).logits
        model.config.loop_grad_scale = 0.3
        assert torch.equal(model(ids).logits, reference)


def test_detach_truncates_the_recurrent_path(lc):
    ids = lc.random_ids(1, 10)
    model = lc.make_model(lc.v2_config()).double()
    model.config.loop_grad_scale = 0.0
    scaled_to_zero = _loop0_output_grad(model, ids)
    model.config.loop_grad_scale = 1.0
    model.config.loop_detach = True
    detached = _loop0_output_grad(model, ids)
    assert detached.abs().max() == 0 and scaled_to_zero.abs().max() == 0


def test_gradient_checkpointing_gives_the_same_gradients(lc):
    """Checkpointing is per layer per loop: backward recomputes every (layer, loop) call once."""
    ids = lc.random_ids(2, 12)
    grads = []
    for checkpointing in (False, True):
        model = lc.make_model(lc.v2_config(num_loops=3)).train()
        if checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        calls = []
        mlp = model.model.layers[0].mlp
        mlp_forward = mlp.forward
        # forward hooks are muted during the recompute, so count calls of the forward itself
        mlp.forward = lambda x, forward=mlp_forward, calls=calls: (calls.append(1), forward(x))[1]
        loss = model(ids, labels=ids).loss
        forward_calls = len(calls)
        loss.backward()
        assert forward_calls == 3
        assert len(calls) == (6 if checkpointing else 3)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_v2_query_gate_mode_trains(lc):
    model = LoopCoderForCausalLM(lc.v2_config(gate_input="query")).train()
    ids = lc.random_ids(1, 9)
    model(ids, labels=ids).loss.backward()
    gate = model.model.layers[0].self_attn.plt_gate
    assert gate.weight.shape == (4, 16) and torch.isfinite(gate.weight.grad).all()
