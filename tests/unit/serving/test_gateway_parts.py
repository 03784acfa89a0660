"""Gateway pieces that need no engine: keys, request log, config checks (rate limits: test_limits.py)."""

from __future__ import annotations

import time

import pytest

from llmops.contracts import RequestRecord, VerdictRecord, read_request_log
from serving.config import AuthConfig, EngineConfig, ServingConfig
from serving.gateway.auth import KeyStore, hash_key
from serving.gateway.errors import APIError
from serving.gateway.requestlog import RequestLog


def test_keys_are_hashed_and_checked(monkeypatch):
    monkeypatch.setenv("TEST_KEYS", "ops:sk-ops, ci:sk-ci")
    store = KeyStore(AuthConfig(keys=[{"id": "a", "sha256": hash_key("sk-a")}], keys_env="TEST_KEYS"))
    assert store.authenticate("Bearer sk-a").id == "a"
    assert store.authenticate("bearer sk-ci").id == "ci"
    assert all("sk-" not in k.sha256 for k in store.keys)
    for header in (None, "sk-a", "Bearer nope", "Basic sk-a"):
        with pytest.raises(APIError) as e:
            store.authenticate(header)
        assert e.value.status == 401
    assert KeyStore(AuthConfig(enabled=False)).authenticate(None) is None


def test_request_log_round_trip(tmp_path):
    import numpy as np

    log = RequestLog(tmp_path / "r.sqlite")
    emb = np.arange(4, dtype=np.float32)
    log.write(RequestRecord(id="1", ts=time.time(), endpoint="chat", key_id="k", model="m", status=200,
                            prompt_tokens=5, completion_tokens=7, latency_ms=12.5, ttft_ms=3.0,
                            guardrails=[VerdictRecord("input", "redact", "pii", ("EMAIL",), latency_ms=0.2)],
                            prompt_embedding=emb.tobytes()))
    log.write(RequestRecord(id="2", ts=time.time(), endpoint="chat", status=429, error_code="rate_limit_exceeded"))
    log.close()
    df = read_request_log(tmp_path / "r.sqlite")
    assert list(df.id) == ["1", "2"] and list(df.status) == [200, 429]
    assert df.guardrails[0] == [VerdictRecord("input", "redact", "pii", ("EMAIL",), latency_ms=0.2)]
    assert df.guardrails[1] == [] and np.array_equal(df.prompt_embedding[0], emb)
    assert df.prompt_embedding[1] is None
    assert read_request_log(tmp_path / "r.sqlite", since=time.time() + 60).empty


def test_a_request_log_from_before_the_answer_columns_is_brought_up_to_date(tmp_path):
    from testkit import first_release_request_log

    path = first_release_request_log(tmp_path / "old.sqlite", "('old', 1.0, 'chat', NULL, NULL, NULL, 200, '[]')")
    before = read_request_log(path)  # a reader of the old file sees the new columns as empty
    assert before.finish_reason.isna().all() and before.degenerate.isna().all()
    log = RequestLog(path)
    log.write(RequestRecord(id="new", ts=2.0, endpoint="chat", finish_reason="length", degenerate=1))
    log.close()
    df = read_request_log(path)
    assert list(df.id) == ["old", "new"] and df.finish_reason[1] == "length" and df.degenerate[1] == 1
    assert df.degenerate.isna()[0]


def test_verdict_records_read_what_older_and_newer_writers_wrote():
    assert VerdictRecord.from_dict({"stage": "output", "action": "block", "rail": "toxicity", "reason": "x",
                                    "a_field_from_a_newer_writer": 1}) == VerdictRecord("output", "block", "toxicity",
                                                                                        reason="x")
    rec = VerdictRecord("output", "warn", "json_schema", ("invalid_json",), reask=True)
    assert VerdictRecord.from_dict(rec.to_dict()) == rec


