"""Output rails on a stream: release text as soon as it is safe, hold back only what could still
grow into a finding.

Each ``feed`` checks the held text together with the last ``stream_holdback_chars`` characters
already released (so a banned phrase or a secret split across chunks is seen whole), redacts what
the pii rail finds, and releases everything except the tail that could still become a finding:
the last word (an e-mail, key or token may continue), any run of digit-like groups before it (a
card, phone or IBAN written in groups, such as ``+44 (0)20 7946``), a secret's name before its
value (``password: ``), an open PEM header, and never the inside of a match. That tail is capped
at ``stream_holdback_chars`` unless it is one unbroken word, so ordinary prose waits about one
word. A finding that began in text already released is redacted from where the held text starts
(one only visible after normalisation, such as digits split by zero-width characters, holds the
text back instead, and its end is dropped).
A blocking finding stops the stream; ``finish`` checks and releases the rest, the whole-answer
rails included, and drops the rest when they block.
"""

from __future__ import annotations

import re

from guardrails.rails import pii
from guardrails.verdict import Verdict

# a group of a card, phone, IBAN or SSN: digits, capitals and the separators people put inside them
_GROUP = re.compile(r"[0-9A-Z+()\-./]{1,14}[,:]?")
_SECRET_NAME = re.compile(r"(?i)(?:api[_-]?key|secret|token|password|passwd|access[_-]?key)\s*[:=]?\s*$")
_WORD = re.compile(r"\S+")


def _growing_tail(text: str, cap: int) -> int:
    """Where the part of ``text`` that may still grow into a finding starts."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    if not words:
        return len(text)
    # the last word may go on, unless whitespace already follows it
    i = len(words) - 1 if words[-1][1] == len(text) else len(words)
    start = words[i][0] if i < len(words) else len(text)
    j = i
    while j > 0:  # digit-like groups before it: "GB82 WEST 1234 5" or "4111 1111 1" may go on
        s, e = words[j - 1]
        if not _GROUP.fullmatch(text[s:e]) or len(text) - s > cap:
            break
        j -= 1
    if j < i and any(ch.isdigit() for ch in text[words[j][0]:]):
        start = words[j][0]
    name = _SECRET_NAME.search(text[:start])
    if name and len(text) - name.start() <= cap:
        start = name.start()
    pem = text.rfind("-----BEGIN")  # "-----BEGIN RSA PRIVATE KEY-----" has spaces in it
    if pem >= 0 and "KEY-----" not in text[pem:] and len(text) - pem <= cap:
        start = min(start, pem)
    return start


class StreamGuard:
    def __init__(self, guard, model: str | None = None, key: str | None = None, whole_answer: bool = True) -> None:
        self.guard = guard
        self.whole_answer = whole_answer
        self.model, self.key = model, key
        self.holdback = guard.policy.stream_holdback_chars
        self.held = ""
        self.released = ""
        self.stopped: Verdict | None = None

    def feed(self, text: str) -> tuple[str, Verdict | None]:
        """Take a chunk; return (text safe to release now, blocking verdict or None)."""
        if self.stopped is not None:
            return "", self.stopped
        self.held += text
        return self._release(final=False)

    def _release(self, final: bool) -> tuple[str, Verdict | None]:
        """Check context + held; release what is safe (everything when ``final``), redacted."""
        context = self.released[-self.holdback:]
        verdict = self.guard.check_output(context + self.held, model=self.model, key=self.key, partial=True)
        if not verdict.allowed:
            self.stopped = verdict
            self.held = ""
            return "", verdict
        found = [f for f in verdict.findings if f.rail == "pii"] if verdict.action == "redact" else []
        withhold = False
        if any(f.span is None for f in found):
            # found only in the normalised text (zero-width characters, fullwidth digits): redact a
            # normalised copy of what is held, keeping its outer whitespace; if the held text alone
            # shows nothing, the finding reaches into released text: hold everything back
            alone = self.guard.check_output(self.held, model=self.model, key=self.key, partial=True)
            if alone.action == "redact" and alone.text is not None:
                lead = self.held[:len(self.held) - len(self.held.lstrip())]
                trail = self.held[len(self.held.rstrip()):] if self.held.strip() else ""
                self.held = lead + alone.text + trail
            elif final:  # the end of a hidden finding that began in released text: not released
                self.held = ""
            else:
                withhold = True
            found = []
        offset = len(context)
        spans = [pii.Match(f.label, max(0, f.span[0] - offset), f.span[1] - offset, f.score or 0.0)
                 for f in found if f.span[1] > offset]  # a finding that began in released text: its rest
        cut = 0 if withhold else len(self.held) if final else _growing_tail(self.held, self.holdback)
        for m in spans:  # a finding that reaches into the growing tail may still get longer: hold it whole
            if not final and (m.end >= cut > m.start or (m.start < cut and m.end == len(self.held))):
                cut = m.start
        out = pii.redact(self.held[:cut], [m for m in spans if m.end <= cut])
        self.held = self.held[cut:]
        self.released += out
        return out, None

    def finish(self, context: list[str] | None = None) -> tuple[str, Verdict]:
        """Release what is held, checking the whole answer one last time (nothing more is released
        when that check blocks)."""
        if self.stopped is not None:
            return "", self.stopped
        tail, blocked = self._release(final=True)
        if blocked is not None:
            return "", blocked
        final = self.guard.check_output(self.released, context=context, model=self.model, key=self.key,
                                        partial=not self.whole_answer)
        if not final.allowed:
            return "", final
        return tail, final
