"""ZeRO-3 construction from the start: two CPU processes (gloo) each hold half of every parameter, and a saved
checkpoint loaded into the partitions gathers back to exactly the weights of an unsharded load."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from loopcoder.model import LoopCoderConfig, LoopCoderForCausalLM
from loopcoder.postrain.sharded_model import build_model_for_zero

BIN = Path(sys.executable).parent
ZERO3_JSON = Path(__file__).resolve().parents[2] / "jobs" / "deepspeed" / "zero3.json"

TINY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_loops=2,
    max_position_embeddings=256,
)

# Run under torchrun: builds the model partitioned from each source given (a JSON config dict or a checkpoint
# directory), records what this rank holds, then gathers every parameter and saves the full state and buffers.
DRIVER = textwrap.dedent(
    """
    import json, sys
    import deepspeed, deepspeed.ops, torch
    from loopcoder.postrain.sharded_model import build_model_for_zero, partition_numel

    # gloo does the collectives on CPU; the shared-memory op would be compiled first
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    ds_config, out = json.loads(sys.argv[1]), sys.argv[2]
    for index, source in enumerate(sys.argv[3:]):
        model = build_model_for_zero(json.loads(source) if source.startswith("{") else source, ds_config)
        local, full = partition_numel(model)
        placeholders = all(p.data.numel() == 0 for p in model.parameters())
        report = {"local": local, "full": full, "placeholders": placeholders}
        json.dump(report, open(f"{out}/report{index}_{rank}.json", "w"))
        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        state.update({f"buffer {name}": tensor.clone() for name, tensor in model.named_buffers()})
        torch.save(state, f"{out}/state{index}_{rank}.pt")
    """
)


def resolved_zero3() -> dict:
    """The packaged ZeRO-3 JSON with its "auto" values filled as a trainer would (fp32 on CPU)."""
    ds = json.loads(ZERO3_JSON.read_text())
    ds.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, gradient_clipping=1.0)
    ds["bf16"] = {"enabled": False}
    return ds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = dict(model.state_dict())
    state.update({f"buffer {name}": tensor for name, tensor in model.named_buffers()})
    return state


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One torchrun of two gloo processes building (0) a fresh model from TINY, (1) the saved checkpoint.
    Returns the saved model and, per source, each rank's report and gathered state."""
    tmp_path = tmp_path_factory.mktemp("zero3")
    torch.manual_seed(0)
    saved = LoopCoderForCausalLM(LoopCoderConfig(**TINY))
    saved.save_pretrained(tmp_path / "checkpoint")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "out"
    out.mkdir()
    command = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    command += ["--master_port", str(free_port()), str(driver), json.dumps(resolved_zero3()), str(out)]
    command += [json.dumps(TINY), str(tmp_path / "checkpoint")]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = [
        (
            [json.loads((out / f"report{index}_{rank}.json").read_text()) for rank in range(2)],
            [torch.load(out / f"state{index}_{rank}.pt") for rank in range(2)],
        )
        for index in range(2)
    ]
    return tmp_path / "checkpoint", saved, runs


def assert_half_per_rank(reports: list[dict], model: torch.nn.Module) -> None:
    full = sum(p.numel() for p in model.parameters())
    # each parameter is split in two, an odd one padded: at most one extra element per tensor
    tensors = len(list(model.parameters()))
    for report in reports:
        assert report["full"] == full
        assert report["placeholders"], "a rank kept a full parameter instead of a placeholder"
        assert full / 2 <= report["local"] <= full / 2 + tensors


def test_checkpoint_loads_into_partitions_with_the_unsharded_weights(two_ranks):
    checkpoint, saved, runs = two_ranks
    reports, states = runs[1]
    reference = full_state(LoopCoderForCausalLM.from_pretrained(checkpoint, dtype=torch.float32))

    assert_half_per_rank(reports, saved)
    for state in states:
        assert state.keys() == reference.keys()
        for name, tensor in reference.items():
            assert torch.equal(state[name], tensor), name


def test_fresh_model_is_initialised_identically_on_both_ranks(two_ranks):
    _, model, runs = two_ranks
    reports, states = runs[0]

    assert_half_per_rank(reports, model)
    reference = full_state(model)
    assert states[0].keys() == reference.keys()
    for name, tensor in states[0].items():
        assert torch.equal(states[1][name], tensor), name
    # initialised by the model's own rule, not left as allocation garbage or zeros
    up = states[0]["model.layers.0.mlp.up_proj.weight"]
    assert abs(up.std().item() - model.config.initializer_range) < 0.003
    assert torch.all(states[0]["model.layers.1.self_attn.plt_gate.bias"] == model.config.gate_bias_init)
    assert torch.all(states[0]["model.norm.weight"] == 1.0)
    for name in ("buffer model.rotary_emb.inv_freq", "buffer model.rotary_emb.original_inv_freq"):
        assert torch.equal(states[1][name], reference[name]), name


def test_refuses_other_zero_stages_and_unresolved_configs():
    ds = resolved_zero3()
    ds["zero_optimization"]["stage"] = 2
    with pytest.raises(ValueError, match="stage 2"):
        build_model_for_zero(TINY, ds)
    ds = resolved_zero3()
    ds["bf16"] = {"enabled": "auto"}
    with pytest.raises(ValueError, match=r"'auto' values .*bf16\.enabled"):
        build_model_for_zero(TINY, ds)
