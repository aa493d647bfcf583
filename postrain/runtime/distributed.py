"""Process group and DeepSpeed set-up: one code path for 1 CPU process, torchrun, and the deepspeed launcher.

On a machine without CUDA: `DS_ACCELERATOR=cpu` (set before deepspeed is imported), the gloo
backend, the torch AdamW (`torch_adam`), and the shared-memory comm op disabled, so that nothing
is JIT-compiled at start-up. `TORCH_EXTENSIONS_DIR` defaults to a directory per checkout, so two
virtualenvs never rebuild each other's ops if something does compile.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import torch

DEEPSPEED_CONFIG_DIR = Path(__file__).resolve().parents[2] / "jobs" / "deepspeed"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_environment() -> None:
    """Env defaults for a CPU run and for a single process started without a launcher. Call before importing
    deepspeed."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    checkout = hashlib.sha256(str(Path(__file__).resolve().parents[2]).encode()).hexdigest()[:12]
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "loopcoder" / f"torch_ext_{checkout}"))
    # the deepspeed launcher passes --local_rank and sets LOCAL_RANK; torchrun sets all of these
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))


def init_distributed() -> tuple[int, int]:
    """Initialises the process group (gloo on CPU, nccl on GPU) through DeepSpeed; returns (rank, world size)."""
    prepare_environment()
    import deepspeed
    import deepspeed.ops

    if not torch.cuda.is_available():
        # the shm all-reduce op would be compiled on first use (60-150 s); gloo does the job on CPU
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels, so that recomputing a forward gives the same bits on GPU too (slower there). cuBLAS
    reads its workspace setting when it starts, so this runs before the model is built."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


def set_cpu_threads(threads: int | None) -> None:
    """On CPU: `threads` torch threads, or the cores divided among this node's processes."""
    if torch.cuda.is_available():
        return
    if threads is None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        threads = max(1, (os.cpu_count() or 1) // max(local, 1))
    torch.set_num_threads(threads)


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def use_bf16(precision: str) -> bool:
    return precision == "bf16" or (precision == "auto" and torch.cuda.is_available())


def _fill(value: Any, filled: Any) -> Any:
    return filled if value == "auto" else value


def deepspeed_config(config, gradient_accumulation_steps: int) -> dict[str, Any]:
    """The DeepSpeed JSON of `config` with its `"auto"` values filled and the optimizer set to the torch AdamW.

    DeepSpeed clips the gradients at every ZeRO stage and precision (`gradient_clipping`): its bf16 and ZeRO
    optimizers hold the gradients in their own buffers, where a clip of `p.grad` would not reach them.
    """
    path = Path(config.deepspeed_config) if config.deepspeed_config else None
    if path is None:
        path = DEEPSPEED_CONFIG_DIR / f"zero{config.zero_stage or 0}.json"
    if not path.exists():
        raise FileNotFoundError(f"DeepSpeed config {path} does not exist")
    ds = json.loads(path.read_text())
    zero = ds.setdefault("zero_optimization", {})
    if config.zero_stage is not None:
        zero["stage"] = config.zero_stage
    stage = int(zero.get("stage", 0))
    ds["train_micro_batch_size_per_gpu"] = _fill(
        ds.get("train_micro_batch_size_per_gpu", "auto"), config.micro_batch_size
    )
    ds["gradient_accumulation_steps"] = _fill(
        ds.get("gradient_accumulation_steps", "auto"), gradient_accumulation_steps
    )
    ds["gradient_clipping"] = _fill(ds.get("gradient_clipping", "auto"), config.max_grad_norm)
    bf16 = ds.setdefault("bf16", {})
    bf16["enabled"] = _fill(bf16.get("enabled", "auto"), use_bf16(config.precision))
    ds.pop("train_batch_size", None)
    ds.pop("scheduler", None)  # the trainer owns the learning rate (plan.learning_rate)
    ds["optimizer"] = {
        "type": "AdamW",
        "params": {
            "lr": config.learning_rate,
            "betas": [config.adam_beta1, config.adam_beta2],
            "eps": config.adam_epsilon,
            "weight_decay": config.weight_decay,
            "torch_adam": True,
        },
    }
    if stage > 0:
        ds["zero_allow_untested_optimizer"] = True
    return ds


def initialize_engine(model, config, gradient_accumulation_steps: int) -> tuple[Any, dict[str, Any], int]:
    """(DeepSpeed engine over the trainable parameters of `model`, its resolved config, its ZeRO stage)."""
    import deepspeed

    ds_config = deepspeed_config(config, gradient_accumulation_steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=trainable, config=ds_config)
    return engine, ds_config, int(ds_config["zero_optimization"].get("stage", 0))


__all__ = [
    "prepare_environment", "init_distributed", "deepspeed_config", "initialize_engine", "device", "use_bf16", "free_port",
    "set_cpu_threads", "set_deterministic",
]  # fmt: skip
