"""The completions handler step by step, with a fake guard and a fake engine (a real HTTP server on
loopback that answers like vLLM and records what it was sent). The real vLLM and the real guard are
covered by tests/integration/test_serving.py; here each step's behaviour is pinned down exactly."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.testclient import TestClient

from llmops.contracts import VerdictRecord, read_request_log
from serving.config import ServingConfig
from serving.gateway.app import create_app
from serving.gateway.auth import hash_key
from serving.gateway.errors import APIError
from serving.gateway.state import GatewayState, text_prefix

# ------------------------------------------------------------------------------------- fake engine
ENGINE_SEEN: list[dict] = []
ANSWERS: list[str] = []  # answers the fake engine gives, in order (then "plain answer")


def _engine_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    @app.post("/v1/completions")
    async def complete(request: Request):
        if request.headers.get("authorization") != "Bearer engine-secret":
            return JSONResponse({"error": {"message": "unauthorized"}}, status_code=401)
        body = await request.json()
        ENGINE_SEEN.append(body)
        if body.get("model") == "broken":
            return PlainTextResponse("upstream says no", status_code=422)  # a 4xx without a JSON body
        text = ANSWERS.pop(0) if ANSWERS else "plain answer"
        if text == "__SLEEP__":  # an engine that takes the request and does not answer in time
            await asyncio.sleep(3)
        if text == "__NOT_JSON__":
            return PlainTextResponse("<html>proxy error</html>")
        if text in ("__DIES__", "__ENDS__"):  # an engine killed mid-stream / a stream cut without [DONE]
            async def dying():
                for _ in range(2):
                    yield "data: " + json.dumps({"id": "x", "model": body["model"], "choices": [
                        {"index": 0, "delta": {"content": "part "}}]}) + "\n\n"
                    await asyncio.sleep(0.05)
                if text == "__DIES__":
                    raise RuntimeError("engine killed")  # the server drops the connection mid-body
            return StreamingResponse(dying(), media_type="text/event-stream")
        if text == "__SLOW__":  # a stream that holds its connection for a while
            async def slow():
                for _ in range(8):
                    await asyncio.sleep(0.25)
                    yield "data: " + json.dumps({"id": "x", "model": body["model"], "choices": [
                        {"index": 0, "delta": {"content": "z "}}]}) + "\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(slow(), media_type="text/event-stream")
        chat = request.url.path.endswith("chat/completions")
        # "LEN:" before an answer: it stops at max_tokens (finish_reason "length" on its last piece)
        reason = "length" if text.startswith("LEN:") else "stop"
        text = text.removeprefix("LEN:")
        if body.get("stream"):
            async def events():
                pieces = text.split(" ")
                for i, piece in enumerate(pieces):
                    delta = {"delta": {"content": piece + " "}} if chat else {"text": piece + " "}
                    event = {"id": "x", "model": body["model"], "choices": [{"index": 0, **delta}]}
                    if reason == "length" and i == len(pieces) - 1:
                        event["choices"][0]["finish_reason"] = reason
                    yield f"data: {json.dumps(event)}\n\n"
                usage = {"prompt_tokens": 11, "completion_tokens": len(text.split())}
                yield f"data: {json.dumps({'id': 'x', 'model': body['model'], 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(events(), media_type="text/event-stream")
        choice = {"index": 0, "message": {"role": "assistant", "content": text}} if chat else {"index": 0, "text": text}
        choice["finish_reason"] = reason
        if text == "__TOOL__":  # a forced tool call as vLLM answers it: empty content, finish_reason "stop"
            choice["message"] = {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
        return JSONResponse({"id": "x", "object": "chat.completion", "model": body["model"], "choices": [choice],
                             "usage": {"prompt_tokens": 11, "completion_tokens": 3}})

    return app


@pytest.fixture(scope="module")
def engine_url(serve_on_loopback):
    return serve_on_loopback(_engine_app())


# -------------------------------------------------------------------------------------- fake guard
@dataclass(frozen=True)
class V:
    allowed: bool
    action: str
    rail: str | None
    text: str | None = None
    findings: tuple = ()
    latency_ms: float = 0.5
    reason: str | None = None
    messages: tuple | None = None


ALLOW = V(True, "allow", None)


class FakeStream:
    def __init__(self) -> None:
        self.seen = ""

    def feed(self, text):
        self.seen += text
        if "STOP" in self.seen:
            return "", V(False, "block", "fake_stream", reason="stop word")
        return text.upper(), None

    def finish(self):
        return "", V(True, "warn", "fake_final") if "WARN" in self.seen else ALLOW


@dataclass
class FakeGuard:
    """Blocks prompts with BLOCKME, redacts 'secret123', blocks answers with 'badword' (refusal 'NO'),
    fails answers with 'notjson' on rail fake_schema (which it re-asks), upper-cases streamed text."""

    blocking_io: bool = False
    passthrough: bool = False
    calls: list[tuple] = field(default_factory=list)

    def check_input(self, messages, model=None, key=None, tools=None):
        self.calls.append(("input", model, key))
        text = " ".join(str(m.get("content")) for m in messages)
        if "EXPLODE" in text:
            raise RuntimeError("a bug in a guard")
        if "BLOCKME" in text:
            return V(False, "block", "fake_in", "NO", (SimpleNamespace(rail="fake_in", label="x"),), reason="bad")
        if "secret123" in text:
            red = tuple({**m, "content": str(m["content"]).replace("secret123", "[X]")} for m in messages)
            return V(True, "redact", "fake_pii", messages=red)
        return ALLOW

    def check_output(self, text, context=None, model=None, key=None, partial=False):
        if "badword" in text:
            return V(False, "block", "fake_out", "NO")
        if "notjson" in text:
            return V(False, "block", "fake_schema", "NO")
        return V(True, "allow", None, text)

    def stream_checker(self, model=None, key=None, whole_answer=True):
        return FakeStream()

    def checks_output(self, model=None, key=None):
        return True

    def reask(self, verdict, messages, answer, model=None, key=None):
        if verdict.rail != "fake_schema":
            return None
        return {"messages": [*messages, {"role": "user", "content": "fix it"}]}


# ------------------------------------------------------------------------------------------ gateway
@pytest.fixture
def gateway(engine_url, tmp_path):
    ENGINE_SEEN.clear()
    ANSWERS.clear()
    gw = make_gateway(engine_url, tmp_path)
    yield gw
    gw.loop.run_until_complete(gw.state.router.close())
    gw.loop.close()


def make_gateway(engine_url: str, tmp_path, **overrides) -> SimpleNamespace:
    """A gateway app on the fake engine (config ``overrides`` by top-level section); ``call``/``log``."""
    port = int(engine_url.rsplit(":", 1)[1])
    cfg = ServingConfig.model_validate({
        "engines": [{"served_name": "m", "port": port, "max_model_len": 256}],
        "embeddings": {"enabled": False}, "limits": {"default_max_tokens": 32},
        "auth": {"keys": [{"id": "k", "sha256": hash_key("sk-k")}], "keys_env": "NO_SUCH_ENV",
                 "keys_file": str(tmp_path / "keys.json")},
        "request_log": {"path": str(tmp_path / "log.sqlite")},
        "router": {"retries": 0, "fallbacks": {"broken": ["m"]}}, **overrides})
    engine = SimpleNamespace(cfg=cfg.engines[0], url=engine_url, state="ready", api_key="engine-secret")
    state = GatewayState(cfg, [engine], {})
    state.hook = FakeGuard()
    app = create_app(state)
    loop = asyncio.new_event_loop()  # one loop per test: the router's pooled client belongs to it

    def call(path: str, body: dict, stream: bool = False, key: str = "sk-k"):
        async def go():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                kw = {"content": body} if isinstance(body, bytes) else {"json": body}
                r = await client.post(path, headers={"Authorization": f"Bearer {key}"}, **kw)
                return r.status_code, (r.text if stream else r.json())
        return loop.run_until_complete(go())

    def log():
        state.requestlog.close()
        state.requestlog = None
        return read_request_log(tmp_path / "log.sqlite")

    def get(path: str, key: str = "sk-k"):
        async def go():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
                r = await client.get(path, headers={"Authorization": f"Bearer {key}"})
                return r.status_code, r.json()
        return loop.run_until_complete(go())

    return SimpleNamespace(call=call, get=get, state=state, log=log, app=app, loop=loop)


def chat(content: str, **kw) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **kw}


def test_answer_is_forwarded_renamed_and_accounted(gateway):
    status, data = gateway.call("/v1/chat/completions", chat("hello", max_tokens=7))
    assert status == 200 and data["choices"][0]["message"]["content"] == "plain answer"
    sent = ENGINE_SEEN[-1]
    assert sent["model"] == "m" and sent["max_tokens"] == 7 and sent["messages"][0]["content"] == "hello"
    assert gateway.state.hook.calls == [("input", "m", "k")]
    rec = gateway.log().iloc[0]
    assert (rec.endpoint, rec.status, rec.model, rec.prompt_tokens, rec.completion_tokens) == ("chat", 200, "m", 11, 3)
    assert rec.guardrails == []


LOOP = "The header is https:503:50:50:" + ":".join(["100"] * 40)


def test_answers_are_judged_for_loops_in_the_log_and_the_metrics(gateway):
    ANSWERS.extend(["The gateway reads the key from the Authorization header.", "LEN:" + LOOP, "LEN:" + LOOP,
                    "badword " * 3])
    assert gateway.call("/v1/chat/completions", chat("Which header carries the key?"))[0] == 200
    status, data = gateway.call("/v1/chat/completions", chat("Which header carries the key?"))
    assert status == 200 and data["choices"][0]["finish_reason"] == "length"
    status, text = gateway.call("/v1/chat/completions", chat("Which header carries the key?", stream=True),
                                stream=True)
    assert status == 200 and "[DONE]" in text
    gateway.call("/v1/chat/completions", chat("Say something"))  # blocked by the output rail: not judged
    ANSWERS.extend(["__TOOL__", ""])
    assert gateway.call("/v1/chat/completions", chat("Call f"))[0] == 200  # a tool call: not judged
    assert gateway.call("/v1/chat/completions", chat("Say something"))[0] == 200  # an empty answer
    metrics = gateway.state.metrics
    df = gateway.log()
    assert list(df.degenerate[:3]) == [0, 1, 1] and list(df.finish_reason[:3]) == ["stop", "length", "length"]
    assert df.degenerate.isna()[3] and df.finish_reason[3] == "stop"
    assert df.degenerate.isna()[4] and df.degenerate[5] == 1
    sample = metrics.registry.get_sample_value
    assert sample("llmops_answers_total", {"model": "m", "version": "", "finish_reason": "length",
                                           "degenerate": "true"}) == 2
    assert sample("llmops_answers_total", {"model": "m", "version": "", "finish_reason": "stop",
                                           "degenerate": "false"}) == 1


def test_blocked_input_never_reaches_the_engine(gateway):
    status, data = gateway.call("/v1/chat/completions", chat("please BLOCKME now"))
    assert status == 400 and data["error"]["code"] == "content_blocked" and "fake_in" in data["error"]["message"]
    assert ENGINE_SEEN == []
    rec = gateway.log().iloc[0]
    assert rec.status == 400 and rec.error_code == "content_blocked"
    # the reason is not logged: a rail's reason may quote the text it checked
    assert rec.guardrails == [VerdictRecord("input", "block", "fake_in", ("x",), None, 0.5)]


def test_redacted_messages_are_what_the_engine_gets(gateway):
    assert gateway.call("/v1/chat/completions", chat("my key is secret123"))[0] == 200
    assert ENGINE_SEEN[-1]["messages"][0]["content"] == "my key is [X]"
    assert gateway.call("/v1/completions", {"model": "m", "prompt": "code secret123"})[0] == 200
    assert ENGINE_SEEN[-1]["prompt"] == ["code [X]"]


def test_blocked_answer_is_replaced_by_the_refusal(gateway):
    ANSWERS.append("a badword here")
    status, data = gateway.call("/v1/chat/completions", chat("hi"))
    assert status == 200 and data["choices"][0]["message"]["content"] == "NO"
    assert gateway.log().iloc[0].guardrails[0].rail == "fake_out"


def test_reask_replaces_a_failed_answer_and_counts_its_tokens(gateway):
    ANSWERS.extend(["notjson", "fixed answer"])
    status, data = gateway.call("/v1/chat/completions", chat("give json"))
    assert status == 200 and data["choices"][0]["message"]["content"] == "fixed answer"
    assert ENGINE_SEEN[-1]["messages"][-1] == {"role": "user", "content": "fix it"} and not ENGINE_SEEN[-1]["stream"]
    rec = gateway.log().iloc[0]
    assert rec.completion_tokens == 6  # both calls
    assert [(g.rail, g.reask) for g in rec.guardrails] == [("fake_schema", True)]


def test_stream_goes_through_the_checker_and_stops_on_a_block(gateway):
    ANSWERS.extend(["one two three", "fine then STOP more words"])
    status, text = gateway.call("/v1/chat/completions", chat("hi", stream=True), stream=True)
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    pieces = "".join(c["delta"]["content"] for e in events for c in e.get("choices", []))
    assert status == 200 and pieces == "ONE TWO THREE " and text.rstrip().endswith("data: [DONE]")
    assert not any("usage" in e and e["usage"] for e in events)  # the client did not ask for usage
    status, text = gateway.call("/v1/chat/completions", chat("hi", stream=True), stream=True)
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert events[-1]["error"]["code"] == "content_blocked" and "STOP" not in text and "MORE" not in text
    log = gateway.log()
    assert list(log.stream) == [True, True] and log.iloc[0].completion_tokens == 3
    assert [g.rail for g in log.iloc[1].guardrails] == ["fake_stream"]


def test_engine_4xx_without_json_and_context_overflow_are_clean_errors(gateway):
    status, data = gateway.call("/v1/chat/completions", chat("x " * 1000))
    assert status == 400 and data["error"]["code"] == "context_length_exceeded"
    gateway.state.models["broken"] = SimpleNamespace(**{**vars(gateway.state.models["m"]), "public": "broken",
                                                        "upstream": "broken"})
    status, data = gateway.call("/v1/chat/completions", {**chat("hi"), "model": "broken"})
    assert status == 422 and data["error"]["message"] == "upstream says no"
    assert list(gateway.log().status) == [400, 422]


def test_completion_stream_end_of_stream_finding_and_usage_when_asked(gateway):
    ANSWERS.append("all WARN fine")
    body = {"model": "m", "prompt": "go", "stream": True, "stream_options": {"include_usage": True}}
    status, text = gateway.call("/v1/completions", body, stream=True)
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert status == 200 and "".join(c["text"] for e in events for c in e.get("choices", [])) == "ALL WARN FINE "
    assert events[-1]["usage"]["completion_tokens"] == 3  # asked for: the usage chunk is relayed
    rec = gateway.log().iloc[0]
    assert rec.endpoint == "completions" and rec.stream and rec.completion_tokens == 3
    assert rec.guardrails == [VerdictRecord("output", "warn", "fake_final", (), None, 0.5, after_stream=True)]


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m", "prompt": ["p"] * 65}, "prompt"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}] * 513}, "messages"),
    ({**chat("x"), "stop": [str(i) for i in range(9)]}, "stop"),
    ({**chat("x"), "tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]}, "tools"),
    ({**chat("x"), "logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
    ({**chat("x"), "response_format": {"type": "json_schema", "json_schema": {"schema": {"d": "x" * 40_000}}}},
     "response_format"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 123}]}]},
     "messages[0].content"),
])
def test_oversized_or_malformed_fields_are_400s_before_any_work(gateway, body, param):
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    status, data = gateway.call(path, body)
    assert status == 400 and data["error"]["param"] == param, data
    assert ENGINE_SEEN == [] and gateway.state.hook.calls == []


def test_deep_json_and_unexpected_errors_are_answered_and_logged_with_their_status(gateway):
    deep = b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, data = gateway.call("/v1/chat/completions", deep)
    assert status == 400 and data["error"]["code"] == "invalid_json"
    status, data = gateway.call("/v1/chat/completions", chat("EXPLODE"))
    assert status == 500 and data["error"]["code"] == "internal_error"
    ANSWERS.append("__NOT_JSON__")
    status, data = gateway.call("/v1/chat/completions", chat("hi"))
    assert status == 502 and data["error"]["code"] == "engine_error"
    assert list(gateway.log().status) == [400, 500, 502]
    assert asyncio.run(gateway.state.limiter.in_flight("k")) == 0


def test_per_key_concurrency_cap_and_slots_given_back(gateway):
    limiter = gateway.state.limiter
    gateway.state.cfg.limits.max_concurrent_per_key = 1
    slot = asyncio.run(limiter.acquire("k", 1))  # another request of this key is in flight
    status, data = gateway.call("/v1/chat/completions", chat("hi"))
    assert status == 429 and data["error"]["code"] == "concurrency_limit_exceeded"
    asyncio.run(limiter.release("k", slot))
    assert gateway.call("/v1/chat/completions", chat("hi"))[0] == 200
    assert gateway.call("/v1/chat/completions", chat("hi", stream=True), stream=True)[0] == 200
    assert gateway.call("/v1/chat/completions", chat("BLOCKME"))[0] == 400
    assert asyncio.run(limiter.in_flight("k")) == 0  # every path gave its slot back


def test_unauthenticated_requests_are_sampled_into_the_log_and_all_counted(gateway):
    gateway.state.cfg.request_log.unauthenticated_sample = 0.0
    for _ in range(5):
        assert gateway.call("/v1/chat/completions", chat("hi"), key="sk-wrong")[0] == 401
    assert gateway.call("/v1/chat/completions", chat("hi"))[0] == 200
    assert list(gateway.log().status) == [200]
    from prometheus_client import generate_latest

    metrics = generate_latest(gateway.state.metrics.registry).decode()
    assert ('llmops_requests_total{endpoint="chat",key="anonymous",model="unknown",status="401",version=""} 5.0'
            in metrics)


def test_ops_routes_can_require_a_key(gateway):
    async def get(path, key=None):
        transport = httpx.ASGITransport(app=gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return (await client.get(path, headers={"Authorization": f"Bearer {key}"} if key else {})).status_code

    run = gateway.loop.run_until_complete
    assert run(get("/metrics")) == 200 and run(get("/health")) == 200
    gateway.state.cfg.auth.protect_ops = True
    assert run(get("/metrics")) == 401 and run(get("/ready")) == 401 and run(get("/health")) == 200
    assert run(get("/metrics", "sk-k")) == 200


def test_no_free_engine_connection_is_a_503_with_retry_after(gateway):
    from serving.router import Router

    state = gateway.state
    state.router = Router(state.router.groups, state.cfg.router.model_copy(update={"max_connections": 1,
                                                                                  "pool_timeout_s": 0.2}))
    ANSWERS.append("__SLOW__")

    async def both():
        transport = httpx.ASGITransport(app=gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as client:
            auth = {"Authorization": "Bearer sk-k"}
            slow = asyncio.create_task(client.post("/v1/chat/completions", json=chat("a", stream=True),
                                                   headers=auth))
            await asyncio.sleep(0.3)  # the slow stream holds the only connection
            busy = await client.post("/v1/chat/completions", json=chat("b"), headers=auth)
            return await slow, busy

    slow, busy = gateway.loop.run_until_complete(both())
    assert slow.status_code == 200 and slow.text.count("Z ") == 8  # the slow stream went through whole
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["code"] == "gateway_busy"


def test_user_requests_in_flight_are_counted_on_their_engine_group_until_they_end(gateway):
    """What a shadow request yields to (GatewayState.busy): counted while the engine has the request, on the group
    that runs it (a fallback's), and given back on every way out."""
    state = gateway.state
    ANSWERS.append("__SLOW__")  # a stream that takes about 2 s

    async def during():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway.app), base_url="http://gw") as c:
            task = asyncio.ensure_future(c.post("/v1/chat/completions", json=chat("hi", stream=True),
                                                headers={"Authorization": "Bearer sk-k"}))
            await asyncio.sleep(0.5)
            seen = dict(state.inflight)
            assert (await task).status_code == 200
            return seen

    assert gateway.loop.run_until_complete(during()) == {"m": 1}
    assert state.inflight == {"m": 0}
    # a model whose engines are all gone falls back to "m": counted there, not on the empty group
    state.models["broken"] = SimpleNamespace(**{**vars(state.models["m"]), "public": "broken", "upstream": "broken",
                                                "group": "gone"})
    status, data = gateway.call("/v1/chat/completions", {**chat("hi"), "model": "broken"})
    assert status == 200 and data["model"] == "m"
    ANSWERS.extend(["__DIES__", "__SLEEP__"])
    assert gateway.call("/v1/chat/completions", chat("hi", stream=True), stream=True)[0] == 200  # breaks off
    state.router.client.timeout = httpx.Timeout(0.5, connect=5.0, pool=5.0)
    assert gateway.call("/v1/chat/completions", chat("hi"))[0] == 504
    assert gateway.call("/v1/chat/completions", chat("BLOCKME"))[0] == 400  # never reached an engine
    assert state.inflight == {"m": 0, "gone": 0}
    assert not state.busy("m", 0)


