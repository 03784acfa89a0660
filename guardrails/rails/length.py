"""The length rail: text longer than ``max_chars`` fires."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from guardrails.rails.base import BaseRailConfig, CheckContext, Rail, RailResult
from guardrails.verdict import Finding


class LengthConfig(BaseRailConfig):
    """Too long a prompt or answer."""

    rail: Literal["length"] = Field(description="This rail.")
    max_chars: int = Field(ge=1, description="Longest allowed text, in characters.")


class LengthRail(Rail):
    name: ClassVar[str] = "length"
    stages: ClassVar[frozenset[str]] = frozenset({"input"})
    cfg: LengthConfig

    def check(self, text: str, ctx: CheckContext) -> RailResult:
        n = len(text)
        return RailResult(n > self.cfg.max_chars, [Finding(self.name, "too_long", None, float(n))], None,
                          f"{n} characters, more than {self.cfg.max_chars}")
