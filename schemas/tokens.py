"""The tokenizer's contract: its special tokens and their ids, the chat template, and its one loader.

    from loopcoder.schemas.tokens import FIM_PREFIX, SPECIAL_TOKEN_IDS, load_tokenizer
    tokenizer = load_tokenizer()                                  # the bundled one
    tokenizer = load_tokenizer("path/dir")                        # any Hugging Face tokenizer directory
    tokenizer = load_tokenizer(model_dir, fallback="bundled", vocab_size=8192)

On the bottom layer so that data workers (FIM, packing, repository samples) read the token
strings without importing the model package, transformers or torch: importing this module
imports neither; `load_tokenizer` imports transformers when it is called, and torch only for a
tokenizer whose config names a model-specific class (`AutoTokenizer`): the bundled one and any
whose `tokenizer_class` is the generic fast class load as `PreTrainedTokenizerFast`, the class
`AutoTokenizer` would pick, without the 3 s of torch in every data worker. The bundled files
(`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`) ship in `model/tokenizer/`,
where `loopcoder tokenizer train` writes them (docs/tokenizer.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_PAD = "<|fim_pad|>"
REPO_NAME = "<|repo_name|>"
FILE_SEP = "<|file_sep|>"

# Order fixes the ids of the bundled tokenizer: the special tokens take ids 0..8, ahead of the 256
# byte symbols. Other tokenizers (the released 76,800-token one) give them other ids.
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD, REPO_NAME, FILE_SEP]
SPECIAL_TOKEN_IDS = {token: number for number, token in enumerate(SPECIAL_TOKENS)}

# ChatML: `<|im_start|>{role}\n{content}<|im_end|>\n` per turn; the generation prompt opens an
# assistant turn. `{% generation %}` marks assistant text so that
# `apply_chat_template(..., return_assistant_tokens_mask=True)` yields the SFT loss mask.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# loopcoder.schemas and loopcoder.model are sibling folders both in the repository and installed
BUNDLED_TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "model" / "tokenizer"
FALLBACKS = (None, "bundled")
# `tokenizer_class` values meaning the generic fast tokenizer (`TokenizersBackend` from transformers 5 on)
GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def has_tokenizer(path: str | Path) -> bool:
    """Whether a directory holds a Hugging Face tokenizer (`tokenizer.json` or `tokenizer_config.json`)."""
    directory = Path(path)
    return (directory / "tokenizer.json").exists() or (directory / "tokenizer_config.json").exists()


def load_tokenizer(path: str | Path | None = None, *, fallback: str | None = None, vocab_size: int | None = None):
    """A `PreTrainedTokenizerFast` from the directory `path`, or the bundled one when `path` is None.

    A directory without a tokenizer raises FileNotFoundError, unless `fallback="bundled"` (a model
    saved without its tokenizer, such as `loopcoder model init`'s): then the bundled tokenizer, and
    with `vocab_size` only when the model's vocabulary holds every bundled id (ValueError otherwise).
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if path is not None and has_tokenizer(path):
        return _tokenizer_class(Path(path)).from_pretrained(str(path))
    if path is not None and fallback is None:
        raise FileNotFoundError(f"no tokenizer in {path} (expected tokenizer.json or tokenizer_config.json)")
    tokenizer = _tokenizer_class(BUNDLED_TOKENIZER_DIR).from_pretrained(str(BUNDLED_TOKENIZER_DIR))
    if path is not None:
        if vocab_size is not None and len(tokenizer) > vocab_size:
            raise ValueError(
                f"{path} has no tokenizer and its vocabulary ({vocab_size}) is smaller than the bundled "
                f"tokenizer's ({len(tokenizer)}); save a tokenizer beside the model"
            )
        logger.info("no tokenizer in %s: using the bundled tokenizer", path)
    return tokenizer


def _tokenizer_class(directory: Path):
    """`PreTrainedTokenizerFast` when the directory's config names the generic fast class, else `AutoTokenizer`."""
    config = directory / "tokenizer_config.json"
    name = json.loads(config.read_text()).get("tokenizer_class") if config.exists() else None
    if name in GENERIC_TOKENIZER_CLASSES and (directory / "tokenizer.json").exists():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast
    from transformers import AutoTokenizer

    return AutoTokenizer
