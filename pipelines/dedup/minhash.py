"""MinHash signatures and LSH band keys, bit for bit equal to datasketch's `MinHash`.

Shingles are 5-grams of alphanumeric tokens (runs of `[A-Za-z0-9_]`, bigcode). A shingle's
32-bit hash combines the xxh32 hashes of its tokens (`shingle_hash`), so each token is hashed
once in C and the shingle hashes come out of a few numpy operations instead of one Python call
per shingle. The permutation step is datasketch's default scheme (`affine32`, datasketch 2.0):
the hash is pre-mixed with the MurmurHash3 finalizer, then `a_k * h + b_k mod 2^32` for each of
the `num_perm` permutations drawn from `np.random.RandomState(seed)`, and the minimum is kept.
Here it runs over the distinct shingle hashes of a file in cache-sized chunks. The permutations are
drawn here the way datasketch draws them (`affine32_permutations`) rather than read from a
`datasketch.MinHash`: importing datasketch imports scipy, 0.7 s in every process that signs
(each worker of a job); the tests compare both draws.

    MinHash.bulk([shingles(text)], num_perm=256, hashfunc=shingle_hash)[0].hashvalues
        == MinhashSignatures(MinhashConfig()).signature(text)      # tests assert this

LSH: the first `bands * rows` values are cut into `bands` bands of `rows` values; each band is
hashed to 64 bits (`band_hashes`). Two files are candidate duplicates when one band hash is
equal, which for Jaccard similarity s happens with probability 1 - (1 - s^rows)^bands. With
`verify` (the default) a candidate pair is a duplicate only when the exact Jaccard similarity of
its shingle sets (`shingle_set`, `jaccard`) reaches `threshold`, so the bands are chosen for
recall (40 x 6) and verification restores precision.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import xxhash

TOKEN = re.compile(rb"[A-Za-z0-9_]+")
_M64 = 0xFFFFFFFFFFFFFFFF
_SHINGLE_MULTIPLIER = 0x100000001B3  # FNV-1a 64-bit prime
_SHINGLE_OFFSET = 0xCBF29CE484222325
_BAND_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_CHUNK_ROWS = 256


@dataclass(frozen=True)
class MinhashConfig:
    """Near-dedup parameters shared by every MinHash stage; `str()` names the stage's folder."""

    ngram: int = 5
    num_perm: int = 256
    # 40 bands of 6 rows make a pair at Jaccard 0.7 a candidate with probability 0.993 (25 x 10: 0.51);
    # the extra candidates below the threshold are what `verify` removes.
    bands: int = 40
    rows: int = 6
    threshold: float = 0.7  # Jaccard similarity of shingle sets at or above which two files are duplicates
    verify: bool = True  # check every candidate pair's exact Jaccard; off: every LSH candidate is a duplicate
    bucket_window: int = 32  # with `verify`: each bucket member is paired with the next `bucket_window` members
    seed: int = 1
    min_tokens: int = 5  # files with fewer tokens are only exact-deduplicated

    def __post_init__(self) -> None:
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.min_tokens < self.ngram:
            # a file with fewer tokens than one shingle has an empty set: all of them would collide at Jaccard 1
            raise ValueError(f"min_tokens ({self.min_tokens}) must be at least ngram ({self.ngram})")
        if self.bucket_window < 1:
            raise ValueError(f"bucket_window must be at least 1, got {self.bucket_window}")

    def candidate_probability(self, jaccard: float) -> float:
        """Probability that a pair of this Jaccard similarity shares at least one band."""
        return 1.0 - (1.0 - jaccard**self.rows) ** self.bands

    def __str__(self) -> str:
        return f"minhash-{self.ngram}g-{self.num_perm}p-{self.bands}b{self.rows}r-s{self.seed}"

    def to_dict(self) -> dict:
        return asdict(self)


def tokens(text: str) -> list[bytes]:
    return TOKEN.findall(text.encode("utf-8", "surrogatepass"))


def shingles(text: str, n: int = 5) -> list[tuple[bytes, ...]]:
    """The list of token n-grams (the items fed to datasketch in the reference computation)."""
    toks = tokens(text)
    return [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]


