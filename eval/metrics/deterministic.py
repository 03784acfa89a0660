"""Deterministic metrics: exact match, token F1, ROUGE-L, citation precision, refusals, latency, tok/s.

All text metrics compare SQuAD-style normalised answers (lower case, no punctuation or articles).
Citation markers like ``[2]`` are removed before comparing answers::

    token_f1("The bridge is 412 metres long [1].", "It is 412 metres long.")  # 0.8
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter

_CITE = re.compile(r"\[(\d{1,3})\]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
REFUSAL_PATTERNS = re.compile(
    r"\b(i can(?:no|')t|i am unable|i'm unable|i won't|i will not|cannot help|can't help|not able to help|"
    r"request (?:was|has been) blocked|content_blocked|i don't know based on)\b", re.I)


def strip_citations(text: str) -> str:
    return _CITE.sub(" ", text)


def normalize(text: str) -> str:
    text = strip_citations(text).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (longest common subsequence of normalised tokens)."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs(pred, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(pred), lcs / len(ref)
    return 2 * p * r / (p + r)


def cited_numbers(text: str) -> list[int]:
    out: list[int] = []
    for m in _CITE.finditer(text):
        n = int(m.group(1))
        if n not in out:
            out.append(n)
    return out


def citation_precision(prediction: str, contexts: list[str], gold: list[int] | None = None,
                       support_threshold: float = 0.5) -> float | None:
    """Share of cited passages that support the answer; None when nothing is cited.

    With ``gold`` (the passage numbers that hold the answer) a citation supports it when it is in
    ``gold``; otherwise when it exists and at least ``support_threshold`` of the answer's content words
    (citation markers removed) appear in the passage.
    """
    cited = cited_numbers(prediction)
    if not cited:
        return None
    if gold:
        return sum(n in gold for n in cited) / len(cited)
    words = set(normalize(prediction).split())
    good = 0
    for n in cited:
        if 1 <= n <= len(contexts) and words:
            passage = set(normalize(contexts[n - 1]).split())
            good += len(words & passage) / len(words) >= support_threshold
    return good / len(cited)


def is_refusal(text: str, error_code: str | None = None) -> bool:
    """A blocked request (gateway error ``content_blocked``) or a refusal-style answer."""
    return error_code == "content_blocked" or bool(REFUSAL_PATTERNS.search(text or ""))


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[min(len(ordered), max(rank, 1)) - 1]