def test_a_client_that_leaves_at_once_gives_back_its_slot_and_is_logged(gateway):
    """Raw ASGI: the client disconnects right after sending its streamed request."""
    ANSWERS.append("__SLOW__")
    body = json.dumps(chat("hi", stream=True)).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "server": ("gw", 80), "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"gw"), (b"content-type", b"application/json"),
                         (b"authorization", b"Bearer sk-k"), (b"content-length", str(len(body)).encode())]}
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop(0)
        return {"type": "http.disconnect"}  # gone before the first event

    sent = []

    async def send(message):
        sent.append(message)

    gateway.loop.run_until_complete(gateway.app(scope, receive, send))
    assert asyncio.run(gateway.state.limiter.in_flight("k")) == 0
    rec = gateway.log().iloc[0]
    assert rec.stream and rec.status == 200


def test_an_engine_that_does_not_answer_in_time_is_a_504_logged_as_such(gateway):
    gateway.state.router.client.timeout = httpx.Timeout(0.5, connect=5.0, pool=5.0)
    ANSWERS.append("__SLEEP__")
    status, data = gateway.call("/v1/chat/completions", chat("hi"))
    assert status == 504 and data["error"]["code"] == "engine_timeout"
    assert "router.timeout_s" in data["error"]["message"]
    rec = gateway.log().iloc[0]
    assert (rec.status, rec.error_code) == (504, "engine_timeout")


