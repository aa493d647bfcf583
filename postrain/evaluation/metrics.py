"""The metrics of the evaluations: unbiased pass@k, exact match and edit similarity (docs/evaluation.md)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from `n` samples of which `c` passed (Chen et al. 2021, arXiv 2107.03374).

    pass@k = 1 - C(n - c, k) / C(n, k): the probability that at least one of k samples drawn without
    replacement from the n passes. Computed as a product, which is exact and never overflows. Raises
    ValueError when k > n (the estimate is undefined) or the counts are inconsistent.

    >>> round(pass_at_k(n=10, c=3, k=1), 6)
    0.3
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples, got n={n}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """pass@k averaged over problems, each given as (n, c)."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    return sum(values) / len(values) if values else float("nan")


def normalize(text: str) -> str:
    """What EM and ES compare: trailing whitespace removed from every line, outer blank space stripped."""
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0."""
    return float(normalize(prediction) == normalize(reference))


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each), O(len(a) * len(b))."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def edit_similarity(prediction: str, reference: str) -> float:
    """1 - Levenshtein(p, r) / max(|p|, |r|) on the normalised strings (CrossCodeEval's ES); 1.0 when both are empty.

    >>> round(edit_similarity("return a + b", "return a - b"), 4)
    0.9167
    """
    p, r = normalize(prediction), normalize(reference)
    longest = max(len(p), len(r))
    return 1.0 - levenshtein(p, r) / longest if longest else 1.0


__all__ = ["pass_at_k", "mean_pass_at_k", "normalize", "exact_match", "levenshtein", "edit_similarity"]
