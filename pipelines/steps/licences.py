"""Licence filter: keeps files whose licence is on a permissive allow-list; an opt-out list of repositories.

Where a file's licence comes from, first match wins:

1. an `SPDX-License-Identifier:` line in the file's first `header_lines` lines (the file's own
   licence: an MIT file vendored into a GPL project is MIT);
2. the licence columns of a table (`license`, The Stack's `max_stars_repo_licenses`, The Stack v2's
   `detected_licenses`, with every entry of a list column) or an input's `license:` key;
3. for directory and git inputs, the licence files at the repository's top level (`LICENSE`,
   `LICENCE`, `COPYING`, `UNLICENSE`, with any suffix such as `.md` or `-MIT`), recognised by an
   `SPDX-License-Identifier:` line in them or by the phrases of each licence's text
   (`LICENCE_TEXTS`), and the `license` of top-level package manifests (`package.json`,
   `Cargo.toml`, `pyproject.toml`); read once per repository and revision by each worker.

Values are SPDX expressions (`MIT OR Apache-2.0`, `GPL-2.0-only WITH Classpath-exception-2.0`):
`OR` is permissive when one side is, `AND` when both are, `X WITH exception` when `X` is. With
several licences for one file (a list column, or a `LICENSE-MIT` beside a `COPYING`), every one must
be permissive (`require_all`), since nothing says whether they are alternatives.

Reasons: `opted_out` (the repository matches `opt_out`, `owner/name` globs, case-insensitive),
`licence_not_permissive`, `licence_unknown` (nothing found, or text not recognised; kept instead with
`keep_unknown: true`). Counts: `stats.extra["source:<header|column|licence_file|none>"]` and
`stats.extra["licence:<id>"]` for the licences of kept files.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopcoder.pipelines.dedup.stages import PERMISSIVE_LICENSES
from loopcoder.pipelines.steps.filters import Doc, Step

LICENCE_FILE = re.compile(r"(?:un)?licen[cs]e|copying|copyright", re.IGNORECASE)
LICENCE_FILE_MAX_BYTES = 200_000
MANIFESTS = ("package.json", "Cargo.toml", "pyproject.toml")
_TOML_LICENCE = re.compile(r'(?m)^\s*license\s*=\s*(?:"([^"\n]+)"|\{\s*text\s*=\s*"([^"\n]+)")')
_SPDX_LINE = re.compile(r"SPDX-License-Identifier:\s*([^\n\r]*)")
_SPDX_END = re.compile(r"\s*(?:\*/|-->|#\}|\*\)|-\}|\"\"\"|''').*$")
_TOKEN = re.compile(r"\(|\)|[A-Za-z0-9.+:\-_]+")
# Values of licence columns that say there is none (The Stack v2's `no_license`, SPDX's `NOASSERTION`).
NO_LICENCE_VALUES = {"no_license", "no license", "none", "unknown", "noassertion", "other", ""}
# Common spellings in package metadata and crawled tables -> SPDX id (lower case).
ALIASES = {
    "apache 2.0": "apache-2.0", "apache-2": "apache-2.0", "apache2": "apache-2.0", "apache license 2.0": "apache-2.0",
    "apache software license": "apache-2.0", "mit license": "mit", "expat": "mit", "bsd": "bsd-3-clause",
    "new bsd": "bsd-3-clause", "bsd license": "bsd-3-clause", "simplified bsd": "bsd-2-clause", "isc license": "isc",
    "public domain": "unlicense", "psf": "psf-2.0", "boost": "bsl-1.0", "mpl 2.0": "mpl-2.0",
    "gpl": "gpl-3.0", "gplv2": "gpl-2.0", "gplv3": "gpl-3.0", "lgpl": "lgpl-3.0", "agpl": "agpl-3.0",
}  # fmt: skip
# (SPDX id, phrases that must all occur, phrases that must not), checked in order on lower-cased,
# whitespace-collapsed text; the phrases are the operative sentences of each licence.
LICENCE_TEXTS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("agpl-3.0", ("gnu affero general public license", "version 3"), ()),
    ("lgpl-3.0", ("gnu lesser general public license", "version 3"), ()),
    ("lgpl-2.1", ("gnu lesser general public license", "version 2.1"), ()),
    ("lgpl-2.0", ("gnu library general public license",), ()),
    ("gpl-3.0", ("gnu general public license", "version 3"), ()),
    ("gpl-2.0", ("gnu general public license", "version 2"), ()),
    ("mpl-2.0", ("mozilla public license", "2.0"), ()),
    ("epl-2.0", ("eclipse public license", "2.0"), ()),
    ("epl-1.0", ("eclipse public license", "1.0"), ()),
    ("apache-2.0", ("apache license", "version 2.0"), ()),
    ("bsl-1.0", ("boost software license - version 1.0",), ()),
    ("unlicense", ("this is free and unencumbered software released into the public domain",), ()),
    ("cc0-1.0", ("cc0 1.0 universal",), ()),
    ("mit", ("permission is hereby granted, free of charge, to any person obtaining a copy",
             "the above copyright notice and this permission notice shall be included"), ()),
    ("mit-0", ("permission is hereby granted, free of charge, to any person obtaining a copy",), ()),
    ("bsd-3-clause", ("redistribution and use in source and binary forms", "endorse or promote products"), ()),
    ("bsd-2-clause", ("redistribution and use in source and binary forms",), ()),
    ("isc", ("distribute this software for any purpose with or without fee is hereby granted",
             "above copyright notice and this permission notice appear in all copies"), ()),
    ("0bsd", ("distribute this software for any purpose with or without fee is hereby granted",), ()),
    ("zlib", ("altered source versions must be plainly marked as such",), ()),
    ("python-2.0", ("python software foundation license",), ()),
    ("wtfpl", ("do what the fuck you want to public license",), ()),
)  # fmt: skip


@dataclass
class LicenceConfig:
    """Allow-list (SPDX ids, any case), opt-outs and what to do without a licence."""

    allowed: tuple[str, ...] = tuple(sorted(PERMISSIVE_LICENSES))
    opt_out: tuple[str, ...] = ()  # repositories (`owner/name`, globs) whose owners asked to be left out
    keep_unknown: bool = False
    require_all: bool = True
    spdx_headers: bool = True
    header_lines: int = 30
    licence_files: bool = True  # directory and git inputs


class LicenceFilter(Step):
    """Keeps files under a permissive licence (see the module docstring for where it comes from).

    Reasons: `opted_out`, `licence_not_permissive`, `licence_unknown`.
    """

    name = "licence"

    def __init__(self, config: LicenceConfig | None = None, **overrides: Any):
        super().__init__()
        self.config = config or LicenceConfig(**overrides)
        self._allowed = {normalise_licence(x) for x in self.config.allowed}
        self._opt_out = [pattern.lower() for pattern in self.config.opt_out]

    def apply(self, doc: Doc) -> str | None:
        c = self.config
        repo = (doc.get("repo") or "").lower()
        if self._opt_out and any(fnmatch.fnmatchcase(repo, pattern) for pattern in self._opt_out):
            return "opted_out"
        licences, source = self.licences_of(doc)
        self.stats.count(f"source:{source}")
        if not licences:
            return None if c.keep_unknown else "licence_unknown"
        verdicts = [self.permissive(expression) for expression in licences]
        if None in verdicts and not c.keep_unknown:
            return "licence_unknown"
        known = [v for v in verdicts if v is not None]
        if known and (all(known) if c.require_all else any(known)):
            for expression in licences:
                self.stats.count(f"licence:{normalise_licence(expression)}")
            return None
        return "licence_not_permissive" if known else None

    def licences_of(self, doc: Doc) -> tuple[list[str], str]:
        """(SPDX expressions, where they came from)."""
        c = self.config
        if c.spdx_headers:
            header = spdx_header(doc.get("content") or "", c.header_lines)
            if header:
                return [header], "header"
        listed = doc.get("licenses") or ([doc["license"]] if doc.get("license") else [])
        listed = [str(x) for x in listed if x and normalise_licence(str(x)) not in NO_LICENCE_VALUES]
        if listed:
            return listed, "column"
        source = doc.get("licence_source")
        if c.licence_files and source:
            found = repository_licences(*source)
            if found:
                return list(found), "licence_file"
        return [], "none"

    def permissive(self, expression: str) -> bool | None:
        """True/False for an SPDX expression or a licence's name; None when it names no licence known here."""
        whole = _verdict(normalise_licence(expression), self._allowed)
        if whole is not None:
            return whole
        try:
            return _evaluate(_TOKEN.findall(expression), self._allowed)
        except ValueError:
            return None


