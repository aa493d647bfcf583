"""The distribution installs one namespace, `loopcoder`, and nothing generic beside it."""

import importlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = ["model", "kernels", "pipelines", "postrain", "schemas", "jobs"]


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackages_import_through_the_namespace(name):
    module = importlib.import_module(f"loopcoder.{name}")
    assert Path(module.__file__).resolve().parent == REPO_ROOT / name


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env)


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_generic_top_level_names_are_not_importable(name, tmp_path):
    elsewhere = _python(f"import {name}", cwd=tmp_path)
    assert elsewhere.returncode != 0 and "ModuleNotFoundError" in elsewhere.stderr
    # from the repository root the folder is on sys.path: it refuses to load as a second copy
    at_root = _python(f"import {name}", cwd=REPO_ROOT)
    assert at_root.returncode != 0
    assert f"import this package as `loopcoder.{name}`" in at_root.stderr


def test_wheel_holds_only_the_namespace_and_its_data(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO_ROOT)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("loopcoder-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"loopcoder", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "loopcoder/__init__.py" not in names, "loopcoder is a namespace package"
    for required in ["loopcoder/model/tokenizer/tokenizer.json", "loopcoder/jobs/data/sample_corpus.yaml",
                     "loopcoder/schemas/records.py", "loopcoder/jobs/cli.py",
                     "loopcoder/jobs/data/classifiers/code_rules.npz"]:  # fmt: skip
        assert required in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "loopcoder = loopcoder.jobs.cli:main" in entry_points


def test_transformers_imports_from_the_repository_root():
    # transformers probes for a Hub package named `kernels` by importing it, which finds our folder from here
    result = _python("import transformers.modeling_utils as m; print(m.is_kernels_available())", cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"
