"""Shared fixtures: repository paths, prepared default models, a fresh registry per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# a Redis exported in a developer's shell would switch every test gateway to it: tests choose their own
os.environ.pop("LLMOPS_REDIS_URL", None)

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def _prepared(name: str) -> Path:
    path = MODELS / name
    if not (path / "llmops_asset.json").is_file():
        pytest.fail(f"{path} is not prepared: run `make assets` (make test does it first).")
    return path


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    return _prepared("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return _prepared("tiny-llama")


@pytest.fixture(scope="session")
def embedding_model_dir() -> Path:
    return _prepared("all-MiniLM-L6-v2")


@pytest.fixture
def registry(request, tmp_path, monkeypatch):
    """A real MLflow registry: SQLite in a temporary folder. Parametrized indirectly with "server"
    (``@pytest.mark.parametrize("registry", ["sqlite", "server"], indirect=True)``), an MLflow tracking server
    on PostgreSQL with served artifacts, as a team runs it: the test gets its own experiment, and its models
    and audit records are removed after it. ``artifact_dir`` is where the registry's files land."""
    from llmops.registry import AUDIT_EXPERIMENT, Registry, RegistryConfig

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if getattr(request, "param", "sqlite") == "sqlite":
        reg = Registry(RegistryConfig(root=str(tmp_path / "mlruns")))
        reg.artifact_dir = Path(reg.config.root) / "artifacts"
        yield reg
        return
    import uuid

    server = request.getfixturevalue("mlflow_server")
    reg = Registry(RegistryConfig(root=str(tmp_path / "mlruns"), tracking_uri=server.url,
                                  experiment=f"test-{uuid.uuid4().hex[:10]}"))
    assert reg.tracking_uri.startswith("http://")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)  # what the code under test opens itself, too
    reg.artifact_dir = server.artifacts / reg._experiment_id
    before = {m.name for m in reg.client.search_registered_models(max_results=1000)}
    yield reg
    made = {m.name for m in reg.client.search_registered_models(max_results=1000)} - before
    for name in made:  # only what this test made: other modules' models on the server stay
        reg.client.delete_registered_model(name)
    audit = reg.client.get_experiment_by_name(AUDIT_EXPERIMENT)
    for run in reg.client.search_runs([audit.experiment_id], max_results=5000) if audit and made else []:
        if run.data.tags.get("model") in made:
            reg.client.delete_run(run.info.run_id)  # a later test with the same names starts with no history


# A test that uses one of these fixtures talks to a real MLflow store or Qdrant: it is an integration test
# whatever folder it is in (the `integration` marker's definition), so `-m "not integration"` means it.
INTEGRATION_FIXTURES = {"registry", "make_pipeline", "stores", "vllm_engine", "vllm_base", "redis_server",
                        "postgres_server", "mlflow_server"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def serve_on_loopback():
    """``start(app) -> base URL``: runs an ASGI app (a fake engine or judge) with uvicorn on a free
    loopback port in a thread; every server started is stopped at the end of the session."""
    import threading
    import time

    import uvicorn

    from serving.engine import free_port

    servers = []

    def start(app) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "the loopback server did not start"
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real ``redis-server`` on a loopback port for the session (tests/live_servers.py)."""
    from live_servers import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL cluster on a loopback port for the session (tests/live_servers.py)."""
    from live_servers import PostgresServer

    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(postgres_server, tmp_path_factory):
    """``mlflow server`` on PostgreSQL with served artifacts, for the session."""
    from live_servers import MlflowServer

    server = MlflowServer(postgres_server.create_db("mlflow"), tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()
