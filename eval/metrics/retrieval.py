"""Retrieval metrics against reference contexts: hit@k, MRR, context recall.

A retrieved chunk matches a reference context when the normalised reference is a substring of
the chunk, or when ``overlap`` of its tokens are in the chunk (references that span two chunks)::

    hit_at_k(["alpha beta", "gamma"], ["gamma"], k=1)   # 0.0
"""

from __future__ import annotations

from eval.metrics.deterministic import normalize


def matches(chunk: str, reference: str, overlap: float = 0.8) -> bool:
    c, r = normalize(chunk), normalize(reference)
    if not r:
        return False
    if r in c:
        return True
    words = r.split()
    cw = set(c.split())
    return sum(w in cw for w in words) / len(words) >= overlap


def first_rank(retrieved: list[str], references: list[str]) -> int | None:
    """1-based rank of the first retrieved chunk that matches any reference; None when none does."""
    for i, chunk in enumerate(retrieved, 1):
        if any(matches(chunk, ref) for ref in references):
            return i
    return None


def hit_at_k(retrieved: list[str], references: list[str], k: int) -> float:
    rank = first_rank(retrieved, references)
    return float(rank is not None and rank <= k)


def reciprocal_rank(retrieved: list[str], references: list[str]) -> float:
    rank = first_rank(retrieved, references)
    return 1.0 / rank if rank else 0.0


def context_recall(retrieved: list[str], references: list[str]) -> float:
    """Share of reference contexts found in at least one retrieved chunk."""
    if not references:
        return 0.0
    return sum(any(matches(c, ref) for c in retrieved) for ref in references) / len(references)
