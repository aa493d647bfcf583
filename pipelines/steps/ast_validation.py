"""AST validation with tree-sitter, in a child process so that a per-file time budget holds.

Grammars can hang or crash on pathological input, and a C call that never returns cannot be
interrupted from Python. `AstValidator` therefore parses in a helper process
(`python -m loopcoder.pipelines.steps.ast_validation`) that it talks to over pipes: it sends one file,
waits at most `time_budget_seconds` for the answer, and on a timeout kills the helper (status
`timeout`) and starts a new one for the next file; a helper that dies (segfault) gives `crash`.

The parse status is recorded in `doc["ast_status"]` (the `ast_status` column):

| status | meaning | kept |
|---|---|---|
| `ok` | no ERROR or MISSING node | yes |
| `tolerated` | errors, but their share of bytes is within the language's tolerance | yes |
| `error` | ERROR/MISSING nodes above the tolerance | no (`ast_error`) |
| `timeout` | the parse took longer than the budget | no (`ast_timeout`) |
| `crash` | the parser process died | no (`ast_crash`) |
| null | no grammar configured for the language | yes |
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from loopcoder.pipelines.steps.filters import Doc, Step

# Our language names (pipelines/io/languages.py) -> tree-sitter-language-pack grammar names.
DEFAULT_GRAMMARS: dict[str, str] = {
    "Python": "python",
    "Java": "java",
    "JavaScript": "javascript",
    "TypeScript": "typescript",
    "C": "c",
    "C++": "cpp",
    "C#": "csharp",
    "Go": "go",
    "Rust": "rust",
    "PHP": "php",
}
_HEADER = struct.Struct("<I")


@dataclass
class AstConfig:
    """`grammars`: language -> grammar; `tolerance`: language -> allowed share of bytes in ERROR/MISSING nodes."""

    grammars: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_GRAMMARS))
    # extension -> grammar tried when the first one reports errors: a `.h` file is C or C++
    fallback_grammars: dict[str, str] = field(default_factory=lambda: {".h": "cpp"})
    tolerance: dict[str, float] = field(default_factory=dict)
    time_budget_seconds: float = 5.0


class AstValidator(Step):
    """Parses each file of a configured language; rejects trees with ERROR/MISSING nodes.

    Reasons: `ast_error`, `ast_timeout`, `ast_crash`. Counts by status in `stats.extra`.
    """

    name = "ast"

    def __init__(self, config: AstConfig | None = None, **overrides: Any):
        super().__init__()
        self.config = config or AstConfig(**overrides)
        self._child: subprocess.Popen | None = None

    def apply(self, doc: Doc) -> str | None:
        grammar = self.config.grammars.get(doc["language"])
        if grammar is None:
            doc["ast_status"] = None
            return None
        if grammar == "typescript" and doc["path"].endswith(".tsx"):
            grammar = "tsx"
        tolerance = self.config.tolerance.get(doc["language"], 0.0)
        status = self.parse_status(grammar, doc["content"], tolerance)
        fallback = self.config.fallback_grammars.get(PurePosixPath(doc["path"]).suffix.lower())
        if status == "error" and fallback is not None:
            status = self.parse_status(fallback, doc["content"], tolerance)
        doc["ast_status"] = status
        self.stats.count(f"status_{status}")
        return None if status in ("ok", "tolerated") else f"ast_{status}"

    def parse_status(self, grammar: str, content: str, tolerance: float) -> str:
        """`ok`, `tolerated`, `error`, `timeout` or `crash` for one file, within the time budget."""
        payload = pickle.dumps((grammar, content.encode("utf-8", "surrogatepass"), tolerance))
        child = self._ensure_child()
        try:
            child.stdin.write(_HEADER.pack(len(payload)) + payload)
            child.stdin.flush()
            answer = _read_message(child.stdout, deadline=time.monotonic() + self.config.time_budget_seconds)
        except TimeoutError:
            self._kill_child()
            return "timeout"
        except (EOFError, BrokenPipeError, OSError):
            self._kill_child()
            return "crash"
        return pickle.loads(answer)

    def _ensure_child(self) -> subprocess.Popen:
        if self._child is None or self._child.poll() is not None:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "loopcoder.pipelines.steps.ast_validation"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        return self._child

    def _kill_child(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child.wait()
            self._child = None

    def close(self) -> None:
        if self._child is not None:
            self._child.stdin.close()
            try:
                self._child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._kill_child()
            self._child = None

    def __del__(self) -> None:
        try:
            self._kill_child()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _read_exact(stream, size: int, deadline: float | None) -> bytes:
    chunks, missing = [], size
    fd = stream.fileno()
    while missing:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
        chunk = os.read(fd, missing)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def _read_message(stream, deadline: float | None = None) -> bytes:
    (size,) = _HEADER.unpack(_read_exact(stream, _HEADER.size, deadline))
    return _read_exact(stream, size, deadline)


def tree_status(tree, source_size: int, tolerance: float) -> str:
    """`ok`, `tolerated` or `error` from a parsed tree (iterative walk: deep trees do not recurse)."""
    root = tree.root_node
    if not root.has_error:
        return "ok"
    if tolerance <= 0:
        return "error"
    # Only subtrees that contain an error are visited; an explicit stack keeps deep trees off the C stack.
    bad, stack = 0, [root]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            bad += max(node.end_byte - node.start_byte, 1)
        elif node.has_error:
            stack.extend(node.children)
    return "tolerated" if bad <= tolerance * max(source_size, 1) else "error"


def _serve() -> None:
    """The helper process: reads (grammar, source, tolerance) messages, answers with a status."""
    from tree_sitter_language_pack import get_parser

    parsers: dict[str, Any] = {}
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            grammar, source, tolerance = pickle.loads(_read_message(stdin))
        except EOFError:
            return
        parser = parsers.get(grammar)
        if parser is None:
            parser = parsers[grammar] = get_parser(grammar)
        status = tree_status(parser.parse(source), len(source), tolerance)
        answer = pickle.dumps(status)
        stdout.write(_HEADER.pack(len(answer)) + answer)
        stdout.flush()


if __name__ == "__main__":
    _serve()