# ------------------------------------------------------------------- bounded work on very long prompts
class CountingTokenizer:
    """The model's real tokenizer, recording how many characters it was asked to tokenize."""

    def __init__(self, tok):
        self.tok, self.chars = tok, 0

    def encode(self, text, *a, **kw):
        self.chars += len(text)
        return self.tok.encode(text, *a, **kw)

    def apply_chat_template(self, messages, *a, **kw):
        if kw.get("tokenize", True):  # rendering to text is not tokenizing
            self.chars += sum(len(str(m.get("content") or "")) for m in messages)
        return self.tok.apply_chat_template(messages, *a, **kw)

    def __len__(self):
        return len(self.tok)

    def __getattr__(self, name):
        return getattr(self.tok, name)


@pytest.fixture(scope="module")
def smollm2_tokenizer(base_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_dir)


def test_a_prompt_list_far_over_the_context_is_refused_after_tokenizing_a_small_part(gateway, smollm2_tokenizer):
    tok = gateway.state.tokenizers["m"] = CountingTokenizer(smollm2_tokenizer)
    prompts = ["word " * 6000] * 64  # ~1.9 MB: 64 prompts of 30k characters, each far over 256 tokens
    status, data = gateway.call("/v1/completions", {"model": "m", "prompt": prompts, "max_tokens": 16})
    assert status == 400 and data["error"]["code"] == "context_length_exceeded"
    assert "at least" in data["error"]["message"]
    assert tok.chars <= 8 * 256  # at most one prefix of one prompt (its length alone may do), not 1.9 MB
    tok.chars = 0
    status, data = gateway.call("/v1/chat/completions", {**chat("word " * 300_000), "max_tokens": 16})
    assert status == 400 and data["error"]["code"] == "context_length_exceeded" and tok.chars <= 8 * 256
    # no whitespace to cut at (one letter, base64, CJK): refused on its length alone, nothing tokenized
    tok.chars = 0
    status, data = gateway.call("/v1/completions", {"model": "m", "prompt": "a" * 1_500_000, "max_tokens": 16})
    assert status == 400 and "at least" in data["error"]["message"] and tok.chars == 0
    assert not ENGINE_SEEN


