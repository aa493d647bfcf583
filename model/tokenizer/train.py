"""Training the bundled byte-level BPE tokenizer on source code found on this machine.

    loopcoder tokenizer train --out model/tokenizer --vocab-size 8192

The corpus is the Python standard library plus the sources of installed packages (Python, C,
C++, CUDA, JavaScript, TypeScript, Rust, Go, Java, Shell, Markdown, YAML, JSON, ...), capped
per language so that Python does not crowd out the rest, read in sorted order.
"""

from __future__ import annotations

import logging
import os
import sysconfig
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from loopcoder.pipelines.io.languages import language_of
from loopcoder.schemas.tokens import CHAT_TEMPLATE, ENDOFTEXT, FIM_PAD, IM_END, SPECIAL_TOKENS

logger = logging.getLogger(__name__)

# Splits text before BPE: words with one leading non-letter, single digits, punctuation runs,
# newlines, and runs of spaces (code indentation) kept apart from the following word.
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

DEFAULT_VOCAB_SIZE = 8192
DEFAULT_BYTES_PER_LANGUAGE = {"Python": 32_000_000, "JSON": 1_000_000, "reStructuredText": 2_000_000}
DEFAULT_BYTES_OTHER_LANGUAGES = 6_000_000
MAX_FILE_BYTES = 256_000
SKIPPED_LANGUAGES = {"unknown", "Text"}


def default_source_dirs() -> list[Path]:
    """The standard library, then site-packages (where installed packages keep their sources)."""
    paths = sysconfig.get_paths()
    dirs = [Path(paths["stdlib"]), Path(paths["purelib"])]
    if paths["platlib"] != paths["purelib"]:
        dirs.append(Path(paths["platlib"]))
    return [d for d in dirs if d.is_dir()]


def iter_code_files(
    source_dirs: list[Path],
    bytes_per_language: dict[str, int] | None = None,
    bytes_other_languages: int = DEFAULT_BYTES_OTHER_LANGUAGES,
) -> Iterator[tuple[Path, str]]:
    """(path, language) of readable UTF-8 code files, in sorted order, within per-language caps."""
    caps = DEFAULT_BYTES_PER_LANGUAGE if bytes_per_language is None else bytes_per_language
    used: dict[str, int] = defaultdict(int)
    seen: set[Path] = set()
    for root in source_dirs:
        for directory, subdirs, files in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if d not in {"__pycache__", ".git", "test", "tests"})
            if Path(directory).resolve() in seen:
                continue
            seen.add(Path(directory).resolve())
            for name in sorted(files):
                path = Path(directory) / name
                language = language_of(name)
                if language in SKIPPED_LANGUAGES or not path.is_file():
                    continue
                size = path.stat().st_size
                cap = caps.get(language, bytes_other_languages)
                if size == 0 or size > MAX_FILE_BYTES or used[language] + size > cap:
                    continue
                used[language] += size
                yield path, language
    logger.info("tokenizer corpus: %s", ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(used.items())))


def _read_texts(files: list[Path]) -> Iterator[str]:
    for path in files:
        try:
            yield path.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue


def build_tokenizer_model(vocab_size: int):
    """An untrained `tokenizers.Tokenizer`: byte-level BPE, no normaliser (so decoding is lossless)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE(byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(files: list[Path], out_dir: Path, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Trains on `files` and writes a Hugging Face tokenizer directory to `out_dir`."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = build_tokenizer_model(vocab_size)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tokenizer.train_from_iterator(_read_texts(files), trainer=trainer, length=len(files))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (IM_END, ENDOFTEXT)],
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
    )
    fast.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    logger.info("wrote tokenizer with %d tokens to %s (pad %s, fim pad %s)", len(fast), out_dir, ENDOFTEXT, FIM_PAD)
    return out_dir
