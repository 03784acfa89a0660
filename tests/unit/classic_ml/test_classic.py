"""Classic train -> register -> predict on a real SQLite MLflow store."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from classic_ml.data import DataError, credit_risk, write_table
from classic_ml.predict import PredictConfig
from classic_ml.predict import run as predict
from classic_ml.train import ClassicTrainConfig, dataset_sha256
from classic_ml.train import run as train
from llmops.errors import RegistryError


def small_cfg(tmp_path, **kw) -> ClassicTrainConfig:
    base = {"data": {"rows": 800}, "cv_folds": 3, "reference_out": str(tmp_path / "ref.parquet"),
            "model": {"type": "logistic_regression"}}
    base.update(kw)
    return ClassicTrainConfig.model_validate(base)


@pytest.mark.slow
def test_train_register_predict(registry, tmp_path):
    cfg = small_cfg(tmp_path)
    result = train(cfg, registry)
    v = result.version
    assert v.ref == "credit-risk/1" and "champion" in v.aliases and v.kind == "classic_model"
    assert 0.6 < result.metrics["roc_auc"] < 1.0 and 0 <= result.metrics["f1"] <= 1
    assert len(v.tags["lineage.config_hash"]) == 64 and len(v.tags["lineage.dataset_sha256"]) == 64

    local = registry.resolve("credit-risk@champion").local_path
    # the lineage hash names the data the model was trained on: the training table written out as the
    # drift reference, read back, hashes to the tag, and one changed value gives another hash
    stored = pd.read_parquet(tmp_path / "ref.parquet")
    assert dataset_sha256(stored) == v.tags["lineage.dataset_sha256"]
    changed = stored.copy()
    changed.iloc[0, 0] = changed.iloc[1, 0] if changed.iloc[0, 0] != changed.iloc[1, 0] else changed.iloc[2, 0]
    assert dataset_sha256(changed) != v.tags["lineage.dataset_sha256"]
    mlmodel = (local / "MLmodel").read_text()
    assert "signature" in mlmodel and "input_example" in mlmodel
    profile = json.loads((local / "reference_profile.json").read_text())
    assert profile["rows"] == 800 and profile["columns"]["age"]["mean"] > 0
    assert len(pd.read_parquet(local / "reference.parquet")) == 800
    assert pd.read_parquet(tmp_path / "ref.parquet").shape == (800, 11)
    run = registry.client.get_run(v.run_id)
    assert run.data.metrics["roc_auc"] == pytest.approx(result.metrics["roc_auc"])

    batch = credit_risk(300, seed=5, shift=1.0).drop(columns=["default"])  # has NaNs in years_employed
    write_table(batch, tmp_path / "batch.csv")
    out = predict(PredictConfig(input=str(tmp_path / "batch.csv"), output=str(tmp_path / "scored.parquet")),
                  registry)
    scored = pd.read_parquet(out.output)
    assert len(scored) == 300 and set(scored["prediction"]) <= {0, 1}
    assert scored["probability"].between(0, 1).all()
    assert (scored["model_version"] == 1).all() and (scored["model_name"] == "credit-risk").all()

    # a second run is a new version; the alias moves (audited)
    train(small_cfg(tmp_path, model={"type": "random_forest", "params": {"n_estimators": 20}}), registry)
    assert registry.alias_version("credit-risk", "champion") == 2
    assert [m.to_version for m in registry.audit("credit-risk")] == [1, 2]


@pytest.mark.slow
def test_predict_bad_input(registry, tmp_path):
    train(small_cfg(tmp_path), registry)
    write_table(credit_risk(50, 1).drop(columns=["income", "age"]), tmp_path / "b.csv")
    with pytest.raises(DataError, match="lacks the model's input columns: age, income"):
        predict(PredictConfig(input=str(tmp_path / "b.csv"), output=str(tmp_path / "o.csv")), registry)
    assert not (tmp_path / "o.csv").exists()
    with pytest.raises(RegistryError, match="is not set"):
        predict(PredictConfig(model="credit-risk@nope", input=str(tmp_path / "b.csv"),
                              output=str(tmp_path / "o.csv")), registry)


def test_bad_training_data_registers_nothing(registry, tmp_path):
    df = credit_risk(200, 0)
    df["default"] = 0
    write_table(df, tmp_path / "one_class.csv")
    with pytest.raises(DataError, match="single class"):
        train(small_cfg(tmp_path, data={"source": str(tmp_path / "one_class.csv")}), registry)
    with pytest.raises(DataError, match="Target column 'label' not found"):
        train(small_cfg(tmp_path, data={"rows": 100, "target": "label"}), registry)
    with pytest.raises(DataError, match="does not exist"):
        train(small_cfg(tmp_path, data={"source": str(tmp_path / "missing.csv")}), registry)
    with pytest.raises(DataError, match="no bundled dataset"):
        train(small_cfg(tmp_path, data={"source": "sklearn:nope"}), registry)
    assert registry.models() == []


@pytest.mark.slow
def test_sklearn_bundled_dataset(registry, tmp_path):
    cfg = small_cfg(tmp_path, data={"source": "sklearn:breast_cancer", "target": "target"},
                    registry_name="cancer")
    result = train(cfg, registry)
    assert result.metrics["roc_auc"] > 0.95


def test_shifted_batch_differs():
    ref, cur = credit_risk(2000, 0), credit_risk(2000, 1, shift=1.0)
    assert cur["income"].median() < ref["income"].median() * 0.8
    assert cur["years_employed"].isna().mean() > 0.1 and ref["years_employed"].isna().sum() == 0


@pytest.mark.slow
def test_classic_cli_make_data_train_predict(tmp_path, repo_root):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cli = [sys.executable, "-m", "llmops", "classic"]

    def run(*args):
        out = subprocess.run([*cli, *args], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert "2000 rows" in run("make-data", "--out", "batch.parquet", "--shift", "0.5")
    cfg = repo_root / "configs" / "classic" / "default.yaml"
    assert "registered credit-risk/1" in run("train", "--config", str(cfg), "data.rows=600", "cv_folds=2")
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    assert "credit-risk/1" in run("predict", "--input", "batch.parquet", "--output", "scored.csv")
    assert len(pd.read_csv(tmp_path / "scored.csv")) == 2000
    bad = subprocess.run([*cli, "train", "--config", str(cfg), "data.target=nope"], capture_output=True,
                         text=True, cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "Target column 'nope' not found" in bad.stderr