def test_prompts_at_the_context_edge_are_counted_exactly(gateway, smollm2_tokenizer):
    gateway.state.tokenizers["m"] = CountingTokenizer(smollm2_tokenizer)
    prompt = "The capital of France is " * 30
    exact = len(smollm2_tokenizer.encode(prompt))
    status, data = gateway.call("/v1/completions", {"model": "m", "prompt": ["Hi", prompt], "max_tokens": 256 - exact})
    assert status == 200 and ENGINE_SEEN[-1]["prompt"] == ["Hi", prompt]
    status, data = gateway.call("/v1/completions", {"model": "m", "prompt": ["Hi", prompt],
                                                    "max_tokens": 257 - exact})
    assert status == 400 and "you requested 257 tokens" in data["error"]["message"]
    # long in characters, few in tokens (runs of spaces): past the prefix window, still counted exactly
    sparse = ("x" + " " * 40) * 60
    exact = len(smollm2_tokenizer.encode(sparse))
    assert len(sparse) > 8 * (exact + 1)
    status, _ = gateway.call("/v1/completions", {"model": "m", "prompt": sparse, "max_tokens": 256 - exact})
    assert status == 200 and ENGINE_SEEN[-1]["prompt"] == sparse
    status, data = gateway.call("/v1/completions", {"model": "m", "prompt": sparse, "max_tokens": 257 - exact})
    assert status == 400 and "you requested 257 tokens" in data["error"]["message"]


