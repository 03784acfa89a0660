"""An ASGI middleware loaded into the vLLM engine process (``--middleware serving.engine_guard.RequireKey``).

vLLM's own ``--api-key`` guards only ``/v1``, ``/v2`` and ``/inference``: ``/invocations`` (generation),
``/adapters`` (LoRA loading) and others stay open. This guard asks for the engine's per-start key
(``VLLM_API_KEY``, known only to the gateway) on every path except ``/health``, which the gateway's
supervisor polls without a key.
"""

from __future__ import annotations

import hmac
import json
import os

OPEN_PATHS = ("/health",)


class RequireKey:
    def __init__(self, app) -> None:
        self.app = app
        key = os.environ.get("VLLM_API_KEY", "")
        self.expected = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope, receive, send) -> None:
        if self.expected is None or scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        presented = dict(scope.get("headers") or []).get(b"authorization", b"")
        if hmac.compare_digest(presented, self.expected):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": {"message": "This engine answers only the llmops gateway.",
                                     "type": "authentication_error", "code": "invalid_api_key"}}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
