"""The bundled code tokenizer: a byte-level BPE trained on real source code.

    from loopcoder.model.tokenizer import load_tokenizer
    tokenizer = load_tokenizer()            # the bundled one
    tokenizer = load_tokenizer("path/dir")  # any Hugging Face tokenizer directory

The files in this folder (`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`)
load with `AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER_DIR)`. `loopcoder tokenizer train`
rebuilds them (see docs/tokenizer.md).
"""

from __future__ import annotations

from pathlib import Path

from .special_tokens import CHAT_TEMPLATE, SPECIAL_TOKENS

BUNDLED_TOKENIZER_DIR = Path(__file__).resolve().parent


def load_tokenizer(path: str | Path | None = None):
    """A `PreTrainedTokenizerFast` from `path` (a local directory), or the bundled one."""
    from transformers import AutoTokenizer

    directory = BUNDLED_TOKENIZER_DIR if path is None else Path(path)
    if not (directory / "tokenizer.json").exists() and not (directory / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"no tokenizer in {directory} (expected tokenizer.json or tokenizer_config.json)")
    return AutoTokenizer.from_pretrained(str(directory))


__all__ = ["BUNDLED_TOKENIZER_DIR", "CHAT_TEMPLATE", "SPECIAL_TOKENS", "load_tokenizer"]