def test_request_log_queue_is_bounded_and_retention_applies(tmp_path):
    path = tmp_path / "r.sqlite"
    log = RequestLog(path, max_queue=3, start=False)  # the writer is not running: the queue fills
    accepted = [log.write(RequestRecord(id=str(i), ts=time.time() - i * 86400, endpoint="chat")) for i in range(5)]
    assert accepted == [True, True, True, False, False] and log.dropped == 2
    log.start()
    log.close()
    assert list(read_request_log(path).id) == ["2", "1", "0"]  # oldest first
    RequestLog(path, retention_days=1.5, start=False)  # opening prunes what is older than 1.5 days
    assert list(read_request_log(path).id) == ["1", "0"]
    RequestLog(path, max_rows=1, start=False)
    assert list(read_request_log(path).id) == ["0"]


def test_serving_config_cross_checks():
    with pytest.raises(ValueError, match="distinct ports"):
        ServingConfig.model_validate({"engines": [{"port": 9001}, {"name": "b", "port": 9001}]})
    with pytest.raises(ValueError, match="gateway port"):
        ServingConfig.model_validate({"port": 9001, "engines": [{"port": 9001}]})
    with pytest.raises(ValueError, match="max_lora_rank"):
        ServingConfig.model_validate({"engines": [{"max_lora_rank": 12}]})
    with pytest.raises(ValueError, match="enable_lora"):
        ServingConfig.model_validate({"engines": [{"enable_lora": False}],
                                      "adapters": [{"registry_name": "a"}]})


def test_lora_auto_is_on_only_for_engines_that_serve_adapters():
    from serving.engine import Engine

    two = [{"name": "a", "served_name": "base", "port": 9101}, {"name": "b", "served_name": "other", "port": 9102}]
    plain = ServingConfig.model_validate({"engines": two})
    assert [plain.lora_enabled(e) for e in plain.engines] == [False, False]
    with_adapter = ServingConfig.model_validate({"engines": two, "adapters": [{"registry_name": "qa"}]})
    assert [with_adapter.lora_enabled(e) for e in with_adapter.engines] == [True, False]
    forced = ServingConfig.model_validate({"engines": [{**two[1], "enable_lora": True}]})
    assert forced.lora_enabled(forced.engines[0]) is True
    on = Engine(plain.engines[0].model_copy(update={"enable_lora": True}), "m", "/tmp").command()
    off = Engine(plain.engines[0].model_copy(update={"enable_lora": False}), "m", "/tmp").command()
    assert "--enable-lora" in on and "--enable-lora" not in off


def test_cpu_layout_keys_reach_the_engine_environment(monkeypatch, tmp_path):
    import sys

    from serving.engine import Engine, EngineError

    monkeypatch.delenv("LD_PRELOAD", raising=False)
    default = Engine(EngineConfig(), "m", "/tmp").env()
    assert "VLLM_CPU_OMP_THREADS_BIND" not in default
    # auto: no core reserved on a small machine (gateway, front end and OpenMP share), vLLM's choice on a big one
    assert (EngineConfig().reserved_cores(2), EngineConfig().reserved_cores(4), EngineConfig().reserved_cores(16)) \
        == (0, 0, None)
    assert default.get("VLLM_CPU_NUM_OF_RESERVED_CPU") == str(EngineConfig().reserved_cores())
    assert EngineConfig(cpu_reserved_cores=None).reserved_cores(2) is None
    # the CPU build cannot load its AOT compile cache back: the classic cache is used (a second start
    # then skips the compile); the GPU build keeps vLLM's default; a config value wins either way
    from llmops.hardware import vllm_cpu_build

    assert default.get("VLLM_USE_AOT_COMPILE") == ("0" if vllm_cpu_build() else None)
    monkeypatch.setattr("llmops.hardware.vllm_cpu_build", lambda: False)
    assert "VLLM_USE_AOT_COMPILE" not in Engine(EngineConfig(), "m", "/tmp").env()
    assert Engine(EngineConfig(aot_compile=True), "m", "/tmp").env()["VLLM_USE_AOT_COMPILE"] == "1"
    monkeypatch.setattr("llmops.hardware.vllm_cpu_build", lambda: True)
    assert Engine(EngineConfig(), "m", "/tmp").env()["VLLM_USE_AOT_COMPILE"] == "0"
    with pytest.raises(ValueError, match="cpu_reserved_cores"):
        EngineConfig.model_validate({"cpu_reserved_cores": -1})
    assert "LD_PRELOAD" not in default  # gnu: vLLM preloads PyTorch's libgomp itself
    cfg = EngineConfig(cpu_reserved_cores=0, cpu_threads_bind="nobind", cpu_openmp="intel")
    lib = tmp_path / "lib" / "libiomp5.so"
    lib.parent.mkdir()
    lib.write_bytes(b"")
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    env = Engine(cfg, "m", "/tmp").env()
    assert (env["VLLM_CPU_NUM_OF_RESERVED_CPU"], env["VLLM_CPU_OMP_THREADS_BIND"]) == ("0", "nobind")
    assert env["LD_PRELOAD"].split(":")[0] == str(lib)
    lib.unlink()
    monkeypatch.setattr(sys, "base_prefix", str(tmp_path))
    with pytest.raises(EngineError, match="intel-openmp"):
        Engine(cfg, "m", "/tmp").env()
    with pytest.raises(ValueError, match="cpu_openmp"):
        EngineConfig.model_validate({"cpu_openmp": "llvm"})


