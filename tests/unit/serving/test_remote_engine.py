"""An engine the gateway did not start (engines[].url), against a fake vLLM on loopback that checks the key,
loads adapters like vLLM (400 "already been loaded" for a name it has) and can be taken down and restarted."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from testkit import wait_until

from serving.config import EngineConfig
from serving.engine import EngineError, RemoteEngine

KEY = "engine-shared-key"
STATE = {"up": True, "loaded": {}, "loads": []}


def _fake_vllm() -> FastAPI:
    app = FastAPI()

    def authorized(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {KEY}"

    @app.get("/health")
    async def health():
        return JSONResponse({}, status_code=200 if STATE["up"] else 503)

    @app.get("/v1/models")
    async def models(request: Request):
        if not authorized(request):
            return JSONResponse({"error": {"message": "Unauthorized"}}, status_code=401)
        return {"data": [{"id": "smollm2"}, *({"id": n} for n in STATE["loaded"])]}

    @app.post("/v1/load_lora_adapter")
    async def load(request: Request):
        if not authorized(request):
            return JSONResponse({"error": {"message": "Unauthorized"}}, status_code=401)
        body = await request.json()
        STATE["loads"].append(body["lora_name"])
        if STATE.get("refuse_loads", 0) > 0:  # still warming up after a restart
            STATE["refuse_loads"] -= 1
            return JSONResponse({"error": {"message": "not ready"}}, status_code=503)
        if body["lora_name"] in STATE["loaded"]:
            return JSONResponse({"error": {"message": f"The lora adapter '{body['lora_name']}' has already been "
                                           "loaded. If you want to load the adapter in place, set 'load_inplace'"
                                           " to True."}}, status_code=400)
        STATE["loaded"][body["lora_name"]] = body["lora_path"]
        return "ok"

    return app


@pytest.fixture(scope="module")
def fake_server(serve_on_loopback) -> str:
    return serve_on_loopback(_fake_vllm())


@pytest.fixture
def fake_url(fake_server, monkeypatch):
    STATE.update(up=True, loaded={}, loads=[], refuse_loads=0)
    monkeypatch.setenv("TEST_ENGINE_KEY", KEY)
    return fake_server


def test_a_remote_engine_is_reached_with_the_shared_key_and_adapters_load_once(fake_url):
    engine = RemoteEngine(EngineConfig(name="shared", url=fake_url, api_key_env="TEST_ENGINE_KEY"), check_s=0.05)
    engine.start()
    engine.wait_ready(5)
    assert engine.state == "ready" and engine.dtype is None
    assert engine.load_adapter("qa--v1", "/adapters/1") is True
    assert engine.load_adapter("qa--v1", "/adapters/1") is False  # another gateway loaded it first: fine
    with pytest.raises(EngineError, match="refused adapter"):
        RemoteEngine(EngineConfig(url=fake_url)).load_adapter("qa--v2", "/adapters/2")  # no key: 401
    engine.stop()


def test_one_failed_health_check_is_not_an_outage_and_a_restart_gets_the_adapters_back(fake_url):
    engine = RemoteEngine(EngineConfig(name="shared", url=fake_url, api_key_env="TEST_ENGINE_KEY"), check_s=0.2)
    engine.start()
    engine.wait_ready(5)
    engine.load_adapter("qa--v1", "/adapters/1")
    STATE["up"] = False
    assert wait_until(lambda: engine._failures >= 1, 5, every=0.02)
    assert engine.state == "ready"  # one failed check (two more are 0.4 s away)
    assert wait_until(lambda: engine.state == "down", 5, every=0.02)
    STATE["loaded"].clear()  # its owner restarted it: the adapters this gateway loaded are gone
    STATE["refuse_loads"] = 1  # the first reload fails: it is tried again at the next check
    STATE["up"] = True
    assert wait_until(lambda: engine.state == "ready", 5, every=0.02)
    assert wait_until(lambda: "qa--v1" in STATE["loaded"], 5, every=0.02)
    engine.stop()


def test_an_engine_that_refuses_this_gateways_key_is_a_clear_error_at_start(fake_url, monkeypatch):
    with pytest.raises(EngineError, match="api_key_env"):
        RemoteEngine(EngineConfig(url=fake_url)).wait_ready(5)  # sends no key
    monkeypatch.delenv("TEST_ENGINE_KEY")
    with pytest.raises(EngineError, match="TEST_ENGINE_KEY, which is not set"):
        RemoteEngine(EngineConfig(url=fake_url, api_key_env="TEST_ENGINE_KEY"))
    with pytest.raises(ValueError, match="url must start with http"):
        EngineConfig(url="engine-host:8100")
    from serving.config import ServingConfig

    shared = {"engines": [{"url": fake_url}], "adapters": [{"registry_name": "qa"}], "rollout_poll_s": 10}
    for retire in (0, 19):  # 0 would unload a replaced version before the other gateways switch
        with pytest.raises(ValueError, match="at least twice rollout_poll_s"):
            ServingConfig.model_validate({**shared, "adapter_retire_s": retire})
    ServingConfig.model_validate({**shared, "adapter_retire_s": 20})
