"""Eval against real engines: judged ragas metrics with structured output on vLLM, failure accounting,
and a registry version that the eval serves itself (gateway + vLLM subprocess), with baselines."""

from __future__ import annotations

import json
import socket
import threading

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_ragas_judge_on_vllm_with_structured_output(vllm_base):
    import asyncio

    from eval.metrics.judged import StructuredJudge, judge_sample, make_metrics

    judge = StructuredJudge(base_url=f"{vllm_base}/v1", model="smollm2", max_tokens=256)
    metrics = make_metrics(["faithfulness", "answer_relevancy", "context_precision"], judge)
    scores = asyncio.run(judge_sample(metrics, "How long is the Orvane bridge?",
                                      "The Orvane bridge is 412 metres long.",
                                      ["The Orvane bridge is 412 metres long and opened in 1931."],
                                      "It is 412 metres long.", timeout_s=180))
    assert set(scores) == {"faithfulness", "answer_relevancy", "context_precision"}
    assert judge.calls >= 3  # every metric really asked the judge
    # with the schema enforced, answers parse: a 135M judge may score badly, but scores are numbers in [0, 1]
    numeric = [v for v in scores.values() if v is not None]
    assert numeric and all(0.0 <= v <= 1.0 for v in numeric)


def test_a_judge_without_structured_output_returns_garbage_that_is_counted_as_failed(vllm_base):
    import asyncio

    from eval.metrics.judged import StructuredJudge, judge_sample, make_metrics

    # 6 tokens of free text cannot be ragas' JSON: every judgement fails, and is reported as such
    judge = StructuredJudge(base_url=f"{vllm_base}/v1", model="smollm2", max_tokens=6, structured=False)
    scores = asyncio.run(judge_sample(make_metrics(["faithfulness", "context_precision"], judge),
                                      "How long is it?", "It is 412 metres long.", ["It is 412 metres long."],
                                      "412 metres", timeout_s=120))
    assert scores == {"faithfulness": None, "context_precision": None} and judge.calls >= 2


def test_endpoint_errors_are_counted_per_sample_and_the_report_is_still_written(vllm_base, tmp_path):
    from eval.run import EvalConfig, run

    data = write_rows(tmp_path / "qa.jsonl", [
        {"id": "ok1", "question": "What is the capital of France?", "reference": "Paris"},
        {"id": "huge", "question": "word " * 5000, "reference": "x"},  # longer than the context: a real 400
        {"id": "ok2", "question": "What is 2 plus 2?", "reference": "4"},
    ])
    cfg = EvalConfig.model_validate({
        "target": {"model": None, "base_url": f"{vllm_base}/v1", "model_name": "smollm2"},
        "suites": [{"name": "qa", "dataset": data, "kind": "qa"}],
        "requests": {"max_tokens": 16, "retries": 0}, "report_dir": str(tmp_path / "reports"),
        "log_to_registry": False})
    result = run(cfg)
    qa = result.suites["qa"]
    assert qa.failures == {"samples": 3, "failed": 1, "blocked": 0}
    failed = next(p for p in qa.per_sample if p["id"] == "huge")
    assert failed["error"].startswith("HTTP 400") and "token_f1" not in failed
    assert qa.metrics["error_rate"] == pytest.approx(1 / 3) and qa.metrics["token_f1"] is not None
    assert json.loads(result.report_paths["json"].read_text())["suites"]["qa"]["failures"]["failed"] == 1


def test_a_silent_endpoint_times_out_per_sample(tmp_path):
    from eval.run import EvalConfig, run

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns = []
    stop = threading.Event()

    def accept():  # accepts connections and never answers
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        data = write_rows(tmp_path / "qa.jsonl", [{"question": f"q{i}", "reference": "a"} for i in range(3)])
        cfg = EvalConfig.model_validate({
            "target": {"model": None, "base_url": f"http://127.0.0.1:{srv.getsockname()[1]}/v1", "model_name": "m"},
            "suites": [{"name": "qa", "dataset": data, "kind": "qa"}],
            "requests": {"timeout_s": 1, "retries": 0}, "report_dir": str(tmp_path / "r"), "log_to_registry": False})
        result = run(cfg)
    finally:
        stop.set()
        t.join()
        srv.close()
    qa = result.suites["qa"]
    assert qa.failures["failed"] == 3 and all("timeout" in p["error"].lower() for p in qa.per_sample)
    assert result.report_paths["html"].is_file()


