"""Turning raw file bytes into text, or into a named rejection reason."""

from __future__ import annotations

DEFAULT_MAX_FILE_BYTES = 1_000_000
BINARY_SNIFF_BYTES = 8192


class Rejection:
    """Reason names, shared by every reader and counted in job statistics."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"
    BINARY = "binary"
    NOT_UTF8 = "not_utf8"
    UNREADABLE = "unreadable"


def decode_source(raw: bytes, max_bytes: int | None = DEFAULT_MAX_FILE_BYTES) -> tuple[str | None, str | None]:
    """(text, None) for a UTF-8 text file; (None, reason) otherwise.

    A NUL byte in the first 8 KiB marks a binary file (as git does). A UTF-8 byte-order mark is
    kept, since it is part of the file.
    """
    if not raw:
        return None, Rejection.EMPTY
    if max_bytes is not None and len(raw) > max_bytes:
        return None, Rejection.TOO_LARGE
    if b"\x00" in raw[:BINARY_SNIFF_BYTES]:
        return None, Rejection.BINARY
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, Rejection.NOT_UTF8
