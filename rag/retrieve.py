"""Retrieval: dense, sparse (BM25 with Qdrant IDF) or hybrid (reciprocal rank fusion in Qdrant),
metadata filters, tenant isolation, score threshold and an optional cross-encoder rerank.

Example::

    hits = retrieve("Which port does the gateway use?", store, embedder, RetrievalConfig(mode="hybrid"))
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field

from llmops.config import StrictModel
from llmops.errors import LLMOpsError
from rag.embed import Embedder, bm25_vector
from rag.store import Hit, Store

log = logging.getLogger(__name__)


class RetrievalError(LLMOpsError):
    """A query that cannot be run as asked (missing tenant, wrong embedding model, bad filter)."""


class RerankConfig(StrictModel):
    """Optional second stage: a sentence-transformers cross-encoder scores (query, chunk) pairs."""

    model: str | None = Field(None, description="Local cross-encoder folder; None: no rerank.")
    candidates: int = Field(20, ge=1, description="Hits from the first stage that are reranked.")


class RetrievalConfig(StrictModel):
    """How chunks are found."""

    mode: Literal["dense", "sparse", "hybrid"] = Field("hybrid", description="Search mode.")
    top_k: int = Field(5, ge=1, le=100, description="Chunks returned.")
    candidates: int = Field(50, ge=1, description="Per-branch candidates fused in hybrid mode.")
    score_threshold: float | None = Field(
        None, description="Minimum cosine similarity of dense hits (dense mode and the dense branch of hybrid).")
    rerank: RerankConfig = Field(default_factory=RerankConfig, description="Optional cross-encoder rerank.")


class TenantConfig(StrictModel):
    """Multi-tenancy: every chunk belongs to a tenant and every query must name one."""

    enabled: bool = Field(False, description="Require a tenant on ingest and on every query.")


_RERANKERS: dict[str, Any] = {}


def _reranker(path: str) -> Any:
    if path not in _RERANKERS:
        from sentence_transformers import CrossEncoder

        from llmops.assets import resolve_model

        _RERANKERS[path] = CrossEncoder(resolve_model(path), device="cpu")
    return _RERANKERS[path]


def rerank(query: str, hits: list[Hit], model: str) -> list[Hit]:
    """Reorder ``hits`` by cross-encoder score (the score becomes the cross-encoder's)."""
    if not hits:
        return hits
    scores = _reranker(model).predict([(query, h.text) for h in hits], show_progress_bar=False)
    ranked = sorted(zip(hits, scores, strict=True), key=lambda x: -float(x[1]))
    return [Hit(h.id, float(s), h.text, h.payload) for h, s in ranked]


def tenant_filters(filters: dict[str, Any] | None, tenant: str | None, tenants: TenantConfig) -> dict[str, Any]:
    """The payload filter of a query, with the tenant condition when tenancy is on.

    Raises:
        RetrievalError: tenancy is on and no tenant was given, or a filter tries to set ``tenant``.
    """
    flt = dict(filters or {})
    if "tenant" in flt:
        raise RetrievalError("Filter on tenants with the tenant= argument, not in filters.")
    if tenants.enabled:
        if not tenant:
            raise RetrievalError("Tenancy is enabled (tenants.enabled): every query must pass tenant=... .")
        flt["tenant"] = tenant
    elif tenant:
        flt["tenant"] = tenant
    return flt


def retrieve(query: str, store: Store, embedder: Embedder, cfg: RetrievalConfig, *,
             filters: dict[str, Any] | None = None, tenant: str | None = None,
             tenants: TenantConfig | None = None, top_k: int | None = None,
             mode: str | None = None) -> list[Hit]:
    """The ``top_k`` chunks for ``query``; an empty list when nothing matches.

    Raises:
        RetrievalError: empty query, missing tenant. StoreError: collection built with another model.
    """
    if not query or not query.strip():
        raise RetrievalError("The query is empty.")
    flt = tenant_filters(filters, tenant, tenants or TenantConfig())
    if not store.exists():
        return []
    store.check_embedding(embedder.dim, embedder.model_id)
    mode = mode or cfg.mode
    k = top_k or cfg.top_k
    limit = max(k, cfg.rerank.candidates) if cfg.rerank.model else k
    dense = embedder.embed([query])[0] if mode in ("dense", "hybrid") else None
    sparse = bm25_vector(query, query=True) if mode in ("sparse", "hybrid") else None
    hits = store.query(dense=dense, sparse=sparse, mode=mode, limit=limit, filters=flt,
                       candidates=max(cfg.candidates, limit), score_threshold=cfg.score_threshold)
    if mode == "hybrid" and cfg.score_threshold is not None and hits:
        # RRF scores are ranks: keep hits that either branch found good enough
        dense_ok = {h.id for h in store.query(dense=dense, sparse=None, mode="dense", limit=max(cfg.candidates, limit),
                                              filters=flt, score_threshold=cfg.score_threshold)}
        sparse_ids = {h.id for h in store.query(dense=None, sparse=sparse, mode="sparse", limit=limit, filters=flt)}
        hits = [h for h in hits if h.id in dense_ok or h.id in sparse_ids]
    if cfg.rerank.model:
        hits = rerank(query, hits, cfg.rerank.model)
    return hits[:k]
