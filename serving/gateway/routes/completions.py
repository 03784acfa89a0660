"""``/v1/chat/completions`` and ``/v1/completions``: checks, limits, guardrails, forwarding.

Non-streaming answers come back as the engine's JSON (model name rewritten for adapters);
streams are relayed event by event. A client that disconnects closes the upstream stream, which
makes vLLM abort the generation.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from serving.gateway.accounting import finish_request
from serving.gateway.errors import APIError
from serving.gateway.requestlog import RequestRecord
from serving.gateway.state import GatewayState, ModelRoute
from serving.gateway.validate import chat_messages, common, completion_prompts, read_json

log = logging.getLogger(__name__)
router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _handle(request, chat=True)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _handle(request, chat=False)


def _verdict_record(stage: str, verdict) -> dict[str, Any]:
    return {"stage": stage, "action": verdict.action, "rail": verdict.rail,
            "findings": [f.label for f in verdict.findings], "latency_ms": round(verdict.latency_ms, 3)}


async def _handle(request: Request, chat: bool) -> Response:
    state: GatewayState = request.app.state.gateway
    endpoint = "chat" if chat else "completions"
    t0 = time.perf_counter()
    rec = RequestRecord(id=uuid.uuid4().hex, ts=time.time(), endpoint=endpoint)
    streaming = False
    prompt_text = None
    try:
        key = state.keys.authenticate(request.headers.get("authorization"))
        rec.key_id = key.id if key else None
        body = await read_json(request, state.cfg.limits.max_body_bytes)
        route = state.route(body.get("model"), ("base", "adapter"))
        rec.model, rec.registry_version = route.public, route.registry_version
        max_tokens = common(body, state.cfg.limits)
        n = int(body.get("n") or 1)
        if chat:
            messages = chat_messages(body)
            prompt_tokens = [state.count_chat(route.group, messages)]
        else:
            prompts = completion_prompts(body)
            prompt_tokens = [len(p) if isinstance(p, list) else state.count_text(route.group, p)
                             for p in prompts]
            messages = [{"role": "user", "content": p} for p in prompts if isinstance(p, str)]
        rec.prompt_tokens = sum(prompt_tokens)
        prompt_text = _last_user_text(messages)
        longest = max(prompt_tokens)
        if longest + max_tokens > route.max_model_len:
            raise APIError(
                400, f"This model's maximum context length is {route.max_model_len} tokens. However, you "
                f"requested {longest + max_tokens} tokens ({longest} in the prompt, {max_tokens} for the "
                "completion). Please reduce the prompt or max_tokens.",
                code="context_length_exceeded", param="messages" if chat else "prompt")
        if key is not None:
            state.limiter.admit(key.id, rec.prompt_tokens + max_tokens * n * len(prompt_tokens),
                                key.rpm or state.cfg.limits.default_rpm, key.tpm or state.cfg.limits.default_tpm)

        verdict = await _call(state.hook, "check_input", messages, model=route.public, key=rec.key_id)
        if verdict.action != "allow":
            rec.guardrails.append(_verdict_record("input", verdict))
            state.metrics.guardrail.labels("input", verdict.rail or "", verdict.action).inc()
        if not verdict.allowed:
            raise APIError(400, f"The request was blocked by the guardrail '{verdict.rail}': "
                           f"{verdict.reason or 'policy violation'}.", "invalid_request_error",
                           "content_blocked")
        redacted = getattr(verdict, "messages", None)
        if verdict.action == "redact" and redacted is not None:
            body["messages" if chat else "prompt"] = redacted if chat else [m["content"] for m in redacted]

        stream = bool(body.get("stream"))
        rec.stream = stream
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if stream:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        body["max_tokens"] = max_tokens
        body.pop("max_completion_tokens", None)
        path = "/v1/chat/completions" if chat else "/v1/completions"

        def body_for(model: str) -> bytes:
            return json.dumps({**body, "model": state.models[model].upstream}).encode()

        resp, engine, used = await state.router.send_with_fallbacks(
            route.public, lambda m: state.models[m].group, path, body_for)
        if used != route.public:
            route = state.models[used]
            rec.model, rec.registry_version = route.public, route.registry_version
        if resp.status_code >= 400:
            await resp.aread()
            await resp.aclose()
            raise _upstream_error(resp)
        if stream:
            streaming = True
            return StreamingResponse(
                _relay(state, resp, route, rec, t0, wants_usage, prompt_text, chat),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-request-id": rec.id})
        data = json.loads(await resp.aread())
        await resp.aclose()
        data["model"] = route.public
        texts = [c.get("message", {}).get("content") if chat else c.get("text") for c in data.get("choices", [])]
        reask_tokens = 0
        for i, text in enumerate(texts):
            if not text:
                continue
            out = await _call(state.hook, "check_output", text, model=route.public, key=rec.key_id)
            if chat and not out.allowed and hasattr(state.hook, "reask"):
                fixed = await _reask(state, route, body, out, text, rec)
                if fixed is not None:
                    text, out, used_tokens = fixed
                    reask_tokens += used_tokens
                    data["choices"][i]["message"]["content"] = text
            if out.action != "allow":
                rec.guardrails.append(_verdict_record("output", out))
                state.metrics.guardrail.labels("output", out.rail or "", out.action).inc()
                # a block carries the policy's refusal text (Verdict.text); never the raw answer
                replacement = out.text or "[blocked by guardrails]"
                if chat:
                    data["choices"][i]["message"]["content"] = replacement
                else:
                    data["choices"][i]["text"] = replacement
        usage = data.get("usage") or {}
        rec.prompt_tokens = usage.get("prompt_tokens", rec.prompt_tokens)
        rec.completion_tokens = (usage.get("completion_tokens") or 0) + reask_tokens
        return JSONResponse(data, headers={"x-request-id": rec.id})
    except APIError as e:
        rec.status, rec.error_code = e.status, e.code
        return e.response()
    finally:
        if not streaming:
            finish_request(state, rec, t0, prompt_text)


async def _call(hook, method: str, *args, target=None, **kwargs):
    """A guard call (``target``'s method, default the hook's); in a worker thread when the policy
    makes network calls (the LLM self-check)."""
    fn = getattr(target if target is not None else hook, method)
    if getattr(hook, "blocking_io", False):
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(fn, *args, **kwargs)
    return fn(*args, **kwargs)


async def _reask(state: GatewayState, route: ModelRoute, body: dict, verdict, answer: str, rec: RequestRecord):
    """The json_schema rail's one re-ask (schema as response_format) -> (new answer, its verdict, its
    completion tokens) or None."""
    request = state.hook.reask(verdict, body["messages"], answer, model=route.public, key=rec.key_id)
    if request is None:
        return None
    rec.guardrails.append({**_verdict_record("output", verdict), "reask": True})
    state.metrics.guardrail.labels("output", "json_schema", "reask").inc()
    again = {**body, **request, "model": route.upstream, "n": 1, "stream": False}
    again.pop("stream_options", None)
    resp = None
    try:
        resp, _ = await state.router.send(route.group, "/v1/chat/completions", json.dumps(again).encode())
        raw = await resp.aread()
        if resp.status_code >= 400:
            log.warning("json_schema re-ask refused by the engine (%d): %s", resp.status_code, raw[:300])
            return None
        data = json.loads(raw)
    except (APIError, ValueError, httpx.HTTPError) as e:
        log.warning("json_schema re-ask failed: %s", e)
        return None
    finally:
        if resp is not None:
            await resp.aclose()
    text = (data.get("choices") or [{}])[0].get("message", {}).get("content") or ""
    tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
    verdict = await _call(state.hook, "check_output", text, model=route.public, key=rec.key_id)
    if not verdict.allowed:
        log.info("the re-asked answer fails too (%s): %r", verdict.reason, text[:200])
    return text, verdict, tokens


def _upstream_error(resp) -> APIError:
    """The engine's own 4xx passed on; its 5xx becomes a 502 that says so."""
    try:
        err = resp.json().get("error") or {}
        message = err.get("message") if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        message = resp.text[:500]
    if resp.status_code < 500:
        code = err.get("code") if isinstance(err, dict) else None
        return APIError(resp.status_code, message or "invalid request", "invalid_request_error",
                        code if isinstance(code, str) else "invalid_request")
    return APIError(502, f"The engine failed on this request: {message}", "server_error", "engine_error")


