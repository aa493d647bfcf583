"""Language of a file from its name: one table shared by readers, filters and statistics."""

from __future__ import annotations

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
