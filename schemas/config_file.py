"""Config files: a YAML mapping read into a dataclass config, with overrides (defaults < file < overrides).

    @dataclass
    class MiningConfig(ConfigFile):
        name: str               # a field without a default is a required key
        min_tests: int = 1
    config = MiningConfig.from_yaml("jobs/data/rl_mining.yaml", overrides=["min_tests=2"])

Every job, trainer and evaluation config file is read here. A missing file, a file that is not valid
YAML or not a mapping is an error naming the file; an unknown key is an error naming the source and
listing the valid keys; a missing required key is named. Float fields accept YAML 1.1's `3e-4`, which
PyYAML reads as a string. Overrides are `name=value` strings (the value read as YAML, as typed on a
command line) or a mapping of values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+; annotations only

Overrides = Mapping[str, Any] | Iterable[str] | None


def read_config_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML config file; an empty file is an empty mapping."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got a {type(raw).__name__}")
    return raw


def parse_override(text: str) -> tuple[str, Any]:
    """`name=value` -> (name, value read as YAML; `1e-3` style numbers become floats). `--name` is `name`."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like name=value")
    key, raw_value = text.split("=", 1)
    key = key.strip().lstrip("-").replace("-", "_")
    value = yaml.safe_load(raw_value) if raw_value.strip() else None
    if isinstance(value, str):
        # YAML 1.1 reads `3e-4` as a string; a config never means that
        try:
            value = float(value) if any(c in value.lower() for c in "e.") else value
        except ValueError:
            pass
    return key, value


def with_overrides(raw: Mapping[str, Any], overrides: Overrides) -> dict[str, Any]:
    """`raw` updated by `overrides`: a mapping of values, or `name=value` strings applied in order."""
    merged = dict(raw)
    if isinstance(overrides, Mapping):
        merged.update(overrides)
    else:
        merged.update(parse_override(text) for text in overrides or ())
    return merged


def check_keys(raw: Mapping[str, Any], valid: Iterable[str], source: str) -> None:
    """A ValueError naming the source, the unknown keys and the valid ones."""
    valid = set(valid)
    unknown = sorted(set(raw) - valid, key=str)
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(map(str, unknown))}; valid keys: {', '.join(sorted(valid))}"
        )


def dataclass_arguments(cls: type, raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The keyword arguments of dataclass `cls` from a config mapping: unknown and missing keys are errors, float
    fields given as strings (`3e-4`) become floats."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{source}: expected a mapping of keys, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(raw, fields, source)
    for name, field in fields.items():
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if required and name not in raw:
            raise ValueError(f"{source}: missing key '{name}'")
    arguments = dict(raw)
    for name, value in arguments.items():
        if isinstance(value, str) and _is_float_field(fields[name]):
            try:
                arguments[name] = float(value)
            except ValueError:
                raise ValueError(f"{source}: {name} must be a number, got {value!r}") from None
    return arguments


def _is_float_field(field: dataclasses.Field) -> bool:
    # under `from __future__ import annotations` the type is its source text, e.g. "float | None"
    text = field.type.__name__ if isinstance(field.type, type) else str(field.type)
    return "float" in (part.strip() for part in text.split("|"))


class ConfigFile:
    """Mixin for a dataclass config: `from_dict`, `from_yaml`, `to_dict`, `to_yaml`.

    A config with nested parts or checks of its own overrides `from_dict` and builds on `dataclass_arguments`.
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config") -> Self:
        return cls(**dataclass_arguments(cls, raw, source))

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, overrides: Overrides = None) -> Self:
        """The file's keys (none without a file) updated by `overrides`; errors name the file (or the overrides)."""
        if path is None:
            return cls.from_dict(with_overrides({}, overrides), "overrides")
        return cls.from_dict(with_overrides(read_config_mapping(path), overrides), str(path))


__all__ = [
    "ConfigFile",
    "check_keys",
    "dataclass_arguments",
    "parse_override",
    "read_config_mapping",
    "with_overrides",
]
