"""Banned topics / keywords (whole words, on every normalised variant) and a length limit."""

from __future__ import annotations

import re


def compile_banned(terms: list[str]) -> re.Pattern | None:
    if not terms:
        return None
    words = sorted({t.strip().lower() for t in terms if t.strip()}, key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in words) + r")\b", re.I)


def banned_hits(pattern: re.Pattern | None, variants: list[str]) -> list[str]:
    if pattern is None:
        return []
    found = []
    for text in variants:
        found += [m.group().lower() for m in pattern.finditer(text)]
    return sorted(set(found))
