"""Language of a file from its name (one table shared by readers, filters and statistics), or from its content."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

EXTENSION_LANGUAGES: dict[str, str] = {
    ".py": "Python", ".pyi": "Python", ".pyx": "Cython", ".pxd": "Cython",
    ".java": "Java",
    ".js": "JavaScript", ".mjs": "JavaScript", ".cjs": "JavaScript", ".jsx": "JavaScript",
    ".ts": "TypeScript", ".tsx": "TypeScript", ".mts": "TypeScript", ".cts": "TypeScript",
    ".c": "C", ".h": "C",
    ".cc": "C++", ".cpp": "C++", ".cxx": "C++", ".c++": "C++", ".hh": "C++", ".hpp": "C++", ".hxx": "C++",
    ".cu": "CUDA", ".cuh": "CUDA",
    ".cs": "C#",
    ".go": "Go",
    ".rs": "Rust",
    ".php": "PHP",
    ".rb": "Ruby",
    ".sh": "Shell", ".bash": "Shell", ".zsh": "Shell",
    ".md": "Markdown", ".markdown": "Markdown", ".rst": "reStructuredText",
    ".html": "HTML", ".htm": "HTML",
    ".css": "CSS", ".scss": "SCSS",
    ".json": "JSON",
    ".yaml": "YAML", ".yml": "YAML",
    ".toml": "TOML",
    ".xml": "XML",
    ".sql": "SQL",
    ".kt": "Kotlin", ".kts": "Kotlin",
    ".scala": "Scala",
    ".swift": "Swift",
    ".lua": "Lua",
    ".r": "R",
    ".jl": "Julia",
    ".hs": "Haskell",
    ".ml": "OCaml",
    ".pl": "Perl", ".pm": "Perl",
    ".dart": "Dart",
    ".cmake": "CMake",
    ".txt": "Text",
}  # fmt: skip

FILENAME_LANGUAGES: dict[str, str] = {
    "Makefile": "Makefile", "GNUmakefile": "Makefile", "makefile": "Makefile",
    "Dockerfile": "Dockerfile",
    "CMakeLists.txt": "CMake",
    "Gemfile": "Ruby", "Rakefile": "Ruby",
}  # fmt: skip

UNKNOWN_LANGUAGE = "unknown"


def language_of(path: str) -> str:
    """`Python` for `a/b.py`, `Makefile` for `src/Makefile`, `unknown` when nothing matches."""
    name = PurePosixPath(path).name
    if name in FILENAME_LANGUAGES:
        return FILENAME_LANGUAGES[name]
    return EXTENSION_LANGUAGES.get(PurePosixPath(name).suffix.lower(), UNKNOWN_LANGUAGE)


# Interpreters of `#!` lines and modes of Emacs (`-*- mode: ruby -*-`) and Vim (`vim: ft=python`) modelines.
INTERPRETER_LANGUAGES: dict[str, str] = {
    "python": "Python", "pypy": "Python", "sh": "Shell", "bash": "Shell", "zsh": "Shell", "dash": "Shell",
    "ksh": "Shell", "ash": "Shell", "node": "JavaScript", "nodejs": "JavaScript", "deno": "TypeScript",
    "ts-node": "TypeScript", "ruby": "Ruby", "perl": "Perl", "php": "PHP", "Rscript": "R", "lua": "Lua",
    "luajit": "Lua", "julia": "Julia", "make": "Makefile", "scala": "Scala", "swift": "Swift", "kotlin": "Kotlin",
    "runghc": "Haskell", "runhaskell": "Haskell", "ocaml": "OCaml", "dart": "Dart",
}  # fmt: skip
MODE_LANGUAGES: dict[str, str] = {
    "python": "Python", "sh": "Shell", "bash": "Shell", "zsh": "Shell", "shell-script": "Shell", "ruby": "Ruby",
    "perl": "Perl", "cperl": "Perl", "c": "C", "c++": "C++", "cpp": "C++", "java": "Java", "javascript": "JavaScript",
    "js": "JavaScript", "typescript": "TypeScript", "go": "Go", "rust": "Rust", "php": "PHP", "lua": "Lua",
    "makefile": "Makefile", "make": "Makefile", "yaml": "YAML", "json": "JSON", "html": "HTML", "xml": "XML",
    "markdown": "Markdown", "sql": "SQL", "cmake": "CMake", "haskell": "Haskell", "dockerfile": "Dockerfile",
    "toml": "TOML", "r": "R", "julia": "Julia", "kotlin": "Kotlin", "scala": "Scala", "swift": "Swift",
    "csharp": "C#", "cs": "C#", "css": "CSS", "scss": "SCSS", "rst": "reStructuredText", "text": "Text",
}  # fmt: skip
_SHEBANG = re.compile(r"#!\s*(\S+)((?:[ \t]+\S+)*)")
_EMACS_MODE = re.compile(r"-\*-\s*(?:.*?\bmode:\s*([\w+#-]+)|([\w+#-]+)\s*-\*-)", re.IGNORECASE)
_VIM_MODE = re.compile(r"\b(?:vim?|ex):.*?\b(?:ft|filetype|syntax)=([\w+#-]+)")
# (language, patterns that must all match): signatures strong enough to name a file without its extension
CONTENT_SIGNATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("PHP", (r"\A\s*<\?php\b",)),
    ("XML", (r"\A\s*<\?xml\s",)),
    ("HTML", (r"(?i)\A\s*(?:<!--[\s\S]*?-->\s*)?<(?:!doctype\s+html|html)\b",)),
    ("Go", (r"(?m)^package\s+\w+\s*$", r"(?m)^func\s")),
    ("Rust", (r"(?m)^\s*(?:pub\s+)?fn\s+\w+", r"(?m)^\s*(?:use\s+\w+::|impl\b|let\s+mut\b)")),
    ("Java", (r"(?m)^\s*(?:public\s+)?(?:final\s+|abstract\s+)?class\s+\w+", r"(?m)^import\s+java\.|System\.out\.")),
    ("C++", (r"(?m)^\s*#\s*include\s*[<\"]", r"(?m)\bstd::|^\s*template\s*<|^\s*namespace\s+\w+")),
    ("C", (r"(?m)^\s*#\s*include\s*[<\"]\w+\.h[>\"]", r"(?m)^\w[\w\s\*]*\b\w+\s*\([^;]*\)\s*\{?\s*$")),
    ("Python", (r"(?m)^(?:import\s+\w|from\s+[\w.]+\s+import\s)", r"(?m)^\s*(?:async\s+)?(?:def|class)\s+\w+.*:\s*$")),
)  # fmt: skip
_SIGNATURES = [(language, [re.compile(p) for p in patterns]) for language, patterns in CONTENT_SIGNATURES]


def language_from_content(content: str) -> str:
    """The language of a file without a known name: its `#!` line, an Emacs or Vim modeline, then
    `CONTENT_SIGNATURES` in order; `unknown` when nothing matches."""
    head = content[:4096]
    lines = head.split("\n", 2)[:2]
    shebang = _SHEBANG.match(lines[0]) if lines else None
    if shebang:
        program, arguments = PurePosixPath(shebang.group(1)).name, shebang.group(2).split()
        if program == "env":
            arguments = [a for a in arguments if not a.startswith("-") and "=" not in a]
            program = arguments[0] if arguments else ""
        name = re.sub(r"[\d.]+$", "", program)
        if name in INTERPRETER_LANGUAGES:
            return INTERPRETER_LANGUAGES[name]
    for line in lines:
        emacs = _EMACS_MODE.search(line)
        if emacs:
            mode = (emacs.group(1) or emacs.group(2)).lower()
            if mode in MODE_LANGUAGES:
                return MODE_LANGUAGES[mode]
    tail = content[-1024:].split("\n")[-6:]
    for line in lines + tail:
        vim = _VIM_MODE.search(line)
        if vim and vim.group(1).lower() in MODE_LANGUAGES:
            return MODE_LANGUAGES[vim.group(1).lower()]
    for language, patterns in _SIGNATURES:
        if all(p.search(head) for p in patterns):
            return language
    return UNKNOWN_LANGUAGE
