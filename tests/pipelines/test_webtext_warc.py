"""WARC/WET reader: page text, code blocks as documents, counted rejections for bad records."""

from __future__ import annotations

import gzip
import io

from loopcoder.pipelines.clean.job import JobConfig
from loopcoder.pipelines.io.readers import _doc, plan_tasks, read_task
from loopcoder.pipelines.io.warc import guess_code_language, warc_documents
from loopcoder.pipelines.steps.filters import DecodeStep

PAGE = (
    b"<html><head><title>Sorting</title></head><body><article>"
    b"<h1>How to sort a list in Python</h1>"
    b"<p>Python lists have a sort method that sorts them in place. The sorted function returns a new list.</p>"
    b"<pre><code class='language-python'>def by_length(words):\n    return sorted(words, key=len)\n</code></pre>"
    b"<p>The same thing in JavaScript uses a comparison function.</p>"
    b"<div class='highlight'><pre>const byLength = (words) =&gt; words.sort((a, b) =&gt; a.length - b.length);\n"
    b"console.log(byLength(['ccc', 'a']));</pre></div>"
    b"<pre>  +-----+\n  | box |\n  +-----+</pre>"
    b"</article></body></html>"
)


def warc_record(kind: str, uri: str, block: bytes, number: int = 0, content_type: str | None = None) -> bytes:
    content_type = content_type or ("application/http; msgtype=response" if kind == "response" else "text/plain")
    header = (
        f"WARC/1.0\r\nWARC-Type: {kind}\r\nWARC-Target-URI: {uri}\r\nWARC-Date: 2024-05-01T12:00:00Z\r\n"
        f"WARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-{number:012d}>\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(block)}\r\n\r\n"
    )
    return header.encode() + block + b"\r\n\r\n"