def test_hash_key_cli(capsys):
    import hashlib

    from serving.__main__ import main

    assert main(["hash-key", "sk-some-key"]) == 0
    digest = capsys.readouterr().out.strip()
    assert digest == hashlib.sha256(b"sk-some-key").hexdigest()
    from pathlib import Path

    shipped = Path("configs/serving/default.yaml").read_text() + Path("configs/rag/default.yaml").read_text()
    assert "sk-" not in shipped.replace("sk-llmops-...", "")  # no key ships in a config


def test_key_file_create_list_revoke_and_the_gateway_follows_it(tmp_path, monkeypatch):
    import stat

    from llmops.errors import ConfigError
    from serving.gateway.keys import create_key, list_keys, revoke_key

    path = tmp_path / "keys" / "keys.json"
    ci = create_key(path, "ci")
    assert ci.startswith("sk-llmops-") and len(ci) > 30 and ci not in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="exists"):
        create_key(path, "ci")
    with pytest.raises(ConfigError, match="invalid"):
        create_key(path, "bad id!")
    monkeypatch.delenv("LLMOPS_API_KEYS", raising=False)
    store = KeyStore(AuthConfig(keys_file=str(path)))
    assert store.authenticate(f"Bearer {ci}").id == "ci"
    other = create_key(path, "other")
    time.sleep(1.05)  # the store looks at the file at most once a second
    assert store.authenticate(f"Bearer {other}").id == "other"
    assert revoke_key(path, "ci") and not revoke_key(path, "ci")
    time.sleep(1.05)
    with pytest.raises(APIError):
        store.authenticate(f"Bearer {ci}")
    assert [k.id for k in list_keys(path)] == ["other"]
    # the variable replaces the file's keys
    monkeypatch.setenv("LLMOPS_API_KEYS", "env:sk-from-env")
    store = KeyStore(AuthConfig(keys_file=str(path)))
    assert store.authenticate("Bearer sk-from-env").id == "env"
    with pytest.raises(APIError):
        store.authenticate(f"Bearer {other}")


def test_first_serve_creates_a_key_and_other_machines_need_chosen_keys(tmp_path, monkeypatch, capsys):
    from serving.__main__ import main
    from serving.engine import EngineError
    from serving.server import check_exposure, ensure_key

    monkeypatch.delenv("LLMOPS_API_KEYS", raising=False)
    keys = str(tmp_path / "keys.json")
    cfg = ServingConfig.model_validate({"auth": {"keys_file": keys}})
    created = ensure_key(cfg)
    assert created and ensure_key(cfg) is None  # once
    assert KeyStore(cfg.auth).authenticate(f"Bearer {created}").generated
    check_exposure(cfg, insecure=False)  # loopback: fine
    public = cfg.model_copy(update={"host": "0.0.0.0"})
    with pytest.raises(EngineError, match="generated local ones"):
        check_exposure(public, insecure=False)
    check_exposure(public, insecure=True)  # allowed, logged loudly
    no_auth = public.model_copy(update={"auth": cfg.auth.model_copy(update={"enabled": False})})
    with pytest.raises(EngineError, match="auth is off"):
        check_exposure(no_auth, insecure=False)
    # a key someone chose (the CLI) is enough
    cfg_file = tmp_path / "serving.yaml"
    cfg_file.write_text(f"auth: {{keys_file: {keys}}}\n")
    assert main(["keys", "create", "team", "--config", str(cfg_file)]) == 0
    team_key = capsys.readouterr().out.strip()
    assert KeyStore(cfg.auth).authenticate(f"Bearer {team_key}").id == "team"
    check_exposure(public, insecure=False)
    assert main(["keys", "list", "--config", str(cfg_file)]) == 0
    listing = capsys.readouterr().out
    assert "default" in listing and "(generated)" in listing and "team" in listing and team_key not in listing
    assert main(["keys", "revoke", "team", "--config", str(cfg_file)]) == 0
    assert main(["keys", "revoke", "team", "--config", str(cfg_file)]) == 1


