"""`llmops eval gate --report ... --promote`: the alias moves (audited) only when the report's gate passed."""

from __future__ import annotations

import json

from eval.__main__ import main


def report(path, model_ref: str, passed: bool, outcome: bool = True):
    gate = {"passed": passed, "failures": [] if passed else ["task.token_f1 = 0.1000 is below 0.3"],
            "checks": [{"metric": "task.token_f1", "value": 0.5 if passed else 0.1, "ok": passed}], "notes": []}
    if outcome:
        gate["outcome"] = "passed" if passed else "failed"
    path.write_text(json.dumps({"model_ref": model_ref, "gate": gate}))
    return str(path)


def test_promote_moves_the_alias_only_on_a_passed_gate(registry, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # `llmops eval` opens the default registry: ./mlruns, the fixture's store
    weights = tmp_path / "adapter.bin"
    weights.write_bytes(b"weights")
    for _ in range(2):
        registry.register("qa", weights, kind="adapter")
    registry.set_alias("qa", "champion", 1, reason="first")

    assert main(["gate", "--report", report(tmp_path / "fail.json", "qa/2", False), "--promote"]) == 1
    assert registry.alias_version("qa", "champion") == 1
    assert "not promoted" in capsys.readouterr().out

    # a report written before paired comparisons "passed" on means alone: inconclusive now, exit 3
    assert main(["gate", "--report", report(tmp_path / "old.json", "qa/2", True, outcome=False), "--promote"]) == 3
    assert registry.alias_version("qa", "champion") == 1
    assert "predates paired comparisons" in capsys.readouterr().out

    assert main(["gate", "--report", report(tmp_path / "pass.json", "qa/2", True), "--promote"]) == 0
    assert registry.alias_version("qa", "champion") == 2
    move = registry.audit("qa")[-1]
    assert (move.from_version, move.to_version) == (1, 2) and "token_f1=0.5000" in move.reason
    assert "promoted qa/2" in capsys.readouterr().out

    # a report of something that is not a registry version has nothing to promote
    assert main(["gate", "--report", report(tmp_path / "none.json", None, True), "--promote"]) == 1
    assert registry.alias_version("qa", "champion") == 2
