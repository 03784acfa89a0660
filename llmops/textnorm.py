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
from functools import cache
from importlib import resources

import regex


@cache
def _homoglyph_table() -> dict[str, str]:
    """Single characters that Unicode's confusables data (confusables.txt, as shipped by the
    ``confusable-homoglyphs`` package) lists as confusable with an ASCII letter or digit, mapped to it.
    Characters that NFKC already folds to ASCII are left to NFKC."""
    import json

    data = json.loads(resources.files("confusable_homoglyphs").joinpath("confusables.json").read_text("utf-8"))
    options: dict[str, set[str]] = {}
    for target, entries in data.items():
        if len(target) != 1 or not target.isascii() or not target.isalnum():
            continue
        for e in entries:
            c = e.get("c", "")
            if len(c) == 1 and not c.isascii() and not unicodedata.normalize("NFKC", c).isascii():
                options.setdefault(c, set()).add(target)

    def best(c: str, targets: set[str]) -> str:
        # Greek capital iota looks like both "I" and "l": a capital maps to a capital, a small letter to a
        # small one, a letter to a letter before a digit; then the data file's order (sorted: stable)
        upper = c.isupper() or "CAPITAL" in unicodedata.name(c, "")
        if targets & {"l", "I"}:  # Unicode's prototype of the I/l class is "l": capitals read as "I"
            return "I" if upper else "l"
        return min(targets, key=lambda t: (not t.isalpha(), t.isupper() != upper, t))

    return {c: best(c, targets) for c, targets in options.items()}


# Unicode's Default_Ignorable_Code_Point property (zero-width and bidi controls, variation selectors, tag
# characters, Hangul fillers, U+034F, U+17B4, U+180B ...): invisible, so they split words past the rules.
IGNORABLE = regex.compile(r"\p{Default_Ignorable_Code_Point}")
# Letters that look Latin in other scripts (fullwidth and mathematical forms are folded by NFKC).
HOMOGLYPHS = str.maketrans(_homoglyph_table())
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


WORD = regex.compile(r"\w+")
TAGS = regex.compile(r"[\U000E0020-\U000E007E]+")  # tag characters: invisible ASCII ("ASCII smuggling")


def _fold_confusables(t: str) -> str:
    """Confusables to ASCII in Latin text; in text mostly in another script only words that mix in ASCII
    letters ("Ignоrе" with Cyrillic о and е) are folded, so Russian or Greek prose stays itself."""
    letters = [ch for ch in t if ch.isalpha()]
    if not letters or sum(ch.isascii() for ch in letters) * 2 >= len(letters):
        return t.translate(HOMOGLYPHS)
    return WORD.sub(lambda m: m.group().translate(HOMOGLYPHS) if any(c.isascii() for c in m.group())
                    else m.group(), t)


def hidden_tag_text(text: str) -> str:
    """What tag characters (U+E0020-E007E) spell: text a reader and a tokenizer's display never show."""
    return "".join(chr(ord(c) - 0xE0000) for m in TAGS.finditer(text) for c in m.group())


def normalize(text: str) -> str:
    """NFKC, no default-ignorable or control characters, confusables mapped to ASCII, spaces collapsed."""
    if text.isascii():  # the common case: nothing to fold
        return re.sub(r"\s+", " ", CONTROL.sub(" ", text)).strip()
    t = CONTROL.sub(" ", IGNORABLE.sub("", unicodedata.normalize("NFKC", text)))
    # drop combining marks that survive NFKC (z̶a̶l̶g̶o̶ text), before folding: "ӧ" is "о" with a mark
    t = "".join(ch for ch in unicodedata.normalize("NFD", t) if not unicodedata.combining(ch))
    return re.sub(r"\s+", " ", _fold_confusables(t)).strip()


def head_and_tail(text: str, max_chars: int = 4000) -> str:
    """``text``, or for a longer one its first 3/4 and last 1/4 of ``max_chars``: what a classifier reads of
    a long prompt (where injections sit, and a bound on the cost), the same in training and at inference."""
    if len(text) <= max_chars:
        return text
    return text[: max_chars * 3 // 4] + " " + text[-(max_chars // 4):]


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
    if not base.isascii() and (folded := base.translate(HOMOGLYPHS)) != base:
        out.append(folded)  # every confusable folded, also inside text mostly in another script
    if (hidden := hidden_tag_text(text)) and (hidden := normalize(hidden)) not in out:
        out.append(hidden)
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