class RecordingEngine:
    """An engine group member that records which adapters the gateway loads into it."""

    def __init__(self, cfg) -> None:
        self.cfg, self.url, self.state, self.api_key = cfg, "http://127.0.0.1:9", "ready", None
        self.loaded: dict[str, str] = {}

    def load_adapter(self, name: str, path: str) -> None:
        self.loaded[name] = path

    def unload_adapter(self, name: str) -> None:
        self.loaded.pop(name, None)


@pytest.mark.parametrize("policy", ["follow", "ignore"])
def test_alias_moves_made_outside_the_project_are_recorded_and_followed_or_not(registry, tmp_path, policy):
    from llmops.registry import UNAUDITED_ACTOR
    from serving.gateway.state import GatewayState

    weights = tmp_path / "adapter.bin"
    weights.write_bytes(b"w")
    registry.register("qa", weights, kind="adapter", aliases=["champion"])
    registry.register("qa", weights, kind="adapter")
    cfg = ServingConfig.model_validate({"engines": [{"served_name": "base"}], "adapters": [{"registry_name": "qa"}],
                                        "embeddings": {"enabled": False}, "request_log": {"enabled": False},
                                        "unaudited_moves": policy})
    engine = RecordingEngine(cfg.engines[0])
    state = GatewayState(cfg, [engine], {}, registry)
    assert state.sync_adapters() == ["qa"] and state.models["qa"].registry_version == "1"
    registry.client.set_registered_model_alias("qa", "champion", "2")  # as the MLflow UI does
    changed = state.sync_adapters()
    assert registry.last_move("qa", "champion").actor == UNAUDITED_ACTOR
    if policy == "follow":
        assert changed == ["qa"] and state.models["qa"].registry_version == "2"
    else:
        assert changed == [] and state.models["qa"].registry_version == "1"
        assert list(engine.loaded) == ["qa--v1"]
        fresh = GatewayState(cfg, [RecordingEngine(cfg.engines[0])], {}, registry)  # a gateway started now
        assert fresh.sync_adapters() == ["qa"] and fresh.models["qa"].registry_version == "1"  # last audited
        fresh.close()
        registry.set_alias("qa", "champion", 2, reason="the audited rollout")  # a move through the project
        assert state.sync_adapters() == ["qa"] and state.models["qa"].registry_version == "2"
    state.close()


def test_a_replaced_adapter_stays_loaded_until_its_retirement_and_a_rollback_keeps_it(registry, tmp_path):
    """Several gateways may send to the same engines: a replaced version stays loaded for adapter_retire_s,
    so the others switch before it goes; a rollback within that time brings it back without a reload."""
    import time

    from serving.gateway.state import GatewayState

    weights = tmp_path / "adapter.bin"
    weights.write_bytes(b"w")
    for _ in range(2):
        registry.register("qa", weights, kind="adapter")
    registry.set_alias("qa", "champion", 1, reason="first")
    cfg = ServingConfig.model_validate({"engines": [{"served_name": "base"}], "adapters": [{"registry_name": "qa"}],
                                        "embeddings": {"enabled": False}, "request_log": {"enabled": False},
                                        "adapter_retire_s": 0.5})
    engine = RecordingEngine(cfg.engines[0])
    state = GatewayState(cfg, [engine], {}, registry)
    state.sync_adapters()
    registry.set_alias("qa", "champion", 2, reason="rollout")
    assert state.sync_adapters() == ["qa"] and state.models["qa"].upstream == "qa--v2"
    assert sorted(engine.loaded) == ["qa--v1", "qa--v2"]  # v1 retires later
    time.sleep(0.6)
    state.sync_adapters()
    assert sorted(engine.loaded) == ["qa--v2"]
    registry.set_alias("qa", "champion", 1, reason="rollback")
    assert state.sync_adapters() == ["qa"]
    registry.set_alias("qa", "champion", 2, reason="roll forward again")
    state.sync_adapters()
    registry.set_alias("qa", "champion", 1, reason="and back, within v1's retirement")
    state.sync_adapters()
    time.sleep(0.6)
    state.sync_adapters()
    assert sorted(engine.loaded) == ["qa--v1"] and state.models["qa"].upstream == "qa--v1"  # served: kept
    state.close()