def test_refusals_that_cost_tokenizing_count_against_the_keys_requests_per_minute(engine_url, tmp_path,
                                                                                  smollm2_tokenizer):
    port = int(engine_url.rsplit(":", 1)[1])
    cfg = ServingConfig.model_validate({
        "engines": [{"served_name": "m", "port": port, "max_model_len": 256}],
        "embeddings": {"enabled": False},
        "auth": {"keys": [{"id": "k", "sha256": hash_key("sk-k"), "rpm": 2}], "keys_env": "NO_SUCH_ENV",
                 "keys_file": str(tmp_path / "keys.json")},
        "request_log": {"enabled": False}})
    engine = SimpleNamespace(cfg=cfg.engines[0], url=engine_url, state="ready", api_key="engine-secret")
    state = GatewayState(cfg, [engine], {})
    state.tokenizers["m"] = smollm2_tokenizer
    state.hook = FakeGuard()
    client = TestClient(create_app(state))
    auth = {"Authorization": "Bearer sk-k"}
    codes = [client.post("/v1/completions", headers=auth, json={"model": "m", "prompt": "x " * 5000}).status_code
             for _ in range(2)]
    # the key is at its limit: refused before the body is read, so even a body that is not JSON gets the 429
    r = client.post("/v1/completions", headers=auth, content=b"{not json")
    assert codes == [400, 400] and r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "tiny-llama"])
