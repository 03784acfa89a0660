"""``/v1/embeddings`` with the sentence-transformers model (MiniLM by default)."""

from __future__ import annotations

import base64
import logging
import time
import uuid

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from llmops.contracts import RequestRecord
from serving.gateway.accounting import finish_request
from serving.gateway.errors import APIError, bad_request
from serving.gateway.state import GatewayState
from serving.gateway.validate import read_json

router = APIRouter()
log = logging.getLogger(__name__)


def _inputs(body: dict, tokenizer, max_inputs: int) -> list[str]:
    raw = body.get("input")
    if isinstance(raw, str):
        items: list = [raw]
    elif isinstance(raw, list) and raw:
        if all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
            items = [raw]
        else:
            items = raw
    else:
        raise bad_request("'input' must be a non-empty string, a list of strings, or token ids.", "input")
    if len(items) > max_inputs:
        raise bad_request(f"'input' has {len(items)} items; at most {max_inputs} are allowed.", "input")
    texts = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            if not item:
                raise bad_request(f"input[{i}] is an empty string.", "input")
            texts.append(item)
        elif isinstance(item, list) and item and all(isinstance(t, int) and t >= 0 for t in item):
            if max(item) >= len(tokenizer):
                raise bad_request(f"input[{i}] has token id {max(item)}, outside the model's vocabulary "
                                  f"({len(tokenizer)} tokens).", "input")
            texts.append(tokenizer.decode(item, skip_special_tokens=True))
        else:
            raise bad_request(f"input[{i}] must be a string or a list of token ids.", "input")
    return texts


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    t0 = time.perf_counter()
    rec = RequestRecord(id=uuid.uuid4().hex, ts=time.time(), endpoint="embeddings")
    limits = state.cfg.limits
    in_flight = None
    try:
        key = state.keys.authenticate(request.headers.get("authorization"))
        rec.key_id = key.id if key else None
        if key is not None:  # a key over its rate or its concurrency is refused before its body is read
            await state.limiter.check_rate(key.id, key.rpm or limits.default_rpm)
            in_flight = (key.id, await state.limiter.acquire(key.id, limits.max_concurrent_per_key))
        body = await read_json(request, limits.max_body_bytes)
        route = state.route(body.get("model"), ("embedding",))
        rec.model = route.public
        model = state.embedder
        texts = _inputs(body, model.tokenizer, state.cfg.embeddings.max_inputs)
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise bad_request("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
        dim = model.get_embedding_dimension()
        if body.get("dimensions") not in (None, dim):
            raise bad_request(f"This model has {dim} dimensions; 'dimensions' cannot change that.",
                              "dimensions")
        long_input = sum(map(len, texts)) > limits.inline_tokenize_chars

        def count() -> int:
            return sum(len(model.tokenizer.encode(t)) for t in texts)

        tokens = await run_in_threadpool(count) if long_input else count()  # long input: off the event loop
        rec.prompt_tokens = tokens
        if key is not None:
            await state.limiter.admit(key.id, tokens, key.rpm or limits.default_rpm, key.tpm or limits.default_tpm)
        check = getattr(state.hook, "check_embeddings", None)
        if check is not None and not state.hook.passthrough:
            if long_input or state.hook.blocking_io:  # a rail that runs a model or calls out: off the loop
                verdict = await run_in_threadpool(check, texts, model=route.public, key=rec.key_id)
            else:
                verdict = check(texts, model=route.public, key=rec.key_id)
            if verdict.action != "allow":
                from llmops.contracts import VerdictRecord

                rec.guardrails.append(VerdictRecord.of("input", verdict, with_reason=False))
                state.metrics.guardrail.labels("input", verdict.rail or "", verdict.action).inc()
            if not verdict.allowed:
                raise APIError(400, f"The request was blocked by the guardrail '{verdict.rail}': "
                               f"{verdict.reason or 'policy violation'}.", "invalid_request_error", "content_blocked")
            if verdict.action == "redact" and verdict.messages is not None:
                texts = [m["content"] for m in verdict.messages]
        vectors = await run_in_threadpool(
            model.encode, texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        data = []
        for i, v in enumerate(np.asarray(vectors, dtype=np.float32)):
            emb = base64.b64encode(v.tobytes()).decode() if fmt == "base64" else v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return JSONResponse({"object": "list", "data": data, "model": route.public,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
    except APIError as e:
        rec.status, rec.error_code = e.status, e.code
        return e.response()
    except Exception as e:  # noqa: BLE001 - answered, logged and counted as the 500 it is
        log.exception("unexpected error in /v1/embeddings")
        rec.status, rec.error_code = 500, "internal_error"
        return APIError(500, f"Internal error in the gateway ({type(e).__name__}); it is logged.",
                        "server_error", "internal_error").response()
    finally:
        if in_flight is not None:
            await state.release_slot(*in_flight)
        finish_request(state, rec, t0)
