"""Conversation files (JSON Lines, JSON, Parquet or Arrow) into `sft_conversation` records.

Two row layouts are read, from any file `loopcoder.pipelines.io.row_files.read_rows` reads
(`.jsonl`, `.json`, optionally `.gz`; `.parquet`; `.arrow`):

* OpenAI / TRL: `{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": ...}]}`,
  where `content` is a string or a list of parts of which only `{"type": "text", "text": ...}`
  parts are accepted;
* ShareGPT: `{"conversations": [{"from": "system"|"human"|"gpt", "value": ...}]}` (`user` and
  `assistant` are accepted as `from` too).

Optional fields: `id` (default: a hash of the messages, so the same conversation gets the same
id in any file), `source` (default: the file name without suffix) and `difficulty` (a number in
[0, 1] that the difficulty scorer then keeps). A row is loaded whole or rejected under one
reason, counted, never repaired:

| reason | the row |
|---|---|
| `not_json` | a JSONL line that does not parse |
| `not_an_object` | is not a JSON object / Parquet struct |
| `no_messages` | has neither `messages` nor `conversations` |
| `malformed_messages` | messages are not a list of objects |
| `unknown_role` | a role (or ShareGPT `from`) outside the lists above |
| `non_text_content` | content that is not text (an image part, a number, ...) |
| `empty_content` | a turn with empty or blank content |
| `special_token` | a turn holding a control token such as `<|im_end|>`, which would break the chat template |
| `no_assistant_turn` | nothing to train on |
| `bad_difficulty` | `difficulty` that is not a number in [0, 1] |
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loopcoder.pipelines.io.row_files import ROW_FILE_SUFFIXES, read_rows

ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
# ChatML and FIM control tokens all have this shape; text holding one would end a turn early
CONTROL_TOKEN = re.compile(r"<\|[a-z_]+\|>")


def conversation_id(messages: list[dict[str, str]]) -> str:
    """A content hash of the turns: the same conversation has the same id wherever it comes from."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:24]


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                return None
            texts.append(part["text"])
        return "".join(texts)
    return None


def _turns(raw: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str | None]:
    if "messages" in raw and raw["messages"] is not None:
        turns, role_key, content_key, roles = raw["messages"], "role", "content", {r: r for r in ROLES}
    elif "conversations" in raw and raw["conversations"] is not None:
        turns, role_key, content_key, roles = raw["conversations"], "from", "value", SHAREGPT_ROLES
    else:
        return None, "no_messages"
    if isinstance(turns, str):  # a Parquet column may hold the list as JSON text
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError:
            return None, "malformed_messages"
    if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
        return None, "malformed_messages"
    messages = []
    for turn in turns:
        role = roles.get(turn.get(role_key)) if isinstance(turn.get(role_key), str) else None
        if role is None:
            return None, "unknown_role"
        messages.append({"role": role, "content": turn.get(content_key)})
    return messages, None


def conversation_record(raw: Any, source: str) -> tuple[dict[str, Any] | None, str | None]:
    """(`sft_conversation` record, None) for a valid row, else (None, reason)."""
    if not isinstance(raw, dict):
        return None, "not_an_object"
    messages, reason = _turns(raw)
    if reason is not None:
        return None, reason
    for message in messages:
        text = _content_text(message["content"])
        if text is None:
            return None, "empty_content" if message["content"] is None else "non_text_content"
        if not text.strip():
            return None, "empty_content"
        if CONTROL_TOKEN.search(text):
            return None, "special_token"
        message["content"] = text
    if not any(m["role"] == "assistant" for m in messages):
        return None, "no_assistant_turn"
    difficulty = raw.get("difficulty")
    if difficulty is not None:
        if isinstance(difficulty, bool) or not isinstance(difficulty, (int, float)) or not 0.0 <= difficulty <= 1.0:
            return None, "bad_difficulty"
        difficulty = float(difficulty)
    return {
        "id": str(raw.get("id") or conversation_id(messages)),
        "messages": messages,
        "source": str(raw.get("source") or source),
        "difficulty": difficulty,
        "difficulty_tier": None,
        "kind": "user",
        "language": None,
    }, None


def _source_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".parquet"):
        name = name.removesuffix(suffix)
    return name


def read_conversations(
    path: str | Path, rejections: Counter | None = None, source: str | None = None
) -> Iterator[dict[str, Any]]:
    """`sft_conversation` records of one row file (`ROW_FILE_SUFFIXES`); rejections counted by reason.

    A file that cannot be opened or is not valid Parquet raises; bad rows inside a readable file do not.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"conversation file {path} does not exist")
    if not path.name.endswith(ROW_FILE_SUFFIXES):
        raise ValueError(f"{path}: conversation files are {', '.join(ROW_FILE_SUFFIXES)}")
    rejections = rejections if rejections is not None else Counter()
    source = source or _source_name(path)
    for raw in read_rows(path, rejections):
        record, reason = conversation_record(raw, source)
        if reason is not None:
            rejections[reason] += 1
            continue
        yield record


def read_conversation_file(path: str | Path, source: str | None = None) -> tuple[list[dict[str, Any]], Counter]:
    """All records of one file and its rejection counts: the unit of work of a per-file task."""
    rejections: Counter = Counter()
    records = list(read_conversations(path, rejections, source))
    return records, rejections
