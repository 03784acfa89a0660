"""Output rails on a stream: release text as soon as it is safe, hold back only a short tail.

Each ``feed`` checks the held text plus a little of what was already released (so a secret
split across chunks is seen whole), redacts what the pii rail finds, and releases all but the
last ``stream_holdback_chars`` characters (cut at a space, never inside a finding). A blocking
finding stops the stream; ``finish`` checks and releases the rest, groundedness included.
"""

from __future__ import annotations

from guardrails.rails import pii
from guardrails.verdict import Verdict


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
        verdict = self.guard.check_output(self.held, model=self.model, key=self.key, partial=True)
        if not verdict.allowed:
            self.stopped = verdict
            self.held = ""
            return "", verdict
        if verdict.action == "redact" and verdict.text is not None:
            self.held = verdict.text
        cut = len(self.held) - self.holdback
        if cut <= 0:
            return "", None
        # never cut inside something that could still grow into a finding
        matches = pii.find(self.held)
        for m in matches:
            if m.start < cut < m.end + 1:
                cut = m.start
        space = self.held.rfind(" ", 0, cut)
        cut = space + 1 if space >= 0 else 0
        out, self.held = self.held[:cut], self.held[cut:]
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
