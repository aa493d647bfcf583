"""Web text from WARC and WET files: records -> page text (resiliparse) and code blocks as their own documents.

`warc_documents(stream, spec, make_doc)` reads one WARC file (plain or per-record gzip, as Common
Crawl ships them) from any binary file object with FastWARC and yields documents:

* a `response` or `resource` record with an HTML payload -> the page's main text
  (`resiliparse.extract.html2text`, language `Text`), then one document per `<pre>` block (and per
  multi-line `<code>` outside one) with the language read from class names such as
  `language-python`, `lang-js`, `highlight-cpp` or `brush: java`, else guessed from the content.
  The page text keeps its code too: a snippet is useful in its prose context and as code;
* a record with another text payload -> its text, language from the URL's extension, else `Text`;
* a `conversion` record (WET) -> its text, language `Text`.

`request`, `metadata`, `warcinfo` and `revisit` records hold no document and are skipped.
Everything else the reader cannot use becomes a document with a `reader_reason`, counted by the
`decode` step: `binary` (non-text MIME type or NUL bytes), `too_large`, `http_status` (not 2xx),
`html_no_text` (nothing left after extraction), `code_language_unknown` (a code block whose
language neither its classes nor its content tell), `warc_truncated` (a record shorter than its
Content-Length, or followed by bytes that are no WARC record: its length cannot be trusted) and
`warc_corrupt` (an unparsable region; on a seekable stream reading resumes at the next record).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from loopcoder.pipelines.io.decoding import BINARY_SNIFF_BYTES, DEFAULT_MAX_FILE_BYTES, Rejection
from loopcoder.pipelines.io.languages import UNKNOWN_LANGUAGE, language_of
from loopcoder.pipelines.sample_corpus import file_id

WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz")
PAGE_LANGUAGE = "Text"
HTML_TYPES = ("text/html", "application/xhtml+xml")
TEXT_TYPES = ("application/json", "application/javascript", "application/x-javascript", "application/xml")
_RESYNC_CHUNK = 1 << 20

# Class-name aliases (lower case) -> our language names (pipelines/io/languages.py).
CODE_CLASS_LANGUAGES: dict[str, str] = {
    "python": "Python", "py": "Python", "python3": "Python", "pycon": "Python", "ipython": "Python",
    "java": "Java",
    "javascript": "JavaScript", "js": "JavaScript", "jsx": "JavaScript", "node": "JavaScript",
    "typescript": "TypeScript", "ts": "TypeScript", "tsx": "TypeScript",
    "c": "C",
    "cpp": "C++", "c++": "C++", "cxx": "C++", "cc": "C++",
    "csharp": "C#", "cs": "C#", "c#": "C#",
    "go": "Go", "golang": "Go",
    "rust": "Rust", "rs": "Rust",
    "php": "PHP",
    "ruby": "Ruby", "rb": "Ruby",
    "bash": "Shell", "sh": "Shell", "shell": "Shell", "zsh": "Shell",
    "sql": "SQL",
    "kotlin": "Kotlin", "kt": "Kotlin",
    "scala": "Scala",
    "swift": "Swift",
    "lua": "Lua",
    "haskell": "Haskell", "hs": "Haskell",
    "css": "CSS", "scss": "SCSS",
    "json": "JSON",
    "yaml": "YAML", "yml": "YAML",
    "html": "HTML", "xml": "XML",
}  # fmt: skip
_CLASS_PREFIX = re.compile(r"^(?:language-|lang-|highlight-|brush:|sourcecode-|code-)?(.+)$")

# Content signatures tried in order when no class names the language; the first match wins.
CODE_SIGNATURES: tuple[tuple[str, str], ...] = (
    ("Python", r"^#!.*\bpython|^\s*(?:def \w+\(.*\)\s*(?:->.*)?:|class \w+(?:\(.*\))?:|from [\w.]+ import |import \w+$)"),
    ("PHP", r"<\?php"),
    ("Go", r"^package \w+$|^func (?:\(\w+ \*?\w+\) )?\w+\(.*\{$"),
    ("Rust", r"^\s*(?:pub )?fn \w+[<(].*\{$|^\s*let mut |^use \w+::"),
    ("C++", r"^#include <(?:iostream|vector|string|memory|map)>|\bstd::|^template\s*<"),
    ("C", r"^#include [<\"]\w+\.h[>\"]|^int main\s*\("),
    ("Java", r"^\s*public (?:static )?(?:final )?(?:class|interface|void) |^import java\."),
    ("JavaScript", r"^\s*(?:const|let|var) \w+ = (?:require\(|function|\(.*\) =>)|^\s*function \w+\(.*\)\s*\{$|console\.log\("),
    ("Shell", r"^#!.*\b(?:ba|z)?sh\b"),
)  # fmt: skip
_SIGNATURES = tuple((language, re.compile(pattern, re.MULTILINE)) for language, pattern in CODE_SIGNATURES)


@dataclass
class WarcOptions:
    """Keys of a `kind: warc` input besides `path` and `repo` (default repo: the page's host)."""

    main_content: bool = True  # resiliparse's main-content heuristics (drops navigation, footers)
    code_blocks: bool = True  # <pre>/<code> blocks as their own documents
    min_code_chars: int = 20
    min_code_lines: int = 2

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> WarcOptions:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in spec.items() if k in known})


