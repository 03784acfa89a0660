"""Per-request accounting shared by the routes: metrics and the request log."""

from __future__ import annotations

import time

from llmops.contracts import RequestRecord
from serving.gateway.state import GatewayState


def finish_request(state: GatewayState, rec: RequestRecord, t0: float, prompt_text: str | None = None) -> None:
    """Close a request: latency, Prometheus counters, request log."""
    rec.latency_ms = (time.perf_counter() - t0) * 1000
    m = state.metrics
    model = rec.model or "unknown"
    key = rec.key_id or "anonymous"
    version = rec.registry_version or ""
    m.requests.labels(rec.endpoint, model, version, key, str(rec.status)).inc()
    m.latency.labels(rec.endpoint, model, version).observe(rec.latency_ms / 1000)
    if rec.prompt_tokens:
        m.tokens.labels(model, key, "prompt").inc(rec.prompt_tokens)
    if rec.completion_tokens:
        m.tokens.labels(model, key, "completion").inc(rec.completion_tokens)
    if rec.degenerate is not None:
        m.answers.labels(model, rec.registry_version or "", rec.finish_reason or "",
                         str(bool(rec.degenerate)).lower()).inc()
    state.record_usage(rec)
    state.log_request(rec, prompt_text)
