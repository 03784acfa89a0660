"""``/v1/models``: base models, adapters (with registry versions) and the embedding model."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serving.gateway.state import GatewayState, ModelRoute
from serving.rollout import BASE, BASE_LABEL

router = APIRouter()


def _card(r: ModelRoute, state: GatewayState) -> dict:
    card = {"id": r.public, "object": "model", "created": r.created, "owned_by": "llmops",
            "kind": r.kind, "max_model_len": r.max_model_len}
    if r.kind == "adapter":
        card.update(parent=r.group, root=r.group, registry_version=r.registry_version)
    if r.dtype:
        card["dtype"] = r.dtype
    act = state.rollouts.active.get(r.public)
    if act is not None and r.kind == "adapter":
        ro = act.rollout
        champion = BASE_LABEL if ro.champion == BASE else str(ro.champion)  # "base": a first release
        card["rollout"] = {"id": ro.id, "champion_version": champion, "challenger_version": str(ro.challenger),
                           "canary_percent": ro.canary, "shadow_percent": ro.shadow}
    return card


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    state: GatewayState = request.app.state.gateway
    state.keys.authenticate(request.headers.get("authorization"))
    return JSONResponse({"object": "list", "data": [_card(r, state) for r in list(state.models.values())]})


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> JSONResponse:
    state: GatewayState = request.app.state.gateway
    state.keys.authenticate(request.headers.get("authorization"))
    return JSONResponse(_card(state.route(model_id, ("base", "adapter", "embedding")), state))