def normalise_licence(value: str) -> str:
    text = " ".join(value.strip().lower().split())
    text = ALIASES.get(text, text)
    for suffix in ("-only", "-or-later", "+"):
        if text.endswith(suffix) and text.startswith(("gpl", "lgpl", "agpl")):
            return text[: -len(suffix)]
    return text


def spdx_header(content: str, max_lines: int = 30) -> str | None:
    """The expression of the first `SPDX-License-Identifier:` line among the first `max_lines` lines."""
    head = "\n".join(content[:10_000].split("\n", max_lines)[:max_lines])
    match = _SPDX_LINE.search(head)
    if match is None:
        return None
    expression = _SPDX_END.sub("", match.group(1)).strip()
    return expression or None


def _evaluate(tokens: list[str], allowed: set[str]) -> bool | None:
    """Recursive descent over `a OR b`, `a AND b`, `a WITH exception` and parentheses, in three-valued
    logic: an unknown name is None, `None OR True` is True, `None AND False` is False."""
    position = 0

    def atom() -> bool | None:
        nonlocal position
        if position >= len(tokens):
            raise ValueError("incomplete expression")
        token = tokens[position]
        position += 1
        if token == "(":
            value = disjunction()
            if position >= len(tokens) or tokens[position] != ")":
                raise ValueError("unbalanced parenthesis")
            position += 1
        elif token == ")" or token.upper() in ("AND", "OR", "WITH"):
            raise ValueError(f"unexpected {token}")
        else:
            value = _verdict(normalise_licence(token), allowed)
        if position < len(tokens) and tokens[position].upper() == "WITH":
            position += 2  # an exception widens what a licence allows; the licence decides
        return value

    def conjunction() -> bool | None:
        nonlocal position
        value = atom()
        while position < len(tokens) and tokens[position].upper() == "AND":
            position += 1
            other = atom()
            value = False if False in (value, other) else (None if None in (value, other) else True)
        return value

    def disjunction() -> bool | None:
        nonlocal position
        value = conjunction()
        while position < len(tokens) and tokens[position].upper() == "OR":
            position += 1
            other = conjunction()
            value = True if True in (value, other) else (None if None in (value, other) else False)
        return value

    result = disjunction()
    if position != len(tokens):
        raise ValueError("trailing tokens")
    return result


