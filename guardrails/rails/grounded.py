"""Groundedness of an answer against retrieved chunks: the share of its sentences that some chunk
supports (token overlap, or embedding similarity when an embedder is given)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from guardrails.rails.base import BaseRailConfig, CheckContext, Rail, RailResult, Threshold
from guardrails.verdict import Finding

_WORD = re.compile(r"[a-z0-9]+")
STOP = set("a an the of to in on at for and or but is are was were be been it this that these those with as by "
           "from i you he she we they my your our their its not no yes do does did can could would should "
           "will there here what which who how when where why".split())


def _tokens(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in STOP and len(w) > 1}


def sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n+", text.strip())
    return [p for p in parts if len(_tokens(p)) >= 3]


def groundedness(answer: str, context: list[str],
                 embed: Callable[[list[str]], np.ndarray] | None = None, sim_threshold: float = 0.6) -> float:
    """1.0 = every claim-bearing sentence is supported by the context; 0.0 = none is."""
    claims = sentences(answer)
    if not claims:
        return 1.0
    if not context:
        return 0.0
    if embed is not None:
        a = embed(claims)
        c = embed(context)
        sims = a @ c.T
        return float(np.mean(sims.max(axis=1) >= sim_threshold))
    ctx = [_tokens(c) for c in context]
    supported = 0
    for s in claims:
        toks = _tokens(s)
        best = max(len(toks & c) / len(toks) for c in ctx)
        supported += best >= 0.5
    return supported / len(claims)


class GroundednessConfig(BaseRailConfig):
    """Answers must be supported by the retrieved chunks (checked when the caller passes them)."""

    rail: Literal["groundedness"] = Field(description="This rail.")
    threshold: Threshold = Field(0.5, description="Minimum share of supported sentences.")


class GroundednessRail(Rail):
    name: ClassVar[str] = "groundedness"
    stages: ClassVar[frozenset[str]] = frozenset({"output"})
    cfg: GroundednessConfig

    def check(self, text: str, ctx: CheckContext) -> RailResult:
        if ctx.context is None:
            return RailResult(False)
        score = groundedness(text, ctx.context, ctx.embed)
        return RailResult(score < self.cfg.threshold, [Finding(self.name, "ungrounded", None, round(score, 3))], None,
                          f"only {score:.0%} of the answer is supported by the retrieved context")
