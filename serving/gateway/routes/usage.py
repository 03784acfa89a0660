"""``GET /v1/usage?days=N``: the calling key's usage per UTC day (requests, refused, prompt and completion
tokens), from every gateway that shares the state store; today first."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serving.gateway.errors import APIError, bad_request
from serving.gateway.state import GatewayState
from serving.gateway.usage import FIELDS, last_days

router = APIRouter()


@router.get("/v1/usage")
async def usage(request: Request) -> JSONResponse:
    state: GatewayState = request.app.state.gateway
    key = state.keys.authenticate(request.headers.get("authorization"))
    if key is None:
        raise APIError(404, "Usage is kept per API key, and this gateway runs without keys (auth.enabled: false).",
                       "invalid_request_error", "not_found")
    raw = request.query_params.get("days", "7")
    keep = state.cfg.state.usage_days
    if not (len(raw) <= 4 and raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= keep:
        raise bad_request(f"'days' must be a whole number from 1 to {keep} (state.usage_days).", "days")
    days = last_days(time.time(), int(raw))
    rows = await state.usage.read(key.id, days)
    data = [{"date": d, **rows[d]} for d in days]
    totals = {f: sum(r[f] for r in data) for f in FIELDS}
    return JSONResponse({"object": "list", "key": key.id, "data": data, "totals": totals,
                         "shared": state.usage.shared})
