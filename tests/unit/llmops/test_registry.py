"""The registry, the same tests on both stores a team meets: SQLite in a temporary folder (the default) and an
MLflow tracking server on PostgreSQL with served artifacts (the team's path), both real (tests/live_servers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops.errors import RegistryError
from llmops.registry import Lineage, Registry, RegistryConfig, parse_ref, sha256_path

# every test that takes the registry runs on both stores
both = pytest.mark.parametrize("registry", ["sqlite", "server"], indirect=True)


@pytest.fixture
def adapter_dir(tmp_path):
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text('{"r": 8}')
    (d / "adapter_model.safetensors").write_bytes(b"\x00weights")
    return d


@both
def test_register_alias_move_audit_resolve(registry, adapter_dir):
    lineage = Lineage(dataset_sha256="d" * 64, base_model="smollm2/1", config_hash="c" * 64,
                      git_commit="abc123")
    v1 = registry.register("demo", adapter_dir, kind="adapter", lineage=lineage,
                           aliases=["challenger"], params={"r": 8}, metrics={"eval_loss": 1.5})
    assert v1.version == 1 and v1.kind == "adapter"
    assert v1.tags["lineage.dataset_sha256"] == "d" * 64
    assert v1.tags["lineage.base_model"] == "smollm2/1"
    assert v1.tags["lineage.git_commit"] == "abc123"
    assert v1.tags["llmops.content_sha256"] == sha256_path(adapter_dir)
    assert "challenger" in v1.aliases

    (adapter_dir / "adapter_model.safetensors").write_bytes(b"\x00weights-v2")
    v2 = registry.register("demo", adapter_dir, kind="adapter", lineage=lineage)
    assert v2.version == 2

    registry.set_alias("demo", "champion", 1, reason="first", actor="alice")
    move = registry.set_alias("demo", "champion", 2, reason="gate passed", actor="bob")
    assert (move.from_version, move.to_version) == (1, 2)

    resolved = registry.resolve("demo@champion")
    assert resolved.version == 2
    assert (resolved.local_path / "adapter_model.safetensors").read_bytes() == b"\x00weights-v2"
    assert registry.resolve("demo/1").local_path.joinpath("adapter_config.json").is_file()
    assert (registry.resolve("demo/1").local_path / "adapter_model.safetensors").read_bytes() == (
        b"\x00weights"
    )

    audit = registry.audit("demo")
    assert [(m.alias, m.from_version, m.to_version) for m in audit] == [
        ("challenger", None, 1), ("champion", None, 1), ("champion", 1, 2)]
    assert audit[-1].actor == "bob" and audit[-1].reason == "gate passed"

    registry.delete_alias("demo", "champion", reason="rollback test", actor="carol")
    assert registry.alias_version("demo", "champion") is None
    assert registry.audit("demo")[-1].to_version is None
    assert registry.models() == ["demo"]
    assert [v.version for v in registry.versions("demo")] == [1, 2]


@pytest.mark.integration
def test_store_is_shared_across_instances(tmp_path, adapter_dir, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = RegistryConfig(root=str(tmp_path / "store"))
    Registry(cfg).register("m", adapter_dir, kind="adapter", aliases=["champion"])
    assert Registry(cfg).resolve("m@champion").version == 1


@both
def test_single_file_registration(registry, tmp_path):
    f = tmp_path / "model.skops"
    f.write_bytes(b"sk")
    v = registry.register("clf", f, kind="classic_model")
    assert registry.resolve(f"clf/{v.version}").local_path.read_bytes() == b"sk"
    # the store's files are where the all-or-nothing test looks for leftovers
    assert [p.read_bytes() for p in registry.artifact_dir.rglob("model.skops")] == [b"sk"]


@both
def test_failure_leaves_nothing(registry, adapter_dir, monkeypatch):
    # Fail after the run and version exist: in the alias step.
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(registry, "_audit", boom)
    with pytest.raises(RegistryError, match="rolled back|audit"):
        registry.register("half", adapter_dir, kind="adapter", aliases=["champion"])
    assert registry.models() == []
    assert registry.versions("half") == []
    runs = registry.client.search_runs([registry._experiment_id])
    assert runs == []
    # and no file of it is left in the artifact store
    files = [p for p in registry.artifact_dir.rglob("*") if p.is_file()]
    assert files == []


@both
def test_failed_audit_restores_the_previous_alias(registry, adapter_dir, monkeypatch):
    registry.register("m", adapter_dir, kind="adapter", aliases=["champion"])
    registry.register("m", adapter_dir, kind="adapter")
    moves = len(registry.audit("m"))

    def boom(*a, **k):
        raise RuntimeError("audit store down")

    monkeypatch.setattr(registry, "_audit", boom)
    with pytest.raises(RegistryError, match="alias left unchanged"):
        registry.set_alias("m", "champion", 2, reason="should not stick")
    assert registry.alias_version("m", "champion") == 1  # moved back
    with pytest.raises(RegistryError, match="alias left unchanged"):
        registry.set_alias("m", "challenger", 2, reason="should not stick either")
    assert registry.alias_version("m", "challenger") is None  # a new alias is removed again
    monkeypatch.undo()
    assert len(registry.audit("m")) == moves


@both
def test_failure_keeps_existing_versions(registry, adapter_dir, monkeypatch):
    registry.register("keep", adapter_dir, kind="adapter")
    monkeypatch.setattr(registry.client, "create_model_version",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("db locked")))
    with pytest.raises(RegistryError, match="rolled back"):
        registry.register("keep", adapter_dir, kind="adapter")
    assert [v.version for v in registry.versions("keep")] == [1]


@both
def test_bad_inputs(registry, adapter_dir, tmp_path):
    with pytest.raises(RegistryError, match="does not exist"):
        registry.register("x", tmp_path / "missing", kind="adapter")
    with pytest.raises(RegistryError, match="Unknown kind"):
        registry.register("x", adapter_dir, kind="weights")  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="invalid"):
        registry.register("bad name!", adapter_dir, kind="adapter")
    registry.register("x", adapter_dir, kind="adapter")
    with pytest.raises(RegistryError, match="kind 'adapter'"):
        registry.register("x", adapter_dir, kind="classic_model")
    with pytest.raises(RegistryError, match="not in the registry"):
        registry.set_alias("x", "champion", 9, reason="nope")
    with pytest.raises(RegistryError, match="is not set"):
        registry.resolve("x@champion")
    with pytest.raises(RegistryError, match="not a registry reference"):
        parse_ref("just-a-name")


def test_parse_ref_forms():
    assert parse_ref("a@champion") == ("a", "champion", None)
    assert parse_ref("models:/a@champion") == ("a", "champion", None)
    assert parse_ref("a/3") == ("a", None, 3)


def test_sklearn_models_load_only_with_the_projects_trusted_types(tmp_path):
    """A model folder that declares its own trusted types (here a function reference inside a
    FunctionTransformer: copy.deepcopy in the test, os.system in an attack) or is stored with pickle is
    refused; the project's own models load."""
    import copy

    import mlflow.sklearn
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from llmops.registry import load_sklearn_model, save_sklearn_model

    X = pd.DataFrame({"a": np.arange(20.0), "b": np.arange(20.0) % 3})
    y = (X.a > 9).astype(int)
    good = save_sklearn_model(LogisticRegression().fit(X, y), tmp_path / "good", X.head(3))
    model, columns = load_sklearn_model(good)
    assert columns == ["a", "b"] and model.predict(X).tolist() == y.tolist()

    evil = make_pipeline(FunctionTransformer(copy.deepcopy), LogisticRegression())
    evil.steps[1] = ("logisticregression", LogisticRegression().fit(X, y))
    evil_dir = save_sklearn_model(evil, tmp_path / "evil", X.head(3))  # its MLmodel trusts copy.deepcopy
    with pytest.raises(RegistryError, match="outside the project's trusted list"):
        load_sklearn_model(evil_dir)

    mlflow.sklearn.save_model(LogisticRegression().fit(X, y), str(tmp_path / "pickled"),
                              serialization_format="cloudpickle")
    with pytest.raises(RegistryError, match="not a scikit-learn model stored with skops"):
        load_sklearn_model(tmp_path / "pickled")


