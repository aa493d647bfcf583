"""Natural-language identification of text files and of the comments of code files, with CLD2.

CLD2 (Chromium's Compact Language Detector 2, through `pycld2`) ships its tables inside the wheel:
nothing is downloaded. It names 80+ languages by ISO 639-1 code (`en`, `fr`, `zh`, ...); HTML is
given to it as markup (it skips tags).

* Text files (`text_languages`: Markdown, Text, reStructuredText, HTML) are identified whole.
* Code files are identified by their comments and docstrings, cut out with the comment syntax of
  their language family (`#`, `//` and `/* */`, `--`, `<!-- -->`, Python's triple-quoted strings);
  a file whose comments hold fewer than `min_chars` characters is `und` (undetermined).
* A file of unknown language (no extension `io/languages.py` maps) first gets its programming language
  from its content (`language_from_content`: shebang, Emacs/Vim modelines, `<?php`, a few strong
  signatures); the `language` column then carries it, so list this step before `quality` and `ast`.

The result is `doc["natural_language"]` (`und` below `min_chars` letters, or when CLD2 gives its top
language less than `min_percent` of the text) and
the counts `stats.extra["language:<code>"]`, `stats.extra["code_language:<name>"]` for languages found
from content. With `allowed` set, a document identified as another language is dropped (reason
`natural_language`); `und` is kept unless `drop_undetermined`. Only the first `max_chars` characters
are read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pycld2

from loopcoder.pipelines.io.languages import UNKNOWN_LANGUAGE, language_from_content
from loopcoder.pipelines.steps.filters import Doc, Step

UNDETERMINED = "und"
# CLD2 keeps ISO 639-1 codes that were withdrawn; the current ones are reported
CLD2_CODES = {"iw": "he", "jw": "jv", "in": "id", "ji": "yi"}
HASH_COMMENTS = ("Python", "Cython", "Shell", "Ruby", "Perl", "R", "YAML", "TOML", "Makefile", "Dockerfile", "CMake",
                 "Julia")  # fmt: skip
SLASH_COMMENTS = ("C", "C++", "CUDA", "C#", "Java", "JavaScript", "TypeScript", "Go", "Rust", "PHP", "Kotlin",
                  "Scala", "Swift", "Dart", "CSS", "SCSS")  # fmt: skip
DASH_COMMENTS = ("SQL", "Lua", "Haskell")
MARKUP_COMMENTS = ("XML",)
_COMMENTS = {
    "hash": re.compile(r"(?<![\w$\"'])#(?![!{\[])[^\n]*"),
    "slash": re.compile(r"(?<![:\"'\\])//[^\n]*|/\*[\s\S]*?\*/"),
    "dash": re.compile(r"--\[\[[\s\S]*?\]\]|\{-[\s\S]*?-\}|(?<![\w-])--(?!-)[^\n]*"),
    "markup": re.compile(r"<!--[\s\S]*?-->"),
}
_DOCSTRINGS = re.compile(r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'')
_COMMENT_MARKERS = re.compile(r"^[ \t]*(?:#+|//+|/\*+|\*+/?|--+|<!--|-->|\"\"\"|''')[ \t]?|\*/|-->", re.MULTILINE)
_NON_LETTERS = re.compile(r"[\W\d_]+")
# CLD2 refuses control characters, lone surrogates and non-characters
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


@dataclass
class LanguageIdConfig:
    """`allowed`: ISO 639-1 codes kept (None: every language, counted only)."""

    allowed: tuple[str, ...] | None = None
    drop_undetermined: bool = False
    min_chars: int = 200  # letters of text (or of comments) below which a document is `und`
    min_percent: int = 40  # share of the text CLD2 gives the top language (the rest may be unassigned)
    text_languages: tuple[str, ...] = ("Markdown", "Text", "reStructuredText", "HTML")
    comments: bool = True  # identify code files by their comments and docstrings
    content_fallback: bool = True  # programming language of unknown-extension files from their content
    max_chars: int = 100_000


class LanguageIdentifier(Step):
    """Sets `doc["natural_language"]`; with `allowed`, drops other languages.

    Reasons: `natural_language`, `undetermined_language` (only with `drop_undetermined`).
    """

    name = "language_id"

    def __init__(self, config: LanguageIdConfig | None = None, **overrides: Any):
        super().__init__()
        self.config = config or LanguageIdConfig(**overrides)
        self._allowed = {code.lower() for code in self.config.allowed} if self.config.allowed is not None else None

    def apply(self, doc: Doc) -> str | None:
        c = self.config
        if c.content_fallback and doc["language"] == UNKNOWN_LANGUAGE:
            found = language_from_content(doc["content"])
            if found != UNKNOWN_LANGUAGE:
                doc["language"] = found
                self.stats.count(f"code_language:{found}")
        text = self.text_of(doc)
        language = (
            identify(text, c.min_chars, c.min_percent, plain=doc["language"] != "HTML") if text else UNDETERMINED
        )
        doc["natural_language"] = language
        self.stats.count(f"language:{language}")
        if language == UNDETERMINED:
            return "undetermined_language" if c.drop_undetermined else None
        if self._allowed is not None and language not in self._allowed:
            return "natural_language"
        return None

    def text_of(self, doc: Doc) -> str:
        """The text to identify: the document itself for text files, its comments for code, else nothing."""
        content = doc["content"][: self.config.max_chars]
        language = doc["language"]
        if language in self.config.text_languages or language == UNKNOWN_LANGUAGE:
            return content
        if not self.config.comments:
            return ""
        return comments_of(content, language)


def comments_of(content: str, language: str) -> str:
    """Comments and docstrings of a code file, markers stripped, one per line ("" for unknown syntax)."""
    if language in HASH_COMMENTS:
        pieces = _COMMENTS["hash"].findall(content)
        if language in ("Python", "Cython"):
            pieces += _DOCSTRINGS.findall(content)
    elif language in SLASH_COMMENTS:
        pieces = _COMMENTS["slash"].findall(content)
        if language == "PHP":
            pieces += _COMMENTS["hash"].findall(content)
    elif language in DASH_COMMENTS:
        pieces = _COMMENTS["dash"].findall(content)
    elif language in MARKUP_COMMENTS:
        pieces = _COMMENTS["markup"].findall(content)
    else:
        return ""
    return "\n".join(_COMMENT_MARKERS.sub("", piece).strip() for piece in pieces)


def identify(text: str, min_chars: int = 200, min_percent: int = 40, plain: bool = True) -> str:
    """ISO 639-1 code of `text`'s main language, or `und` (too little text, not reliable, or unknown)."""
    if len(_NON_LETTERS.sub("", text)) < min_chars:
        return UNDETERMINED
    text = _UNSAFE.sub(" ", text)
    try:
        _, _, details = pycld2.detect(text, isPlainText=plain)
    except pycld2.error:
        return UNDETERMINED
    # CLD2's own `reliable` flag is not required: it is false for clean 250-character passages of
    # Swedish and Russian whose top language holds 67% of the text (the rest unassigned)
    code, percent = details[0][1], details[0][2]
    if code in ("un", "xxx") or percent < min_percent:
        return UNDETERMINED
    return CLD2_CODES.get(code, code)
