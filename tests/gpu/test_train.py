"""SFT and GRPO on GPUs through their public entry points: a few steps on one GPU (the trainer classes), and two
processes under torchrun (`loopcoder train sft|grpo`) with ZeRO-2 and ZeRO-3 when two GPUs are visible.

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

from loopcoder.postrain.sft.sample_data import build_stdlib_shards, tiny_run_config

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
