"""The gateway FastAPI app: OpenAI-compatible routes, OpenAI-shaped errors for everything."""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.gateway.errors import APIError
from serving.gateway.routes import completions, embeddings, feedback, health, models, usage
from serving.gateway.state import GatewayState

log = logging.getLogger(__name__)


def create_app(state: GatewayState) -> FastAPI:
    app = FastAPI(title="llmops gateway", docs_url=None, redoc_url=None)
    app.state.gateway = state
    for module in (completions, models, embeddings, health, usage, feedback):
        app.include_router(module.router)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), "invalid_request_error", code).response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return APIError(400, str(exc.errors())[:500], "invalid_request_error", "invalid_request").response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return APIError(500, f"Internal error in the gateway ({type(exc).__name__}); it is logged.",
                        "server_error", "internal_error").response()

    @app.on_event("shutdown")
    async def _close() -> None:
        await state.rollouts.shadow.close()
        await state.router.close()
        await asyncio.gather(*list(state._background), return_exceptions=True)  # slot releases under way
        await state.limiter.close()
        state.close()

    return app
