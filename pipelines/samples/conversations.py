"""SFT conversations built from the cleaned corpus and from commit triplets.

Two builders, each a pure function of one record (a `commit_triplet`, or a kept `filtered_file`
row) and the config; every random choice (which prompt wording, which functions of a file) is
drawn from a generator seeded by (`seed`, record id), so the output does not depend on how the
records are partitioned. Each returns `sft_conversation` records and counts what it rejected
by reason; the difficulty fields are left empty for the scorer (`samples/sft_difficulty.py`).

* `commit_conversation(triplet)`: user = the commit message and the changed files before the
  change (files the commit adds are named as new); assistant = the patch as a unified diff
  (`answer: patch`, `index` lines without meaning to a model are dropped) or every changed file's
  new content (`answer: new_files`). Rejected: `uninformative_message` (empty after trailers
  are dropped, or "wip", "fix typo", "update readme", ...), `empty_patch`, `special_token`,
  `too_long` (prompt plus answer above `max_chars`).
* `docstring_conversations(file)`: every documented function that tree-sitter finds, at most
  `max_per_file` (a seeded choice). Python: a string literal as the first statement of the body;
  Java, JavaScript and TypeScript: a `/** ... */` comment right above the function; Go: `//`
  lines right above; Rust: `///` lines right above. User = the signature and its documentation
  (decorators included, the class named for a method); assistant = the whole function. Rejected
  per function: `short_docstring`, `stub` (no statement but `pass`, `...`, `raise
  NotImplementedError` or nothing), `parse_error` (an ERROR node inside), `too_long`
  (`max_function_lines`), `special_token`.

Files whose `ast_status` says the parser failed on them (`error`, `timeout`, `crash`) are skipped
(`unparsable_file`): tree-sitter runs here in-process, as in file-level FIM, on files that AST
validation already parsed within its time budget.
"""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from dataclasses import dataclass
from typing import Any

from loopcoder.pipelines.io.languages import language_of
from loopcoder.pipelines.samples.seeding import document_rng
from loopcoder.pipelines.samples.sft_data import CONTROL_TOKEN
from loopcoder.pipelines.steps.ast_validation import DEFAULT_GRAMMARS

COMMIT_PROMPTS = (
    "Apply the change described by this commit message to the files below.",
    "Here is a commit message and the files it touches. Make the change it describes.",
    "Implement the following change in this repository.",
)
PATCH_ANSWER = "Answer with a unified diff that `git apply` accepts."
NEW_FILES_ANSWER = "Answer with the complete new content of every file you change."
DOCSTRING_PROMPTS = (
    "Implement the {language} function below so that it does what its documentation says.",
    "Write the body of this {language} function, following its documentation.",
    "Complete the following {language} code.",
)
MESSAGE_TRAILER = re.compile(r"^\s*(signed-off-by|co-authored-by|change-id|reviewed-by|acked-by|cc):.*$", re.I | re.M)
UNINFORMATIVE_MESSAGE = re.compile(
    r"^(wip|tmp|temp|test|tests|fix|fixes|fixed|typo|fix typo|typos|minor|cleanup|clean up|update|updates|"
    r"changes|misc|format|formatting|lint|bump|bump version|version bump|release|update readme|readme|"
    r"update docs?|\.|-+|\d+)\W*$",
    re.I,
)
INDEX_LINE = re.compile(r"^index [0-9a-f]+\.\.[0-9a-f]+( \d+)?\n", re.M)
UNPARSABLE_STATUSES = {"error", "timeout", "crash"}

# our language name -> (function node types, doc comment prefix or None for a Python docstring)
DOC_STYLES: dict[str, tuple[frozenset[str], str | None]] = {
    "Python": (frozenset({"function_definition"}), None),
    "Java": (frozenset({"method_declaration", "constructor_declaration"}), "/**"),
    "JavaScript": (frozenset({"function_declaration", "generator_function_declaration", "method_definition"}), "/**"),
    "TypeScript": (frozenset({"function_declaration", "generator_function_declaration", "method_definition"}), "/**"),
    "Go": (frozenset({"function_declaration", "method_declaration"}), "//"),
    "Rust": (frozenset({"function_item"}), "///"),
}
COMMENT_TYPES = frozenset({"comment", "line_comment", "block_comment"})
# wrappers whose start is the function's start for documentation purposes
WRAPPERS = frozenset({"decorated_definition", "export_statement"})
CLASS_TYPES = frozenset({"class_definition", "class_declaration", "class", "impl_item", "interface_declaration"})


