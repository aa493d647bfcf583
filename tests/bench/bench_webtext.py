"""Web text steps, one core each: WARC reading + HTML extraction, the four quality steps, the classify step.

    .venv/bin/python tests/bench/bench_webtext.py [--pages 300]

The pages are the standard library's documentation rendered by `pydoc` as HTML (real prose,
tables and code in `<pre>`-free markup, 5-200 KB each), written as a per-record gzip WARC the way
Common Crawl ships them. Each step runs in this process on one core; MB/s is the step's input
(WARC payload bytes for the reader, page text for the rest) per second of wall time. The reader's
correctness check comes first: every page must come back with text.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import pkgutil
import pydoc
import sys
import time
import warnings

from loopcoder.pipelines.quality_classifier import QualityClassify
from loopcoder.pipelines.readers import _doc
from loopcoder.pipelines.warc import warc_documents
from loopcoder.pipelines.web_quality import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)


def pydoc_pages(count: int) -> list[tuple[str, bytes]]:
    pages = []
    names = sorted(
        m.name for m in pkgutil.iter_modules() if not m.name.startswith("_") and m.name in sys.stdlib_module_names
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            if len(pages) >= count:
                break
            try:
                module = __import__(name)
                html = pydoc.html.page(name, pydoc.html.document(module, name))
            except Exception:  # noqa: BLE001 - some modules refuse to import here (GUI, platform-only)
                continue
            pages.append((f"https://docs.example.org/{name}.html", html.encode()))
    return pages


def warc_bytes(pages: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    for number, (uri, body) in enumerate(pages):
        block = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + body
        header = (
            f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {uri}\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
            f"WARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-{number:012d}>\r\n"
            f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(block)}\r\n\r\n"
        )
        out.write(gzip.compress(header.encode() + block + b"\r\n\r\n"))
    return out.getvalue()


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=300)
    args = parser.parse_args()
    pages = pydoc_pages(args.pages)
    data = warc_bytes(pages)
    payload_mb = sum(len(body) for _, body in pages) / 1e6
    docs: list[dict] = []
    seconds = timed(lambda: docs.extend(warc_documents(io.BytesIO(data), {"kind": "warc"}, _doc, "bench.warc")))
    texts = [d for d in docs if d["language"] == "Text"]
    if len(texts) != len(pages) or any(d["reader_reason"] for d in texts):
        raise SystemExit("correctness check failed: a page came back without text")
    print(f"{len(pages)} pydoc pages, {payload_mb:.1f} MB of HTML, {len(data) / 1e6:.1f} MB gzip WARC; "
          f"{len(docs) - len(texts)} code blocks; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| step | input MB | seconds | MB/s on one core |")
    print("|---|---:|---:|---:|")
    print(f"| warc reader + html2text + code blocks | {payload_mb:.1f} | {seconds:.2f} | {payload_mb / seconds:.1f} |")
    text_mb = sum(len(d["content"].encode()) for d in texts) / 1e6
    steps = [
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        C4QualityFilter(),
        FineWebQualityFilter(),
        QualityClassify(classifiers=[{"path": "builtin:code_rules"}], languages=None),
    ]
    for step in steps:
        batch = [dict(d, decisions=[]) for d in texts]
        seconds = timed(lambda step=step, batch=batch: [step.run(d) for d in batch])
        dropped = sum(step.stats.dropped.values())
        print(
            f"| {step.name} ({dropped} of {len(batch)} dropped) | {text_mb:.1f} | {seconds:.2f} | {text_mb / seconds:.1f} |"
        )


if __name__ == "__main__":
    main()
