"""Instruction data (JSONL of messages) into `sft_conversation` records.

Accepted lines: `{"messages": [{"role": ..., "content": ...}, ...]}` (OpenAI/TRL style) or
`{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}` (ShareGPT style), with
optional `id`, `source` and `difficulty`. A line that is not JSON, has no assistant turn, uses an
unknown role or empty content is rejected under a named reason, never silently fixed.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def conversation_record(
    raw: dict[str, Any], source: str, line_number: int
) -> tuple[dict[str, Any] | None, str | None]:
    if "messages" in raw:
        messages = [{"role": m.get("role"), "content": m.get("content")} for m in raw["messages"]]
    elif "conversations" in raw:
        messages = [
            {"role": SHAREGPT_ROLES.get(m.get("from")), "content": m.get("value")} for m in raw["conversations"]
        ]
    else:
        return None, "no_messages"
    if any(m["role"] not in ROLES for m in messages):
        return None, "unknown_role"
    if any(not isinstance(m["content"], str) or not m["content"].strip() for m in messages):
        return None, "empty_content"
    if not any(m["role"] == "assistant" for m in messages):
        return None, "no_assistant_turn"
    key = raw.get("id") or hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:24]
    difficulty = raw.get("difficulty")
    return {
        "id": str(key),
        "messages": messages,
        "source": raw.get("source", source),
        "difficulty": float(difficulty) if difficulty is not None else None,
    }, None


def read_conversations(path: str | Path, rejections: Counter | None = None) -> Iterator[dict[str, Any]]:
    """`sft_conversation` records from a JSONL file; rejections are counted by reason."""
    path = Path(path)
    rejections = rejections if rejections is not None else Counter()
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError:
                rejections["not_json"] += 1
                continue
            record, reason = conversation_record(raw, path.stem, number)
            if reason is not None:
                rejections[reason] += 1
                continue
            yield record
