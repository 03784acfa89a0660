"""A profanity / abuse lexicon for answers (whole words, leetspeak undone by normalisation)."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field

from guardrails.rails.base import BaseRailConfig, CheckContext, Rail, RailResult
from guardrails.rails.topics import compile_banned
from guardrails.verdict import Finding
from llmops.textnorm import normalize

# Kept short and unambiguous on purpose: slurs and abuse that never belong in an assistant's answer.
LEXICON = [
    "fuck", "fucking", "fucker", "motherfucker", "shit", "bullshit", "asshole", "bitch", "bastard", "cunt",
    "dickhead", "prick", "twat", "wanker", "retard", "retarded", "faggot", "nigger", "nigga", "kike", "spic",
    "chink", "slut", "whore", "piss off", "go to hell", "kill yourself", "kys", "you are stupid",
    "you're an idiot", "you are an idiot", "shut up, idiot", "dumbass", "jackass",
]
_PATTERN = re.compile(r"\b(?:" + "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in LEXICON) + r")\b", re.I)


def toxic_hits(variants: list[str], extra: re.Pattern | None = None) -> list[str]:
    found = []
    for text in variants[:2]:  # the text and its leet-decoded form; rot13/reversed add only noise here
        found += [m.group().lower() for m in _PATTERN.finditer(text)]
        if extra is not None:
            found += [m.group().lower() for m in extra.finditer(text)]
    return sorted(set(found))


class ToxicityConfig(BaseRailConfig):
    """Toxic language in answers (the lexicon plus ``extra_terms``)."""

    rail: Literal["toxicity"] = Field(description="This rail.")
    extra_terms: list[str] = Field(default_factory=list, description="More terms to flag.")


class ToxicityRail(Rail):
    name: ClassVar[str] = "toxicity"
    stages: ClassVar[frozenset[str]] = frozenset({"output"})
    cfg: ToxicityConfig

    def __init__(self, cfg: ToxicityConfig, registry: Any = None) -> None:
        super().__init__(cfg)
        self.extra = compile_banned(cfg.extra_terms)

    def check(self, text: str, ctx: CheckContext) -> RailResult:
        hits = toxic_hits([ctx.forms[0], normalize(text).lower()], self.extra)
        return RailResult(bool(hits), [Finding(self.name, "toxic") for _ in hits[:1]], None, "toxic language")
