"""Text normalisation shared by guardrails (at inference) and classic_ml (training its classifier).

``variants(text)`` returns the normalised text plus decoded forms of what looks encoded
(base64, hex, rot13, leetspeak), nested up to a few levels. Rails match on every variant.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata

ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e"))
# Letters that look Latin in other scripts (Cyrillic, Greek, fullwidth is handled by NFKC).
HOMOGLYPHS = str.maketrans({
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s",
    "ԁ": "d", "ɡ": "g", "һ": "h", "ӏ": "l", "ո": "n", "ԛ": "q", "ѡ": "w", "ԝ": "w", "Α": "A", "Β": "B",
    "Е": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T",
    "Υ": "Y", "Χ": "X", "А": "A", "В": "B", "С": "C", "Н": "H", "К": "K", "М": "M", "О": "O", "Р": "P",
    "Т": "T", "Х": "X", "ο": "o", "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "ѵ": "v",
})
LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"})
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
B64_TOKEN = re.compile(r"(?:[A-Za-z0-9+/]{4}){4,}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
HEX_TOKEN = re.compile(r"\b(?:[0-9a-fA-F]{2}){8,}\b")
SPACED = re.compile(r"\b(?:[A-Za-z][ .\-_*]){3,}[A-Za-z]\b")  # "i g n o r e", "i.g.n.o.r.e"
MAX_LEN = 200_000  # longer inputs are checked on their first and last parts
LEETISH = re.compile(r"[A-Za-z][0-9@$!][A-Za-z0-9]|\b[0-9@$][A-Za-z]{2,}")  # l33t, 1gnore, @ll
COMMON = frozenset("the a an and or of to in is are you your i me my it this that for on with be do not what "
                   "how can please all from as at by we they he she was were will would should have has".split())


def _reads_as_language(text: str) -> bool:
    words = re.findall(r"[a-z]+", text.lower()[:2000])
    return len(words) >= 4 and sum(w in COMMON for w in words) / len(words) >= 0.12


def normalize(text: str) -> str:
    """NFKC, no zero-width or control characters, homoglyphs mapped to Latin, spaces collapsed."""
    if text.isascii():  # the common case: nothing to fold
        return re.sub(r"\s+", " ", CONTROL.sub(" ", text)).strip()
    t = unicodedata.normalize("NFKC", text).translate(ZERO_WIDTH).translate(HOMOGLYPHS)
    t = CONTROL.sub(" ", t)
    # drop combining marks that survive NFKC (z̶a̶l̶g̶o̶ text)
    t = "".join(ch for ch in unicodedata.normalize("NFD", t) if not unicodedata.combining(ch))
    return re.sub(r"\s+", " ", t).strip()


def _printable(s: str) -> bool:
    return bool(s) and sum(ch.isprintable() or ch.isspace() for ch in s) / len(s) > 0.9


def _decode_b64(token: str) -> str | None:
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return text if _printable(text) and len(text) >= 6 else None


def _decode_hex(token: str) -> str | None:
    try:
        text = bytes.fromhex(token).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return text if _printable(text) else None


def variants(text: str, depth: int = 3) -> list[str]:
    """The normalised text and decoded/unobfuscated forms of it (deduplicated, original first)."""
    if len(text) > MAX_LEN:
        text = text[: MAX_LEN // 2] + " " + text[-MAX_LEN // 2:]
    base = normalize(text)
    out = [base]
    frontier = [base]
    for _ in range(depth):
        found = []
        for t in frontier:
            for m in B64_TOKEN.finditer(t):
                if (d := _decode_b64(m.group())) is not None:
                    found.append(normalize(d))
            for m in HEX_TOKEN.finditer(t):
                if (d := _decode_hex(m.group())) is not None:
                    found.append(normalize(d))
        found = [f for f in found if f not in out]
        out += found
        frontier = found
        if not frontier:
            break
    extra = []
    for t in list(out):
        # rot13 and reversed text are only worth checking when the text does not read as language
        if not _reads_as_language(t):
            extra.append(codecs.decode(t, "rot13"))
            extra.append(t[::-1])
        if LEETISH.search(t):
            extra.append(t.lower().translate(LEET))
        if SPACED.search(t):
            extra.append(SPACED.sub(lambda m: re.sub(r"[ .\-_*]", "", m.group()), t))
    for e in extra:
        if e not in out:
            out.append(e)
    return out