async def _relay(state: GatewayState, resp, route: ModelRoute, rec: RequestRecord, t0: float,
                 wants_usage: bool, prompt_text: str | None, chat: bool):
    """Relay SSE events; note TTFT and usage; rewrite the model name; apply output rails."""
    checker = state.hook.stream_checker(model=route.public, key=rec.key_id)
    passthrough = getattr(state.hook, "passthrough", False)
    rename = route.upstream != route.public
    flushed = False
    try:
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload.strip() == "[DONE]":
                if not passthrough and not flushed:
                    flushed = True
                    tail = await _flush(state, checker, rec, route.public, chat)
                    if tail:
                        yield tail
                yield "data: [DONE]\n\n"
                break
            if passthrough and not rename and rec.ttft_ms is not None and '"usage"' not in payload:
                yield line + "\n\n"  # hot path: nothing to learn from this event, relay it as is
                continue
            event = json.loads(payload)
            choices = event.get("choices") or []
            if rec.ttft_ms is None and any(_delta_text(c) for c in choices):
                rec.ttft_ms = (time.perf_counter() - t0) * 1000
                state.metrics.ttft.labels(route.public).observe(rec.ttft_ms / 1000)
            if event.get("usage"):
                rec.prompt_tokens = event["usage"].get("prompt_tokens", rec.prompt_tokens)
                rec.completion_tokens = event["usage"].get("completion_tokens")
                if not choices and not passthrough and not flushed:
                    flushed = True  # held-back text goes out before the closing usage chunk
                    tail = await _flush(state, checker, rec, route.public, chat)
                    if tail:
                        yield tail
                if not choices and not wants_usage:
                    continue
            if passthrough and not rename:
                yield line + "\n\n"
                continue
            if rename:
                event["model"] = route.public
            if not passthrough:
                for c in choices:
                    text = _delta_text(c)
                    if text:
                        released, verdict = checker.feed(text)
                        _set_delta_text(c, released)
                        if verdict is not None and not verdict.allowed:
                            rec.guardrails.append(_verdict_record("output", verdict))
                            state.metrics.guardrail.labels("output", verdict.rail or "", verdict.action).inc()
                            yield _event({"error": {"message": "The answer was stopped by the guardrail "
                                                    f"'{verdict.rail}'.", "type": "invalid_request_error",
                                                    "code": "content_blocked", "param": None}})
                            yield "data: [DONE]\n\n"
                            return
            yield _event(event)
    except Exception as e:  # noqa: BLE001 - a broken upstream ends the stream with an error event
        log.warning("stream from the engine failed: %s", e)
        rec.status, rec.error_code = 502, "engine_error"
        yield _event({"error": {"message": f"The engine stream failed: {type(e).__name__}",
                                "type": "server_error", "code": "engine_error", "param": None}})
    finally:
        await resp.aclose()  # on client disconnect too: vLLM then aborts the generation
        finish_request(state, rec, t0, prompt_text)


