"""The special tokens sit on the bottom layer: the data workers that need them import no model code."""

import json
import subprocess
import sys

import pytest

HEAVY = ("transformers", "torch", "loopcoder.model")
# the pipeline modules that place special tokens, and the module that holds them
LIGHT_IMPORTS = [
    "loopcoder.schemas.tokens",
    "loopcoder.pipelines.samples.fim",
    "loopcoder.pipelines.samples.packing",
    "loopcoder.pipelines.samples.repo_fim",
    "loopcoder.pipelines.samples.job",
]


def modules_after_import(module: str) -> set[str]:
    script = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("module", LIGHT_IMPORTS)
def test_importing_a_pipeline_module_that_needs_special_tokens_imports_no_model_code(module):
    loaded = modules_after_import(module)
    assert module in loaded and "pyarrow" in loaded  # what they import through loopcoder.schemas shows
    assert [name for name in HEAVY if name in loaded] == []
