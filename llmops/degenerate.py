"""Degenerate answers: repetition loops, empty answers, answers cut at max_tokens, the wrong script (core:
the eval scores its rows with it and the gateway flags live answers in its request log).

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
from functools import lru_cache

_WORDS = re.compile(r"\w+")
NGRAM = 4
MIN_TOKENS = 12  # shorter answers cannot loop in a way worth flagging
REPEAT_SHARE = 0.5  # share of repeated word 4-grams at which an answer is a loop (ordinary prose: < 0.1)
MIN_CHARS_COMPRESS = 120
COMPRESS_RATIO = 0.12  # zlib output / input bytes; ordinary prose of this length: 0.45-0.7
MIN_LETTERS_SCRIPT = 12
SCRIPT_CHARS = 2000  # the script is read off the first characters (a loop or a long answer adds nothing)
SCRIPT_SHARE = 0.2  # an answer with less than this share of its letters in the question's script is off-script


def repeated_ngram_share(text: str, n: int = NGRAM) -> float:
    """Share of the answer's word n-grams that repeat an earlier one (0 for short answers). Only words
    count: rules (``=====``), brackets and separators of tables or lists are not a loop by themselves."""
    tokens = _WORDS.findall(text.lower())
    if len(tokens) < max(MIN_TOKENS, n + 1):
        return 0.0
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams)


def is_repetitive(text: str) -> bool:
    """A loop: most word 4-grams repeat, or the words compress like a repeated pattern (loops without
    spaces, e.g. ``ababab...``). Punctuation is dropped first, so a rule or a Markdown table border in
    an answer with words is not a loop; an answer that is almost only punctuation or symbols is
    judged on its raw text."""
    if repeated_ngram_share(text) >= REPEAT_SHARE:
        return True
    words = " ".join(_WORDS.findall(text)).encode("utf-8", "replace")
    if len(words) >= MIN_CHARS_COMPRESS and _compresses_like_a_loop(words):
        return True
    # hardly any words in a long answer ("!!!!...", a run of emoji, "- - - ..."): the raw text decides
    raw = text.encode("utf-8", "replace")
    return len(raw) >= MIN_CHARS_COMPRESS and len(words) < 0.2 * len(raw) and _compresses_like_a_loop(raw)


def _compresses_like_a_loop(data: bytes) -> bool:
    return len(zlib.compress(data, 9)) / len(data) <= COMPRESS_RATIO


@lru_cache(maxsize=4096)
def _script(ch: str) -> str:
    if ch.isascii():
        return "LATIN"
    name = unicodedata.name(ch, "")
    script = name.split(" ", 1)[0] if name else "OTHER"
    return "CJK" if script in ("HIRAGANA", "KATAKANA", "HANGUL", "CJK") else script


def script_of(text: str) -> str | None:
    """The dominant writing system of the letters in ``text`` (LATIN, CYRILLIC, CJK, ...), or None
    when there are too few letters to say."""
    counts: Counter[str] = Counter(_script(ch) for ch in text[:SCRIPT_CHARS] if ch.isalpha())
    total = sum(counts.values())
    if total < MIN_LETTERS_SCRIPT:
        return None
    script, count = counts.most_common(1)[0]
    return script if count / total >= 0.6 else "MIXED"


def charset_mismatch(question: str, answer: str) -> bool:
    """The answer is written in another script than the question: almost none (< 20 %) of its letters
    are in the question's script. A name or a quote in another script, or a question that mixes
    scripts, is not a mismatch."""
    q = script_of(question[:SCRIPT_CHARS])
    letters = [_script(ch) for ch in answer[:SCRIPT_CHARS] if ch.isalpha()]
    if q in (None, "MIXED") or len(letters) < MIN_LETTERS_SCRIPT:
        return False
    return sum(s == q for s in letters) / len(letters) < SCRIPT_SHARE


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
