"""LoRA adapters (PEFT) for SFT and GRPO: the `peft:` config block, wrapping the model, exporting the adapter.

    peft:
      r: 16
      alpha: 32
      dropout: 0.05
      target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
      merge_on_export: false

With a `peft` block the base model's weights are frozen and only the adapters (and `modules_to_save`) are trained:
the DeepSpeed engine and its optimizer hold just those parameters. The loop structure is untouched: every loop
runs the same projections, so one adapter per projection serves all loops. The final export is the adapter
(`output_dir/final`: `adapter_config.json`, `adapter_model.safetensors`, tokenizer), loadable with
`PeftModel.from_pretrained(base, output_dir/final)`; `merge_on_export: true` also writes the merged full model to
`output_dir/final_merged`. Checkpoints hold the whole module as before (base weights included), so resume is exact.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

# the looped model's linear projections (attention and MLP), shared by all loops
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class PeftSettings:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    modules_to_save: list[str] | None = None
    bias: str = "none"
    merge_on_export: bool = False

    @classmethod
    def from_value(cls, value: Any) -> PeftSettings | None:
        """None, a mapping of the fields above (unknown keys are errors), or a `PeftSettings`."""
        if value is None or isinstance(value, PeftSettings):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"peft must be a mapping of {[f.name for f in fields(cls)]} or null, got {value!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown peft key(s) {unknown}; valid keys: {', '.join(sorted(known))}")
        settings = cls(**value)
        settings.validate()
        return settings

    def validate(self) -> None:
        if importlib.util.find_spec("peft") is None:
            raise ValueError(
                "peft: LoRA needs the `peft` package, which is not installed: pip install 'loopcoder[peft]'"
            )
        if self.r < 1:
            raise ValueError(f"peft.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"peft.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("peft.target_modules must name at least one module")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"peft.bias must be none, all or lora_only, got {self.bias!r}")

    def lora_config(self, base_model_name_or_path: str | None = None):
        from peft import LoraConfig, TaskType

        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            modules_to_save=list(self.modules_to_save) if self.modules_to_save else None,
            bias=self.bias,
            base_model_name_or_path=base_model_name_or_path,
        )


def apply_lora(model, settings: PeftSettings, base_model_name_or_path: str | None = None):
    """`model` wrapped in a `PeftModelForCausalLM` whose only trainable parameters are the adapters."""
    from peft import get_peft_model

    missing = [t for t in settings.target_modules if not any(n.split(".")[-1] == t for n, _ in model.named_modules())]
    if missing:
        raise ValueError(f"peft.target_modules {missing} name no module of the model")
    return get_peft_model(model, settings.lora_config(base_model_name_or_path))


def save_adapter(model, state: dict[str, torch.Tensor], out_dir: Path, tokenizer=None) -> Path:
    """Writes the adapter part of `state` (the full PEFT module's state dict, e.g. gathered under ZeRO-3) as a
    PEFT directory. Rank 0 only."""
    from .checkpoint import write_pretrained

    return write_pretrained(model, out_dir, tokenizer, state_dict=state)


def merged_state_dict(state: dict[str, torch.Tensor], model_config, settings: PeftSettings) -> dict[str, torch.Tensor]:
    """The weights of a plain model with the adapter merged in, from `state`, the full PEFT module's state dict
    (gathered under ZeRO-3). The model is built whole on the host from `model_config` and never through
    `from_pretrained`, which under ZeRO-3 builds it partitioned, where a merge cannot add to the weights. Rank 0
    only."""
    from loopcoder.model import LoopCoderForCausalLM

    adapted = apply_lora(LoopCoderForCausalLM(model_config), settings)
    adapted.load_state_dict(state, strict=True)
    merged = adapted.merge_and_unload()
    return {k: v.detach().cpu().clone() for k, v in merged.state_dict().items()}


__all__ = [
    "DEFAULT_TARGET_MODULES",
    "PeftSettings",
    "apply_lora",
    "merged_state_dict",
    "save_adapter",
]
