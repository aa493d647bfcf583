"""Tokenising samples and packing them into fixed-length rows with document boundaries.

Each sample becomes one document: its token ids, a loss mask (1 where the token is a target) and
its category. Documents are packed greedily, in order, into rows of `seq_len` tokens:

* a document never crosses a row unless `split_long_documents` is on, in which case a document
  longer than a row is cut into row-sized pieces (each piece a document of its own); otherwise
  it is dropped and counted (`too_long`);
* rows hold one category each (a packer per category), so per-category losses and mixtures
  stay exact;
* with `pad_to_length` the last segment of a row is padding (pad id, loss 0), recorded in
  `cu_seqlens` like a document so that the model's packed attention keeps it apart, but not
  counted in `num_documents`.

Text documents (plain files, FIM samples, commit triplets) end with `eos_text` (`<|endoftext|>`
by default; FIM text already ends with `<|im_end|>`). Conversations are rendered with the chat
template and only assistant tokens get loss.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from loopcoder.schemas.tokens import ENDOFTEXT


@dataclass
class PackingConfig:
    seq_len: int = 4096
    split_long_documents: bool = False
    pad_to_length: bool = True
    eos_text: str = ENDOFTEXT  # appended to text documents that do not end with a special token already


@dataclass
class Document:
    ids: list[int]
    loss_mask: list[int]
    category: str


@dataclass
class PackingStats:
    documents: Counter = field(default_factory=Counter)
    tokens: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    rows: int = 0
    padding_tokens: int = 0


def tokenize_texts(tokenizer, texts: list[str], categories: list[str], eos_text: str = ENDOFTEXT) -> list[Document]:
    """Text documents, encoded in one batch (the fast tokenizer splits the batch over threads in Rust)."""
    texts = [text if text.endswith(("<|im_end|>", eos_text)) else text + eos_text for text in texts]
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [Document(list(ids), [1] * len(ids), c) for ids, c in zip(encoded, categories, strict=True)]


def tokenize_text(tokenizer, text: str, category: str, eos_text: str = ENDOFTEXT) -> Document:
    return tokenize_texts(tokenizer, [text], [category], eos_text)[0]


def tokenize_conversation(tokenizer, messages: list[dict[str, str]], category: str = "sft") -> Document:
    """ChatML ids with loss only on assistant turns (content and their `<|im_end|>`)."""
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, add_generation_prompt=False
    )
    mask = list(out["assistant_masks"])
    if not any(mask):
        raise ValueError("conversation has no assistant turn to train on")
    return Document(list(out["input_ids"]), mask, category)


class Packer:
    """Greedy in-order packing of one category's documents; `add` yields finished `packed_sequence` records."""

    def __init__(self, config: PackingConfig, pad_id: int):
        self.config = config
        self.pad_id = pad_id
        self.stats = PackingStats()
        self._row: list[Document] = []
        self._length = 0

    def add(self, document: Document) -> Iterator[dict[str, Any]]:
        seq_len = self.config.seq_len
        if not document.ids:
            self.stats.dropped["empty"] += 1
            return
        pieces = [document]
        if len(document.ids) > seq_len:
            if not self.config.split_long_documents:
                self.stats.dropped["too_long"] += 1
                return
            pieces = [
                Document(document.ids[i : i + seq_len], document.loss_mask[i : i + seq_len], document.category)
                for i in range(0, len(document.ids), seq_len)
            ]
        for piece in pieces:
            if self._length + len(piece.ids) > seq_len:
                yield self._emit()
            self._row.append(piece)
            self._length += len(piece.ids)
            self.stats.documents[piece.category] += 1
            self.stats.tokens[piece.category] += len(piece.ids)

    def flush(self) -> Iterator[dict[str, Any]]:
        if self._row:
            yield self._emit()

    def _emit(self) -> dict[str, Any]:
        ids: list[int] = []
        mask: list[int] = []
        bounds = [0]
        for document in self._row:
            ids += document.ids
            mask += document.loss_mask
            bounds.append(len(ids))
        padding = self.config.seq_len - len(ids) if self.config.pad_to_length else 0
        if padding:
            ids += [self.pad_id] * padding
            mask += [0] * padding
            bounds.append(len(ids))
            self.stats.padding_tokens += padding
        record = {
            "input_ids": ids,
            "cu_seqlens": bounds,
            "loss_mask": mask,
            "category": self._row[0].category,
            "num_documents": len(self._row),
        }
        self.stats.rows += 1
        self._row, self._length = [], 0
        return record


class CategoryPacker:
    """One `Packer` per category, so that every row holds a single category."""

    def __init__(self, config: PackingConfig, pad_id: int):
        self.config = config
        self.pad_id = pad_id
        self.packers: dict[str, Packer] = {}

    def add(self, document: Document) -> Iterator[dict[str, Any]]:
        if document.category not in self.packers:
            self.packers[document.category] = Packer(self.config, self.pad_id)
        yield from self.packers[document.category].add(document)

    def flush(self) -> Iterator[dict[str, Any]]:
        for category in sorted(self.packers):
            yield from self.packers[category].flush()

    @property
    def stats(self) -> PackingStats:
        total = PackingStats()
        for packer in self.packers.values():
            total.documents += packer.stats.documents
            total.tokens += packer.stats.tokens
            total.dropped += packer.stats.dropped
            total.rows += packer.stats.rows
            total.padding_tokens += packer.stats.padding_tokens
        return total


def pack(
    documents: Iterable[Document], config: PackingConfig, pad_id: int
) -> tuple[list[dict[str, Any]], PackingStats]:
    """Packs documents in order into category-pure rows; returns the rows and what was packed."""
    packer = CategoryPacker(config, pad_id)
    rows = [row for document in documents for row in packer.add(document)]
    rows += list(packer.flush())
    return rows, packer.stats