def http(body: bytes, content_type: str = "text/html; charset=utf-8", status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def read(data: bytes, **spec) -> list[dict]:
    return list(warc_documents(io.BytesIO(data), {"kind": "warc", **spec}, _doc, "test.warc"))


def test_page_text_and_code_blocks_become_documents():
    docs = read(warc_record("response", "https://example.org/sorting", http(PAGE), 1))
    page, *blocks = docs
    assert page["language"] == "Text" and page["reader_reason"] is None
    assert "sorts them in place" in page["content"] and "<p>" not in page["content"]
    assert page["repo"] == "example.org" and page["revision"] == "2024-05-01T12:00:00Z"
    by_language = {d["language"]: d for d in blocks}
    assert by_language["Python"]["content"].startswith("def by_length(words):")
    assert "console.log" in by_language["JavaScript"]["content"]  # no class: guessed from the content
    assert by_language["unknown"]["reader_reason"] == "code_language_unknown"  # ASCII art in a <pre>
    assert [d["path"] for d in blocks] == [f"https://example.org/sorting#code-{i}" for i in range(3)]
    assert len({d["id"] for d in docs}) == len(docs)


def test_bad_records_are_counted_and_the_rest_is_read():
    good = warc_record("response", "https://example.org/a", http(PAGE), 1)
    binary = warc_record(
        "response", "https://example.org/logo.png", http(b"\x89PNG\r\n\x1a\n\x00\x00", "image/png"), 2
    )
    empty = warc_record("response", "https://example.org/empty", http(b"<html><body><div></div></body></html>"), 3)
    missing = warc_record("response", "https://example.org/gone", http(b"<p>not here</p>", status="404 Not Found"), 4)
    wet = warc_record("conversion", "https://example.org/b", b"Plain text from a WET file.", 5)
    request = warc_record("request", "https://example.org/a", b"GET /a HTTP/1.1\r\n\r\n", 6, "application/http")
    truncated = warc_record("response", "https://example.org/cut", http(PAGE), 7)[:-80]
    docs = read(request + good + binary + empty + missing + wet + truncated)
    reasons = {d["path"]: d["reader_reason"] for d in docs}
    assert reasons["https://example.org/a"] is None
    assert reasons["https://example.org/logo.png"] == "binary"
    assert reasons["https://example.org/empty"] == "html_no_text"
    assert reasons["https://example.org/gone"] == "http_status"
    assert reasons["https://example.org/b"] is None
    assert reasons["https://example.org/cut"] == "warc_truncated"
    wet_doc = next(d for d in docs if d["path"] == "https://example.org/b")
    assert wet_doc["content"] == "Plain text from a WET file." and wet_doc["language"] == "Text"
    decode = DecodeStep()
    for doc in docs:
        doc["decisions"] = []
        decode.run(doc)
    assert decode.stats.dropped == {
        "binary": 1,
        "code_language_unknown": 1,
        "html_no_text": 1,
        "http_status": 1,
        "warc_truncated": 1,
    }


def test_a_truncated_record_inside_the_file_does_not_lose_the_records_after_it():
    texts = [f"Text number {i}. " * 20 for i in range(4)]
    records = [warc_record("conversion", f"https://example.org/{i}", text.encode(), i) for i, text in enumerate(texts)]
    plain = records[0] + records[1][:-60] + records[2] + records[3]
    assert ("https://example.org/1", "warc_truncated") in [(d["path"], d["reader_reason"]) for d in read(plain)]
    # junk after an intact record, then a record cut short: the intact one is kept, both regions counted
    twice = records[0] + b"junk\r\n" + records[1][:-60] + records[2] + records[3]
    assert [(d["path"].rsplit("/", 1)[-1], d["reader_reason"]) for d in read(twice)] == [
        ("0", None),
        ("test.warc#1", "warc_corrupt"),
        ("1", "warc_truncated"),
        ("test.warc#3", "warc_corrupt"),
        ("2", None),
        ("3", None),
    ]
    for data in (
        plain,  # record 1 runs into record 2
        b"".join(gzip.compress(r) for r in records[:1])
        + gzip.compress(records[1])[:-40]
        + b"".join(gzip.compress(r) for r in records[2:]),
    ):
        docs = read(data)
        reasons = [(d["path"], d["reader_reason"]) for d in docs]
        assert ("https://example.org/0", None) in reasons
        # plain: the record is known and rejected; gzip: its member does not inflate, so it is inside the corrupt region
        assert ("https://example.org/1", None) not in reasons
        assert ("https://example.org/3", None) in reasons
        assert [reason for _, reason in reasons].count("warc_corrupt") == 1
        kept = {d["path"]: d["content"] for d in docs if d["reader_reason"] is None}
        assert kept["https://example.org/2"] == texts[2] and kept["https://example.org/3"] == texts[3]


def test_warc_input_is_planned_and_read_from_a_folder(tmp_path):
    (tmp_path / "crawl-00.warc.gz").write_bytes(
        gzip.compress(warc_record("response", "https://x.org/p", http(PAGE), 1))
    )
    (tmp_path / "notes.txt").write_text("not a WARC file")
    tasks, errors = plan_tasks([{"kind": "warc", "path": str(tmp_path), "code_blocks": False}])
    assert errors == {} and [t["path"] for t in tasks] == [str(tmp_path / "crawl-00.warc.gz")]
    docs = list(read_task(tasks[0], {"kind": "warc", "path": str(tmp_path), "code_blocks": False}))
    assert [d["path"] for d in docs] == ["https://x.org/p"]


def test_code_language_from_classes_then_content():
    assert guess_code_language(["brush:", "java"], "x") == "Java"
    assert guess_code_language(["lang-rs"], "") == "Rust"
    assert guess_code_language(["highlight"], "#include <stdio.h>\nint main() {}") == "C"
    assert guess_code_language([], "import os\nprint(os.getcwd())") == "Python"
    assert guess_code_language([], "total 12\ndrwxr-xr-x 2 root root") == "unknown"


def test_code_blocks_meet_ast_validation_and_pages_the_web_steps(tmp_path):
    broken = b"<pre><code class='language-python'>def broken(:\n    return\n</code></pre>"
    page = PAGE.replace(b"</article>", broken + b"</article>")
    spam = b"<html><body><p>" + b"buy cheap pills now " * 30 + b"</p></body></html>"
    data = warc_record("response", "https://example.org/sorting", http(page), 1)
    data += warc_record("response", "https://spam.example/", http(spam), 2)
    (tmp_path / "crawl.warc").write_bytes(data)
    inputs = [{"kind": "warc", "path": str(tmp_path)}]
    steps = ["decode", "web_clean", "gopher_repetition", "gopher_quality", "quality", "ast"]
    job = JobConfig.from_dict({"name": "web", "output": str(tmp_path / "out"), "inputs": inputs, "steps": steps})
    built = job.build_steps()
    tasks, _ = plan_tasks(job.inputs)
    outcome = {}
    for document in read_task(tasks[0], job.inputs[0]):
        document["decisions"], document["ast_status"] = [], None
        reason = next((r for step in built if (r := step.run(document)) is not None), None)
        outcome[document["path"]] = (document["language"], reason, document["ast_status"])
    built[-1].close()
    assert outcome["https://example.org/sorting"][1] is None
    assert outcome["https://spam.example/"][1] == "top_ngram_chars"
    assert outcome["https://example.org/sorting#code-0"] == ("Python", None, "ok")
    assert outcome["https://example.org/sorting#code-3"] == ("Python", "ast_error", "error")
    assert outcome["https://example.org/sorting#code-2"][1] == "code_language_unknown"


def test_a_web_job_writes_page_text_code_blocks_and_quality_scores(tmp_path, ray_local):
    import pyarrow.parquet as pq

    from loopcoder.pipelines.clean.runner import run_job
    from loopcoder.schemas import FILTERED_FILE

    crawl = tmp_path / "crawl"
    crawl.mkdir()
    data = warc_record("response", "https://example.org/sorting", http(PAGE), 1)
    data += warc_record("response", "https://example.org/logo.png", http(b"\x89PNG\x00\x00", "image/png"), 2)
    (crawl / "part-0.warc.gz").write_bytes(gzip.compress(data))
    steps = ["decode", "web_clean", "quality", "ast", {"classify": {"classifiers": [{"path": "builtin:code_rules"}]}}]
    job = JobConfig.from_dict(
        {
            "name": "web",
            "output": str(tmp_path / "out"),
            "inputs": [{"kind": "warc", "path": str(crawl)}],
            "steps": steps,
        }
    )
    stats = run_job(job, tmp_path / "out")
    assert stats["steps"][0]["dropped"] == {"binary": 1, "code_language_unknown": 1}
    table = pq.read_table(next((tmp_path / "out" / "files").glob("*.parquet")))
    FILTERED_FILE.validate(table)
    rows = {r["path"]: r for r in table.to_pylist()}
    assert set(rows) == {f"https://example.org/sorting{s}" for s in ("", "#code-0", "#code-1")}
    assert rows["https://example.org/sorting#code-0"]["ast_status"] == "ok"
    for row in rows.values():
        ((name, score),) = row["quality_scores"]
        assert name == "code_rules" and 0.0 < score < 1.0
