"""The fused Triton backend gives the eager logits and gradients.

Skipped when the kernel is missing or cannot run: it needs a CUDA device, or `TRITON_INTERPRET=1`
(set before the first use) to run on CPU through the Triton interpreter.
"""

from __future__ import annotations

import os

import pytest
import torch

from loopcoder.kernels import gated_attention as kernel_module


def _kernel_available() -> bool:
    try:
        kernel_module.gated_attention  # noqa: B018 - imports the Triton module on first access
    except (AttributeError, ImportError):
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


needs_kernel = pytest.mark.skipif(
    not _kernel_available(), reason="fused kernel missing, or no CUDA device and TRITON_INTERPRET != 1"
)


@needs_kernel
@pytest.mark.parametrize("variant", ["v2", "v1"])
def test_fused_gated_matches_eager_logits_and_gradients(variant, lc):
    ids = lc.random_ids(2, 80)  # longer than the window
    results = {}
    for impl in ("eager", "fused_gated"):
        model = lc.make_model(lc.config(variant)).train()
        model.set_attn_implementation(impl)
        out = model(ids, labels=ids)
        out.loss.backward()
        results[impl] = (out.logits.detach(), {n: p.grad for n, p in model.named_parameters()})
    assert (results["eager"][0] - results["fused_gated"][0]).abs().max().item() < 1e-3
    for name, grad in results["eager"][1].items():
        other = results["fused_gated"][1][name]
        assert (grad - other).norm() <= 1e-2 * grad.norm() + 1e-6, name


def test_fused_gated_is_an_accepted_attn_implementation(tmp_path, lc):
    from loopcoder.model import LoopCoderForCausalLM

    lc.make_model(lc.v2_config()).save_pretrained(tmp_path)
    model = LoopCoderForCausalLM.from_pretrained(tmp_path, attn_implementation="fused_gated")
    assert model.config._attn_implementation == "fused_gated"


@needs_kernel
def test_fused_gated_packed_and_padded_batch_matches_eager(lc):
    ids = lc.random_ids(2, 40)
    positions = torch.cat([torch.arange(15), torch.arange(25)])[None].repeat(2, 1)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, 30:] = 0
    logits = {}
    for impl in ("eager", "fused_gated"):
        model = lc.make_model(lc.v2_config())
        model.set_attn_implementation(impl)
        with torch.no_grad():
            logits[impl] = model(ids, attention_mask=mask, position_ids=positions).logits
    valid = mask.bool()
    assert (logits["eager"][valid] - logits["fused_gated"][valid]).abs().max().item() < 1e-3
