"""Web text steps, one core each: WARC reading + HTML extraction, the four quality steps, the classify step.

    .venv/bin/python tests/bench/bench_webtext.py [--pages 150]

The pages are the standard library's documentation rendered by `pydoc` as HTML (real prose and
tables, 5-200 KB each) with the first 40 lines of the module's source in a `<pre><code>` block,
written as a per-record gzip WARC the way
Common Crawl ships them. Each step runs in this process on one core; MB/s is the step's input
(WARC payload bytes for the reader, page text for the rest) per CPU second of this process, the
speed of one core however loaded the machine is (wall time is printed beside it). The reader's
correctness check comes first: every page must come back with text.
"""

from __future__ import annotations

import argparse
import gzip
import inspect
import io
import os
import pkgutil
import pydoc
import sys
import time
import warnings
from html import escape

from loopcoder.pipelines.io.readers import _doc
from loopcoder.pipelines.io.warc import warc_documents
from loopcoder.pipelines.steps.quality_classifier import QualityClassify
from loopcoder.pipelines.steps.web_quality import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)

# importing these opens a browser, prints, or starts a GUI
SKIPPED_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"}


def pydoc_pages(count: int) -> list[tuple[str, bytes]]:
    pages = []
    names = sorted(
        m.name
        for m in pkgutil.iter_modules()
        if not m.name.startswith("_") and m.name in sys.stdlib_module_names and m.name not in SKIPPED_MODULES
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            if len(pages) >= count:
                break
            try:
                module = __import__(name)
                html = pydoc.html.page(name, pydoc.html.document(module, name))
                source = inspect.getsource(module).splitlines()[:40]
            except Exception:  # noqa: BLE001 - some modules refuse to import here (GUI, platform-only, no source)
                continue
            # the page's source excerpt as a documentation site shows it, so code blocks are extracted too
            excerpt = '<pre><code class="language-python">' + escape("\n".join(source)) + "</code></pre>"
            html = html.replace("</body>", excerpt + "</body>")
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


def timed(function) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine CPU time is what one core spent."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=150)
    args = parser.parse_args()
    pages = pydoc_pages(args.pages)
    data = warc_bytes(pages)
    payload_mb = sum(len(body) for _, body in pages) / 1e6
    docs: list[dict] = []
    wall, cpu = timed(lambda: docs.extend(warc_documents(io.BytesIO(data), {"kind": "warc"}, _doc, "bench.warc")))
    texts = [d for d in docs if d["language"] == "Text"]
    if len(texts) != len(pages) or any(d["reader_reason"] for d in texts):
        raise SystemExit("correctness check failed: a page came back without text")
    print(f"{len(pages)} pydoc pages, {payload_mb:.1f} MB of HTML, {len(data) / 1e6:.1f} MB gzip WARC; "
          f"{len(docs) - len(texts)} code blocks; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| step | input MB | wall s | CPU s | MB/s per core (CPU time) |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| warc reader + html2text + code blocks | {payload_mb:.1f} | {wall:.2f} | {cpu:.2f} | {payload_mb / cpu:.1f} |"
    )
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
        wall, cpu = timed(lambda step=step, batch=batch: [step.run(d) for d in batch])
        dropped = sum(step.stats.dropped.values())
        name = f"{step.name} ({dropped} of {len(batch)} dropped)"
        print(f"| {name} | {text_mb:.1f} | {wall:.2f} | {cpu:.2f} | {text_mb / cpu:.1f} |")


if __name__ == "__main__":
    main()
