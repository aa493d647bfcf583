"""The looped model with attn_implementation="fused_gated" against "eager": same logits and gradients.

Tiny float32 configuration; without a GPU the kernel runs in Triton's interpreter (conftest.py).
Covers a plain batch, a left-padded batch (key_padding_mask path) and packed documents (cu_seqlens
path), and loading with `from_pretrained(..., attn_implementation="fused_gated")`.
"""

from __future__ import annotations

import pytest
import torch

model_package = pytest.importorskip("loopcoder.model")
if not hasattr(model_package, "LoopCoderForCausalLM"):
    pytest.skip("loopcoder.model has no LoopCoderForCausalLM yet", allow_module_level=True)

from loopcoder.kernels.gated_attention import fused  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TINY = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_loops=2,
    loop_window=4,
    rms_norm_eps=1e-5,
    eos_token_id=None,
    pad_token_id=0,
)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts calls of the fused kernel's public function."""
    calls = []
    original = fused.gated_attention

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(fused, "gated_attention", counted)
    return calls


def make_model(seed: int = 0):
    torch.manual_seed(seed)
    model = model_package.LoopCoderForCausalLM(model_package.LoopCoderConfig(**TINY)).to(DEVICE).eval()
    with torch.no_grad():
        # away from the init: gates off 0.88, norm weights off 1
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.08)
    return model


def logits_and_grads(model, implementation: str, **inputs):
    model.config._attn_implementation = implementation
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    out.loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


def compare(assert_close, model, label, mask=None, **inputs):
    ref_logits, ref_grads = logits_and_grads(model, "eager", **inputs)
    logits, grads = logits_and_grads(model, "fused_gated", **inputs)
    if mask is not None:
        ref_logits, logits = ref_logits[mask], logits[mask]
    assert_close(f"{label} logits", ref_logits, logits, 1e-4)
    assert grads.keys() == ref_grads.keys()
    assert any("gate" in name for name in grads), "the gate parameters received no gradient"
    for name in ref_grads:
        assert_close(f"{label} {name}", ref_grads[name], grads[name], 1e-3, atol=1e-7)


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, TINY["vocab_size"], (batch, length), generator=generator).to(DEVICE)


def test_plain_batch(assert_close, kernel_calls):
    model = make_model()
    ids = random_ids(2, 37)
    compare(assert_close, model, "plain", input_ids=ids, labels=ids)
    # one call per layer for loop 1, forward only (the backward reuses the autograd graph)
    assert len(kernel_calls) == TINY["num_hidden_layers"]


def test_left_padded_batch(assert_close, kernel_calls):
    model = make_model()
    ids = random_ids(3, 30)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :11] = False
    mask[2, :29] = False
    labels = ids.masked_fill(~mask, -100)
    compare(assert_close, model, "left-padded", mask=mask, input_ids=ids, attention_mask=mask.long(), labels=labels)
    assert kernel_calls and kernel_calls[0]["key_padding_mask"] is not None


def test_packed_documents(assert_close, kernel_calls):
    model = make_model()
    ids = random_ids(1, 60)
    # three documents of 25, 1 and 34 tokens, marked by restarting position ids
    position_ids = torch.cat([torch.arange(25), torch.arange(1), torch.arange(34)])[None].to(DEVICE)
    compare(assert_close, model, "packed", input_ids=ids, position_ids=position_ids, labels=ids)
    assert kernel_calls and kernel_calls[0]["cu_seqlens"] is not None


def test_from_pretrained_selects_fused(assert_close, kernel_calls, tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    loaded = model_package.LoopCoderForCausalLM.from_pretrained(tmp_path, attn_implementation="fused_gated")
    loaded = loaded.to(DEVICE).eval()
    assert loaded.config._attn_implementation == "fused_gated"
    ids = random_ids(2, 19)
    with torch.no_grad():
        logits = loaded(input_ids=ids).logits
        model.config._attn_implementation = "eager"
        ref = model(input_ids=ids).logits
    assert kernel_calls
    assert_close("from_pretrained logits", ref, logits, 1e-4)
