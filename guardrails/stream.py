"""Output rails on a stream: release text as soon as it is safe, hold back only what could still
grow into a finding.

Each ``feed`` checks the held text together with the last ``stream_holdback_chars`` characters
already released (so a banned phrase or a secret split across chunks is seen whole), redacts what
the pii rail finds, and releases everything except the tail that could still become a finding:
the last word (an e-mail, key or token may continue), any run of digit-like groups before it (a
card, phone or IBAN written in groups), a secret's name before its value (``password: ``), an open
PEM header, and never the inside of a match. That tail is capped at ``stream_holdback_chars``
unless it is one unbroken word, so ordinary prose waits about one word. A blocking finding stops
the stream; ``finish`` checks and releases the rest, the whole-answer rails included.
"""

from __future__ import annotations

import re

from guardrails.rails import pii
from guardrails.verdict import Verdict

_GROUP = re.compile(r"[+(]?[0-9A-Z]{1,6}[)\-.,:]?")  # a group of a card, phone, IBAN or SSN
_SECRET_NAME = re.compile(r"(?i)(?:api[_-]?key|secret|token|password|passwd|access[_-]?key)\s*[:=]?\s*$")


def _growing_tail(text: str, cap: int) -> int:
    """Where the part of ``text`` that may still grow into a finding starts."""
    if not text or text[-1].isspace() and not text.strip():
        return len(text)
    # the last word, unless the text ends with whitespace (then it is complete)
    start = len(text) if text[-1].isspace() else max(text.rfind(" "), text.rfind("\n"), text.rfind("\t")) + 1
    pos = start
    while True:  # digit-like groups before it: "GB82 WEST 1234 5" or "4111 1111 1" may go on
        prev_end = len(text[:pos].rstrip())
        prev_start = max(text.rfind(" ", 0, prev_end), text.rfind("\n", 0, prev_end), text.rfind("\t", 0, prev_end)) + 1
        word = text[prev_start:prev_end]
        if not word or not _GROUP.fullmatch(word) or len(text) - prev_start > cap:
            break
        pos = prev_start
    if pos < start and any(ch.isdigit() for ch in text[pos:]):
        start = pos
    name = _SECRET_NAME.search(text[:start])
    if name and len(text) - name.start() <= cap:
        start = name.start()
    pem = text.rfind("-----BEGIN")  # "-----BEGIN RSA PRIVATE KEY-----" has spaces in it
    if pem >= 0 and "KEY-----" not in text[pem:] and len(text) - pem <= cap:
        start = min(start, pem)
    return start


class StreamGuard:
    def __init__(self, guard, model: str | None = None, key: str | None = None) -> None:
        self.guard = guard
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
        context = self.released[-self.holdback:]
        verdict = self.guard.check_output(context + self.held, model=self.model, key=self.key, partial=True)
        if not verdict.allowed:
            self.stopped = verdict
            self.held = ""
            return "", verdict
        found = [f for f in verdict.findings if f.rail == "pii"] if verdict.action == "redact" else []
        if any(f.span is None for f in found):
            # found only in the normalised text (zero-width characters, fullwidth digits): the guard
            # redacted a normalised copy, which is what goes out
            redacted = verdict.text or ""
            self.held = redacted[len(context):] if redacted.startswith(context) else self.held
            found = []
        offset = len(context)
        spans = [pii.Match(f.label, f.span[0] - offset, f.span[1] - offset, f.score or 0.0)
                 for f in found if f.span[1] > offset]  # findings in released text cannot be unsent
        cut = _growing_tail(self.held, self.holdback)
        for m in spans:  # a finding that reaches into the growing tail may still get longer: hold it whole
            if m.end >= cut > m.start or (m.start < cut and m.end == len(self.held)):
                cut = max(0, m.start)
        out = pii.redact(self.held[:cut], [m for m in spans if 0 <= m.start and m.end <= cut])
        self.held = self.held[cut:]
        self.released += out
        return out, None

    def finish(self, context: list[str] | None = None) -> tuple[str, Verdict]:
        """Release what is held, checking the whole answer one last time."""
        if self.stopped is not None:
            return "", self.stopped
        tail_verdict = self.guard.check_output(self.held, model=self.model, key=self.key, partial=True)
        if not tail_verdict.allowed:
            return "", tail_verdict
        tail = tail_verdict.text if tail_verdict.text is not None else self.held
        final = self.guard.check_output(self.released + tail, context=context, model=self.model, key=self.key)
        self.held = ""
        return tail, final
