"""``/health`` (the gateway is up), ``/ready`` (every model group has a ready engine), ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.gateway.state import GatewayState

router = APIRouter()


@router.get("/health")
async def health() -> JSONResponse:
    return JSONResponse({"status": "ok"})


def _ops_auth(request: Request, state: GatewayState) -> None:
    """With ``auth.protect_ops`` /ready and /metrics need a valid key too (they name engines, keys, models)."""
    if state.cfg.auth.protect_ops:
        state.keys.authenticate(request.headers.get("authorization"))


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    state: GatewayState = request.app.state.gateway
    _ops_auth(request, state)
    engines = {e.cfg.name: {"state": e.state, "model": e.cfg.served_name, "restarts": getattr(e, "restarts", 0)}
               for e in state.engines}
    groups = {e.cfg.served_name for e in state.engines}
    ok = all(any(e.state == "ready" for e in state.engines if e.cfg.served_name == g) for g in groups)
    body = {"ready": ok, "engines": engines}
    if state.limiter.shared:  # Redis: reported; not ready only where its failure refuses requests
        up = await state.limiter.ping()
        body["state_store"] = {"kind": "redis", "up": up, "on_error": state.cfg.state.on_error}
        ok = ok and (up or state.cfg.state.on_error == "open")
        body["ready"] = ok
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    _ops_auth(request, state)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
