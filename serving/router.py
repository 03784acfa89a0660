"""Spreads requests over engine replicas: round robin, cooldown of failing replicas, retries on
connection errors, and model fallbacks.

The gateway forwards the client's JSON and the engine's bytes unchanged (vLLM already speaks the
OpenAI protocol), so the router works on raw HTTP with one pooled async client. LiteLLM's Router
was the plan in DESIGN.md; in its place this small router keeps the gateway's per-request
overhead to a fraction of a millisecond on a 2-core machine, where every CPU cycle the gateway
spends is taken from the engine (see benchmarks/serving.py).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import Protocol

import httpx

from serving.config import RouterConfig
from serving.gateway.errors import APIError

log = logging.getLogger(__name__)

RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError)


class Upstream(Protocol):
    url: str
    state: str
    api_key: str | None  # sent as a Bearer token (the engine's per-start key), None for an open engine

    @property
    def cfg(self): ...


class Router:
    """Replica groups keyed by the base model's served name."""

    def __init__(self, groups: dict[str, list[Upstream]], cfg: RouterConfig) -> None:
        self.groups = groups
        self.cfg = cfg
        self._cycle = {name: itertools.count() for name in groups}
        self._cooldown: dict[int, float] = {}
        self.client = httpx.AsyncClient(
            # a free connection is awaited pool_timeout_s at most: when slow readers hold them all, a 503
            timeout=httpx.Timeout(cfg.timeout_s, connect=5.0, pool=cfg.pool_timeout_s),
            limits=httpx.Limits(max_connections=cfg.max_connections,
                                max_keepalive_connections=min(256, cfg.max_connections)),
        )

    def candidates(self, group: str) -> list[Upstream]:
        """Replicas to try, in order: ready ones only (a process known to be down or starting is never sent
        a request: its port may belong to something else by now), not cooling down first, round robin."""
        replicas = self.groups.get(group, [])
        if not replicas:
            return []
        start = next(self._cycle[group]) % len(replicas)
        ordered = [e for e in replicas[start:] + replicas[:start] if e.state == "ready"]
        now = time.monotonic()
        return sorted(ordered, key=lambda e: self._cooldown.get(id(e), 0) > now)

    async def send(self, group: str, path: str, body: bytes) -> tuple[httpx.Response, Upstream]:
        """POST ``body`` to ``path`` on a replica of ``group``; the response is opened as a stream.

        Raises:
            APIError: 503 when no replica answers; 504 when one took the request and did not answer in time.
        """
        tried = []
        for engine in self.candidates(group)[: self.cfg.retries + 1]:
            tried.append(engine.cfg.name)
            headers = {"content-type": "application/json"}
            if engine.api_key:
                headers["authorization"] = f"Bearer {engine.api_key}"
            request = self.client.build_request("POST", engine.url + path, content=body, headers=headers)
            try:
                return await self.client.send(request, stream=True), engine
            except httpx.PoolTimeout as e:
                raise APIError(503, "The gateway has no free connection to the engines right now (too many open "
                               "streams); retry shortly.", "server_error", "gateway_busy",
                               headers={"Retry-After": "1"}) from e
            except (httpx.ReadTimeout, httpx.WriteTimeout) as e:  # the engine took the request and is slow
                raise APIError(504, f"The engine did not answer within router.timeout_s ({self.cfg.timeout_s:g} s); "
                               "ask for fewer tokens or raise the timeout.", "server_error", "engine_timeout") from e
            except RETRYABLE as e:
                self._cooldown[id(engine)] = time.monotonic() + self.cfg.cooldown_s
                log.warning("engine %s failed (%s); %s", engine.cfg.name, type(e).__name__,
                            "retrying on another replica" if len(tried) <= self.cfg.retries else "giving up")
        states = ", ".join(f"{e.cfg.name}={e.state}" for e in self.groups.get(group, []))
        raise APIError(503, f"No engine for {group!r} is available right now ({states or 'none'}); it is "
                       "being restarted. Retry in a few seconds.", "server_error", "engine_unavailable",
                       headers={"Retry-After": "5"})

    async def send_with_fallbacks(
        self, model: str, group_of: Callable[[str], str], path: str, body_for: Callable[[str], bytes]
    ) -> tuple[httpx.Response, Upstream, str]:
        """Like :meth:`send`, then the configured fallback models in order; returns the model used."""
        error: APIError | None = None
        for candidate in [model, *self.cfg.fallbacks.get(model, [])]:
            try:
                resp, engine = await self.send(group_of(candidate), path, body_for(candidate))
                return resp, engine, candidate
            except APIError as e:
                if e.status == 504:  # the engine took the request: a fallback would double the wait
                    raise
                error = e
        assert error is not None
        raise error

    async def close(self) -> None:
        await self.client.aclose()
