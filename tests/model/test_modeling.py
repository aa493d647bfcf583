"""Forward-pass equivalences: dense parity, the float64 spec reference, backends, packing, padding."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from loopcoder.model import LoopCoderConfig, LoopCoderForCausalLM


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_one_loop_equals_llama(impl, lc):
    config = LoopCoderConfig(**dict(lc.TINY, num_loops=1), rope_theta=10000.0)
    model = lc.make_model(config)
    llama = LlamaForCausalLM(LlamaConfig(**lc.TINY, rope_theta=10000.0, attn_implementation=impl)).eval()
    result = llama.load_state_dict(model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    model.set_attn_implementation(impl)
    ids = lc.random_ids(2, 24)
    with torch.no_grad():
        diff = (model(ids).logits - llama(ids).logits).abs().max().item()
    assert diff < 1e-5, diff


@pytest.mark.parametrize("variant", ["v2", "v1"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_matches_float64_spec_reference(variant, impl, lc):
    config = lc.v2_config(num_loops=2) if variant == "v2" else lc.v1_config()
    model = lc.make_model(config)
    model.set_attn_implementation(impl)
    ids = lc.random_ids(1, 16)
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    reference = lc.spec_forward(model.state_dict(), config, ids[0], variant=variant)
    assert (logits - reference).abs().max().item() < 2e-5


@pytest.mark.parametrize("num_loops", [1, 2, 3, 4])
def test_any_loop_count_matches_reference(num_loops, lc):
    config = lc.v2_config(num_loops=num_loops)
    model = lc.make_model(config)
    ids = lc.random_ids(1, 12)
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    reference = lc.spec_forward(model.state_dict(), config, ids[0], variant="v2")
    assert (logits - reference).abs().max().item() < 2e-5


@pytest.mark.parametrize(
    "misreading",
    [
        dict(shift=False),  # no cross-loop shift
        dict(window=3),  # V2 window of 64 keys instead of 65 (here 4 instead of 5)
        dict(per_loop_norm=False),  # no per-loop norm
        dict(gate_per_dim=True),  # gate per dimension instead of per head
    ],
    ids=["no-shift", "window-W-keys", "no-per-loop-norm", "gate-per-dim"],
)
def test_each_misreading_changes_the_output(misreading, lc):
    config = lc.v2_config(num_loops=2, hidden_scale=1.0, emb_scale=1.0)
    model = lc.make_model(config, noise=0.2)
    ids = lc.random_ids(1, 16)
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    wrong = lc.spec_forward(model.state_dict(), config, ids[0], variant="v2", **misreading)
    assert (logits - wrong).abs().max().item() > 1e-3


def test_misreadings_as_config_options_change_the_output(lc):
    ids = lc.random_ids(1, 16)
    base = lc.make_model(lc.v2_config(hidden_scale=1.0), noise=0.2)
    with torch.no_grad():
        reference = base(ids).logits
        for override in (dict(clp_shift=False), dict(loop_window=3), dict(normalize_per_loop=False)):
            other = LoopCoderForCausalLM(lc.v2_config(hidden_scale=1.0, **override)).eval()
            other.load_state_dict(base.state_dict())
            assert (other(ids).logits - reference).abs().max().item() > 1e-3, override


@pytest.mark.parametrize("variant", ["v2", "v1"])
def test_eager_and_sdpa_agree(variant, lc):
    model = lc.make_model(lc.config(variant))
    ids = lc.random_ids(2, 20)
    outputs = {}
    with torch.no_grad():
        for impl in ("eager", "sdpa"):
            model.set_attn_implementation(impl)
            outputs[impl] = model(ids).logits
    assert (outputs["eager"] - outputs["sdpa"]).abs().max().item() < 1e-5


def _documents(lc):
    return [lc.random_ids(1, n, seed=n)[0] for n in (7, 11, 5)]


@pytest.mark.parametrize("variant", ["v2", "v1"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("marker", ["position_ids", "cu_seqlens"])
def test_packed_equals_documents_one_by_one(variant, impl, marker, lc):
    model = lc.make_model(lc.config(variant))
    model.set_attn_implementation(impl)
    docs = _documents(lc)
    packed = torch.cat(docs)[None]
    with torch.no_grad():
        if marker == "position_ids":
            positions = torch.cat([torch.arange(len(d)) for d in docs])[None]
            logits = model(packed, position_ids=positions, use_cache=False).logits[0]
        else:
            cu_seqlens = torch.tensor([0, 7, 18, 23], dtype=torch.int32)
            logits = model(packed, cu_seqlens=cu_seqlens, use_cache=False).logits[0]
        separate = torch.cat([model(d[None]).logits[0] for d in docs])
    assert (logits - separate).abs().max().item() < 1e-5


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_packed_batch_of_two_rows(impl, lc):
    model = lc.make_model(lc.v2_config())
    model.set_attn_implementation(impl)
    docs = _documents(lc)
    rows = torch.stack([torch.cat([docs[0], docs[1][:9]]), torch.cat([docs[2], docs[1][:11]])])
    positions = torch.stack(
        [
            torch.cat([torch.arange(7), torch.arange(9)]),
            torch.cat([torch.arange(5), torch.arange(11)]),
        ]
    )
    with torch.no_grad():
        logits = model(rows, position_ids=positions).logits
        expected = [
            torch.cat([model(docs[0][None]).logits[0], model(docs[1][None, :9]).logits[0]]),
            torch.cat([model(docs[2][None]).logits[0], model(docs[1][None, :11]).logits[0]]),
        ]
    assert (logits[0] - expected[0]).abs().max().item() < 1e-5
    assert (logits[1] - expected[1]).abs().max().item() < 1e-5


@pytest.mark.parametrize("variant", ["v2", "v1"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_unpadded(variant, impl, side, lc):
    model = lc.make_model(lc.config(variant))
    model.set_attn_implementation(impl)
    long, short = lc.random_ids(1, 13, seed=3)[0], lc.random_ids(1, 8, seed=4)[0]
    batch = torch.zeros(2, 13, dtype=torch.long)
    mask = torch.zeros(2, 13, dtype=torch.long)
    batch[0], mask[0] = long, 1
    span = slice(13 - 8, 13) if side == "left" else slice(0, 8)
    batch[1, span], mask[1, span] = short, 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(batch, attention_mask=mask, position_ids=positions).logits
        alone_long, alone_short = model(long[None]).logits[0], model(short[None]).logits[0]
    assert (logits[0] - alone_long).abs().max().item() < 1e-5
    assert (logits[1, span] - alone_short).abs().max().item() < 1e-5


def test_registered_with_auto_classes(lc):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = lc.v2_config()
    assert isinstance(AutoConfig.for_model("loopcoder"), LoopCoderConfig)
    model = AutoModelForCausalLM.from_config(config)
    assert isinstance(model, LoopCoderForCausalLM)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_packed_and_padded_batch(impl, lc):
    model = lc.make_model(lc.v2_config())
    model.set_attn_implementation(impl)
    docs = _documents(lc)
    rows = torch.zeros(2, 23, dtype=torch.long)
    mask = torch.zeros(2, 23, dtype=torch.long)
    positions = torch.zeros(2, 23, dtype=torch.long)
    rows[0] = torch.cat(docs)
    mask[0] = 1
    positions[0] = torch.cat([torch.arange(len(d)) for d in docs])
    rows[1, :16] = torch.cat([docs[2], docs[1]])  # two documents, then right padding
    mask[1, :16] = 1
    positions[1, :16] = torch.cat([torch.arange(5), torch.arange(11)])
    with torch.no_grad():
        logits = model(rows, attention_mask=mask, position_ids=positions).logits
        alone = [model(d[None]).logits[0] for d in docs]
    assert (logits[0] - torch.cat(alone)).abs().max().item() < 1e-5
    assert (logits[1, :16] - torch.cat([alone[2], alone[1]])).abs().max().item() < 1e-5
