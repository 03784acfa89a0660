"""The result of a guardrail check (the shape the gateway and RAG pipeline consume)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Action = Literal["allow", "warn", "redact", "block"]


@dataclass(frozen=True)
class Finding:
    rail: str
    label: str
    span: tuple[int, int] | None = None
    score: float | None = None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    action: Action
    rail: str | None
    text: str | None
    findings: tuple[Finding, ...] = field(default_factory=tuple)
    latency_ms: float = 0.0
    reason: str | None = None
    messages: tuple[dict, ...] | None = None  # check_input with redaction: the redacted messages
    tools: tuple[dict, ...] | None = None  # check_input with redaction: the redacted tool definitions

    @classmethod
    def allow(cls, text: str | None = None) -> Verdict:
        return cls(True, "allow", None, text)
