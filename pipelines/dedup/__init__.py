"""Exact and MinHash near-dedup: signatures (`minhash`) and the global Ray Data stages (`stages`)."""
