"""YAML loading shared by the trainer configs: defaults < YAML file < `name=value` overrides.

    class SFTConfig(ConfigFile): ...          # a dataclass; ConfigFile adds the loaders
    config = SFTConfig.from_yaml("jobs/sft/sample_tiny.yaml", overrides=["max_steps=20", "lr=3e-4"])

Unknown keys are errors that list the valid ones; float fields accept YAML 1.1's `3e-4`, which
PyYAML reads as a string.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+; annotations only


class ConfigFile:
    """Mixin for a dataclass config: `from_dict`, `from_yaml`, `to_dict`, `to_yaml`."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid keys: {', '.join(sorted(fields))}")
        raw = dict(raw)
        for name, value in raw.items():
            if isinstance(value, str) and str(fields[name].type).startswith("float"):
                try:
                    raw[name] = float(value)
                except ValueError:
                    raise ValueError(f"{name} must be a number, got {value!r}") from None
        return cls(**raw)

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, overrides: list[str] | None = None) -> Self:
        raw: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            if not path.exists():
                raise FileNotFoundError(f"config {path} does not exist")
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            if not isinstance(raw, dict):
                raise ValueError(f"{path}: expected a mapping of config keys")
        for override in overrides or []:
            key, value = parse_override(override)
            raw[key] = value
        return cls.from_dict(raw)


def parse_override(text: str) -> tuple[str, Any]:
    """`name=value` -> (name, value read as YAML; `1e-3` style numbers become floats)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like name=value")
    key, raw_value = text.split("=", 1)
    key = key.strip().lstrip("-").replace("-", "_")
    value = yaml.safe_load(raw_value) if raw_value.strip() else None
    if isinstance(value, str):
        # YAML 1.1 reads `3e-4` as a string; a trainer config never means that
        try:
            value = float(value) if any(c in value.lower() for c in "e.") else value
        except ValueError:
            pass
    return key, value


__all__ = ["ConfigFile", "parse_override"]