async def _flush(state: GatewayState, checker, rec: RequestRecord, model: str, chat: bool) -> str | None:
    """The text a stream checker still holds, as one final chunk (None when nothing is held).

    The whole-answer rails (json_schema, the LLM self-check) judge the answer here; what they find
    cannot be unsent, so it is recorded in the request log and the metrics."""
    tail, final = await _call(state.hook, "finish", target=checker)
    if final is not None and final.action != "allow":
        rec.guardrails.append({**_verdict_record("output", final), "after_stream": True})
        state.metrics.guardrail.labels("output", final.rail or "", final.action).inc()
        if not final.allowed:  # the held tail is not sent; the client learns why the answer stops
            return _event({"error": {"message": f"The answer was stopped by the guardrail '{final.rail}'.",
                                     "type": "invalid_request_error", "code": "content_blocked", "param": None}})
    if not tail:
        return None
    choice = {"index": 0, "delta": {"content": tail}} if chat else {"index": 0, "text": tail}
    return _event({"id": rec.id, "object": "chat.completion.chunk" if chat else "text_completion", "model": model,
                   "choices": [choice]})


def _event(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def _delta_text(choice: dict) -> str:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return delta.get("content") or ""
    return choice.get("text") or ""


def _set_delta_text(choice: dict, text: str) -> None:
    if isinstance(choice.get("delta"), dict):
        choice["delta"]["content"] = text
    else:
        choice["text"] = text


def _last_user_text(messages: list[dict]) -> str | None:
    for m in reversed(messages):
        if m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else " ".join(
                p.get("text", "") for p in c or [] if isinstance(p, dict))
    return None