@dataclass
class ConversationConfig:
    """Knobs of both builders (docs/sft_data.md)."""

    seed: int = 0
    answer: str = "patch"  # commits: `patch` (unified diff) or `new_files` (full new contents)
    max_chars: int = 32_000  # prompt + answer; longer conversations are rejected (`too_long`)
    min_docstring_chars: int = 16
    max_function_lines: int = 150
    max_per_file: int = 8
    languages: tuple[str, ...] = tuple(DOC_STYLES)

    def __post_init__(self) -> None:
        if self.answer not in ("patch", "new_files"):
            raise ValueError(f"answer must be 'patch' or 'new_files', got {self.answer!r}")
        unknown = set(self.languages) - set(DOC_STYLES)
        if unknown:
            raise ValueError(f"no docstring rule for {sorted(unknown)}; known: {', '.join(DOC_STYLES)}")
        self.languages = tuple(self.languages)


def fence_info(language: str | None) -> str:
    """The info string of a Markdown code block for `language` (the tree-sitter grammar name, or empty)."""
    return DEFAULT_GRAMMARS.get(language or "", "")


def code_block(text: str, info: str = "") -> str:
    """A fenced Markdown block whose fence is longer than any backtick run inside `text`."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text.rstrip(chr(10))}\n{fence}"


_FENCE = re.compile(r"^(`{3,}|~{3,})[ \t]*([^\n`]*)$")


def fenced_code_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, code) of each fenced block in Markdown `text`; an unclosed block runs to the end."""
    blocks, lines, index = [], text.split("\n"), 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        index += 1
        if not opening:
            continue
        fence, info, body = opening.group(1), opening.group(2).strip().split(" ")[0].lower(), []
        while index < len(lines):
            line = lines[index]
            index += 1
            if line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
                break
            body.append(line)
        blocks.append((info, "\n".join(body)))
    return blocks


