"""Degenerate answers: repetition loops, empty answers, answers cut at max_tokens, the wrong script.

Small models fail in ways that overlap metrics like token F1 barely notice: a loop such as
``https:503:50:50:100:100:100...`` until ``max_tokens``, an empty message, or an answer in another
script than the question. Each check is a per-answer flag, so the eval can compare rates (and the
rollout monitor or a drift job can count them on live traffic)::

    flags = degenerate_flags("What is 2+2?", "4 4 4 4 4 4 4 4 4 4 4 4 4 4 4 4", finish_reason="length")
    flags["repetitive"], flags["truncated"], flags["degenerate"]
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections import Counter

_TOKENS = re.compile(r"\w+|[^\w\s]")
NGRAM = 4
MIN_TOKENS = 12  # shorter answers cannot loop in a way worth flagging
REPEAT_SHARE = 0.5  # share of repeated 4-grams at which an answer is a loop (ordinary prose: < 0.1)
MIN_CHARS_COMPRESS = 120
COMPRESS_RATIO = 0.12  # zlib output / input bytes; ordinary prose of this length: 0.45-0.7
MIN_LETTERS_SCRIPT = 12


def repeated_ngram_share(text: str, n: int = NGRAM) -> float:
    """Share of the answer's word n-grams that repeat an earlier one (0 for short answers)."""
    tokens = _TOKENS.findall(text.lower())
    if len(tokens) < max(MIN_TOKENS, n + 1):
        return 0.0
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams)


def is_repetitive(text: str) -> bool:
    """A loop: most word 4-grams repeat, or the text compresses like a repeated pattern (loops
    without spaces, e.g. ``ababab...`` or ``100:100:100``)."""
    if repeated_ngram_share(text) >= REPEAT_SHARE:
        return True
    raw = text.encode("utf-8", "replace")
    return len(raw) >= MIN_CHARS_COMPRESS and len(zlib.compress(raw, 9)) / len(raw) <= COMPRESS_RATIO


def script_of(text: str) -> str | None:
    """The dominant writing system of the letters in ``text`` (LATIN, CYRILLIC, CJK, ...), or None
    when there are too few letters to say."""
    counts: Counter[str] = Counter()
    for ch in text:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            script = name.split(" ", 1)[0] if name else "OTHER"
            if script in ("HIRAGANA", "KATAKANA", "HANGUL", "CJK"):
                script = "CJK"
            counts[script] += 1
    total = sum(counts.values())
    if total < MIN_LETTERS_SCRIPT:
        return None
    script, count = counts.most_common(1)[0]
    return script if count / total >= 0.6 else "MIXED"


def charset_mismatch(question: str, answer: str) -> bool:
    """The answer is written mostly in another script than the question."""
    q, a = script_of(question), script_of(answer)
    return q is not None and a is not None and q != "MIXED" and a != q


def degenerate_flags(question: str, answer: str, *, finish_reason: str | None = None,
                     completion_tokens: int = 0, max_tokens: int | None = None) -> dict[str, float]:
    """Per-answer 0/1 flags: repetitive, empty, truncated (stopped by max_tokens), charset_mismatch,
    and degenerate (repetitive, empty or in the wrong script; a merely long answer is not degenerate)."""
    truncated = finish_reason == "length" if finish_reason else bool(
        max_tokens and completion_tokens >= max_tokens)
    flags = {"repetitive": is_repetitive(answer), "empty": not answer.strip(), "truncated": truncated,
             "charset_mismatch": charset_mismatch(question, answer)}
    flags["degenerate"] = flags["repetitive"] or flags["empty"] or flags["charset_mismatch"]
    return {k: float(v) for k, v in flags.items()}