def test_prompt_embeddings_wait_in_a_bounded_queue(tmp_path, embedding_model_dir):
    import threading
    from types import SimpleNamespace

    from llmops.contracts import RequestRecord, read_request_log
    from serving.gateway.state import GatewayState

    cfg = ServingConfig.model_validate({
        "engines": [{"served_name": "m", "port": 9}],
        "embeddings": {"enabled": True, "model": str(embedding_model_dir)},
        "request_log": {"path": str(tmp_path / "log.sqlite"), "prompt_embeddings": True,
                        "max_embedding_queue": 2}})
    engine = SimpleNamespace(cfg=cfg.engines[0], url="http://127.0.0.1:9", state="ready", api_key=None)
    state = GatewayState(cfg, [engine], {})
    state.log_request(RequestRecord(id="warm", ts=1.0, endpoint="chat"), "warm up")
    import time

    deadline = time.monotonic() + 60
    while state._embed_pending and time.monotonic() < deadline:  # the first embedding is done
        time.sleep(0.05)
    gate = threading.Event()
    state._embed_pool.submit(gate.wait)  # the embedding thread is busy: prompts queue up behind it
    for i in range(5):
        state.log_request(RequestRecord(id=f"r{i}", ts=2.0 + i, endpoint="chat"), f"prompt {i}")
    gate.set()
    state.close()
    log = read_request_log(tmp_path / "log.sqlite").set_index("id")
    assert len(log) == 6  # every record is written
    with_vectors = sorted(i for i, v in log.prompt_embedding.items() if v is not None)
    assert with_vectors == ["r0", "r1", "warm"]  # past the cap of 2 waiting, records go without a vector


def test_a_failed_load_unloads_only_what_this_gateway_loaded(registry, tmp_path):
    """Two replicas shared with another gateway: the first already has the version (the other gateway loaded
    it), the second refuses it. The old version keeps serving here, and the first replica keeps the new one,
    which the other gateway serves."""
    from serving.gateway.state import GatewayState

    weights = tmp_path / "adapter.bin"
    weights.write_bytes(b"w")
    registry.register("qa", weights, kind="adapter", aliases=["champion"])
    registry.register("qa", weights, kind="adapter")
    cfg = ServingConfig.model_validate({"engines": [{"served_name": "base", "name": "r0", "port": 9001},
                                                    {"served_name": "base", "name": "r1", "port": 9002}],
                                        "adapters": [{"registry_name": "qa"}], "embeddings": {"enabled": False},
                                        "request_log": {"enabled": False}})

    class Shared(RecordingEngine):
        def load_adapter(self, name, path):
            if name in self.loaded:
                return False  # loaded by another gateway
            self.loaded[name] = path
            return True

    class Refusing(RecordingEngine):
        refuse = False

        def load_adapter(self, name, path):
            if self.refuse:
                raise RuntimeError("engine refused the adapter")
            self.loaded[name] = path
            return True

    first, second = Shared(cfg.engines[0]), Refusing(cfg.engines[1])
    state = GatewayState(cfg, [first, second], {}, registry)
    assert state.sync_adapters() == ["qa"]
    first.loaded["qa--v2"] = "elsewhere"  # the other gateway moved on and loaded v2 into the first replica
    second.refuse = True
    registry.set_alias("qa", "champion", 2, reason="rollout")
    assert state.sync_adapters() == [] and state.models["qa"].upstream == "qa--v1"
    assert "qa--v2" in first.loaded  # not ours to unload
    state.close()