def test_registry_version_is_served_for_the_run_logged_and_compared_with_its_baseline(
        tiny_model_dir, base_model_dir, vllm_base, tmp_path, registry, repo_root, monkeypatch):
    """The champion is served by the eval itself (gateway + vLLM subprocess); the challenger, a newer version
    that a running endpoint already serves, is evaluated there (``registry_ref`` names it), as a deployment's
    eval does. Both are logged to their registry versions, and the challenger is compared with the champion."""
    from eval.run import EvalConfig, run
    from llmops.registry import Lineage

    monkeypatch.chdir(repo_root)  # the serving template names configs/guardrails/default.yaml
    v1 = registry.register("qa-base", tiny_model_dir, kind="base_model", lineage=Lineage(), aliases=["champion"])
    v2 = registry.register("qa-base", base_model_dir, kind="base_model", lineage=Lineage(), aliases=["challenger"])
    data = tmp_path / "qa.jsonl"
    write_rows(data, [{"id": str(i), "question": f"Say the number {i}.", "reference": str(i), "tags": ["n"]}
                      for i in range(4)])
    serving = tmp_path / "serving.yaml"
    serving.write_text((repo_root / "configs/serving/default.yaml").read_text()
                       .replace("kv_cache_gb: 2", "kv_cache_gb: 1").replace("embeddings:\n  enabled: true",
                                                                           "embeddings:\n  enabled: false"))
    raw = {"target": {"model": "qa-base@champion", "serving_config": str(serving)},
           "suites": [{"name": "qa", "dataset": str(data), "kind": "qa"}],
           "requests": {"max_tokens": 4}, "report_dir": str(tmp_path / "reports"),
           "gate": {"thresholds": {"qa.error_rate": 0.0}, "compare": ["qa.token_f1", "qa.error_rate"]}}
    first = run(EvalConfig.model_validate(raw), registry=registry)
    assert first.model_ref == v1.ref and first.suites["qa"].failures["failed"] == 0
    assert first.gate.passed and "the evaluated version is the baseline" in " ".join(first.gate.notes)
    runs = registry.runs_for("qa-base", 1)
    assert runs and runs[0].data.tags["llmops.eval_name"] == "default"
    inputs = runs[0].inputs.dataset_inputs
    assert [d.dataset.name for d in inputs] == ["qa"]
    assert json.loads(inputs[0].dataset.profile)["sha256"] == first.suites["qa"].dataset.sha256
    assert runs[0].data.params["dataset_sha256.qa"] == first.suites["qa"].dataset.sha256

    # the challenger, on an edited dataset: the comparison with the champion is refused, not silent
    write_rows(data, [{"id": str(i), "question": f"Say the number {i}!", "reference": str(i)} for i in range(4)])
    raw["target"] = {"model": None, "base_url": f"{vllm_base}/v1", "model_name": "smollm2",
                     "registry_ref": "qa-base@challenger"}
    second = run(EvalConfig.model_validate(raw), registry=registry)
    assert second.model_ref == v2.ref and second.baseline["ref"] == v1.ref
    assert second.suites["qa"].failures["failed"] == 0
    assert registry.runs_for("qa-base", 2)  # logged to the version the endpoint serves
    assert second.baseline["dataset_changed"] == ["qa"] and not second.gate.passed
    assert "dataset changed since the baseline" in second.report_paths["md"].read_text()


class _StubEngine:
    """An OpenAI-compatible chat endpoint on loopback that answers "The number is N." to "What is the
    number N?", or, looping, repeats the number until max_tokens (finish_reason "length")."""

    def __init__(self, loop_rows: int = 0):
        import http.server
        import re

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                question = body["messages"][-1]["content"]
                n = int(re.search(r"number (\d+)", question).group(1))
                if n < outer.loop_rows:
                    text, finish = "The number is " + f"{n}:{n}0:" * 40, "length"
                else:
                    text, finish = f"The number is {n}.", "stop"
                data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                "finish_reason": finish}],
                                   "usage": {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())

        self.loop_rows = loop_rows
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_the_paired_gate_passes_a_twin_fails_a_looping_challenger_and_cannot_decide_on_a_tiny_set(
        tiny_model_dir, tmp_path, registry):
    from eval.run import EvalConfig, run
    from llmops.registry import Lineage

    for alias in ("champion", "challenger"):
        registry.register("stub", tiny_model_dir, kind="base_model", lineage=Lineage(), aliases=[alias])
    data = write_rows(tmp_path / "qa.jsonl", [{"id": f"r{i}", "question": f"What is the number {i}?",
                                               "reference": f"The number is {i}."} for i in range(30)])

    def evaluate(base_url, ref, name="default", **gate):
        return run(EvalConfig.model_validate({
            "name": name, "target": {"model": None, "base_url": base_url, "model_name": "m", "registry_ref": ref},
            "suites": [{"name": "qa", "dataset": data, "kind": "qa", **gate.pop("suite", {})}],
            "requests": {"max_tokens": 8, "retries": 0}, "report_dir": str(tmp_path / "reports"),
            "gate": {"thresholds": {"qa.token_f1": 0.3}, "compare": ["qa.token_f1"], "baseline": "stub/1",
                     **gate}}), registry=registry)

    with _StubEngine() as good:
        base = evaluate(good, "stub/1")
        assert base.gate.outcome == "passed" and "the evaluated version is the baseline" in base.gate.notes[0]
        twin = evaluate(good, "stub/2")
    assert twin.gate.outcome == "passed", twin.gate.failures + twin.gate.inconclusive
    paired = {c["metric"]: c for c in twin.gate.checks if c["kind"] == "paired"}
    assert set(paired) == {"qa.token_f1", "qa.degenerate_rate", "qa.truncated_rate", "qa.error_rate"}
    assert paired["qa.token_f1"]["n"] == 30 and paired["qa.token_f1"]["diff"] == 0
    # 12 of 30 answers loop until max_tokens: the degenerate-output rates catch it by name
    with _StubEngine(loop_rows=12) as looping:
        bad = evaluate(looping, "stub/2")
    assert bad.gate.outcome == "failed" and bad.suites["qa"].metrics["degenerate_rate"] == pytest.approx(0.4)
    assert any(f.startswith("qa.degenerate_rate: significantly worse") for f in bad.gate.failures)
    assert "Gate: FAILED" in bad.report_paths["md"].read_text()
    # the JSON report keeps the verdict for `llmops eval gate`
    assert json.loads(bad.report_paths["json"].read_text())["gate"]["outcome"] == "failed"
    # five rows (a smaller eval of both versions) cannot show non-inferiority: inconclusive
    with _StubEngine() as good:
        evaluate(good, "stub/1", name="tiny", suite={"limit": 5})
        tiny = evaluate(good, "stub/2", name="tiny", min_samples=20, suite={"limit": 5})
    assert tiny.gate.outcome == "inconclusive" and not tiny.gate.passed
    assert "fewer than min_samples=20" in " ".join(tiny.gate.inconclusive)
    assert "Gate: INCONCLUSIVE" in tiny.report_paths["md"].read_text()