def _verdict(licence: str, allowed: set[str]) -> bool | None:
    if licence in allowed:
        return True
    if licence in KNOWN_IDS or licence in _TEXT_IDS:
        return False
    return None


# Non-permissive ids recognised as licences (so that they give `licence_not_permissive`, not `unknown`).
KNOWN_IDS = {
    "gpl-1.0", "gpl-2.0", "gpl-3.0", "lgpl-2.0", "lgpl-2.1", "lgpl-3.0", "agpl-1.0", "agpl-3.0", "mpl-1.1",
    "epl-1.0", "epl-2.0", "cddl-1.0", "cddl-1.1", "eupl-1.1", "eupl-1.2", "osl-3.0", "cc-by-sa-4.0",
    "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "sspl-1.0", "busl-1.1", "proprietary",
}  # fmt: skip
_TEXT_IDS = {entry[0] for entry in LICENCE_TEXTS}


def classify_licence_text(text: str) -> str | None:
    """SPDX id of a licence file's text, or None when it is not recognised."""
    header = spdx_header(text, 10)
    if header:
        return header
    flat = " ".join(text.lower().replace("\u2019", "'").split())
    for licence, required, excluded in LICENCE_TEXTS:
        if all(p in flat for p in required) and not any(p in flat for p in excluded):
            return licence
    return None


@functools.lru_cache(maxsize=256)
def repository_licences(kind: str, root: str, revision: str | None = None) -> tuple[str, ...]:
    """Licences of the top-level licence files and package manifests of a directory or of a git commit."""
    try:
        if kind == "git":
            files = _git_top_level_files(Path(root), revision or "HEAD")
        else:
            files = [
                (path.name, path.read_bytes()[:LICENCE_FILE_MAX_BYTES])
                for path in sorted(Path(root).iterdir())
                if _wanted(path.name) and path.is_file() and not path.is_symlink()
            ]
    except (OSError, subprocess.SubprocessError):
        return ()
    found: set[str] = set()
    for name, data in files:
        text = data.decode("utf-8", "replace")
        if name in MANIFESTS:
            declared = _manifest_licence(name, text)
            if declared:
                found.add(declared)
            continue
        # a licence file nobody recognises makes the licence unknown, not absent
        found.add(classify_licence_text(text) or "LicenseRef-unrecognised")
    return tuple(sorted(found))


def _wanted(name: str) -> bool:
    return bool(LICENCE_FILE.match(name)) or name in MANIFESTS


def _manifest_licence(name: str, text: str) -> str | None:
    """The `license` a package manifest declares (an SPDX expression by each format's rules), if any."""
    if name == "package.json":
        try:
            value = json.loads(text).get("license")
        except (ValueError, AttributeError):
            return None
        value = value.get("type") if isinstance(value, dict) else value
        return value if isinstance(value, str) and value.strip() else None
    match = _TOML_LICENCE.search(text)  # Cargo.toml `[package]`, pyproject.toml `[project]`
    return (match.group(1) or match.group(2)).strip() if match else None


def _git_top_level_files(root: Path, revision: str) -> list[tuple[str, bytes]]:
    def git(*args: str) -> bytes:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=True, timeout=60).stdout

    files = []
    for entry in git("ls-tree", "-z", revision).split(b"\x00"):
        if not entry:
            continue
        meta, raw_name = entry.split(b"\t", 1)
        mode, kind, blob = meta.split()
        name = raw_name.decode("utf-8", "replace")
        if kind == b"blob" and mode != b"120000" and _wanted(name):
            files.append((name, git("cat-file", "blob", blob.decode())[:LICENCE_FILE_MAX_BYTES]))
    return files