def test_a_prefix_count_never_exceeds_the_whole_prompts_count(model, repo_root):
    """The bound that refuses a prompt early is a true lower bound: over prose, code, Markdown tables, text
    without spaces and mixed scripts, with the limit at many places, ``count_text`` either returns the exact
    count or a number that is above the limit and not above the exact count."""
    import random

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(repo_root / "models" / model)
    state = SimpleNamespace(tokenizers={"g": tok})
    docs = "\n\n".join(p.read_text() for p in sorted((repo_root / "docs").glob("*.md")))
    samples = [docs, docs.replace(" ", "\t"), "def f(x):\n    return x  # ok\n" * 300,
               "Приве́т, ми́р! 你好世界。" * 400 + " tail", "abc" * 5000, "a\n\n\n.\n\n" * 2000]
    rng = random.Random(0)
    for text in samples:
        for _ in range(12):
            start = rng.randrange(0, max(1, len(text) - 3000))
            piece = text[start:start + rng.randrange(600, 20_000)]
            exact = len(tok.encode(piece))
            at_most = rng.randrange(8, 1500)
            got = GatewayState.count_text(state, "g", piece, at_most)
            assert got == exact or at_most < got <= exact, (model, text[:20], at_most, got, exact)
            chars = rng.randrange(50, len(piece))
            cut, usable = text_prefix(piece, chars)
            if usable:  # cut just before whitespace that follows a word, in the span's second half
                assert chars // 2 < len(cut) <= chars and piece[len(cut)].isspace() and not cut[-1].isspace()
                assert len(tok.encode(cut)) <= exact
            else:
                assert not any(piece[i].isspace() and not piece[i - 1].isspace()
                               for i in range(chars // 2 + 1, chars + 1))


@pytest.mark.parametrize("how", ["__DIES__", "__ENDS__"])
def test_an_engine_stream_that_breaks_off_ends_with_a_clean_sse_error(gateway, how):
    ANSWERS.append(how)
    status, text = gateway.call("/v1/chat/completions", chat("hi", stream=True), stream=True)
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert status == 200 and events[-1]["error"]["code"] == "engine_error" and "retry" in events[-1]["error"]["message"]
    assert "PART" in "".join(c["delta"]["content"] for e in events[:-1] for c in e["choices"])
    assert list(gateway.log().status) == [502] and asyncio.run(gateway.state.limiter.in_flight("k")) == 0


@pytest.mark.parametrize("shared", [False, True])
def test_two_gateways_hold_one_keys_limits_together_only_with_redis(engine_url, tmp_path, shared, request):
    """Two gateways (two apps, two limiter objects, each its own connections) in front of one engine. In
    memory each enforces rpm on its own share, so the key gets twice its limit; with one Redis the limit
    holds across both, and a slot taken on one gateway counts on the other."""
    state = {}
    if shared:
        server = request.getfixturevalue("redis_server")
        state = {"state": {"redis_url": server.url, "key_prefix": f"two{tmp_path.name[-12:]}", "on_error": "closed"}}
    overrides = {"limits": {"default_max_tokens": 32, "default_rpm": 6}, **state}
    gws = [make_gateway(engine_url, tmp_path / f"gw{i}", **overrides) for i in range(2)]
    try:
        statuses = [gws[i % 2].call("/v1/chat/completions", chat("hi"))[0] for i in range(12)]
        assert statuses.count(200) == (6 if shared else 12), statuses
        assert statuses.count(429) == (6 if shared else 0)
        served = sum(int(gw.log().query("status == 200").completion_tokens.sum()) for gw in gws)
        if shared:
            assert all(s == 429 for s in statuses[6:])  # refused on both gateways alike
            for gw in gws:  # the usage records run after the answers, in tasks
                if gw.state._background:
                    gw.loop.run_until_complete(asyncio.gather(*gw.state._background))
            status, usage = gws[1].get("/v1/usage?days=2")
            assert status == 200 and usage["shared"] is True and len(usage["data"]) == 2
            # both gateways' requests, read from either one; refused requests are charged no tokens
            assert usage["totals"] == {"requests": 12, "refused": 6, "prompt_tokens": 6 * 11,
                                       "completion_tokens": served}, usage
            assert usage["data"][0] == {"date": usage["data"][0]["date"], **usage["totals"]}
            first, second = gws
            first.state.cfg.limits.max_concurrent_per_key = second.state.cfg.limits.max_concurrent_per_key = 1
            slot = first.loop.run_until_complete(first.state.limiter.acquire("k2", 1))
            with pytest.raises(APIError) as e:
                second.loop.run_until_complete(second.state.limiter.acquire("k2", 1))
            assert e.value.code == "concurrency_limit_exceeded"
            first.loop.run_until_complete(first.state.limiter.release("k2", slot))
            second.loop.run_until_complete(second.state.limiter.acquire("k2", 1))
    finally:
        for gw in gws:
            gw.loop.run_until_complete(gw.state.limiter.close())
            gw.loop.run_until_complete(gw.state.router.close())
            gw.loop.close()


@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_a_dead_redis_fails_open_or_closed_as_configured(engine_url, tmp_path, on_error, caplog):
    """Nothing listens at the Redis URL: 'open' answers on this gateway's own limits (with a warning),
    'closed' refuses with an OpenAI-shaped 503 that is logged as such; /ready says which."""
    from serving.engine import free_port

    gw = make_gateway(engine_url, tmp_path, state={"redis_url": f"redis://127.0.0.1:{free_port()}/0",
                                                   "on_error": on_error, "timeout_s": 0.2})
    try:
        status, data = gw.call("/v1/chat/completions", chat("hi"))
        ready = gw.loop.run_until_complete(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app), base_url="http://gw").get("/ready"))
        if on_error == "open":
            assert status == 200 and "limits are this gateway's own" in caplog.text
            assert ready.status_code == 200
        else:
            assert status == 503 and data["error"]["code"] == "state_store_unavailable", data
            assert data["error"]["type"] == "server_error"
            assert list(gw.log().status) == [503]
            assert ready.status_code == 503
        assert ready.json()["state_store"] == {"kind": "redis", "up": False, "on_error": on_error}
    finally:
        gw.loop.run_until_complete(gw.state.router.close())
        gw.loop.run_until_complete(gw.state.limiter.close())
        gw.loop.close()