def guess_code_language(classes: list[str], text: str) -> str:
    """Our language name from class names (`language-python`, `brush: js`), else from content; `unknown`."""
    for name in classes:
        match = _CLASS_PREFIX.match(name.strip().lower())
        language = CODE_CLASS_LANGUAGES.get(match.group(1).strip()) if match else None
        if language:
            return language
    for language, pattern in _SIGNATURES:
        if pattern.search(text):
            return language
    return UNKNOWN_LANGUAGE


def _is_gzip(stream: BinaryIO) -> bool:
    start = stream.tell()
    magic = stream.read(2)
    stream.seek(start)
    return magic == b"\x1f\x8b"


def _next_record_start(stream: BinaryIO, position: int, marker: bytes) -> int | None:
    """Offset of the first `marker` at or after `position`, or None at the end of the stream."""
    stream.seek(position)
    carry, offset = b"", position
    while chunk := stream.read(_RESYNC_CHUNK):
        data = carry + chunk
        found = data.find(marker)
        if found >= 0:
            return offset - len(carry) + found
        carry = data[-(len(marker) - 1) :]
        offset += len(chunk)
    return None


@dataclass
class WarcRecordInfo:
    """What a document needs from a record, copied out before the iterator moves on."""

    uri: str
    record_id: str
    date: str
    record_type: str
    content_length: int  # of the payload (after the HTTP headers, if any)
    block_length: int  # the WARC Content-Length: HTTP headers and payload
    status: int | None  # HTTP status; None for records without HTTP headers
    mime: str
    charset: str | None

    @classmethod
    def of(cls, record) -> WarcRecordInfo:
        headers = record.headers
        if record.is_http:
            mime, charset, status = (
                record.http_content_type or "",
                record.http_charset,
                record.http_headers.status_code,
            )
        else:
            mime, charset, status = headers.get("Content-Type") or "", None, None
        return cls(
            uri=(headers.get("WARC-Target-URI") or "").strip("<>"),
            record_id=headers.get("WARC-Record-ID") or "",
            date=headers.get("WARC-Date") or "",
            record_type=(headers.get("WARC-Type") or "").lower(),
            content_length=record.content_length,
            block_length=int(headers.get("Content-Length") or 0),
            status=status,
            mime=mime.split(";")[0].strip().lower(),
            charset=charset,
        )


def iter_records(
    stream: BinaryIO, max_bytes: int | None
) -> Iterator[tuple[str | None, WarcRecordInfo | None, bytes | None]]:
    """(reason, record, payload) per `response`/`resource`/`conversion` record, resuming past corrupt regions.

    A record is handed out only once the next one parsed (or the stream ended cleanly): bytes that
    do not parse after a record mean its Content-Length swallowed or lost data, so it is `warc_truncated`.
    """
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    wanted = WarcRecordType.response | WarcRecordType.resource | WarcRecordType.conversion
    seekable = stream.seekable()
    gzipped = seekable and _is_gzip(stream)
    marker = b"\x1f\x8b\x08" if gzipped else b"WARC/1."
    base = stream.tell() if seekable else 0
    after_corruption = False
    while True:
        pending = None  # (reason, info, payload, start offset) of the last record read
        reading = None  # (info, start offset) of the record whose payload is being read
        try:
            for record in ArchiveIterator(stream, parse_http=True, record_types=wanted):
                if pending is not None:
                    yield pending[:3]
                    pending = None
                info = WarcRecordInfo.of(record)
                reading = (info, record.stream_pos)  # absolute: FastWARC counts from the stream's own position
                if max_bytes is not None and info.content_length > max_bytes:
                    pending = (Rejection.TOO_LARGE, info, None, reading[1])
                else:
                    payload = record.reader.read()
                    reason = "warc_truncated" if len(payload) < info.content_length else None
                    pending = (reason, info, None if reason else payload, reading[1])
                reading = None
        except OSError:
            last_start, produced = base, pending is not None or reading is not None
            if reading is not None:
                yield ("warc_truncated", reading[0], None)
                last_start = reading[1]
            elif pending is not None:
                info, last_start = pending[1], pending[3]
                # A plain record whose declared block runs over the start of another record swallowed it.
                damaged = (
                    seekable and not gzipped and _swallows_next_record(stream, last_start, info.block_length, marker)
                )
                yield ("warc_truncated", info, None) if damaged else pending[:3]
            if produced or not after_corruption:
                yield ("warc_corrupt", None, None)
            after_corruption = True
            resume = _next_record_start(stream, last_start + 1, marker) if seekable else None
            if resume is None:
                return
            stream.seek(resume)
            base = resume
            continue
        if pending is not None:
            yield pending[:3]
        return