def _clean_message(message: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", MESSAGE_TRAILER.sub("", message)).strip()


def _majority_language(paths: list[str]) -> str | None:
    languages = Counter(language_of(p) for p in paths)
    languages.pop("unknown", None)
    return min(languages, key=lambda name: (-languages[name], name)) if languages else None


def commit_conversation(
    triplet: dict[str, Any], config: ConversationConfig, rejections: Counter
) -> dict[str, Any] | None:
    """One `sft_conversation` from one `commit_triplet`, or None with the reason counted."""
    message = _clean_message(triplet["message"] or "")
    if not message or UNINFORMATIVE_MESSAGE.match(message):
        rejections["uninformative_message"] += 1
        return None
    if not (triplet["patch"] or "").strip():
        rejections["empty_patch"] += 1
        return None
    rng = document_rng(config.seed, triplet["id"], salt="commit-conversation")
    parts = [rng.choice(COMMIT_PROMPTS), PATCH_ANSWER if config.answer == "patch" else NEW_FILES_ANSWER, ""]
    parts += ["Commit message:", code_block(message, "text"), ""]
    for file in triplet["old_files"]:
        if file["content"] is None:
            parts.append(f"`{file['path']}` does not exist yet.")
        else:
            parts += [f"`{file['path']}`:", code_block(file["content"], fence_info(language_of(file["path"])))]
        parts.append("")
    if config.answer == "patch":
        answer = code_block(INDEX_LINE.sub("", triplet["patch"]), "diff")
    else:
        pieces = []
        for file in triplet["new_files"]:
            if file["content"] is None:
                pieces.append(f"Delete `{file['path']}`.")
            else:
                pieces += [f"`{file['path']}`:", code_block(file["content"], fence_info(language_of(file["path"])))]
        answer = "\n\n".join(pieces)
    prompt = "\n".join(parts).strip()
    if CONTROL_TOKEN.search(prompt) or CONTROL_TOKEN.search(answer):
        rejections["special_token"] += 1
        return None
    if len(prompt) + len(answer) > config.max_chars:
        rejections["too_long"] += 1
        return None
    return {
        "id": f"commit:{triplet['id']}",
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
        "source": triplet["repo"],
        "difficulty": None,
        "difficulty_tier": None,
        "kind": "commit",
        "language": _majority_language([f["path"] for f in triplet["old_files"]]),
    }


def commit_conversations(
    triplets: list[dict[str, Any]], config: ConversationConfig | None = None
) -> tuple[list[dict[str, Any]], Counter]:
    """Conversations of a batch of triplets (e.g. one repository's) and the rejections by reason."""
    config = config or ConversationConfig()
    rejections: Counter = Counter()
    records = [commit_conversation(t, config, rejections) for t in triplets]
    return [r for r in records if r is not None], rejections


class DocstringExtractor:
    """`__call__(file_row)` -> docstring -> implementation conversations of one file; `rejections` counts why not.

    Holds one tree-sitter parser per grammar, so make one per worker (one per Ray worker process).
    """

    def __init__(self, config: ConversationConfig | None = None):
        self.config = config or ConversationConfig()
        self.rejections: Counter = Counter()
        self._parsers: dict[str, Any] = {}

    def _parser(self, grammar: str):
        if grammar not in self._parsers:
            from tree_sitter_language_pack import get_parser

            self._parsers[grammar] = get_parser(grammar)
        return self._parsers[grammar]

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        language = row["language"]
        if language not in self.config.languages:
            return []
        if row.get("ast_status") in UNPARSABLE_STATUSES:
            self.rejections["unparsable_file"] += 1
            return []
        grammar = DEFAULT_GRAMMARS[language]
        if grammar == "typescript" and row["path"].endswith(".tsx"):
            grammar = "tsx"
        source = row["content"].encode("utf-8")
        tree = self._parser(grammar).parse(source)
        function_types, doc_prefix = DOC_STYLES[language]
        found = []
        stack = [tree.root_node]
        while stack:
            node = stack.pop()
            stack.extend(reversed(node.children))
            if node.type in function_types:
                piece = self._documented(node, source, doc_prefix)
                if piece is not None:
                    found.append(piece)
        if len(found) > self.config.max_per_file:
            rng = document_rng(self.config.seed, row["id"], salt="docstrings")
            found = sorted(rng.sample(found, self.config.max_per_file), key=lambda piece: piece["line"])
        return [self._conversation(row, language, piece) for piece in found]

    def _documented(self, node, source: bytes, doc_prefix: str | None) -> dict[str, Any] | None:
        body = node.child_by_field_name("body")
        if body is None:
            return None  # a declaration without a body (interface or abstract method)
        anchor = node.parent if node.parent is not None and node.parent.type in WRAPPERS else node
        if doc_prefix is None:
            docstring, statements = _python_docstring(body)
            if docstring is None:
                return None
            doc_text = _text(source, docstring)
            prompt_end = docstring.end_byte
        else:
            comments = _comments_above(anchor, doc_prefix)
            if not comments:
                return None
            doc_text = "\n".join(_text(source, c).rstrip("\n") for c in comments)
            statements = [c for c in body.named_children if c.type not in COMMENT_TYPES]
            if len(statements) == 1 and statements[0].type == "statement_list":  # Go wraps a block's statements
                statements = statements[0].named_children
            prompt_end = body.start_byte
        if len(_doc_words(doc_text)) < self.config.min_docstring_chars:
            return self._reject("short_docstring")
        if _is_stub(statements, source):
            return self._reject("stub")
        if node.has_error:
            return self._reject("parse_error")
        if anchor.end_point.row - anchor.start_point.row + 1 > self.config.max_function_lines:
            return self._reject("too_long")
        start = source.rfind(b"\n", 0, anchor.start_byte) + 1  # whole first line, so dedent sees its indent
        function = textwrap.dedent(source[start : anchor.end_byte].decode("utf-8"))
        signature = textwrap.dedent(source[start:prompt_end].decode("utf-8")).rstrip()
        if doc_prefix is not None:
            comment_start = source.rfind(b"\n", 0, comments[0].start_byte) + 1
            signature = textwrap.dedent(source[comment_start:prompt_end].decode("utf-8")).rstrip()
        return {
            "line": anchor.start_point.row + 1,
            "name": _text(source, node.child_by_field_name("name")) if node.child_by_field_name("name") else "",
            "owner": _owner(node, source),
            "signature": signature,
            "function": function.rstrip(),
        }

    def _reject(self, reason: str) -> None:
        self.rejections[reason] += 1
        return None

    def _conversation(self, row: dict[str, Any], language: str, piece: dict[str, Any]) -> dict[str, Any] | None:
        rng = document_rng(self.config.seed, f"{row['id']}:{piece['line']}", salt="docstring-conversation")
        info = fence_info(language)
        prompt = rng.choice(DOCSTRING_PROMPTS).format(language=language)
        if piece["owner"]:
            prompt += f" It is a method of `{piece['owner']}`."
        prompt += "\n\n" + code_block(piece["signature"], info)
        answer = code_block(piece["function"], info)
        if CONTROL_TOKEN.search(prompt) or CONTROL_TOKEN.search(answer):
            return self._reject("special_token")
        if len(prompt) + len(answer) > self.config.max_chars:
            return self._reject("too_long")
        return {
            "id": f"docstring:{row['id']}:{piece['line']}",
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            "source": row["repo"],
            "difficulty": None,
            "difficulty_tier": None,
            "kind": "docstring",
            "language": language,
        }


def docstring_conversations(
    rows: list[dict[str, Any]], config: ConversationConfig | None = None
) -> tuple[list[dict[str, Any]], Counter]:
    """Conversations of a batch of kept file rows (e.g. one input shard) and the rejections by reason."""
    extractor = DocstringExtractor(config)
    records = [c for row in rows for c in extractor(row) if c is not None]
    return records, extractor.rejections


def _text(source: bytes, node) -> str:
    return source[node.start_byte : node.end_byte].decode("utf-8")


def _python_docstring(body) -> tuple[Any, list]:
    statements = [c for c in body.named_children if c.type != "comment"]
    if not statements:
        return None, []
    first = statements[0]
    if first.type == "expression_statement" and first.named_child_count == 1:
        first = first.named_children[0]
    if first.type not in ("string", "concatenated_string"):
        return None, []
    return statements[0], statements[1:]


def _comments_above(anchor, doc_prefix: str) -> list:
    """The contiguous doc comments right above `anchor` (no blank line between), top first."""
    comments = []
    below = anchor
    sibling = anchor.prev_sibling
    while sibling is not None and sibling.type in COMMENT_TYPES and below.start_point.row - sibling.end_point.row <= 1:
        comments.append(sibling)
        below = sibling
        sibling = sibling.prev_sibling
        if doc_prefix == "/**":  # one block comment is the whole doc
            break
    comments.reverse()
    texts = [c.text.decode("utf-8", "replace") for c in comments]
    if not comments or not all(t.startswith(doc_prefix) for t in texts):
        return []
    if doc_prefix == "//" and any(t.startswith("///") for t in texts):
        return []
    return comments


def _doc_words(doc: str) -> str:
    """The documentation's text without quotes, comment markers and whitespace (for the length check)."""
    return re.sub(r"[\s\"'/*]+", "", doc)


_STUB_STATEMENT = re.compile(rb"^(pass|\.\.\.|raise\s+NotImplementedError\b.*|return|return\s+None)$", re.S)


def _is_stub(statements: list, source: bytes) -> bool:
    return all(_STUB_STATEMENT.match(source[s.start_byte : s.end_byte].strip()) for s in statements)


def _owner(node, source: bytes) -> str | None:
    parent = node.parent
    while parent is not None:
        if parent.type in CLASS_TYPES:
            name = parent.child_by_field_name("name") or parent.child_by_field_name("type")
            return _text(source, name) if name is not None else None
        if any(parent.type in types for types, _ in DOC_STYLES.values()):
            return None  # a nested function belongs to a function, not to the class around it
        parent = parent.parent
    return None
