"""Conversation files: OpenAI `messages` and ShareGPT `conversations`, JSONL and Parquet, bad rows counted."""

import gzip
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopcoder.pipelines.io.row_files import read_rows
from loopcoder.pipelines.samples.sft_data import read_conversation_file, read_conversations
from loopcoder.schemas import SFT_CONVERSATION

OPENAI = {
    "messages": [
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": "Reverse a list."},
        {"role": "assistant", "content": "```python\nxs[::-1]\n```"},
    ]
}
SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "You write Python."},
        {"from": "human", "value": "Reverse a list."},
        {"from": "gpt", "value": "```python\nxs[::-1]\n```"},
    ]
}
BAD_ROWS = {
    "not_an_object": [1, 2],
    "no_messages": {"prompt": "x", "completion": "y"},
    "malformed_messages": {"messages": "hello"},
    "unknown_role": {"conversations": [{"from": "wizard", "value": "x"}, {"from": "gpt", "value": "y"}]},
    "non_text_content": {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": "a cat"},
        ]
    },
    "empty_content": {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}]},
    "special_token": {"messages": [{"role": "user", "content": "x<|im_end|>"}, {"role": "assistant", "content": "y"}]},
    "no_assistant_turn": {"messages": [{"role": "user", "content": "only a question"}]},
    "bad_difficulty": OPENAI | {"difficulty": 3},
}


def write_jsonl(path, rows, extra_lines=()):
    lines = [json.dumps(row) for row in rows] + list(extra_lines)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


@pytest.mark.parametrize("name", ["chat.jsonl", "chat.jsonl.gz"])
def test_jsonl_in_both_layouts_loads_the_good_rows_and_counts_each_bad_one(tmp_path, name):
    path = tmp_path / name
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Re"}, {"type": "text", "text": "verse"}]},
                          {"role": "assistant", "content": "done"}], "id": "parts", "difficulty": 0.25}  # fmt: skip
    write_jsonl(path, [OPENAI, *BAD_ROWS.values(), SHAREGPT, parts], ["{not json", ""])
    records, rejections = read_conversation_file(path)
    SFT_CONVERSATION.from_records(records)
    assert rejections == Counter({reason: 1 for reason in BAD_ROWS} | {"not_json": 1})
    assert [r["messages"][-1]["content"] for r in records] == ["```python\nxs[::-1]\n```"] * 2 + ["done"]
    # the same turns in either layout are the same conversation, with the same content id
    assert records[0]["messages"] == records[1]["messages"] and records[0]["id"] == records[1]["id"]
    assert records[2]["id"] == "parts" and records[2]["messages"][0]["content"] == "Reverse"
    assert records[2]["difficulty"] == 0.25 and records[0]["difficulty"] is None
    assert {r["source"] for r in records} == {"chat"} and {r["kind"] for r in records} == {"user"}


def test_parquet_with_struct_or_json_text_messages(tmp_path):
    path = tmp_path / "chats.parquet"
    structured = pa.Table.from_pylist([OPENAI, {"messages": [{"role": "user", "content": "q"}]}])
    pq.write_table(structured, path)
    rejections = Counter()
    records = list(read_conversations(path, rejections, source="mine"))
    assert len(records) == 1 and rejections == {"no_assistant_turn": 1}
    assert records[0]["messages"] == OPENAI["messages"] and records[0]["source"] == "mine"
    text_path = tmp_path / "sharegpt.parquet"
    pq.write_table(pa.table({"conversations": [json.dumps(SHAREGPT["conversations"]), "[not json"]}), text_path)
    records, rejections = read_conversation_file(text_path)
    assert [r["messages"][1]["role"] for r in records] == ["user"] and rejections == {"malformed_messages": 1}


def test_unreadable_or_unknown_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(read_conversations(tmp_path / "missing.jsonl"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="jsonl"):
        list(read_conversations(tmp_path / "notes.txt"))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 definitely not parquet")
    with pytest.raises(pa.ArrowInvalid):
        list(read_conversations(tmp_path / "bad.parquet"))


def test_row_files_of_every_kind_give_the_same_rows(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(3)
    ]
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "a.jsonl").write_text(lines[:-1] + "\nnot json\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as handle:
        handle.write(lines)
    (tmp_path / "c.json").write_text(json.dumps(rows))
    (tmp_path / "d.json").write_text(lines)  # one object per line under a .json name
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "e.parquet")
    with (
        pa.OSFile(str(tmp_path / "f.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, pa.Table.from_pylist(rows).schema) as w,
    ):
        w.write_table(pa.Table.from_pylist(rows))
    for name in ("a.jsonl", "b.jsonl.gz", "c.json", "d.json", "e.parquet", "f.arrow"):
        rejected = Counter()
        assert list(read_rows(tmp_path / name, rejected)) == rows, name
        assert rejected == (Counter({"not_json": 1}) if name == "a.jsonl" else Counter()), name
    records, rejections = read_conversation_file(tmp_path / "c.json")
    assert len(records) == 3 and not rejections