def shingle_hash(shingle: Sequence[bytes]) -> int:
    """The 32-bit hash of one shingle, in plain Python (datasketch's `hashfunc`)."""
    acc = _SHINGLE_OFFSET
    for token in shingle:
        acc = ((acc ^ xxhash.xxh32_intdigest(token)) * _SHINGLE_MULTIPLIER) & _M64
    return acc >> 32


def shingle_hashes(token_list: list[bytes], n: int) -> np.ndarray:
    """`shingle_hash` of every n-gram of `token_list`, vectorised (uint32)."""
    count = len(token_list) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint32)
    token_hashes = np.fromiter(map(xxhash.xxh32_intdigest, token_list), dtype=np.uint64, count=len(token_list))
    acc = np.full(count, _SHINGLE_OFFSET, dtype=np.uint64)
    multiplier = np.uint64(_SHINGLE_MULTIPLIER)
    for j in range(n):
        acc ^= token_hashes[j : j + count]
        acc *= multiplier
    return (acc >> np.uint64(32)).astype(np.uint32)


def _fmix32(hv: np.ndarray) -> np.ndarray:
    hv = hv ^ (hv >> np.uint32(16))
    hv *= np.uint32(0x85EBCA6B)
    hv ^= hv >> np.uint32(13)
    hv *= np.uint32(0xC2B2AE35)
    return hv ^ (hv >> np.uint32(16))


def affine32_permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`datasketch.MinHash(num_perm, seed=seed, scheme="affine32").permutations`: odd multipliers
    `a` (an odd `a` makes `a * h + b mod 2^32` a bijection) and offsets `b`, in the same draws."""
    generator = np.random.RandomState(seed)
    a = generator.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = generator.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


class MinhashSignatures:
    """Owns the permutations (drawn once, like datasketch's `MinHash(seed=...)`); one signature per text."""

    def __init__(self, config: MinhashConfig | None = None):
        self.config = config or MinhashConfig()
        self.a, self.b = affine32_permutations(self.config.num_perm, self.config.seed)
        self._buffer = np.empty((_CHUNK_ROWS, self.config.num_perm), dtype=np.uint32)

    def num_tokens(self, text: str) -> int:
        return len(tokens(text))

    def signature_from_tokens(self, token_list: list[bytes]) -> np.ndarray:
        """uint32[num_perm]; all 0xFFFFFFFF (datasketch's empty value) when there is no shingle."""
        signature = np.full(self.config.num_perm, 0xFFFFFFFF, dtype=np.uint32)
        hv = shingle_hashes(token_list, self.config.ngram)
        if not len(hv):
            return signature
        hv = _fmix32(np.unique(hv))
        for start in range(0, len(hv), _CHUNK_ROWS):
            chunk = hv[start : start + _CHUNK_ROWS, None]
            out = self._buffer[: len(chunk)]
            np.multiply(chunk, self.a, out=out)
            np.add(out, self.b, out=out)
            np.minimum(signature, out.min(axis=0), out=signature)
        return signature

    def signature(self, text: str) -> np.ndarray:
        return self.signature_from_tokens(tokens(text))

    def band_hashes(self, signature: np.ndarray) -> np.ndarray:
        """uint64[bands]: one hash per band of `rows` signature values."""
        c = self.config
        bands = signature[: c.bands * c.rows].reshape(c.bands, c.rows).astype(np.uint64)
        acc = np.full(c.bands, _SHINGLE_OFFSET, dtype=np.uint64)
        for j in range(c.rows):
            acc ^= bands[:, j]
            acc *= _BAND_MULTIPLIER
        # the band index is mixed in so equal values in different bands never share a bucket
        return acc ^ np.arange(c.bands, dtype=np.uint64)


def shingle_set(text: str, n: int = 5) -> np.ndarray:
    """The sorted distinct shingle hashes of `text` (uint32): what exact Jaccard is computed on."""
    return np.unique(shingle_hashes(tokens(text), n))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two `shingle_set`s (1.0 for two empty sets)."""
    union = len(a) + len(b)
    if not union:
        return 1.0
    common = len(np.intersect1d(a, b, assume_unique=True))
    return common / (union - common)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))
