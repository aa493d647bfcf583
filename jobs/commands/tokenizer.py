"""`loopcoder tokenizer` commands: retrain the bundled tokenizer, encode text with any tokenizer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train the byte-level BPE code tokenizer on sources installed on this machine",
        description="Train a byte-level BPE tokenizer on the Python standard library and installed "
        "packages' sources (or --source directories) and save it in Hugging Face format.",
    )
    train.add_argument("--out", type=Path, required=True, help="output directory (the bundled one is model/tokenizer)")
    train.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size including special tokens")
    train.add_argument(
        "--source",
        type=Path,
        action="append",
        help="directory to read code from (repeatable); default: the standard library and site-packages",
    )
    train.set_defaults(handler=_train)

    encode = commands.add_parser("encode", help="show how a text or file is tokenised")
    encode.add_argument("text", nargs="?", help="text to encode (or use --file)")
    encode.add_argument("--file", type=Path, help="file to encode")
    encode.add_argument("--tokenizer", type=Path, help="Hugging Face tokenizer directory (default: bundled)")
    encode.add_argument("--json", action="store_true", help="print ids and pieces as JSON")
    encode.set_defaults(handler=_encode)


def _train(args: argparse.Namespace) -> int:
    from loopcoder.model.tokenizer.train import default_source_dirs, iter_code_files, train_tokenizer

    sources = args.source or default_source_dirs()
    for source in sources:
        if not source.is_dir():
            raise FileNotFoundError(f"--source {source} is not a directory")
    files = [path for path, _ in iter_code_files(sources)]
    if not files:
        raise ValueError(f"no code files found under {', '.join(map(str, sources))}")
    train_tokenizer(files, args.out, vocab_size=args.vocab_size)
    print(f"tokenizer trained on {len(files)} files, saved to {args.out}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from loopcoder.schemas.tokens import load_tokenizer

    if (args.text is None) == (args.file is None):
        raise ValueError("give either TEXT or --file")
    text = args.text if args.file is None else args.file.read_text(encoding="utf-8")
    tokenizer = load_tokenizer(args.tokenizer)
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = [tokenizer.decode([i]) for i in ids]
    if args.json:
        print(json.dumps({"num_tokens": len(ids), "ids": ids, "pieces": pieces}, ensure_ascii=False))
    else:
        print(f"{len(text)} characters -> {len(ids)} tokens ({len(text) / max(len(ids), 1):.2f} chars/token)")
        print(" | ".join(repr(p)[1:-1] for p in pieces[:200]) + (" ..." if len(pieces) > 200 else ""))
    return 0
