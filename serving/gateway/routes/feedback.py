"""``POST /v1/feedback``: a user's score of one answer, stored with its request in the request log (rollouts
compare the versions' mean scores).

The request id is the ``x-request-id`` header of the answer; only the key that made the request may score it,
and a second score from it replaces the first. Only answers (status 200) can be scored. A score counts as one of
the key's requests per minute::

    curl -s localhost:8000/v1/feedback -H "Authorization: Bearer $KEY" \\
         -d '{"request_id": "3f2a...", "score": 1, "comment": "right answer"}'
"""

from __future__ import annotations

import asyncio
import math
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from serving.gateway.errors import APIError, bad_request
from serving.gateway.state import GatewayState
from serving.gateway.validate import read_json

router = APIRouter()
MAX_COMMENT = 2000


@router.post("/v1/feedback")
async def feedback(request: Request) -> JSONResponse:
    state: GatewayState = request.app.state.gateway
    key = state.keys.authenticate(request.headers.get("authorization"))
    if key is not None:  # a score is one of the key's requests per minute (a flood of them is refused)
        await state.limiter.check_rate(key.id, key.rpm or state.cfg.limits.default_rpm)
        await state.limiter.count_refused(key.id)
    body = await read_json(request, 16_384)
    request_id, score, comment = body.get("request_id"), body.get("score"), body.get("comment")
    if not isinstance(request_id, str) or not 1 <= len(request_id) <= 64:
        raise bad_request("'request_id' is required: the x-request-id header of the answer.", "request_id")
    if isinstance(score, bool):
        score = float(score)  # thumbs up / down
    if not isinstance(score, int | float) or not math.isfinite(score) or not 0 <= score <= 1:
        raise bad_request("'score' must be a number from 0 (bad) to 1 (good), or true / false.", "score")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT):
        raise bad_request(f"'comment' must be a string of at most {MAX_COMMENT} characters.", "comment")
    if set(body) - {"request_id", "score", "comment"}:
        raise bad_request(f"Unknown fields: {', '.join(sorted(set(body) - {'request_id', 'score', 'comment'}))}.")
    log = state.requestlog
    if log is None:
        raise APIError(404, "Feedback is stored with the request log, and it is off here (request_log.enabled).",
                       "invalid_request_error", "not_found")
    key_id = key.id if key is not None else None
    found = await run_in_threadpool(log.add_feedback, request_id, key_id, float(score), comment)
    if found is None:  # an answer that just ended may still be on its way to the log (or to its prompt embedding)
        deadline = time.monotonic() + 2.0
        while state._embed_pending and time.monotonic() < deadline - 0.5:  # under load it may never reach 0
            await asyncio.sleep(0.02)
        await run_in_threadpool(log.flush, max(0.5, deadline - time.monotonic()))
        found = await run_in_threadpool(log.add_feedback, request_id, key_id, float(score), comment)
    if found is None:
        raise APIError(404, f"No request {request_id!r} of this key is in the request log (it may be older than "
                       "request_log.retention_days).", "invalid_request_error", "request_not_found", "request_id")
    model, version = found
    state.metrics.feedback.labels(model or "unknown", version or "").inc()
    return JSONResponse({"object": "feedback", "request_id": request_id, "score": float(score), "model": model,
                         "registry_version": version})