def test_usage_per_key_and_day(gateway):
    assert gateway.call("/v1/chat/completions", chat("hello", max_tokens=7))[0] == 200
    assert gateway.call("/v1/chat/completions", chat("BLOCKME"))[0] == 400
    status, usage = gateway.get("/v1/usage")
    assert status == 200 and usage["key"] == "k" and usage["shared"] is False and len(usage["data"]) == 7
    today = usage["data"][0]
    assert (today["requests"], today["refused"], today["prompt_tokens"], today["completion_tokens"]) == (2, 1, 11, 3)
    assert usage["totals"] == {k: today[k] for k in ("requests", "refused", "prompt_tokens", "completion_tokens")}
    for bad in ("0", "x", "400", "\u00b2"):
        status, data = gateway.get(f"/v1/usage?days={bad}")
        assert status == 400 and data["error"]["param"] == "days"
    assert gateway.get("/v1/usage", key="sk-wrong")[0] == 401


def test_feedback_on_an_answer_is_stored_with_its_request_for_its_key_only(engine_url, tmp_path):
    gw = make_gateway(engine_url, tmp_path, auth={
        "keys": [{"id": "k", "sha256": hash_key("sk-k")}, {"id": "other", "sha256": hash_key("sk-other")}],
        "keys_env": "NO_SUCH_ENV", "keys_file": str(tmp_path / "keys.json")})
    try:
        async def ask():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app), base_url="http://gw") as client:
                r = await client.post("/v1/chat/completions", json=chat("hello"),
                                      headers={"Authorization": "Bearer sk-k"})
                return r.headers["x-request-id"]
        request_id = gw.loop.run_until_complete(ask())
        status, data = gw.call("/v1/feedback", {"request_id": request_id, "score": True, "comment": "right"})
        assert status == 200 and (data["score"], data["model"]) == (1.0, "m")
        status, data = gw.call("/v1/feedback", {"request_id": request_id, "score": 0}, key="sk-other")
        assert status == 404 and data["error"]["code"] == "request_not_found"  # not that key's request
        for body, param in (({"request_id": request_id, "score": 2}, "score"),
                            (f'{{"request_id": "{request_id}", "score": NaN}}'.encode(), "score"),
                            ({"request_id": request_id, "score": "good"}, "score"),
                            ({"score": 1}, "request_id"),
                            ({"request_id": request_id, "score": 1, "comment": "x" * 3000}, "comment")):
            status, data = gw.call("/v1/feedback", body)
            assert status == 400 and data["error"]["param"] == param, (body, data)
        assert gw.call("/v1/feedback", {"request_id": request_id, "score": 1}, key="sk-wrong")[0] == 401
        from llmops.contracts import read_feedback

        gw.state.requestlog.close()
        rows = read_feedback(tmp_path / "log.sqlite")
        assert list(zip(rows.request_id, rows.key_id, rows.score, rows.comment, strict=True)) == [
            (request_id, "k", 1.0, "right")]
    finally:
        gw.loop.run_until_complete(gw.state.router.close())
        gw.loop.close()


