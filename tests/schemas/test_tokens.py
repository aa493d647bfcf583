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


def test_a_data_worker_loads_the_bundled_tokenizer_without_torch_and_as_auto_tokenizer_would():
    script = (
        "import json, sys\n"
        "from loopcoder.schemas.tokens import load_tokenizer\n"
        "tokenizer = load_tokenizer()\n"
        "messages = [{'role': 'user', 'content': 'add'}, {'role': 'assistant', 'content': 'def add(a, b):\\n    return a + b'}]\n"
        "chat = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)\n"
        "encoded = {'class': type(tokenizer).__name__, 'ids': tokenizer('x = 1\\n<|fim_prefix|>')['input_ids'],\n"
        "           'chat': chat['input_ids'], 'mask': chat['assistant_masks'], 'torch': 'torch' in sys.modules}\n"
        "from transformers import AutoTokenizer\n"
        "from loopcoder.schemas.tokens import BUNDLED_TOKENIZER_DIR\n"
        "auto = AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER_DIR))\n"
        "chat = auto.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)\n"
        "expected = {'class': type(auto).__name__, 'ids': auto('x = 1\\n<|fim_prefix|>')['input_ids'],\n"
        "            'chat': chat['input_ids'], 'mask': chat['assistant_masks']}\n"
        "print(json.dumps([encoded, expected]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    encoded, expected = json.loads(done.stdout.splitlines()[-1])
    assert encoded.pop("torch") is False
    assert encoded == expected and 1 in expected["mask"]
