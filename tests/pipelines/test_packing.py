"""Tokenise and pack: documents survive packing intact, masks cover exactly the assistant tokens."""

import json
import sysconfig
from collections import Counter
from pathlib import Path

import pytest

from loopcoder.pipelines.samples.mixture import MixtureConfig, held_out, select_in_task
from loopcoder.pipelines.samples.packing import Document, PackingConfig, pack, tokenize_conversation, tokenize_text
from loopcoder.pipelines.samples.sft_data import read_conversations
from loopcoder.schemas import PACKED_SEQUENCE, SFT_CONVERSATION
from loopcoder.schemas.tokens import load_tokenizer

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


def test_mixture_meets_budgets_per_task_and_deterministically():
    config = MixtureConfig(
        categories={"file": {"weight": 3}, "commit": {"weight": 1}, "sft": {"tokens": 200}}, total_tokens=4000
    )
    available = {"file": 5000, "commit": 1200, "sft": 500}
    rates = config.rates(available)
    assert rates == {"file": 0.6, "commit": pytest.approx(1000 / 1200), "sft": 0.4}
    files = [(f"f{i}", 100) for i in range(50)]
    # two tasks of 25 documents each meet the rate on their own, exactly up to one document each
    taken = [select_in_task(files[:25], rates["file"], config), select_in_task(files[25:], rates["file"], config)]
    assert sum(100 * len(t) for t in taken) == 3000
    assert select_in_task(files[:25], 0.6, config) == taken[0]
    assert select_in_task(files[:25], 0.6, MixtureConfig(**{**config.__dict__, "seed": 1})) != taken[0]
    assert {key for key, _, _ in taken[0]} < {key for key, _ in files[:25]}
    # a category smaller than its budget is repeated, each epoch in its own shuffled order, up to max_epochs
    small = MixtureConfig(categories={"commit": {"tokens": 1000}})
    assert small.rates({"commit": 300})["commit"] == pytest.approx(10 / 3)
    copies = select_in_task([("c1", 150), ("c2", 150)], 10 / 3, small)
    assert Counter(epoch for _, epoch, _ in copies) == {0: 2, 1: 2, 2: 2, 3: 1}
    assert [e for _, e, _ in copies] == sorted(e for _, e, _ in copies)
    assert MixtureConfig(categories={"c": {"tokens": 10**6}}, max_epochs=2).rates({"c": 10}) == {"c": 2.0}
    assert MixtureConfig(categories={"c": {"tokens": 10**6}}, allow_repeat=False).rates({"c": 10}) == {"c": 1.0}
    assert config.rates({"file": 0, "commit": 1, "sft": 1})["file"] == 0.0


def test_heldout_split_is_a_seeded_share_of_keys():
    keys = [f"doc-{i}" for i in range(20_000)]
    chosen = [k for k in keys if held_out(k, 0.05, seed=0)]
    assert 0.04 < len(chosen) / len(keys) < 0.06
    assert chosen == [k for k in keys if held_out(k, 0.05, seed=0)]
    assert chosen != [k for k in keys if held_out(k, 0.05, seed=1)]
    assert not any(held_out(k, 0.0, seed=0) for k in keys[:100])


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
