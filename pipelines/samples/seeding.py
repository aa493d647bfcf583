"""Per-document random generators: choices depend on the seed and the document, not on partitioning."""

from __future__ import annotations

import hashlib
import random


def document_rng(seed: int, key: str, salt: str) -> random.Random:
    """A generator seeded by (salt, seed, key); the same document gets the same draws on any worker."""
    digest = hashlib.sha256(f"{salt}\x00{seed}\x00{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))