def _swallows_next_record(stream: BinaryIO, start: int, block_length: int, marker: bytes) -> bool:
    stream.seek(start)
    header_end = stream.read(_RESYNC_CHUNK).find(b"\r\n\r\n")
    if header_end < 0:
        return True
    following = _next_record_start(stream, start + 1, marker)
    return following is not None and following < start + header_end + 4 + block_length


def warc_documents(
    stream: BinaryIO,
    spec: dict[str, Any],
    make_doc: Callable[..., dict[str, Any]],
    source: str,
    max_bytes: int | None = DEFAULT_MAX_FILE_BYTES,
) -> Iterator[dict[str, Any]]:
    """The documents of one WARC/WET stream; `make_doc(spec, path, repo=..., ...)` builds each (readers.py)."""
    options = WarcOptions.from_spec(spec)
    for number, (reason, info, payload) in enumerate(iter_records(stream, max_bytes)):
        if info is None:
            repo, path = spec.get("repo", source), f"{source}#{number}"
            yield make_doc(spec, path, repo=repo, id=file_id(repo, None, path), reason=reason)
            continue
        repo = spec.get("repo") or urlsplit(info.uri).hostname or source
        common = {"repo": repo, "revision": info.date, "id": file_id(repo, info.record_id, info.uri)}
        if reason is not None or payload is None:
            yield make_doc(spec, info.uri, size=info.content_length, reason=reason or Rejection.UNREADABLE, **common)
            continue
        yield from _payload_documents(info, payload, spec, options, make_doc, common)


def _payload_documents(info: WarcRecordInfo, payload: bytes, spec, options: WarcOptions, make_doc, common):
    size = len(payload)
    if info.status is not None and not 200 <= info.status < 300:
        yield make_doc(spec, info.uri, size=size, reason="http_status", **common)
        return
    mime = info.mime
    textual = mime.startswith("text/") or mime in HTML_TYPES or mime in TEXT_TYPES or not mime
    if not textual or b"\x00" in payload[:BINARY_SNIFF_BYTES]:
        yield make_doc(spec, info.uri, size=size, reason=Rejection.BINARY, **common)
        return
    text = _decode(payload, info.charset)
    if mime in HTML_TYPES or (not mime and text.lstrip()[:200].lower().startswith(("<!doctype html", "<html"))):
        yield from _html_documents(text, info, spec, options, make_doc, common, size)
        return
    language = PAGE_LANGUAGE
    if info.record_type != "conversion":
        language = language_of(urlsplit(info.uri).path)
        language = PAGE_LANGUAGE if language == UNKNOWN_LANGUAGE else language
    yield make_doc(spec, info.uri, content=text, size=size, language=language, **common)


def _decode(payload: bytes, charset: str | None) -> str:
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    return bytes_to_str(payload, charset or detect_encoding(payload))


def _html_documents(html: str, info: WarcRecordInfo, spec, options: WarcOptions, make_doc, common, size):
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    tree = HTMLTree.parse(html)
    text = extract_plain_text(tree, main_content=options.main_content, preserve_formatting=True).strip()
    if text:
        yield make_doc(spec, info.uri, content=text, size=size, language=PAGE_LANGUAGE, **common)
    else:
        yield make_doc(spec, info.uri, content="", size=size, language=PAGE_LANGUAGE, reason="html_no_text", **common)
    if not options.code_blocks or tree.body is None:
        return
    for number, (code, language) in enumerate(code_blocks(tree, options)):
        path = f"{info.uri}#code-{number}"
        reason = "code_language_unknown" if language == UNKNOWN_LANGUAGE else None
        block = common | {"id": file_id(common["repo"], info.record_id, path)}
        size = len(code.encode("utf-8", "surrogatepass"))
        yield make_doc(spec, path, content=code, size=size, language=language, reason=reason, **block)


def code_blocks(tree, options: WarcOptions) -> Iterator[tuple[str, str]]:
    """(code, language) for each `<pre>` and each multi-line `<code>` outside a `<pre>`, long enough to keep."""
    seen = set()
    candidates = list(tree.body.query_selector_all("pre"))
    candidates += [n for n in tree.body.query_selector_all("code") if not _inside_pre(n)]
    for node in candidates:
        code = node.text.strip("\n")
        if len(code.strip()) < options.min_code_chars or code.count("\n") + 1 < options.min_code_lines or code in seen:
            continue
        seen.add(code)
        yield code, guess_code_language(_classes_around(node), code)


def _inside_pre(node) -> bool:
    parent = node.parent
    while parent is not None and parent.tag not in ("body", "html"):
        if parent.tag == "pre":
            return True
        parent = parent.parent
    return False


def _classes_around(node) -> list[str]:
    """Class names of the block, its `<code>` children and two levels of ancestors, nearest first."""
    classes = list(node.class_list)
    for child in node.query_selector_all("code"):
        classes += list(child.class_list)
    attribute = node.getattr("data-lang") or node.getattr("data-language")
    if attribute:
        classes.insert(0, attribute)
    parent = node.parent
    for _ in range(2):
        if parent is None or parent.tag in ("body", "html"):
            break
        classes += list(parent.class_list)
        parent = parent.parent
    return classes
