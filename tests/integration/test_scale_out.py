"""Past one machine, on the real parts: two gateway processes (`llmops serve`) in front of one vLLM engine
neither of them started, sharing per-key limits in Redis and following one registry on an MLflow tracking
server backed by PostgreSQL. Their request logs merge into one drift report."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import httpx
import pytest
import yaml
from testkit import make_adapter, wait_until

from llmops.registry import Lineage, Registry, RegistryConfig
from serving.engine import free_port
from serving.gateway.auth import hash_key

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KEY = "sk-scale-team"
RPM = 8


@pytest.fixture(scope="module")
def deployment(vllm_engine, redis_server, mlflow_server, base_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scale-out")
    registry = Registry(RegistryConfig(root=str(tmp / "client-cache"), tracking_uri=mlflow_server.url,
                                       experiment="scale-out"))
    for version, seed in ((1, 1), (2, 2)):
        registry.register("scale-qa", make_adapter(base_model_dir, tmp / f"adapter-v{version}", seed, r=4),
                          kind="adapter", aliases=["champion"] if version == 1 else (),
                          lineage=Lineage(base_model="smollm2-135m-instruct"))
    gateways = []
    for i in range(2):
        port = free_port()
        cfg = {
            "port": port,
            "engines": [{"name": "shared", "url": vllm_engine.url, "served_name": "smollm2",
                         "model": str(base_model_dir), "max_model_len": 2048}],
            "adapters": [{"registry_name": "scale-qa", "alias": "champion", "served_name": "qa", "base": "smollm2"}],
            "embeddings": {"enabled": False},
            "auth": {"keys": [{"id": "team", "sha256": hash_key(KEY), "rpm": RPM}], "keys_env": "NO_SUCH_VAR",
                     "keys_file": str(tmp / f"keys-{i}.json")},
            "state": {"redis_url": redis_server.url, "key_prefix": "scale-out", "on_error": "closed"},
            "request_log": {"path": str(tmp / f"requests-{i}.sqlite")},
            "rollout_poll_s": 1,
            "adapter_retire_s": 10,
            "models_dir": str(base_model_dir.parent),
        }
        path = tmp / f"gateway-{i}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = {k: v for k, v in os.environ.items() if k != "LLMOPS_REDIS_URL"}
        env["MLFLOW_TRACKING_URI"] = mlflow_server.url  # the gateway's Registry() follows the team's server
        log = open(tmp / f"gateway-{i}.log", "wb")  # noqa: SIM115 - closed at teardown
        proc = subprocess.Popen([sys.executable, "-m", "llmops", "serve", "--config", str(path)], cwd=tmp,
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        gateways.append({"url": f"http://127.0.0.1:{port}", "proc": proc, "log": log,
                         "log_path": tmp / f"gateway-{i}.log", "requests": tmp / f"requests-{i}.sqlite"})

    def up(gw) -> bool:
        if gw["proc"].poll() is not None:
            raise AssertionError(f"gateway exited:\n{gw['log_path'].read_text()[-3000:]}")
        try:
            return httpx.get(gw["url"] + "/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        for gw in gateways:
            assert wait_until(lambda gw=gw: up(gw), 240), gw["log_path"].read_text()[-3000:]
        yield {"gateways": gateways, "registry": registry, "tmp": tmp}
    finally:
        for gw in gateways:
            gw["proc"].terminate()
        for gw in gateways:
            try:
                gw["proc"].wait(30)
            except subprocess.TimeoutExpired:
                gw["proc"].kill()
            gw["log"].close()
        # the MLflow server is the session's: later tests (the registry's) expect it as they found it
        from llmops.registry import AUDIT_EXPERIMENT

        registry.client.delete_registered_model("scale-qa")
        audit = registry.client.get_experiment_by_name(AUDIT_EXPERIMENT)
        for run in registry.client.search_runs([audit.experiment_id], "tags.model = 'scale-qa'") if audit else []:
            registry.client.delete_run(run.info.run_id)


def chat(gw, model: str = "smollm2") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2}
    return httpx.post(gw["url"] + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=120)


def served_version(gw, model: str = "qa") -> str | None:
    data = httpx.get(gw["url"] + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
    return {m["id"]: m for m in data["data"]}.get(model, {}).get("registry_version")


def test_a_keys_limit_holds_across_two_gateway_processes(deployment):
    first, second = deployment["gateways"]
    ready = httpx.get(first["url"] + "/ready", timeout=5).json()
    assert ready["state_store"] == {"kind": "redis", "up": True, "on_error": "closed"}
    statuses = [chat(deployment["gateways"][i % 2]).status_code for i in range(2 * RPM)]
    assert statuses.count(200) == RPM and statuses.count(429) == RPM, statuses
    assert set(statuses[RPM:]) == {429}  # the key's minute is used up on both gateways


def test_an_alias_move_is_picked_up_by_both_gateways(deployment):
    gws, registry = deployment["gateways"], deployment["registry"]
    assert [served_version(gw) for gw in gws] == ["1", "1"]
    registry.set_alias("scale-qa", "champion", 2, reason="scale-out test", actor="ci")
    for gw in gws:
        assert wait_until(lambda gw=gw: served_version(gw) == "2", 60), served_version(gw)


def test_the_gateways_request_logs_merge_into_one_drift_report(deployment):
    gws, tmp = deployment["gateways"], deployment["tmp"]
    sent = 2 * RPM  # the limit test's requests (the models listings are not logged)
    for gw in gws:
        gw["proc"].terminate()  # the request log is flushed on shutdown
        gw["proc"].wait(30)
    from llmops.monitoring.llm import request_signals

    merged = request_signals([gw["requests"] for gw in gws])
    from llmops.contracts import read_request_log

    per_gateway = [len(read_request_log(gw["requests"])) for gw in gws]
    assert len(merged) == sent == sum(per_gateway) and min(per_gateway) > 0  # both gateways' records, as one
    split = dt.datetime.fromtimestamp(float(merged.ts.iloc[RPM]), dt.UTC).isoformat()
    out = tmp / "drift"
    args = [sys.executable, "-m", "llmops", "drift", "--out", str(out), "--split", split]
    for gw in gws:
        args += ["--request-log", str(gw["requests"])]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    report = json.loads((out / "drift_report.json").read_text())
    by = {c["column"]: c for c in report["columns"]}
    # the first RPM requests were answered, the rest refused: the merged traffic shows it
    assert by["status_class"]["drifted"] is True