@both
def test_alias_moves_and_their_audit_records_are_all_or_nothing(registry, adapter_dir, monkeypatch):
    registry.register("m", adapter_dir, kind="adapter", aliases=["champion"])
    registry.register("m", adapter_dir, kind="adapter")
    before = registry.audit("m")

    # the move itself fails: no record of it is left
    def refuse(*a, **k):
        raise RuntimeError("store rejected the alias")

    monkeypatch.setattr(registry.client, "set_registered_model_alias", refuse)
    with pytest.raises(RegistryError, match="nothing changed"):
        registry.set_alias("m", "champion", 2, reason="x")
    monkeypatch.undo()
    assert registry.alias_version("m", "champion") == 1 and registry.audit("m") == before

    # a crash after the move, before its record is confirmed: the pending record counts (the alias shows it)
    monkeypatch.setattr(registry.client, "set_tag", refuse)
    registry.set_alias("m", "champion", 2, reason="crash before confirming")
    monkeypatch.undo()
    assert registry.audit("m")[-1].reason == "crash before confirming"
    registry.set_alias("m", "champion", 1, reason="a later move")  # the confirmed record stays in the history
    assert [m.reason for m in registry.audit("m")][-2:] == ["crash before confirming", "a later move"]
    registry.set_alias("m", "champion", 2, reason="and back")
    # a crash after the record, before the move: the pending record does not count
    from llmops.registry import AliasMove

    registry._audit(AliasMove("m", "champion", 2, 1, "ci", "never applied", 1e10), state="pending")
    assert registry.alias_version("m", "champion") == 2
    assert all(m.reason != "never applied" for m in registry.audit("m"))

    # deleting an alias is audited too, and a failed delete leaves both as they were
    monkeypatch.setattr(registry.client, "delete_registered_model_alias", refuse)
    with pytest.raises(RegistryError, match="nothing changed"):
        registry.delete_alias("m", "champion", reason="y")
    monkeypatch.undo()
    assert registry.alias_version("m", "champion") == 2


