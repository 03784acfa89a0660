"""``/v1/chat/completions`` and ``/v1/completions``: thin routes; the steps are in
:class:`serving.gateway.handler.CompletionHandler`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serving.gateway.handler import CompletionHandler

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await CompletionHandler(request.app.state.gateway, chat=True).handle(request)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await CompletionHandler(request.app.state.gateway, chat=False).handle(request)
