"""`make demo`'s stages run end to end in a fresh folder (configs and models linked in)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_demo_runs_and_second_run_reuses(tmp_path, repo_root, base_model_dir):
    (tmp_path / "configs").symlink_to(repo_root / "configs")
    (tmp_path / "models").symlink_to(repo_root / "models")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = subprocess.run([sys.executable, "-m", "llmops.demo"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    for heading in ("== 1.", "== 2.", "== 5.", "== summary"):
        assert heading in out.stdout
    report = json.loads((tmp_path / "reports/drift/drift_report.json").read_text())
    assert report["dataset_drift"] is True
    assert "credit-risk/1" in out.stdout and "smollm2-135m-instruct/1" in out.stdout
    again = subprocess.run([sys.executable, "-m", "llmops.demo"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0
    assert "smollm2-135m-instruct/1" in again.stdout and "smollm2-135m-instruct/2" not in again.stdout
    assert "credit-risk/2" in again.stdout  # a new training run is a new version