def test_feedback_without_keys_is_one_score_per_answer(engine_url, tmp_path):
    """A gateway without auth: every client is "no key", and a score sent again replaces the first (a flood of
    scores on one answer is still one score)."""
    gw = make_gateway(engine_url, tmp_path, auth={"enabled": False, "keys_env": "NO_SUCH_ENV",
                                                  "keys_file": str(tmp_path / "keys.json")})
    try:
        async def ask(text):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app), base_url="http://gw") as client:
                r = await client.post("/v1/chat/completions", json=chat(text))
                return r.status_code, r.headers["x-request-id"]
        request_id = gw.loop.run_until_complete(ask("hello"))[1]
        for score in (1, 0, 0, 1, 0):
            assert gw.call("/v1/feedback", {"request_id": request_id, "score": score}, key="")[0] == 200
        status, blocked_id = gw.loop.run_until_complete(ask("BLOCKME"))
        assert status == 400  # a refused request is no answer to score
        assert gw.call("/v1/feedback", {"request_id": blocked_id, "score": 0}, key="")[0] == 404
        from llmops.contracts import read_feedback

        gw.state.requestlog.close()
        rows = read_feedback(tmp_path / "log.sqlite")
        assert list(zip(rows.request_id, rows.score, strict=True)) == [(request_id, 0.0)]
    finally:
        gw.loop.run_until_complete(gw.state.router.close())
        gw.loop.close()
