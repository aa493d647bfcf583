"""SFT and GRPO on GPUs through their public entry points: a few steps on one GPU (the trainer classes), and two
processes under torchrun (`loopcoder train sft|grpo`) with ZeRO-2 and ZeRO-3 when two GPUs are visible; LoRA SFT
on one GPU and under ZeRO-3 on two.

The two-process SFT runs in fp32 are compared with the one-GPU fp32 run of the same global batch: the loss curves
agree up to the order of floating-point reductions across two GPUs (NCCL) instead of one.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loopcoder.postrain.sft.sample_data import TINY_MODEL, build_stdlib_shards, tiny_run_config

pytestmark = pytest.mark.gpu

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
GRPO_CONFIG = ROOT / "jobs" / "rl" / "print_number_tiny.yaml"
SFT_STEPS = 6
GRPO_OVERRIDES = ["model_name_or_path=null", "max_steps=2"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_stdlib_shards(tmp_path_factory.getbasetemp() / "gpu_sft_stdlib", max_files=200, seq_len=128)


def metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def losses(output_dir: Path) -> list[float]:
    return [r["loss"] for r in metrics(output_dir) if "loss" in r]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(command: str, config: Path, overrides: list[str], cwd: Path) -> subprocess.CompletedProcess:
    argv = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    argv += ["--master_port", str(free_port()), "-m", "loopcoder.jobs.cli", "train", command, "--config", str(config)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", "0,1"))
    return subprocess.run(argv + overrides, capture_output=True, text=True, timeout=900, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def one_gpu_sft(shards, tmp_path_factory):
    """fp32 SFT on one GPU, the reference for the two-process runs (global batch 4 in both)."""
    from loopcoder.postrain.sft.trainer import SFTTrainer

    out = tmp_path_factory.mktemp("sft_one") / "run"
    trainer = SFTTrainer(tiny_run_config(shards, out, max_steps=SFT_STEPS, precision="fp32", save_final_model=False))
    assert next(trainer.engine.module.parameters()).device.type == "cuda"
    trainer.train()
    return losses(out)


def test_sft_steps_on_one_gpu_bf16(shards, tmp_path):
    from loopcoder.postrain.sft.trainer import SFTTrainer

    torch.cuda.reset_peak_memory_stats()
    trainer = SFTTrainer(tiny_run_config(shards, tmp_path / "run", max_steps=SFT_STEPS, precision="bf16"))
    assert next(trainer.engine.module.parameters()).device.type == "cuda"
    result = trainer.train()
    assert len(result.losses) == SFT_STEPS and all(math.isfinite(x) for x in result.losses)
    assert torch.cuda.max_memory_allocated() > 0
    assert (tmp_path / "run" / "final" / "config.json").exists()


def test_sft_fp32_steps_on_one_gpu(one_gpu_sft):
    assert len(one_gpu_sft) == SFT_STEPS and all(math.isfinite(x) for x in one_gpu_sft)
    assert one_gpu_sft[-1] < one_gpu_sft[0]


def test_grpo_steps_on_one_gpu(tmp_path):
    from loopcoder.postrain.grpo import GRPOConfig
    from loopcoder.postrain.grpo.trainer import GRPOTrainer

    config = GRPOConfig.from_yaml(GRPO_CONFIG, [*GRPO_OVERRIDES, f"output_dir={tmp_path / 'grpo'}"])
    trainer = GRPOTrainer(config)
    assert next(trainer.engine.module.parameters()).device.type == "cuda"
    result = trainer.train()
    assert result.steps == 2
    assert len(result.metric("reward_mean")) == 2
    assert all(math.isfinite(x) for x in result.metric("loss"))


@pytest.mark.parametrize("stage", [2, 3])
def test_sft_two_gpus_match_one(two_gpus, shards, one_gpu_sft, tmp_path, stage):
    config = tiny_run_config(shards, tmp_path / "run", max_steps=SFT_STEPS, precision="fp32", save_final_model=False)
    config_file = tmp_path / "sft.yaml"
    config_file.write_text(config.to_yaml())
    result = torchrun("sft", config_file, [f"zero_stage={stage}"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    two = losses(tmp_path / "run")
    assert len(two) == SFT_STEPS
    worst = max(abs(a - b) / abs(a) for a, b in zip(one_gpu_sft, two, strict=True))
    print(f"ZeRO-{stage}: max relative loss difference 1 vs 2 GPUs {worst:.2e}")
    assert worst < 1e-3


@pytest.mark.parametrize("stage", [2, 3])
def test_grpo_two_gpus(two_gpus, tmp_path, stage):
    overrides = [*GRPO_OVERRIDES, f"zero_stage={stage}", f"output_dir={tmp_path / 'grpo'}"]
    result = torchrun("grpo", GRPO_CONFIG, overrides, ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    records = [r for r in metrics(tmp_path / "grpo") if "reward_mean" in r]
    assert len(records) == 2
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)


@pytest.fixture(scope="module")
def lora_base(tmp_path_factory):
    """A tiny model directory (weights and tokenizer) for LoRA to adapt."""
    from loopcoder.model import LoopCoderConfig, LoopCoderForCausalLM
    from loopcoder.schemas.tokens import load_tokenizer

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("lora_base")
    LoopCoderForCausalLM(LoopCoderConfig(**TINY_MODEL)).save_pretrained(out)
    load_tokenizer().save_pretrained(out)
    return out


def lora_config(shards, base: Path, output_dir: Path):
    return tiny_run_config(
        shards,
        output_dir,
        model_config={},
        model_name_or_path=str(base),
        tokenizer="auto",
        max_steps=SFT_STEPS,
        precision="fp32",
        peft={"r": 4, "alpha": 8, "dropout": 0.0},
        learning_rate=1e-2,
    )


@pytest.fixture(scope="module")
def one_gpu_lora(shards, lora_base, tmp_path_factory):
    """fp32 LoRA SFT on one GPU: (trainer, the parameters before training, result); the reference for two GPUs."""
    from loopcoder.postrain.sft.trainer import SFTTrainer

    trainer = SFTTrainer(lora_config(shards, lora_base, tmp_path_factory.mktemp("lora_one") / "run"))
    before = {name: p.detach().clone() for name, p in trainer.engine.module.named_parameters()}
    return trainer, before, trainer.train()


def test_sft_lora_steps_on_one_gpu(one_gpu_lora, lora_base):
    from peft import PeftModel

    from loopcoder.model import LoopCoderForCausalLM

    trainer, before, result = one_gpu_lora
    module = trainer.engine.module
    assert next(module.parameters()).device.type == "cuda"
    assert len(result.losses) == SFT_STEPS and all(math.isfinite(x) for x in result.losses)
    after = dict(module.named_parameters())
    adapters = {name for name in before if "lora_" in name}
    assert adapters and {name for name, p in after.items() if p.requires_grad} == adapters
    assert all(torch.equal(after[name], before[name]) for name in before if name not in adapters)
    changed = [name for name in adapters if not torch.equal(after[name], before[name])]
    assert any(".lora_A." in name for name in changed) and any(".lora_B." in name for name in changed)
    ids = torch.randint(0, TINY_MODEL["vocab_size"], (2, 24), device="cuda")
    loaded = PeftModel.from_pretrained(LoopCoderForCausalLM.from_pretrained(lora_base), result.final_model)
    with torch.no_grad():
        expected = module.eval()(input_ids=ids, use_cache=False).logits
        reloaded = loaded.cuda().eval()(input_ids=ids, use_cache=False).logits
    assert torch.allclose(reloaded, expected, atol=1e-4)


def test_sft_lora_zero3_two_gpus_match_one(two_gpus, shards, lora_base, one_gpu_lora, tmp_path):
    config_file = tmp_path / "sft_lora.yaml"
    config_file.write_text(lora_config(shards, lora_base, tmp_path / "run").to_yaml())
    result = torchrun("sft", config_file, ["zero_stage=3"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    one, two = losses(one_gpu_lora[2].output_dir), losses(tmp_path / "run")
    assert len(two) == SFT_STEPS
    worst = max(abs(a - b) / abs(a) for a, b in zip(one, two, strict=True))
    print(f"LoRA ZeRO-3: max relative loss difference 1 vs 2 GPUs {worst:.2e}")
    assert worst < 1e-3
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").exists()
