"""`make demo` end to end in a fresh folder (configs, docs, examples and models linked in), on the
fast path (LLMOPS_DEMO_QUICK: small fine-tune and eval suites), the first release's canary next to the base
model included; then a second run reuses what is prepared."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_runs_every_stage_and_a_second_run_reuses(tmp_path, repo_root, base_model_dir):
    for name in ("configs", "models", "docs", "examples", "guardrails"):
        (tmp_path / name).symlink_to(repo_root / name)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(LLMOPS_DEMO_QUICK="1", LLMOPS_DEMO_PORT=str(port))
    try:
        out = subprocess.run([sys.executable, "examples/demo.py"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=1800)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        for n in range(1, 9):
            assert f"== {n}." in out.stdout
        assert "decision:" in out.stdout and "curl http://127.0.0.1:" in out.stdout
        assert json.loads((tmp_path / "reports/drift/drift_report.json").read_text())["dataset_drift"] is True
        assert (tmp_path / "reports/llm-drift/drift_report.html").is_file()
        evals = list((tmp_path / "reports/eval/demo").glob("*/eval_report.json"))
        assert len(evals) == 2  # base and challenger
        # the printed decision is the gate's verdict on the challenger; one that does not fail meets users in a canary
        # next to the base model (a first release: no champion yet), and the registry holds how that ended
        from llmops.registry import Registry, RegistryConfig
        from serving.rollout import BASE, RolloutStore

        reg = Registry(RegistryConfig(root=str(tmp_path / "mlruns")))
        rollout = RolloutStore(reg).get("smollm2-qa")
        # a rollback removes the challenger alias: the rollout still names the version
        challenger = rollout.challenger if rollout is not None else reg.alias_version("smollm2-qa", "challenger")
        reports = [json.loads(p.read_text()) for p in evals]
        verdict = next(r["gate"]["outcome"] for r in reports
                       if r.get("model_ref") in ("smollm2-qa@challenger", f"smollm2-qa/{challenger}"))
        assert f"Gate: {verdict.upper()}" in out.stdout
        if verdict == "failed":  # a challenger that fails the gate never meets users
            assert "so it does not go in front of users" in out.stdout and rollout is None
            assert reg.alias_version("smollm2-qa", "champion") is None
        else:
            assert f"canary: smollm2-qa/{challenger} answers 50% of the users next to the base model" in out.stdout
            per_version = next(line for line in out.stdout.splitlines() if "answers per version:" in line)
            assert "base model:" in per_version and f"smollm2-qa/{challenger}:" in per_version, per_version
            assert "comparisons (challenger against champion" in out.stdout  # the status table was printed
            assert rollout is not None and not rollout.running and rollout.champion == BASE
            if rollout.state == "stopped":  # the burst was too short to tell them apart; the gate did not pass
                assert verdict == "inconclusive" and "canary decision: none after" in out.stdout
                assert reg.alias_version("smollm2-qa", "champion") is None
            else:
                assert "canary decision (" in out.stdout and f": {rollout.state.upper()}: " in out.stdout
                promoted = challenger if rollout.state == "promoted" else None
                assert reg.alias_version("smollm2-qa", "champion") == promoted
        assert "smollm2-qa/1" in out.stdout and "adapter" in out.stdout and "rag_index" in out.stdout
        assert "blocked by injection" in out.stdout or "block by injection" in out.stdout
        assert "[EMAIL]" in out.stdout  # the PII question was redacted before the model saw it
        # the demo's keys were made up on this machine: with them alone the gateway stays on loopback
        from llmops.config import load_config
        from serving.config import ServingConfig
        from serving.engine import EngineError
        from serving.server import check_exposure

        cfg = load_config(repo_root / "configs/serving/default.yaml", ServingConfig,
                          ["host=0.0.0.0", f"auth.keys_file={tmp_path / 'data/serving/keys.json'}",
                           "auth.keys_env=LLMOPS_TEST_NO_KEYS"])
        with pytest.raises(EngineError, match="generated local ones"):
            check_exposure(cfg, insecure=False)
        # the gateway keeps running after the demo
        import httpx

        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        # a second run reuses what is prepared: the models are verified and kept
        again = subprocess.run([sys.executable, "examples/demo.py"], cwd=tmp_path,
                               env=dict(env, LLMOPS_DEMO_STAGES="1,8"), capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        assert "smollm2-135m-instruct/1" in again.stdout and "smollm2-135m-instruct/2" not in again.stdout
    finally:
        subprocess.run([sys.executable, "-m", "llmops", "serve", "stop"], cwd=tmp_path, env=env,
                       capture_output=True, timeout=120)
