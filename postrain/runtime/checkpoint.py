"""Checkpoints that are whole or absent, and the final Hugging Face model.

Layout under `output_dir/checkpoints/`:

    step_00000100/                 one complete checkpoint
        <DeepSpeed files>          model and optimizer states (per rank for ZeRO), written by `save_checkpoint`
        trainer_state.json         step, data position (stream counters), metrics so far
        rng_rank{r}.pt             Python, NumPy, torch (and CUDA) RNG states of rank r
        config.yaml                the resolved run config
    latest                         name of the newest complete checkpoint (rewritten atomically)

Every rank writes into `.partial-step_00000100/`; after a barrier rank 0 renames it to
`step_00000100` and rewrites `latest`. A rename is atomic, so a crash at any point leaves either
the old set of complete checkpoints or the new one; leftover `.partial-*` directories are never
read and are removed at the next start. Resume loads the newest complete checkpoint and continues
bit for bit on CPU: the weights, the optimizer moments, the step (the learning rate is a function
of it), the stream counters and the RNG states are all restored.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from loopcoder.pipelines.io.filesystem import atomic_write_bytes, fsync_directory

from . import collectives

logger = logging.getLogger(__name__)

PARTIAL_PREFIX = ".partial-"


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (partial ones are never listed)."""
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / "trainer_state.json").exists()
    ]
    return sorted(found, key=lambda p: p.name)


def find_resume_checkpoint(config, root: Path) -> Path | None:
    if config.resume == "never":
        return None
    if config.resume != "auto":
        path = Path(config.resume)
        if not (path / "trainer_state.json").exists():
            raise FileNotFoundError(f"resume: {path} is not a complete checkpoint (no trainer_state.json)")
        return path
    latest = root / "latest"
    if latest.exists():
        candidate = root / latest.read_text().strip()
        if (candidate / "trainer_state.json").exists():
            return candidate
    complete = complete_checkpoints(root)
    return complete[-1] if complete else None


def prepare_run(config, rank: int, output_dir: Path, checkpoint_root: Path, config_yaml: str) -> Path | None:
    """Start of a run on every rank: rank 0 creates the output, clears half-written checkpoints and saves the
    resolved config; then all ranks agree on the checkpoint to resume from (None: start fresh)."""
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_partials(checkpoint_root)
        atomic_write_bytes(output_dir / "config.yaml", config_yaml.encode())
    collectives.barrier()
    return find_resume_checkpoint(config, checkpoint_root)


def save_checkpoint(engine, root: Path, step: int, trainer_state: dict[str, Any], config_yaml: str, keep: int) -> Path:
    """Collective: every rank calls it. Returns the complete checkpoint's path."""
    rank = dist.get_rank()
    name = step_name(step)
    partial = root / f"{PARTIAL_PREFIX}{name}"
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    collectives.barrier()
    engine.save_checkpoint(str(root), tag=partial.name, save_latest=False)
    torch.save(rng_state(), partial / f"rng_rank{rank}.pt")
    collectives.barrier()
    final = root / name
    if rank == 0:
        atomic_write_bytes(partial / "config.yaml", config_yaml.encode())
        # written last: its presence marks the directory as a checkpoint (the rename makes it visible)
        atomic_write_bytes(
            partial / "trainer_state.json", json.dumps(trainer_state, indent=2, sort_keys=True).encode()
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        fsync_directory(root)
        atomic_write_bytes(root / "latest", name.encode())
        for old in complete_checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    collectives.barrier()
    return final


def load_checkpoint(engine, path: Path) -> dict[str, Any]:
    """Restores engine (model, optimizer) and this rank's RNG states; returns the trainer state."""
    rank = dist.get_rank()
    load_path, _ = engine.load_checkpoint(
        str(path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed could not load the checkpoint in {path}")
    state = json.loads((path / "trainer_state.json").read_text())
    rng_file = path / f"rng_rank{rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        logger.warning("%s has no RNG state for rank %d (different world size?): RNG not restored", path, rank)
    return state


def remove_partials(root: Path) -> None:
    if root.is_dir():
        for partial in root.glob(f"{PARTIAL_PREFIX}*"):
            shutil.rmtree(partial, ignore_errors=True)


def full_state_dict(engine, zero_stage: int) -> dict[str, torch.Tensor] | None:
    """Collective: the full model weights on rank 0 (CPU copies), None on other ranks."""
    module = engine.module
    rank = dist.get_rank()
    if zero_stage == 3:
        import deepspeed

        params = list(module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()} if rank == 0 else None
        return state
    if rank != 0:
        return None
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def save_hf_model(state: dict[str, torch.Tensor], model_config, out_dir: Path, released_format: bool, tokenizer=None):
    """Writes a Hugging Face directory atomically (temporary directory, then rename). Rank 0 only."""
    from loopcoder.model import IQuestPLTCoderConfig, IQuestPLTCoderForCausalLM, LoopCoderForCausalLM

    config = model_config
    model_class = LoopCoderForCausalLM
    if released_format:
        fields = {k: v for k, v in model_config.to_dict().items() if k not in ("model_type", "architectures")}
        fields.update(
            plt_num_loops=model_config.num_loops,
            plt_window_size=[model_config.loop_window, 0],
            plt_normalize_per_loop=model_config.normalize_per_loop,
            plt_emb_scale=model_config.emb_scale,
            plt_hidden_scale=model_config.hidden_scale,
            plt_gate_use_hidden_states=model_config.gate_input == "hidden",
        )
        for key in ("transformers_version", "dtype", "torch_dtype"):
            fields.pop(key, None)
        config = IQuestPLTCoderConfig(**fields)
        model_class = IQuestPLTCoderForCausalLM
    model = model_class(config)
    model.load_state_dict(state, strict=True)
    return write_pretrained(model, out_dir, tokenizer)


def write_pretrained(model, out_dir: Path, tokenizer=None, **save_kwargs) -> Path:
    """`model.save_pretrained` (a model or a PEFT adapter) and the tokenizer into a temporary directory, renamed to
    `out_dir` when complete."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, **save_kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


__all__ = [
    "prepare_run",
    "save_checkpoint",
    "load_checkpoint",
    "find_resume_checkpoint",
    "complete_checkpoints",
    "remove_partials",
    "full_state_dict",
    "save_hf_model",
    "step_name",
    "write_pretrained",
]