@both
def test_a_move_made_outside_the_project_is_detected_and_recorded(registry, adapter_dir):
    registry.register("m", adapter_dir, kind="adapter", aliases=["champion"])
    registry.register("m", adapter_dir, kind="adapter")
    assert registry.unaudited_move("m", "champion") is None  # in step with its audit trail
    registry.client.set_registered_model_alias("m", "champion", "2")  # as the MLflow UI does
    move = registry.unaudited_move("m", "champion", detected_by="test")
    assert (move.from_version, move.to_version, move.actor) == (1, 2, "unknown (outside llmops)")
    assert registry.audit("m")[-1].reason.startswith("UNAUDITED") and "test" in registry.audit("m")[-1].reason
    assert registry.unaudited_move("m", "champion") is None  # recorded once


@both
def test_runs_of_eval_and_training_round_trip(registry, adapter_dir, tmp_path):
    """What eval and fine-tuning log (a finished run with a report linked to a version; an open training run
    with stepped metrics and its dataset) reads back the same on both stores."""
    registry.register("tuned", adapter_dir, kind="adapter", aliases=["champion"])
    report = tmp_path / "report.md"
    report.write_text("# Eval\n| metric | value |\n| exact | 0.75 |\n", encoding="utf-8")
    run_id = registry.log_run("eval-tuned", model_ref="tuned@champion", params={"suite": "qa"},
                              metrics={"exact": 0.75}, artifacts=[report], tags={"llmops.kind": "eval"})
    assert registry.read_run_artifact(run_id, "report.md") == report.read_text(encoding="utf-8")
    assert registry.read_run_artifact(run_id, "missing.md") is None
    runs = registry.runs_for("tuned", 1)
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].data.metrics["exact"] == 0.75
    assert runs[0].data.params["suite"] == "qa" and runs[0].info.status == "FINISHED"
    with pytest.raises(RegistryError, match="is not set"):
        registry.log_run("eval-x", model_ref="tuned@challenger")

    train = registry.start_run("finetune-tuned", params={"lr": 2e-4})
    for step, loss in ((1, 2.0), (2, 1.5)):
        registry.log_metrics(train, {"loss": loss}, step=step)
    registry.log_dataset(train, "qa.jsonl", "a" * 64, str(tmp_path / "qa.jsonl"), rows=12)
    registry.end_run(train)
    run = registry.client.get_run(train)
    history = registry.client.get_metric_history(train, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.5)]
    assert run.inputs.dataset_inputs[0].dataset.digest == "a" * 36 and run.info.status == "FINISHED"


@pytest.mark.parametrize("registry", ["server"], indirect=True)
def test_processes_resolving_one_version_at_once_share_the_download_cache_safely(registry, adapter_dir, monkeypatch):
    """Two gateways in one directory resolve the same version from a tracking server at the same moment:
    each gets the whole version, and no partial download is left in the cache."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    registry.register("cached", adapter_dir, kind="adapter")
    other = Registry(registry.config)
    real = registry._mlflow.artifacts.download_artifacts
    started = threading.Barrier(4)

    def slow(**kw):
        started.wait(10)  # all four downloads under way at once
        time.sleep(0.2)
        return real(**kw)

    monkeypatch.setattr(registry._mlflow.artifacts, "download_artifacts", slow)
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda r: r.resolve("cached/1").local_path, [registry, other, registry, other]))
    assert len(set(paths)) == 1
    assert (paths[0] / "adapter_model.safetensors").read_bytes() == b"\x00weights"
    cache = Path(registry.config.root).resolve() / "cache" / "cached"
    assert [p.name for p in cache.iterdir()] == ["1"]
