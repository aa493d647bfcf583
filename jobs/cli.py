"""The `loopcoder` command.

    loopcoder [--debug] GROUP COMMAND [ARGS]

Groups: `data` (pipeline jobs, sample corpus, publishing), `shards` (inspection), `model`
(fold, convert, diagnose, generate), `train` (sft, grpo), `sandbox`, `tokenizer`. Each group
lives in `loopcoder.jobs.commands.<group>` as a `register(subparsers)` function, so groups
grow without touching this file's dispatch.

Errors are printed as one line (`loopcoder: error: ...`) and exit with status 1; `--debug`
shows the traceback instead. Exceptions defined in loopcoder, `ValueError` and
`FileNotFoundError` print their message alone; any other is prefixed with its type.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_GROUPS = {
    "data": "run data pipeline jobs, build the sample corpus, publish datasets",
    "shards": "inspect and validate Arrow/Parquet shards",
    "model": "fold, convert, diagnose and generate with looped models",
    "train": "supervised fine-tuning and GRPO on DeepSpeed",
    "sandbox": "run untrusted code under limits",
    "tokenizer": "train and inspect the bundled code tokenizer",
    "eval": "pass@k, FIM exact match / edit similarity, held-out loss, loop-count study",
    "rl": "mine and prepare problem sets for reinforcement learning",
}


class UserError(Exception):
    """An error caused by the user's input: shown as one line, never as a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loopcoder",
        description="Training stack for looped (Parallel Loop) code language models.",
        epilog="Run `loopcoder GROUP --help` for the commands of a group. Docs: docs/index.md",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    # the deepspeed launcher passes --local_rank to every process; the rank also comes from LOCAL_RANK
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    groups = parser.add_subparsers(dest="group", metavar="GROUP", title="command groups")
    for name, help_text in COMMAND_GROUPS.items():
        group_parser = groups.add_parser(name, help=help_text, description=help_text.capitalize() + ".")
        commands = group_parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
        module = importlib.import_module(f"loopcoder.jobs.commands.{name}")
        module.register(commands)
        group_parser.set_defaults(handler=_print_help(group_parser))
    parser.set_defaults(handler=_print_help(parser))
    return parser


def _print_help(parser: argparse.ArgumentParser):
    def handler(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 0

    return handler


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loopcoder")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("loopcoder: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - one readable line unless --debug
        if args.debug:
            raise
        message = str(error) or type(error).__name__
        # our own exceptions and input errors carry readable messages; others are named by type
        readable = isinstance(error, FileNotFoundError | ValueError) or type(error).__module__.startswith("loopcoder.")
        if not readable:
            message = f"{type(error).__name__}: {message}"
        print(f"loopcoder: error: {message} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
