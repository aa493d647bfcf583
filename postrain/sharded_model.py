"""The looped model built and loaded already partitioned for DeepSpeed ZeRO-3.

Under ZeRO-3 each rank keeps 1/world of every parameter. Building the whole fp32 model on every rank
first and letting `deepspeed.initialize` partition it afterwards needs the full model in host memory
on each rank (30 GB for the released 7B configuration, times the ranks of a node). `build_model_for_zero`
instead builds the model inside `deepspeed.zero.Init`, which partitions each module's parameters as soon
as that module is constructed, so a rank never holds more than its partition plus the module being built.

Weights come through transformers' own ZeRO-3 path: while an `HfDeepSpeedConfig` of a stage-3 config is
alive, `from_pretrained` and `_from_config` enter `zero.Init` themselves; a checkpoint is read by rank 0
only (the other ranks map it on the meta device) and copied module by module into gathered parameters
that are re-partitioned right after; fresh weights are initialised the same way, module by module, on
rank 0 and broadcast. The returned model keeps that config alive (`model.hf_deepspeed_config`), so the
rest of transformers (embedding resizing, `generate`'s rank synchronisation) also knows the model is
partitioned for as long as it lives, or until `end_zero3_mode` (the trainers call it when their run ends).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def build_model_for_zero(
    config_or_path: Any,
    ds_config: dict[str, Any],
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
):
    """A `LoopCoderForCausalLM` partitioned across the ranks of the DeepSpeed ZeRO-3 config `ds_config`.

    `config_or_path`: a `LoopCoderConfig`, a dict of its fields (a training config's `model_config`), or a
    checkpoint directory / Hub id for `from_pretrained`. `ds_config` is the resolved DeepSpeed config (no
    `"auto"` left) the engine will be created with; its `zero_optimization.stage` must be 3 and, when its
    `bf16` section is enabled, the partitions are created in bf16 as DeepSpeed's engine expects.
    `dtype` is the dtype the model is built in before that (fp32 for training).

    DeepSpeed's process group must already exist (the trainers' `init_distributed`); every rank of the group
    must call this function, since construction and loading broadcast from rank 0.
    """
    stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
    if stage != 3:
        raise ValueError(f"build_model_for_zero builds ZeRO-3 partitions; the DeepSpeed config has stage {stage}")
    unresolved = sorted(key for key, value in _flatten(ds_config) if value == "auto")
    if unresolved:
        raise ValueError(f"the DeepSpeed config still has 'auto' values (resolve them first): {unresolved}")
    import deepspeed
    from transformers.integrations.deepspeed import HfDeepSpeedConfig

    from loopcoder.model import LoopCoderConfig, LoopCoderForCausalLM

    if not deepspeed.comm.is_initialized():
        raise RuntimeError(
            "build_model_for_zero needs DeepSpeed's process group: call init_distributed() (or "
            "deepspeed.init_distributed()) on every rank first"
        )

    # zero.Init places parameters on the accelerator named by LOCAL_RANK; a single process started without a
    # launcher has none, as in prepare_environment
    os.environ.setdefault("LOCAL_RANK", "0")
    hf_deepspeed_config = HfDeepSpeedConfig(ds_config)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if isinstance(config_or_path, (str, Path)):
        model = LoopCoderForCausalLM.from_pretrained(str(config_or_path), **kwargs)
    else:
        config = config_or_path if isinstance(config_or_path, LoopCoderConfig) else LoopCoderConfig(**config_or_path)
        model = LoopCoderForCausalLM._from_config(config, **kwargs)
    model.hf_deepspeed_config = hf_deepspeed_config
    return model


def end_zero3_mode(model) -> None:
    """Ends transformers' ZeRO-3 mode that `build_model_for_zero` began for `model`, so that models built later in
    this process (`from_pretrained` of an evaluation, the next run) are whole again. The mode would otherwise last
    as long as the model, which DeepSpeed's backward hooks keep alive for the rest of the process."""
    from transformers.integrations.deepspeed import deepspeed_config, unset_hf_deepspeed_config

    own = getattr(model, "hf_deepspeed_config", None)
    if own is not None and deepspeed_config() is own.config:
        unset_hf_deepspeed_config()


def _flatten(tree: dict[str, Any], prefix: str = ""):
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def partition_numel(model: torch.nn.Module) -> tuple[int, int]:
    """(elements this rank holds, elements of the full model) of a ZeRO-3 partitioned model."""
    local = full = 0
    for parameter in model.parameters():
        if hasattr(parameter, "ds_tensor"):
            local += parameter.ds_tensor.numel()
            full += parameter.ds_numel
        else:
            local += parameter.numel()
            full += parameter.numel()
    return local, full


__all__ = ["build_model_for_zero", "end_zero3_mode", "partition_numel"]
