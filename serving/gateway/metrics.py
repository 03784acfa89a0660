"""Prometheus metrics of the gateway (one registry per app, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # version: the registry version that answered (adapters; "" for base models), so a rollout's two
        # versions can be told apart on a dashboard
        self.requests = Counter("llmops_requests", "Requests by endpoint, model, registry version, key and status",
                                ["endpoint", "model", "version", "key", "status"], registry=r)
        self.latency = Histogram("llmops_request_latency_seconds", "End-to-end latency",
                                 ["endpoint", "model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("llmops_time_to_first_token_seconds", "Time to first streamed token",
                              ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.shadow = Counter("llmops_shadow_requests", "Shadow requests to a rollout's challenger by outcome (ok, "
                              "error, dropped: the shadow queue was full)", ["model", "version", "outcome"], registry=r)
        self.shadow_pending = Gauge("llmops_shadow_pending", "Shadow requests queued or in flight to a challenger",
                                    registry=r)
        self.feedback = Counter("llmops_feedback", "User feedback scores received, by model and registry version",
                                ["model", "version"], registry=r)
        self.tokens = Counter("llmops_tokens", "Tokens by model, key and direction (prompt/completion)",
                              ["model", "key", "direction"], registry=r)
        self.guardrail = Counter("llmops_guardrail_verdicts", "Guardrail verdicts by rail and action",
                                 ["stage", "rail", "action"], registry=r)
        self.answers = Counter("llmops_answers", "Answers judged for degenerate output (loops, empty, wrong "
                               "script) by model, registry version, finish reason and verdict",
                               ["model", "version", "finish_reason", "degenerate"], registry=r)
        self.state_errors = Counter("llmops_state_store_errors", "Failed calls to the shared state store (Redis)",
                                    registry=r)


class EngineCollector:
    """Engine health for /metrics: up (1/0) and restart attempts by outcome, read from the engines."""

    def __init__(self, engines: list) -> None:
        self.engines = engines

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily("llmops_engine_up", "1 when the engine is ready", labels=["engine"])
        attempts = CounterMetricFamily("llmops_engine_restart_attempts", "Restart attempts after a crash",
                                       labels=["engine", "outcome"])
        for e in self.engines:
            name = e.cfg.name
            up.add_metric([name], 1.0 if e.state == "ready" else 0.0)
            attempts.add_metric([name, "ok"], float(getattr(e, "restarts", 0)))
            attempts.add_metric([name, "failed"], float(getattr(e, "restart_failures", 0)))
        yield up
        yield attempts


class RequestLogCollector:
    """Records the request log dropped because its queue was full."""

    def __init__(self, state) -> None:
        self.state = state

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        dropped = CounterMetricFamily("llmops_requestlog_dropped", "Request-log records dropped (queue full)")
        rl = self.state.requestlog
        dropped.add_metric([], float(rl.dropped if rl is not None else 0))
        yield dropped
