"""Banned topics: keywords (whole words, on every normalised variant) and descriptions matched by meaning."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field

from guardrails.rails.base import BaseRailConfig, CheckContext, Rail, RailResult
from guardrails.verdict import Finding
from llmops.assets import ENCODE_LOCK, sentence_model


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
    """Banned topics: words or phrases (whole words, on every normalised variant), and topics by meaning (short
    descriptions, matched by embedding similarity, so paraphrases are caught)."""

    rail: Literal["topics"] = Field(description="This rail.")
    banned: list[str] = Field(default_factory=list, description="Banned words or phrases.")
    descriptions: list[str] = Field(
        default_factory=list, description="Banned topics by meaning, one short description each (e.g. 'medical "
        "diagnosis or treatment advice for symptoms'); a text whose sentences come close enough to one fires.")
    similarity: float = Field(0.25, ge=0, le=1, description="Cosine similarity (piece of text vs description) from "
                              "which a topic fires: 0.25 is the lowest with <= 1% false positives on ordinary prompts "
                              "in benchmarks/content_safety.py (labelled advice requests, recall 0.55).")
    embedding_model: str = Field("all-MiniLM-L6-v2", description="Sentence-transformers model for descriptions: "
                                 "a prepared default name or a local folder (loaded once per process).")


MAX_PIECES = 8  # a long text is judged on its first and last four pieces of about a sentence


def pieces(text: str, words: int = 48) -> list[str]:
    """Sentences (joined up to ``words`` words), at most MAX_PIECES of them: the first and the last four."""
    out, cur = [], []
    for sent in re.split(r"(?<=[.!?])\s+|\n+", text):
        cur += sent.split()
        while len(cur) >= words:
            out.append(" ".join(cur[:words]))
            cur = cur[words:]
        if len(cur) >= words // 2:
            out.append(" ".join(cur))
            cur = []
    if cur:
        out.append(" ".join(cur))
    return out if len(out) <= MAX_PIECES else out[:MAX_PIECES // 2] + out[-MAX_PIECES // 2:]


class TopicsRail(Rail):
    name: ClassVar[str] = "topics"
    cfg: TopicsConfig

    def __init__(self, cfg: TopicsConfig, registry: Any = None) -> None:
        super().__init__(cfg)
        self.pattern = compile_banned(cfg.banned)
        self.model = sentence_model(cfg.embedding_model) if cfg.descriptions else None
        self.topics = (self.model.encode(cfg.descriptions, normalize_embeddings=True, show_progress_bar=False)
                       if self.model is not None else None)
        if cfg.descriptions:
            # embedding takes ~10 ms: callers on an event loop run the guard in a worker thread
            self.blocking_io = True
            # a retrieved passage may well be about a banned topic; the answer is judged on the output side
            self.judges_passages = False

    def similarities(self, text: str) -> list[float]:
        """The highest similarity of any piece of ``text`` to each description."""
        parts = pieces(text)
        if self.model is None or not parts:
            return []
        with ENCODE_LOCK:
            vecs = self.model.encode(parts, normalize_embeddings=True, show_progress_bar=False)
        return (vecs @ self.topics.T).max(axis=0).tolist()

    def check(self, text: str, ctx: CheckContext) -> RailResult:
        hits = banned_hits(self.pattern, ctx.forms)
        fs = [Finding(self.name, f"banned:{h}") for h in hits]
        sims = [] if ctx.partial else self.similarities(ctx.forms[0])  # a stream: judged whole at its end
        for desc, sim in zip(self.cfg.descriptions, sims, strict=False):
            if sim >= self.cfg.similarity:
                hits.append(desc)
                fs.append(Finding(self.name, f"topic:{desc}", None, round(sim, 4)))
        return RailResult(bool(fs), fs, None, f"banned topic ({', '.join(hits)})")
