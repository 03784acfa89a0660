"""One chat or text completion through the gateway, step by step (the routes only call :meth:`handle`).

The steps, in order: authenticate -> parse -> check the context length -> admit (rate and token
limits) -> input rails (block, or forward the redacted messages) -> forward to an engine (with
fallbacks) -> answer: output rails on the JSON (one schema re-ask), or relay the stream through one
stream checker -> account (metrics + request log, always, with the real status).

Non-streaming answers come back as the engine's JSON (model name rewritten for adapters); streams
are relayed event by event. A client that disconnects closes the upstream stream, which makes vLLM
abort the generation::

    handler = CompletionHandler(state, chat=True)
    response = await handler.handle(request)       # a JSONResponse or a StreamingResponse
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llmops.contracts import RequestRecord, VerdictLike, VerdictRecord, content_text, without_context_marks
from llmops.degenerate import degenerate_flags
from serving.gateway.accounting import finish_request
from serving.gateway.errors import APIError
from serving.gateway.state import GatewayState, LowerBound, ModelRoute
from serving.gateway.validate import chat_messages, common, completion_prompts, read_json, template_fields

log = logging.getLogger(__name__)
ANSWER_CHARS = 16_384  # of a streamed answer, kept to judge it for loops (a loop shows long before this)


class _Stream(StreamingResponse):
    """A streaming response that always runs its ``cleanup``: Starlette may cancel the stream before the
    relay generator ever starts (a client that leaves at once), and then the generator's own
    ``finally`` never runs."""

    def __init__(self, content: AsyncIterator[str], cleanup, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._cleanup = cleanup

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            await self._cleanup


class CompletionHandler:
    """The state of one ``/v1/chat/completions`` (``chat=True``) or ``/v1/completions`` request."""

    def __init__(self, state: GatewayState, chat: bool) -> None:
        self.state = state
        self.chat = chat
        self.hook = state.hook
        self.t0 = time.perf_counter()
        self.rec = RequestRecord(id=uuid.uuid4().hex, ts=time.time(), endpoint="chat" if chat else "completions")
        self.key: Any = None
        self.body: dict[str, Any] = {}
        self.route: ModelRoute | None = None
        self.messages: list[dict] = []
        self.prompt_tokens: list[int] = []
        self.count_is_bound = False  # the prompt count that refuses the request is a lower bound
        self.max_tokens = 0
        self.n = 1
        self.prompt_text: str | None = None
        self.wants_usage = False
        self.in_flight: tuple[str, str] | None = None  # (key, slot id) of the concurrency slot it holds
        self._finished = False
        self.said: dict[int, list[str]] = {}  # a guarded stream's text per choice, as the engine sent it
        self.said_chars: dict[int, int] = {}
        self.reasons: dict[int, str] = {}  # finish_reason per choice
        self.tool_choices: set[int] = set()  # choices that called tools (their text is not judged)
        self.answer_blocked = False  # an output rail blocked the answer: it is not judged
        self.forwarded = False  # the body went to an engine (what a shadow request sends again)
        self.inflight_group: str | None = None  # the engine group this request is counted in flight on

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.chat else "/v1/completions"

    # ------------------------------------------------------------------------------- the steps
    async def handle(self, request: Request) -> Response:
        """Run every step; an APIError at any step becomes its OpenAI-shaped JSON response."""
        streaming = False
        try:
            self.authenticate(request)
            if self.key is not None:  # a key over its rate is refused before its body is read and parsed
                await self.state.limiter.check_rate(self.key.id, self.key.rpm or self.state.cfg.limits.default_rpm)
            await self.parse(request)
            self.check_streamed_logprobs()
            await self.check_context()
            await self.admit()
            await self.guard_input()
            resp = await self.forward()
            if self.rec.stream:
                streaming = True  # the relay accounts for the request when the stream ends
                return _Stream(self.relay(resp), self.close_stream(resp), media_type="text/event-stream",
                               headers={"cache-control": "no-cache", **self.id_headers()})
            return await self.answer(resp)
        except APIError as e:
            self.rec.status, self.rec.error_code = e.status, e.code
            error = e.response()
            error.headers.update(self.id_headers())  # what support (and the request log) know it by
            return error
        except Exception as e:  # noqa: BLE001 - answered, logged and counted as the 500 it is
            log.exception("unexpected error in %s", self.path)
            self.rec.status, self.rec.error_code = 500, "internal_error"
            error = APIError(500, f"Internal error in the gateway ({type(e).__name__}); it is logged.",
                             "server_error", "internal_error").response()
            error.headers.update(self.id_headers())
            return error
        finally:
            if not streaming:
                await self.finish()

    def id_headers(self) -> dict[str, str]:
        """x-request-id (what POST /v1/feedback names) and, for a registry version, x-model-version."""
        headers = {"x-request-id": self.rec.id}
        if self.rec.registry_version:
            headers["x-model-version"] = self.rec.registry_version
        return headers

    async def finish(self) -> None:
        """Account for the request and give back its concurrency slot; only the first call counts."""
        if self._finished:
            return
        self._finished = True
        if self.inflight_group is not None:  # first: nothing below may leave it counted
            self.state.inflight[self.inflight_group] -= 1
            self.inflight_group = None
        if self.in_flight is not None:
            key, slot = self.in_flight
            self.in_flight = None
            await self.state.release_slot(key, slot)
        finish_request(self.state, self.rec, self.t0, self.prompt_text)
        if self.rec.status == 200 and self.route is not None and self.forwarded:
            try:
                shadow = self.state.rollouts.shadow_route(self.route, self.rec.id)
                if shadow is not None:  # after the answer: the shadow never delays it
                    self.state.rollouts.shadow.submit(shadow, self.path, self.body, self.rec.key_id, self.prompt_text,
                                                      self.chat)
            except Exception:  # noqa: BLE001 - the user's answer stands whatever the shadow does
                log.exception("could not queue a shadow request")

    async def close_stream(self, resp: httpx.Response) -> None:
        """After a stream, however it ended (also when the client left before it started): the engine's
        response is closed (vLLM aborts the generation) and the request accounted for."""
        try:
            await resp.aclose()
        finally:
            await self.finish()

    def authenticate(self, request: Request) -> None:
        self.key = self.state.keys.authenticate(request.headers.get("authorization"))
        self.rec.key_id = self.key.id if self.key else None

    async def parse(self, request: Request) -> None:
        """Body, model route, token budget and prompt tokens (400s name the field)."""
        state = self.state
        self.body = await read_json(request, state.cfg.limits.max_body_bytes)
        self.route = state.route(self.body.get("model"), ("base", "adapter"))
        # a running rollout answers its canary share of users with the challenger (sticky: the `user` field, else
        # the key, so one user sees one version)
        user = self.body.get("user")
        sticky = f"user:{user}" if isinstance(user, str) and user else f"key:{self.rec.key_id or self.rec.id}"
        self.route = state.rollouts.pick(self.route, sticky)
        self.rec.model, self.rec.registry_version = self.route.public, self.route.registry_version
        limits = state.cfg.limits
        self.max_tokens = common(self.body, limits)
        self.n = int(self.body.get("n") or 1)
        group = self.route.group
        prompts = [] if self.chat else completion_prompts(self.body, limits.max_prompts)
        if self.chat:
            self.messages = chat_messages(self.body, limits.max_messages)
            template_fields(self.body)
            size = sum(len(content_text(m.get("content"))) for m in self.messages)
        else:
            size = sum(len(p) if isinstance(p, str) else 4 * len(p) for p in prompts)
        checks_input = not self.hook.passthrough
        # more prompt tokens than this cannot fit: counting stops there (a prefix's count may stand for the whole)
        at_most = max(0, self.route.max_model_len - self.max_tokens)

        def prepare() -> list[int]:
            """Token counts; for completions also the text the input rails judge (token ids decoded). The first
            prompt that cannot fit ends the counting: the request is refused, the rest is not tokenized."""
            if self.chat:
                count = state.count_chat(group, self.messages, at_most)
                self.count_is_bound = isinstance(count, LowerBound)
                return [count]
            counts = []
            for p in prompts:
                counts.append(len(p) if isinstance(p, list) else state.count_text(group, p, at_most))
                if counts[-1] > at_most:
                    self.count_is_bound = isinstance(counts[-1], LowerBound)
                    return counts
            self.messages = [{"role": "user", "content": p if isinstance(p, str) else state.decode(group, p)}
                             for p in prompts if checks_input or isinstance(p, str)]
            return counts

        if size > limits.inline_tokenize_chars:  # a long prompt is tokenized off the event loop
            from starlette.concurrency import run_in_threadpool

            self.prompt_tokens = await run_in_threadpool(prepare)
        else:
            self.prompt_tokens = prepare()
        self.rec.prompt_tokens = sum(self.prompt_tokens)
        self.prompt_text = last_user_text(self.messages)

    def check_streamed_logprobs(self) -> None:
        """Streamed logprobs are refused while output rails apply: each chunk's logprobs name its tokens
        before the stream checker has judged the text they spell (held back, redacted or stopped). Token ids
        of the answer (vLLM's return_token_ids) are refused then too: they decode to the unredacted text."""
        b = self.body
        wants = b.get("logprobs") if self.chat else b.get("logprobs") is not None
        if not (wants and b.get("stream")) and not b.get("return_token_ids") and \
                not b.get("return_tokens_as_token_ids"):
            return
        if not self.hook.checks_output(model=self.route.public, key=self.rec.key_id):
            return
        if b.get("return_token_ids") or b.get("return_tokens_as_token_ids"):
            raise APIError(400, "return_token_ids / return_tokens_as_token_ids are not available while output "
                           "guardrails apply to this model: the ids decode to the text before the rails judge it.",
                           code="token_ids_with_output_rails", param="return_token_ids")
        raise APIError(400, "logprobs with stream=true are not available while output guardrails apply to "
                           "this model: the logprobs would show text before the rails judge it. Use stream=false "
                           "(logprobs of a choice whose text a rail changed come back as null).",
                           code="logprobs_with_output_rails", param="logprobs")

    async def check_context(self) -> None:
        """400 when a prompt and max_tokens do not fit the model's context. The refusal counts as one of the
        key's requests per minute: the tokenizing cost work, so repeating it is not free."""
        longest = max(self.prompt_tokens)
        limit = self.route.max_model_len
        if longest + self.max_tokens > limit:
            if self.key is not None:
                await self.state.limiter.count_refused(self.key.id)
            bound = "at least " if self.count_is_bound else ""  # a very long prompt: a lower bound was enough
            raise APIError(
                400, f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{bound}{longest + self.max_tokens} tokens ({bound}{longest} in the prompt, {self.max_tokens} for "
                "the completion). Please reduce the prompt or max_tokens.",
                code="context_length_exceeded", param="messages" if self.chat else "prompt")

    async def admit(self) -> None:
        """Rate, token and concurrency limits of the key (429 with Retry-After)."""
        if self.key is None:
            return
        limits = self.state.cfg.limits
        budget = self.rec.prompt_tokens + self.max_tokens * self.n * len(self.prompt_tokens)
        # a slot and the rate in one step (one round trip with Redis): a request refused for the slot uses up
        # none of the key's rate budget, one refused by the rate holds no slot
        slot = await self.state.limiter.enter(self.key.id, budget, self.key.rpm or limits.default_rpm,
                                              self.key.tpm or limits.default_tpm, limits.max_concurrent_per_key)
        self.in_flight = (self.key.id, slot)

    async def guard_input(self) -> None:
        """Input rails: a block is a 400 ``content_blocked``; a redaction replaces what is forwarded."""
        extra = {"tools": self.body["tools"]} if self.chat and self.body.get("tools") is not None else {}
        verdict = await guard_call(self.hook, self.hook.check_input, self.messages, model=self.route.public,
                                   key=self.rec.key_id, **extra)
        if verdict.action != "allow":
            self.record("input", verdict)
        if not verdict.allowed:
            self.prompt_text = None  # a blocked prompt is not embedded for drift: no rail redacted it
            raise APIError(400, f"The request was blocked by the guardrail '{verdict.rail}': "
                           f"{verdict.reason or 'policy violation'}.", "invalid_request_error", "content_blocked")
        redacted = verdict.messages
        if verdict.action == "redact" and redacted is not None:
            if self.chat:
                self.body["messages"] = list(redacted)
            else:  # every prompt as text (token-id prompts too: their decoded text, redacted)
                self.body["prompt"] = [m["content"] for m in redacted]
            self.prompt_text = last_user_text(list(redacted))  # what is embedded for drift is redacted too
        if verdict.action == "redact" and getattr(verdict, "tools", None) is not None:
            self.body["tools"] = list(verdict.tools)
        if self.chat:
            self.body["messages"] = without_context_marks(self.body["messages"])

    async def forward(self) -> httpx.Response:
        """Send to an engine of the model's group (fallback models in order); the engine's 4xx is
        passed on, its 5xx becomes a 502."""
        state, body = self.state, self.body
        self.rec.stream = bool(body.get("stream"))
        self.wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if self.rec.stream:  # usage always comes back to the gateway, for accounting
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        body["max_tokens"] = self.max_tokens
        body.pop("max_completion_tokens", None)

        def body_for(model: str) -> bytes:
            upstream = self.route.upstream if model == self.route.public else state.models[model].upstream
            return json.dumps({**body, "model": upstream}).encode()

        self.inflight_group = self.route.group
        state.inflight[self.inflight_group] = state.inflight.get(self.inflight_group, 0) + 1
        resp, _engine, used = await state.router.send_with_fallbacks(
            # the request's own route as it was picked: the poller may take a name out of state.models meanwhile
            # (a first release's base arm when its rollout ends)
            self.route.public, lambda m: self.route.group if m == self.route.public else state.models[m].group,
            self.path, body_for)
        self.forwarded = used == self.route.public
        self.rec.engine_status = resp.status_code
        if used != self.route.public:
            self.route = state.models[used]
            state.inflight[self.inflight_group] -= 1  # it runs on the fallback's engines: counted there
            self.inflight_group = self.route.group
            state.inflight[self.inflight_group] = state.inflight.get(self.inflight_group, 0) + 1
            self.rec.model, self.rec.registry_version = self.route.public, self.route.registry_version
        if resp.status_code >= 400:
            await resp.aread()
            await resp.aclose()
            raise upstream_error(resp)
        return resp

    async def answer(self, resp: httpx.Response) -> JSONResponse:
        """The engine's JSON with output rails applied per choice (and one schema re-ask for chat)."""
        try:
            raw = await resp.aread()
        except httpx.TimeoutException as e:
            raise APIError(504, "The engine did not finish the answer within router.timeout_s; ask for fewer "
                           "tokens or raise the timeout.", "server_error", "engine_timeout") from e
        except httpx.HTTPError as e:
            raise APIError(502, f"The engine's answer broke off ({type(e).__name__}).", "server_error",
                           "engine_error") from e
        finally:
            await resp.aclose()
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise APIError(502, "The engine's answer is not valid JSON.", "server_error", "engine_error") from e
        data["model"] = self.route.public
        reask_tokens = 0
        for choice in data.get("choices") or []:
            text = choice.get("message", {}).get("content") if self.chat else choice.get("text")
            out = None
            if text:
                out = await guard_call(self.hook, self.hook.check_output, text, model=self.route.public,
                                       key=self.rec.key_id)
                if self.chat and not out.allowed:
                    fixed = await self.reask(out, text)
                    if fixed is not None:
                        text, out, used_tokens = fixed
                        reask_tokens += used_tokens
                        choice["message"]["content"] = text
                        choice["logprobs"] = None  # they were the failed answer's
                if out.action != "allow":
                    self.record("output", out)
                    # a block carries the policy's refusal text (Verdict.text); never the raw answer
                    replacement = out.text or "[blocked by guardrails]"
                    if replacement != text:  # the tokens' logprobs would show what was redacted
                        choice["logprobs"] = None
                    if self.chat:
                        choice["message"]["content"] = replacement
                    else:
                        choice["text"] = replacement
            if self.chat and not self.hook.passthrough:
                await self.guard_tool_calls(choice)
            index = choice.get("index") if isinstance(choice.get("index"), int) else 0
            if isinstance(choice.get("finish_reason"), str):
                self.reasons[index] = choice["finish_reason"]
            if self.chat and (choice.get("message") or {}).get("tool_calls"):
                self.tool_choices.add(index)  # a forced tool call comes with content "" and finish "stop"
            if isinstance(text, str) and (out is None or out.action != "block"):
                self.said[index] = [text]
        self.judge_answers()
        usage = data.get("usage") or {}
        self.rec.prompt_tokens = usage.get("prompt_tokens", self.rec.prompt_tokens)
        self.rec.completion_tokens = (usage.get("completion_tokens") or 0) + reask_tokens
        return JSONResponse(data, headers=self.id_headers())

    async def guard_tool_calls(self, choice: dict) -> None:
        """Output rails on the arguments of a choice's tool calls: redacted in place; a block drops the
        calls and answers with the refusal text."""
        message = choice.get("message") or {}
        for call in message.get("tool_calls") or []:
            fn = call.get("function") if isinstance(call, dict) else None
            args = fn.get("arguments") if isinstance(fn, dict) else None
            if not isinstance(args, str) or not args:
                continue
            out = await guard_call(self.hook, self.hook.check_output, args, model=self.route.public,
                                   key=self.rec.key_id, partial=True)
            if out.action == "allow":
                continue
            self.record("output", out)
            choice["logprobs"] = None
            if not out.allowed:
                message.pop("tool_calls", None)
                message["content"] = out.text or "[blocked by guardrails]"
                choice["finish_reason"] = "content_filter"
                return
            fn["arguments"] = out.text

    async def reask(self, verdict: VerdictLike, answer: str) -> tuple[str, VerdictLike, int] | None:
        """The hook's one re-ask for a failed answer -> (new answer, its verdict, its completion
        tokens), or None when the hook has nothing to re-ask or the engine fails."""
        route = self.route
        request = self.hook.reask(verdict, self.body["messages"], answer, model=route.public, key=self.rec.key_id)
        if request is None:
            return None
        self.record("output", verdict, reask=True)
        again = {**self.body, **request, "model": route.upstream, "n": 1, "stream": False}
        again.pop("stream_options", None)
        resp = None
        try:
            resp, _ = await self.state.router.send(route.group, "/v1/chat/completions", json.dumps(again).encode())
            raw = await resp.aread()
            if resp.status_code >= 400:
                log.warning("re-ask refused by the engine (%d): %s", resp.status_code, raw[:300])
                return None
            data = json.loads(raw)
        except (APIError, ValueError, httpx.HTTPError) as e:
            log.warning("re-ask failed: %s", e)
            return None
        finally:
            if resp is not None:
                await resp.aclose()
        text = (data.get("choices") or [{}])[0].get("message", {}).get("content") or ""
        tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
        out = await guard_call(self.hook, self.hook.check_output, text, model=route.public, key=self.rec.key_id)
        if not out.allowed:
            log.info("the re-asked answer fails too (%s): %r", out.reason, text[:200])
        return text, out, tokens

    async def relay(self, resp: httpx.Response) -> AsyncIterator[str]:
        """Relay SSE events; note TTFT and usage; rewrite the model name; apply output rails (one stream
        checker per choice, and per tool call of a choice: text never mixes between them)."""
        state, rec, route = self.state, self.rec, self.route
        checkers = _Checkers(self.hook, route.public, rec.key_id)
        passthrough = self.hook.passthrough
        rename = route.upstream != route.public
        flushed = done = False
        try:
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[6:]
                if payload.strip() == "[DONE]":
                    if not passthrough and not flushed:
                        flushed = True
                        for tail in await self.flush(checkers):
                            yield tail
                    if not passthrough:
                        self.judge_answers()
                    yield "data: [DONE]\n\n"
                    done = True
                    break
                if passthrough and not rename and rec.ttft_ms is not None and '"usage"' not in payload:
                    yield line + "\n\n"  # hot path: nothing to learn from this event, relay it as is
                    continue
                event = json.loads(payload)
                choices = event.get("choices") or []
                if rec.ttft_ms is None and any(delta_text(c) for c in choices):
                    rec.ttft_ms = (time.perf_counter() - self.t0) * 1000
                    state.metrics.ttft.labels(route.public, route.registry_version or "").observe(rec.ttft_ms / 1000)
                if event.get("usage"):
                    rec.prompt_tokens = event["usage"].get("prompt_tokens", rec.prompt_tokens)
                    rec.completion_tokens = event["usage"].get("completion_tokens")
                    if not choices and not passthrough and not flushed:
                        flushed = True  # held-back text goes out before the closing usage chunk
                        for tail in await self.flush(checkers):
                            yield tail
                    if not choices and not self.wants_usage:
                        continue
                if passthrough and not rename:
                    yield line + "\n\n"
                    continue
                if rename:
                    event["model"] = route.public
                if not passthrough:
                    for c in choices:
                        self.note_piece(c)
                        verdict, recorded = checkers.feed_choice(c), False
                        if verdict is None and c.get("finish_reason") is not None:
                            # the choice is done: what its checkers hold goes out with this chunk, before
                            # finish_reason (a client parses tool arguments when it sees "tool_calls")
                            verdict, recorded = await self.finish_choice(checkers, c), True
                        if verdict is not None and not verdict.allowed:
                            if not recorded:
                                self.record("output", verdict)
                            yield blocked_event(verdict.rail)
                            yield "data: [DONE]\n\n"
                            return
                yield sse(event)
            if not done:  # the engine closed the stream cleanly but early (it stopped, or a proxy cut it)
                raise httpx.RemoteProtocolError("the engine's stream ended before [DONE]")
        except Exception as e:  # noqa: BLE001 - a broken upstream ends the stream with an error event
            log.warning("stream from the engine failed: %s", e)
            timeout = isinstance(e, httpx.TimeoutException)
            rec.status, rec.error_code = (504, "engine_timeout") if timeout else (502, "engine_error")
            yield sse({"error": {"message": f"The engine stream failed: {type(e).__name__}; retry the request.",
                                 "type": "server_error", "code": rec.error_code, "param": None}})
        finally:
            await resp.aclose()  # on client disconnect too: vLLM then aborts the generation
            await self.finish()

    def note_piece(self, c: dict) -> None:
        """Keep what a guarded stream's choice said (up to ANSWER_CHARS) and its finish_reason."""
        index = c.get("index") if isinstance(c.get("index"), int) else 0
        text = delta_text(c)
        if text and self.said_chars.get(index, 0) < ANSWER_CHARS:
            self.said.setdefault(index, []).append(text)
            self.said_chars[index] = self.said_chars.get(index, 0) + len(text)
        delta = c.get("delta")
        if isinstance(delta, dict) and delta.get("tool_calls"):
            self.tool_choices.add(index)
        if isinstance(c.get("finish_reason"), str):
            self.reasons[index] = c["finish_reason"]
            self.said.setdefault(index, [])  # a choice that ends without text is an empty answer

    def judge_answers(self) -> None:
        """The request log's finish_reason (the first choice's) and degenerate flag (1 when any answer
        looped, was empty or was in another script than the question; tool calls are not judged)."""
        if self.reasons:
            self.rec.finish_reason = self.reasons.get(0) or next(iter(self.reasons.values()))
        judged = [(i, "".join(parts)) for i, parts in self.said.items() if i not in self.tool_choices
                  and self.reasons.get(i) not in ("tool_calls", "content_filter")]
        if not judged or self.answer_blocked:
            return
        self.rec.degenerate = int(any(degenerate_flags(self.prompt_text or "", text[:ANSWER_CHARS])["degenerate"]
                                      for _, text in judged))

    async def finish_choice(self, checkers: _Checkers, c: dict):
        """Finish the checkers of choice ``c`` (its text and its tool calls), appending what they held to
        ``c``; the blocking verdict, if any (the whole-answer rails judge the choice's text here: what they
        find comes after text was sent, and is recorded so)."""
        index = c.get("index") if isinstance(c.get("index"), int) else 0
        for slot, checker in checkers.pop_choice(index):
            tail, final = await guard_call(self.hook, checker.finish)
            if final is not None and final.action != "allow":
                self.record("output", final, after_stream=True)
                if not final.allowed:
                    return final
            if not tail:
                continue
            if slot is None:
                set_delta_text(c, delta_text(c) + tail)
                continue
            delta = c.setdefault("delta", {})
            calls = delta.setdefault("tool_calls", [])
            call = next((t for t in calls if isinstance(t, dict) and t.get("index") == slot), None)
            if call is None:
                calls.append({"index": slot, "function": {"arguments": tail}})
            else:
                fn = call.setdefault("function", {})
                fn["arguments"] = (fn.get("arguments") or "") + tail
        return None

    async def flush(self, checkers: _Checkers) -> list[str]:
        """The text the stream checkers still hold, one final chunk per choice (and tool call) that
        holds any; a block ends the list with the error event.

        The whole-answer rails (json_schema, the LLM self-check) judge each choice's answer here; what
        they find cannot be unsent, so it is recorded in the request log and the metrics."""
        events = []
        for (index, slot), checker in checkers.items():
            tail, final = await guard_call(self.hook, checker.finish)
            if final is not None and final.action != "allow":
                self.record("output", final, after_stream=True)
                if not final.allowed:  # the held tail is not sent; the client learns why the answer stops
                    self.answer_blocked = True
                    return [*events, blocked_event(final.rail)]
            if not tail:
                continue
            if slot is not None:
                choice = {"index": index, "delta": {"tool_calls": [{"index": slot, "function": {"arguments": tail}}]}}
            elif self.chat:
                choice = {"index": index, "delta": {"content": tail}}
            else:
                choice = {"index": index, "text": tail}
            events.append(sse({"id": self.rec.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                               "model": self.route.public, "choices": [choice]}))
        return events

    # ------------------------------------------------------------------------------ accounting
    def record(self, stage: str, verdict: VerdictLike, *, reask: bool = False, after_stream: bool = False) -> None:
        """A guardrail decision into the request log and the metrics (a re-ask counts as action 'reask')."""
        self.rec.guardrails.append(VerdictRecord.of(stage, verdict, with_reason=False, reask=reask,
                                                    after_stream=after_stream))
        action = "reask" if reask else verdict.action
        self.state.metrics.guardrail.labels(stage, verdict.rail or "", action).inc()


class _Checkers:
    """The stream checkers of one stream: (choice index, None) for a choice's text, (choice index, tool
    call index) for a tool call's arguments; made on first use, in order."""

    def __init__(self, hook, model: str, key: str | None) -> None:
        self.hook, self.model, self.key = hook, model, key
        self._by_slot: dict[tuple[int, int | None], Any] = {}

    def get(self, index: int, slot: int | None):
        checker = self._by_slot.get((index, slot))
        if checker is None:
            if slot is None:
                checker = self.hook.stream_checker(model=self.model, key=self.key)
            else:  # arguments are no answer: the whole-answer rails (json_schema, self-check) skip them
                checker = self.hook.stream_checker(model=self.model, key=self.key, whole_answer=False)
            self._by_slot[(index, slot)] = checker
        return checker

    def items(self):
        return list(self._by_slot.items())

    def pop_choice(self, index: int) -> list:
        """(slot, checker) of choice ``index``, taken out (text first, then tool calls in order)."""
        mine = sorted(((slot, ch) for (i, slot), ch in self._by_slot.items() if i == index),
                      key=lambda x: -1 if x[0] is None else x[0])
        for slot, _ in mine:
            del self._by_slot[(index, slot)]
        return mine

    def feed_choice(self, c: dict):
        """Feed a chunk's choice through its checkers, rewriting it in place to what may be released;
        the first blocking verdict, or None."""
        index = c.get("index") if isinstance(c.get("index"), int) else 0
        text = delta_text(c)
        if text:
            released, verdict = self.get(index, None).feed(text)
            set_delta_text(c, released)
            if verdict is not None and not verdict.allowed:
                return verdict
        delta = c.get("delta")
        for call in (delta.get("tool_calls") if isinstance(delta, dict) else None) or []:
            fn = call.get("function") if isinstance(call, dict) else None
            args = fn.get("arguments") if isinstance(fn, dict) else None
            if not isinstance(args, str) or not args:
                continue
            slot = call.get("index") if isinstance(call.get("index"), int) else 0
            released, verdict = self.get(index, slot).feed(args)
            fn["arguments"] = released
            if verdict is not None and not verdict.allowed:
                return verdict
        return None


async def guard_call(hook, fn, *args, **kwargs):
    """Call a guard method; in a worker thread when a rail blocks for long (``blocking_io``: a network call, an
    embedding model)."""
    if hook.blocking_io:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(fn, *args, **kwargs)
    return fn(*args, **kwargs)


def upstream_error(resp: httpx.Response) -> APIError:
    """The engine's own 4xx passed on; its 5xx becomes a 502 that says so."""
    err: Any = None
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


def blocked_event(rail: str | None) -> str:
    return sse({"error": {"message": f"The answer was stopped by the guardrail '{rail}'.",
                          "type": "invalid_request_error", "code": "content_blocked", "param": None}})


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def delta_text(choice: dict) -> str:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return delta.get("content") or ""
    return choice.get("text") or ""


def set_delta_text(choice: dict, text: str) -> None:
    if isinstance(choice.get("delta"), dict):
        choice["delta"]["content"] = text
    else:
        choice["text"] = text


def last_user_text(messages: list[dict]) -> str | None:
    for m in reversed(messages):
        if m.get("role") == "user":
            return content_text(m.get("content"))
    return None
