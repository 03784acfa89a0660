"""The scale-out process layout (deploy/scale-out/) stays runnable: every config it starts is valid, and the
processes agree on the addresses, keys and stores they share. (Running the whole layout needs a vLLM start;
tests/integration/test_scale_out.py runs the same topology on the session's engine.)"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from llmops.config import load_config
from serving.config import ServingConfig

REPO = Path(__file__).resolve().parents[3]
LAYOUT = REPO / "deploy" / "scale-out"


def processes() -> dict[str, list[str]]:
    out = {}
    for line in (LAYOUT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, cmd = line.split(":", 1)
            out[name.strip()] = shlex.split(cmd)
    return out


def env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (LAYOUT / "env.example").read_text().splitlines()
             if line and not line.startswith("#")]
    return {k: v for k, v in pairs}


def option(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


@pytest.fixture(scope="module")
def gateways() -> dict[str, ServingConfig]:
    out = {}
    for name, cmd in processes().items():
        if cmd[:2] == [".venv/bin/llmops", "serve"]:
            out[name] = load_config(str(REPO / option(cmd, "--config")), ServingConfig)
    return out


def test_every_process_is_a_known_command_and_the_scripts_parse():
    procs = processes()
    assert set(procs) == {"redis", "postgres", "mlflow", "gateway-a", "gateway-b"}
    for script in ("run", "postgres.sh"):
        path = LAYOUT / script
        assert path.stat().st_mode & 0o111, f"{script} is not executable"
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert procs["postgres"][0] == "deploy/scale-out/postgres.sh"


def test_the_gateways_share_one_engine_one_redis_one_registry_and_one_set_of_keys(gateways):
    procs, env = processes(), env_example()
    assert len(gateways) == 2
    owners = {e.port: (name, e) for name, g in gateways.items() for e in g.engines if not e.url}
    assert len(owners) == 1, "one gateway starts the engine"
    for g in gateways.values():
        for e in g.engines:
            if e.url:  # reaches the owner's engine, with the same shared key
                owner = owners[urlsplit(e.url).port][1]
                assert owner.served_name == e.served_name and owner.model == e.model
                assert e.api_key_env and e.api_key_env == owner.api_key_env
    ports = [g.port for g in gateways.values()] + list(owners)
    ports += [int(option(procs["redis"], "--port")), int(procs["postgres"][2]), int(option(procs["mlflow"], "--port"))]
    assert len(ports) == len(set(ports)), ports
    assert {g.state.redis_url_env for g in gateways.values()} == {"LLMOPS_REDIS_URL"}
    assert all(g.state.redis_url is None for g in gateways.values())  # from the env file, not the config
    assert urlsplit(env["LLMOPS_REDIS_URL"]).port == int(option(procs["redis"], "--port"))
    assert urlsplit(env["MLFLOW_TRACKING_URI"]).port == int(option(procs["mlflow"], "--port"))
    assert urlsplit(option(procs["mlflow"], "--backend-store-uri")).port == int(procs["postgres"][2])
    assert option(procs["mlflow"], "--backend-store-uri").rsplit("/", 1)[1] == procs["postgres"][3]
    assert len({g.auth.keys_env for g in gateways.values()}) == 1
    assert len({g.request_log.path for g in gateways.values()}) == 2  # one log per gateway (drift merges them)
    assert {tuple((a.registry_name, a.alias) for a in g.adapters) for g in gateways.values()} == {
        (("smollm2-qa", "champion"),)}
    assert all(g.guardrails.enabled for g in gateways.values())


def test_no_secret_is_shipped():
    text = (LAYOUT / "env.example").read_text()
    for var in ("LLMOPS_ENGINE_KEY", "LLMOPS_API_KEYS"):
        assert not re.search(rf"^{var}=", text, re.M), f"{var} must stay a commented placeholder"
    assert "deploy/scale-out/env" in (REPO / ".gitignore").read_text().splitlines()
    run = (LAYOUT / "run").read_text()
    assert all(v in run for v in ("LLMOPS_ENGINE_KEY", "LLMOPS_API_KEYS", "LLMOPS_REDIS_URL", "MLFLOW_TRACKING_URI"))
