"""The one config-file loader: errors that name the file and the valid keys, overrides, and no second loader."""

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from loopcoder.schemas.config_file import (
    ConfigFile,
    dataclass_arguments,
    parse_override,
    read_config_mapping,
    with_overrides,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_FOLDERS = ("model", "kernels", "pipelines", "schemas", "postrain", "jobs")
# the YAML reads that are not config files, each with its reason
OTHER_YAML_READS = {
    "pipelines/publishing.py": "shows a job's resolved config, as written beside its output (any store), on a card",
}


@dataclass
class Example(ConfigFile):
    name: str
    rate: float = 0.1
    steps: int = 10
    floor: float | None = None
    tags: list[str] = field(default_factory=list)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"config {tmp_path / 'absent.yaml'} does not exist")):
        Example.from_yaml(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    "text, message",
    [("- a\n- b\n", "expected a mapping of config keys, got a list"), ("name: [unclosed\n", "not valid YAML")],
)
def test_a_file_that_is_not_a_mapping_is_named(tmp_path, text, message):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
        read_config_mapping(path)


def test_an_empty_file_is_an_empty_mapping_and_required_keys_are_named(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    assert read_config_mapping(path) == {}
    with pytest.raises(ValueError, match=re.escape(f"{path}: missing key 'name'")):
        Example.from_yaml(path)


def test_an_unknown_key_names_the_source_and_lists_the_valid_ones(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: x\nrtae: 0.5\nzzz: 1\n")
    with pytest.raises(ValueError) as raised:
        Example.from_yaml(path)
    assert str(raised.value) == f"{path}: unknown key(s) rtae, zzz; valid keys: floor, name, rate, steps, tags"
    with pytest.raises(ValueError, match="^step 'x': unknown key"):
        dataclass_arguments(Example, {"name": "x", "bogus": 1}, "step 'x'")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("rate=3e-4", ("rate", 3e-4)),  # YAML 1.1 reads 3e-4 as a string
        ("--max-steps=20", ("max_steps", 20)),
        ("tags=[a, b]", ("tags", ["a", "b"])),
        ("mixture={sft: 1.0}", ("mixture", {"sft": 1.0})),
        ("output_dir=runs/try.2", ("output_dir", "runs/try.2")),
        ("name=", ("name", None)),
        ("note=a=b", ("note", "a=b")),
    ],
)
def test_overrides_are_read_as_yaml(text, expected):
    assert parse_override(text) == expected


def test_an_override_without_equals_is_refused():
    with pytest.raises(ValueError, match="'max_steps' must look like name=value"):
        parse_override("max_steps")


def test_defaults_then_file_then_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: from_file\nrate: 3e-4\nsteps: 5\n")
    loaded = Example.from_yaml(path)
    assert (loaded.name, loaded.rate, loaded.steps, loaded.tags) == ("from_file", 3e-4, 5, [])
    assert isinstance(loaded.rate, float)
    overridden = Example.from_yaml(path, ["steps=7", "steps=8", "floor=1e-5", "tags=[x]"])
    assert (overridden.steps, overridden.floor, overridden.tags) == (8, 1e-5, ["x"])
    # a program passes values, not text: a mapping is applied as it is
    assert Example.from_yaml(path, {"name": "1e-3"}).name == "1e-3"
    assert with_overrides({"a": 1}, None) == {"a": 1}
    assert Example.from_yaml(None, ["name=x"]).to_dict() == Example(name="x").to_dict()
    with pytest.raises(ValueError, match="^overrides: unknown key"):
        Example.from_yaml(None, ["name=x", "nme=y"])


def test_a_float_field_that_is_not_a_number_is_named():
    with pytest.raises(ValueError, match="config: rate must be a number, got 'fast'"):
        Example.from_dict({"name": "x", "rate": "fast"})


def test_float_fields_are_found_with_and_without_postponed_annotations():
    @dataclass
    class Evaluated:  # types as objects, as in a module without `from __future__ import annotations`
        rate: float = 0.1
        floor: float | None = None
        count: int = 1
        label: str = ""

    arguments = dataclass_arguments(Evaluated, {"rate": "3e-4", "floor": "1e-5", "label": "2e-3"}, "step")
    assert arguments == {"rate": 3e-4, "floor": 1e-5, "label": "2e-3"}
    Evaluated.__dataclass_fields__["rate"].type = "float"
    assert dataclass_arguments(Evaluated, {"rate": "1e-2"}, "step") == {"rate": 1e-2}


def test_a_section_that_is_not_a_mapping_is_named():
    with pytest.raises(ValueError, match="job.yaml: tasks: expected a mapping of keys, got 5"):
        dataclass_arguments(Example, 5, "job.yaml: tasks")


def test_the_round_trip_through_yaml_is_exact(tmp_path):
    config = Example(name="x", rate=2.5e-4, tags=["a"])
    path = tmp_path / "resolved.yaml"
    path.write_text(config.to_yaml())
    assert Example.from_yaml(path) == config


def yaml_loads(path: Path) -> list[int]:
    """Line numbers of the YAML parsing calls in a module (`yaml.safe_load(...)`, `from yaml import load`, ...)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "yaml":
            if node.attr in ("load", "safe_load", "full_load", "unsafe_load", "load_all", "safe_load_all"):
                lines.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and node.module == "yaml":
            if any("load" in alias.name for alias in node.names):
                lines.append(node.lineno)
    return lines


def test_config_files_are_read_only_by_the_one_loader():
    found = {}
    for folder in PACKAGE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if yaml_loads(path):
                found[relative] = yaml_loads(path)
    assert "schemas/config_file.py" in found  # the check sees a real read
    others = set(found) - {"schemas/config_file.py"}
    assert others == set(OTHER_YAML_READS), f"YAML read outside loopcoder.schemas.config_file: {found}"
