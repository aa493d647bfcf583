"""Tokenise and pack: documents survive packing intact, masks cover exactly the assistant tokens."""

import json
import sysconfig
from collections import Counter
from pathlib import Path

import pytest

from loopcoder.model.tokenizer import load_tokenizer
from loopcoder.pipelines.mixture import MixtureConfig, select
from loopcoder.pipelines.packing import Document, PackingConfig, pack, tokenize_conversation, tokenize_text
from loopcoder.pipelines.sft_data import read_conversations
from loopcoder.schemas import PACKED_SEQUENCE, SFT_CONVERSATION

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def documents(tokenizer):
    texts = [p.read_text(encoding="utf-8") for p in sorted((STDLIB / "json").glob("*.py"))]
    texts += [p.read_text(encoding="utf-8")[:3000] for p in sorted((STDLIB / "email").glob("*.py"))[:12]]
    docs = [tokenize_text(tokenizer, text, "file" if i % 3 else "commit") for i, text in enumerate(texts)]
    return docs


def unpack(rows):
    """category -> documents in row order, padding segments left out."""
    out = {}
    for row in rows:
        bounds = row["cu_seqlens"]
        for i in range(row["num_documents"]):
            ids = row["input_ids"][bounds[i] : bounds[i + 1]]
            mask = row["loss_mask"][bounds[i] : bounds[i + 1]]
            out.setdefault(row["category"], []).append((ids, mask))
    return out


def test_packed_rows_reproduce_the_tokenised_documents(documents):
    config = PackingConfig(seq_len=2048)
    rows, stats = pack(documents, config, pad_id=0)
    PACKED_SEQUENCE.from_records(rows)  # schema-valid
    fitting = [d for d in documents if len(d.ids) <= config.seq_len]
    expected = {}
    for d in fitting:
        expected.setdefault(d.category, []).append((d.ids, d.loss_mask))
    assert unpack(rows) == expected
    assert stats.dropped["too_long"] == len(documents) - len(fitting)
    for row in rows:
        assert len(row["input_ids"]) == config.seq_len == row["cu_seqlens"][-1]
        padding = row["cu_seqlens"][-1] - row["cu_seqlens"][row["num_documents"]]
        assert row["loss_mask"][config.seq_len - padding :] == [0] * padding
    assert sum(stats.tokens.values()) == sum(len(d.ids) for d in fitting)


def test_no_document_crosses_a_row_unless_splitting_is_on(documents):
    long_doc = Document(list(range(5000)), [1] * 5000, "file")
    rows, stats = pack([long_doc, *documents[:3]], PackingConfig(seq_len=1024, pad_to_length=False), pad_id=0)
    assert stats.dropped["too_long"] >= 1
    assert all(len(r["input_ids"]) <= 1024 for r in rows)
    rows, _ = pack([long_doc], PackingConfig(seq_len=1024, split_long_documents=True, pad_to_length=False), pad_id=0)
    pieces = [ids for ids, _ in unpack(rows)["file"]]
    assert [len(p) for p in pieces] == [1024] * 4 + [904]
    assert sum(pieces, []) == long_doc.ids


def test_loss_mask_covers_exactly_the_assistant_tokens(tokenizer):
    messages = [
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": "Reverse a list."},
        {"role": "assistant", "content": "def rev(xs):\n    return xs[::-1]"},
        {"role": "user", "content": "And a string?"},
        {"role": "assistant", "content": "def rev_s(s):\n    return s[::-1]"},
    ]
    document = tokenize_conversation(tokenizer, messages)
    supervised = [tok for tok, m in zip(document.ids, document.loss_mask, strict=True) if m]
    expected = tokenizer.encode(
        "def rev(xs):\n    return xs[::-1]<|im_end|>def rev_s(s):\n    return s[::-1]<|im_end|>",
        add_special_tokens=False,
    )
    assert supervised == expected
    assert tokenizer.decode(document.ids) == tokenizer.apply_chat_template(messages, tokenize=False)
    with pytest.raises(ValueError, match="no assistant turn"):
        tokenize_conversation(tokenizer, messages[:2])


def test_mixture_meets_budgets_deterministically():
    documents = {
        "file": [(f"f{i}", 100) for i in range(50)],  # 5,000 tokens
        "commit": [(f"c{i}", 300) for i in range(4)],  # 1,200 tokens: repeated
        "sft": [(f"s{i}", 50) for i in range(10)],
    }
    config = MixtureConfig(
        categories={"file": {"weight": 3}, "commit": {"weight": 1}, "sft": {"tokens": 200}}, total_tokens=4000
    )
    chosen, report = select(documents, config)
    realised = {row["category"]: row for row in report.rows}
    assert realised["file"]["tokens"] == 3000 and realised["file"]["epochs"] == 1
    assert realised["commit"]["tokens"] == 1200 and realised["commit"]["budget"] == 1000
    assert realised["sft"]["tokens"] == 200 and len(chosen["sft"]) == 4
    assert chosen == select(documents, config)[0]
    assert chosen != select(documents, MixtureConfig(**{**config.__dict__, "seed": 1}))[0]
    small = select({"commit": [("c", 300)]}, MixtureConfig(categories={"commit": {"tokens": 1000}}))[0]
    assert Counter(small["commit"]) == {"c": 4}  # four epochs of one document
    assert "| file | 3,000 | 3,000 |" in report.table()


def test_sft_jsonl_in_both_formats_becomes_conversations(tmp_path):
    path = tmp_path / "sft.jsonl"
    lines = [
        {
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            "difficulty": 0.2,
        },
        {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}], "id": "sg"},
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json\n")
    rejections = Counter()
    records = list(read_conversations(path, rejections))
    SFT_CONVERSATION.from_records(records)
    assert [r["messages"][-1]["content"] for r in records] == ["hello", "4"]
    assert records[1]["id"] == "sg" and records[0]["difficulty"] == pytest.approx(0.2)
    assert rejections == {"no_assistant_turn": 1, "unknown_role": 1, "not_json": 1}
