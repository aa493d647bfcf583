"""The model and tokenizer of a training run, built the same way for every trainer."""

from __future__ import annotations

from pathlib import Path

import torch


def build_model(config, gradient_accumulation_steps: int = 1):
    """A `LoopCoderForCausalLM` in fp32 from `model_name_or_path` or a fresh one from `model_config` (seeded by
    `seed`), with the run's attention backend, BPTT knobs and activation checkpointing; no decode cache.

    Under ZeRO-3 a checkpoint is loaded partitioned (`sharded_model.build_model_for_zero`): no rank ever holds the
    whole model on the host (the process group must exist already). A fresh model from `model_config` is built
    whole and seeded, then partitioned by the engine, so that its initial weights equal a one-process run's.
    With a `peft` block the model is returned inside a PEFT wrapper whose only trainable parameters are the
    adapters (`adapters.apply_lora`)."""
    from loopcoder.model import LoopCoderConfig, LoopCoderForCausalLM

    from .distributed import deepspeed_config

    torch.manual_seed(config.seed)
    ds_config = deepspeed_config(config, gradient_accumulation_steps)
    if config.model_name_or_path and int(ds_config["zero_optimization"].get("stage", 0)) == 3:
        from loopcoder.postrain.sharded_model import build_model_for_zero

        model = build_model_for_zero(
            config.model_name_or_path, ds_config, dtype=torch.float32, attn_implementation=config.attn_implementation
        )
    elif config.model_name_or_path:
        kwargs = {"attn_implementation": config.attn_implementation} if config.attn_implementation else {}
        model = LoopCoderForCausalLM.from_pretrained(config.model_name_or_path, dtype=torch.float32, **kwargs)
    else:
        if not config.model_config:
            raise ValueError("set model_name_or_path or model_config")
        model = LoopCoderForCausalLM(LoopCoderConfig(**config.model_config))
        if config.attn_implementation:
            model.set_attn_implementation(config.attn_implementation)
    if config.loop_grad_scale is not None:
        model.config.loop_grad_scale = float(config.loop_grad_scale)
    if config.loop_detach is not None:
        model.config.loop_detach = bool(config.loop_detach)
    if config.gradient_checkpointing:
        # transformers >= 5.x names it activation checkpointing; the old name is a deprecated alias
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if config.peft is not None:
        from .adapters import apply_lora

        model = apply_lora(model, config.peft, config.model_name_or_path)
    return model


def build_tokenizer(config):
    """The run's tokenizer (`config.tokenizer`): "auto" = the model directory's if it has one, else the bundled one;
    "bundled"; a directory; None = no tokenizer."""
    from loopcoder.schemas.tokens import load_tokenizer

    choice = config.tokenizer
    if choice is None:
        return None
    if choice == "auto":
        model_dir = config.model_name_or_path
        if model_dir and (Path(model_dir) / "tokenizer.json").exists():
            return load_tokenizer(model_dir)
        return load_tokenizer()
    if choice == "bundled":
        return load_tokenizer()
    return load_tokenizer(choice)


__all__ = ["build_model", "build_tokenizer"]
