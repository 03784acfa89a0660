"""Banned topics / keywords (whole words, on every normalised variant) and a length limit."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field

from guardrails.rails.base import BaseRailConfig, CheckContext, Rail, RailResult
from guardrails.verdict import Finding


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


class TopicsConfig(BaseRailConfig):
    """Banned words or phrases (whole words, on every normalised variant)."""

    rail: Literal["topics"] = Field(description="This rail.")
    banned: list[str] = Field(default_factory=list, description="Banned words or phrases.")


class TopicsRail(Rail):
    name: ClassVar[str] = "topics"
    cfg: TopicsConfig

    def __init__(self, cfg: TopicsConfig, registry: Any = None) -> None:
        super().__init__(cfg)
        self.pattern = compile_banned(cfg.banned)

    def check(self, text: str, ctx: CheckContext) -> RailResult:
        hits = banned_hits(self.pattern, ctx.forms)
        return RailResult(bool(hits), [Finding(self.name, f"banned:{h}") for h in hits], None,
                          f"banned topic ({', '.join(hits)})")
