"""`llmops drift` contract: files in, HTML + JSON out, exit 0/1/2; MLflow, webhook, retrain."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmops.monitoring.job import DriftJobConfig, run

REPO = Path(__file__).resolve().parents[3]


def drift_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmops", "drift", *args], capture_output=True,
                          text=True, cwd=REPO)


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    n = 1500
    ref = pd.DataFrame({"x": rng.normal(0, 1, n), "c": rng.choice(["u", "v"], n),
                        "y": rng.exponential(1, n)})
    same = pd.DataFrame({"x": rng.normal(0, 1, n), "c": rng.choice(["u", "v"], n),
                         "y": rng.exponential(1, n)})
    shifted = pd.DataFrame({"x": rng.normal(1, 1, n), "c": rng.choice(["u", "v"], n, p=[0.9, 0.1]),
                            "y": rng.exponential(1, n)})
    ref.to_parquet(tmp_path / "ref.parquet")
    same.to_csv(tmp_path / "same.csv", index=False)
    shifted.to_csv(tmp_path / "shifted.csv", index=False)
    return tmp_path


@pytest.mark.slow
def test_exit_codes_and_report_files(files):
    out = files / "out"
    drifted = drift_cli("--reference", str(files / "ref.parquet"), "--current",
                        str(files / "shifted.csv"), "--out", str(out))
    assert drifted.returncode == 1, drifted.stderr
    report = json.loads((out / "drift_report.json").read_text())
    assert report["dataset_drift"] is True
    cols = {c["column"]: c for c in report["columns"]}
    assert set(cols) == {"x", "c", "y"}
    assert cols["x"]["drifted"] and cols["c"]["drifted"] and not cols["y"]["drifted"]
    for key in ("test", "statistic", "p_value", "threshold", "drifted"):
        assert key in cols["x"]
    html = (out / "drift_report.html").read_text()
    assert html.startswith("<!doctype html>") and html.count("data:image/png;base64,") == 3
    assert "DATASET DRIFT" in html

    quiet = drift_cli("--reference", str(files / "ref.parquet"), "--current", str(files / "same.csv"),
                      "--out", str(files / "out2"))
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert json.loads((files / "out2" / "drift_report.json").read_text())["dataset_drift"] is False


@pytest.mark.slow
def test_bad_input_exits_2(files):
    missing = drift_cli("--reference", str(files / "nope.csv"), "--current", str(files / "same.csv"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    (files / "empty.csv").write_text("x,c,y\n")
    empty = drift_cli("--reference", str(files / "ref.parquet"), "--current", str(files / "empty.csv"),
                      "--out", str(files / "o3"))
    assert empty.returncode == 2 and "INVALID INPUT" in empty.stdout
    assert json.loads((files / "o3" / "drift_report.json").read_text())["dataset_drift"] is None
    (files / "data.xlsx").write_text("x")
    assert drift_cli("--reference", str(files / "data.xlsx"), "--current",
                     str(files / "same.csv")).returncode == 2
    assert drift_cli("--current", str(files / "same.csv")).returncode == 2


def test_report_logged_against_model_version_and_webhook_and_retrain(files, registry, monkeypatch):
    model_dir = files / "model"
    model_dir.mkdir()
    (model_dir / "model.pkl").write_bytes(b"m")
    registry.register("credit", model_dir, kind="classic_model", aliases=["champion"])
    # run() opens Registry() with defaults: point it at the test store
    monkeypatch.chdir(files)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)

    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.handle_request, daemon=True).start()
    marker = files / "retrained"
    cfg = DriftJobConfig(
        reference=str(files / "ref.parquet"), current=str(files / "shifted.csv"), out=str(files / "o"),
        model="credit@champion", webhook=f"http://127.0.0.1:{server.server_port}/alert",
        on_drift=f"{sys.executable} -c \"open('{marker}', 'w').write('x')\"",
    )
    result = run(cfg)
    server.server_close()
    assert result.exit_code == 1 and result.retrain_exit_code == 0 and marker.exists()
    assert received and received[0]["dataset_drift"] is True and "x" in received[0]["drifted_columns"]
    runs = registry.runs_for("credit", 1)
    assert [r.info.run_id for r in runs] == [result.run_id]
    assert runs[0].data.metrics["dataset_drift"] == 1.0
    artifacts = {a.path for a in registry.client.list_artifacts(result.run_id)}
    assert artifacts == {"drift_report.html", "drift_report.json"}
