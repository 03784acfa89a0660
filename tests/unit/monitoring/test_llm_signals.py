"""Drift on LLM traffic: the gateway's request-log format, lengths, guardrail actions, embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from llmops.contracts import RequestRecord, VerdictRecord
from llmops.monitoring.engine import DriftConfig
from llmops.monitoring.io import DriftInputError
from llmops.monitoring.llm import embedding_drift, request_log_drift, request_signals
from serving.gateway.requestlog import RequestLog  # the gateway's writer: what monitoring reads is what it wrote

COOKING = ["How long do I boil an egg?", "Best way to roast vegetables?", "How to make bread dough rise?",
           "What spices go with lamb?", "How do I caramelize onions?", "Tips for a crispy pizza crust?",
           "How to cook rice without sticking?", "What is a good pasta sauce recipe?"]
FINANCE = ["How do index funds work?", "What is a good savings rate?", "Should I pay off my mortgage early?",
           "How are capital gains taxed?", "What is dollar cost averaging?", "How do bonds react to rates?",
           "What is an emergency fund?", "How do I read a balance sheet?"]


@pytest.fixture(scope="module")
def embedder(embedding_model_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedding_model_dir), device="cpu")


def write_log(path, embedder, shifted: bool, n: int = 80):
    """The traffic of one gateway; ``path`` a list: of several gateways, request i written by gateway i % k."""
    rng = np.random.default_rng(0)
    logs = [RequestLog(p) for p in (path if isinstance(path, list) else [path])]
    for i in range(2 * n):
        log = logs[i % len(logs)]
        later = i >= n
        topic = FINANCE if (later and shifted) else COOKING
        text = f"{topic[rng.integers(len(topic))]} (case {rng.integers(1000)})"
        emb = embedder.encode([text], normalize_embeddings=True)[0].astype(np.float32)
        blocked = later and shifted and rng.random() < 0.4
        looped = later and shifted and rng.random() < 0.3  # a new version that loops to max_tokens
        log.write(RequestRecord(
            id=str(i), ts=1000.0 + i, endpoint="chat", key_id="k", model="smollm2", status=200,
            prompt_tokens=int(rng.normal(120 if (later and shifted) else 40, 8)),
            completion_tokens=int(rng.normal(60, 10)), latency_ms=float(rng.normal(500, 50)),
            guardrails=[VerdictRecord("input", "block", "injection", ("rule:override",))] if blocked else [],
            prompt_embedding=emb.tobytes(), finish_reason="length" if looped else "stop",
            degenerate=None if blocked else int(looped)))
    for log in logs:
        log.close()


def test_request_log_drift_detects_topic_length_and_guardrail_shift(tmp_path, embedder):
    write_log(tmp_path / "log.sqlite", embedder, shifted=True)
    result = request_log_drift(tmp_path / "log.sqlite", split_ts=1080.0, cfg=DriftConfig(drift_share=0.3))
    by = {c.column: c for c in result.columns}
    assert {c.column for c in result.columns if c.drifted} == {
        "prompt_tokens", "guardrail_input_injection", "prompt_embedding", "finish_reason", "degenerate"}
    assert by["prompt_embedding"].statistic > 0.9
    # 5 of the 11 signals moved: past a 30% share that is dataset drift, short of the default half it is not
    assert result.n_columns == 11 and result.dataset_drift is True
    assert request_log_drift(tmp_path / "log.sqlite", split_ts=1080.0).dataset_drift is False


def test_the_logs_of_several_gateways_merge_into_one_traffic(tmp_path, embedder):
    """The same requests written by one gateway, or spread over three behind a load balancer, give the
    same drift result (the logs are merged in time order)."""
    write_log(tmp_path / "one.sqlite", embedder, shifted=True)
    parts = [tmp_path / f"gw{i}.sqlite" for i in range(3)]
    write_log(parts, embedder, shifted=True)
    cfg = DriftConfig(drift_share=0.3)
    one = request_log_drift(tmp_path / "one.sqlite", split_ts=1080.0, cfg=cfg)
    merged = request_log_drift(parts, split_ts=1080.0, cfg=cfg)
    assert [(c.column, c.drifted, c.statistic, c.p_value) for c in merged.columns] == [
        (c.column, c.drifted, c.statistic, c.p_value) for c in one.columns]
    assert merged.dataset_drift is True
    assert len(request_signals(parts)) == 160 and list(request_signals(parts).ts) == sorted(request_signals(parts).ts)
    with pytest.raises(DriftInputError, match="does not exist"):
        request_signals([parts[0], tmp_path / "missing.sqlite"])


def test_request_log_quiet_without_shift(tmp_path, embedder):
    write_log(tmp_path / "log.sqlite", embedder, shifted=False)
    result = request_log_drift(tmp_path / "log.sqlite", split_ts=1080.0)
    by = {c.column: c for c in result.columns}
    assert not by["prompt_embedding"].drifted and by["prompt_embedding"].statistic < 0.7
    assert result.dataset_drift is False


def test_embedding_drift_on_random_vectors():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    assert not embedding_drift(a, b).drifted
    assert embedding_drift(a, b + 0.5).drifted


def test_bad_request_log(tmp_path):
    with pytest.raises(DriftInputError, match="does not exist"):
        request_signals(tmp_path / "none.sqlite")
    (tmp_path / "x.sqlite").write_bytes(b"not a database at all")
    with pytest.raises(DriftInputError, match="not a request log"):
        request_signals(tmp_path / "x.sqlite")


def _eval_report(path, f1s, latencies):
    import json

    samples = [{"id": str(i), "tags": [], "question": "q", "output": "o", "token_f1": f, "latency_ms": lat,
                "error": None} for i, (f, lat) in enumerate(zip(f1s, latencies, strict=True))]
    safety = [{"id": f"s{i}", "refused": 1.0, "error": None} for i in range(20)]
    path.write_text(json.dumps({"suites": {"task": {"samples": samples}, "safety": {"samples": safety}}}))
    return path


def test_eval_scores_over_versions_drift_and_cli(tmp_path):

    from llmops.monitoring.__main__ import main
    from llmops.monitoring.llm import eval_scores_drift, read_eval_scores

    rng = np.random.default_rng(0)
    a = _eval_report(tmp_path / "a.json", rng.uniform(0.4, 0.9, 200).tolist(), rng.normal(800, 50, 200).tolist())
    b = _eval_report(tmp_path / "b.json", rng.uniform(0.4, 0.9, 200).tolist(), rng.normal(800, 50, 200).tolist())
    c = _eval_report(tmp_path / "c.json", rng.uniform(0.0, 0.3, 200).tolist(), rng.normal(800, 50, 200).tolist())
    frame = read_eval_scores(a)
    assert set(frame.columns) == {"task.token_f1", "task.latency_ms", "safety.refused"} and len(frame) == 220
    same = eval_scores_drift(a, b)
    assert same.dataset_drift is False
    worse = eval_scores_drift(a, c)
    drifted = {col.column for col in worse.columns if col.drifted}
    assert drifted == {"task.token_f1"}
    assert main(["--reference-eval", str(a), "--current-eval", str(c), "--out", str(tmp_path / "r"),
                 "drift.drift_share=0.3"]) == 1
    assert (tmp_path / "r/drift_report.html").is_file()
    bad = tmp_path / "bad.json"
    bad.write_text("{}")

    with pytest.raises(DriftInputError, match="not an eval report"):
        read_eval_scores(bad)


def test_degenerate_answers_drift_between_eval_reports(tmp_path):
    import json

    from llmops.monitoring.llm import eval_scores_drift

    def report(path, loops):
        samples = [{"id": str(i), "token_f1": 0.6, "degenerate": float(i < loops), "truncated": float(i < loops),
                    "error": None} for i in range(200)]
        path.write_text(json.dumps({"suites": {"rag": {"samples": samples}}}))
        return path

    result = eval_scores_drift(report(tmp_path / "a.json", 2), report(tmp_path / "b.json", 80))
    drifted = {col.column for col in result.columns if col.drifted}
    assert {"rag.degenerate", "rag.truncated"} <= drifted and "rag.token_f1" not in drifted


def test_rows_from_before_answers_were_judged_are_missing_not_a_category(tmp_path):
    # the first half was written by a gateway that did not judge answers: after the upgrade the signals
    # appear, and that alone is no drift
    log = RequestLog(tmp_path / "log.sqlite")
    for i in range(200):
        judged = i >= 60
        log.write(RequestRecord(id=str(i), ts=1000.0 + i, endpoint="chat", model="m", status=200,
                                prompt_tokens=40 + i % 7, completion_tokens=60 + i % 5, latency_ms=500.0 + i % 11,
                                finish_reason="stop" if judged else None, degenerate=0 if judged else None))
    log.close()
    df = request_signals(tmp_path / "log.sqlite")
    assert df.degenerate[:60].isna().all() and set(df.degenerate[60:]) == {"no"}
    by = {c.column: c for c in request_log_drift(tmp_path / "log.sqlite", split_ts=1100.0).columns}
    assert not by["degenerate"].drifted and not by["finish_reason"].drifted


def write_rollout_log(path, bad: bool, n: int = 300, champion: str = "1") -> None:
    """A canary's traffic: versions ``champion`` and 2 of "qa" answer interleaved requests; with ``bad`` version 2
    loops to max_tokens on a third of them. Another model's version 2 runs alongside and must not count."""
    rng = np.random.default_rng(3)
    log = RequestLog(path)
    for i in range(n):
        version = "2" if i % 4 == 0 else champion
        loops = bad and version == "2" and rng.random() < 0.35
        log.write(RequestRecord(
            id=f"q{i}", ts=1000.0 + i, endpoint="chat", key_id="k", model="qa", registry_version=version, status=200,
            prompt_tokens=int(rng.normal(40, 8)), completion_tokens=256 if loops else int(rng.normal(60, 10)),
            latency_ms=float(rng.normal(500, 50)), finish_reason="length" if loops else "stop",
            degenerate=int(loops), shadow=1 if i % 8 == 0 else None))
        log.write(RequestRecord(id=f"o{i}", ts=1000.5 + i, endpoint="chat", model="other", registry_version="2",
                                status=200, prompt_tokens=400, completion_tokens=5, latency_ms=9000.0,
                                finish_reason="length", degenerate=1))
    log.close()


def test_by_version_compares_the_traffic_of_two_versions_of_one_model(tmp_path):
    from llmops.monitoring.__main__ import main
    from llmops.monitoring.llm import version_drift

    write_rollout_log(tmp_path / "bad.sqlite", bad=True)
    result = version_drift(tmp_path / "bad.sqlite", "qa")
    drifted = {c.column for c in result.columns if c.drifted}
    assert {"completion_tokens", "finish_reason", "degenerate"} <= drifted
    assert "prompt_tokens" not in drifted and "model" not in {c.column for c in result.columns}
    write_rollout_log(tmp_path / "good.sqlite", bad=False)
    quiet = version_drift(tmp_path / "good.sqlite", "qa")  # one column may move by chance at p < 0.05; not most
    assert quiet.dataset_drift is False and not {"degenerate", "finish_reason"} & {
        c.column for c in quiet.columns if c.drifted}
    with pytest.raises(DriftInputError, match="1 registry version"):
        version_drift(tmp_path / "good.sqlite", "other")
    with pytest.raises(DriftInputError, match="version 7"):
        version_drift(tmp_path / "good.sqlite", "qa", versions=["1", "7"])
    out = tmp_path / "report"
    code = main(["--request-log", str(tmp_path / "bad.sqlite"), "--by-version", "qa", "--versions", "1,2",
                 "--out", str(out), "drift.drift_share=0.3"])
    assert code == 1 and (out / "drift_report.html").is_file()


def test_by_version_takes_a_first_releases_base_model_arm_as_the_reference(tmp_path):
    """A first release's rollout logs the base model's answers as version "base": by default it is the reference
    and the adapter the current traffic, whatever the version numbers."""
    from llmops.monitoring.llm import version_drift

    write_rollout_log(tmp_path / "first.sqlite", bad=True, champion="base")
    result = version_drift(tmp_path / "first.sqlite", "qa")
    assert {"completion_tokens", "degenerate"} <= {c.column for c in result.columns if c.drifted}
    assert result.reference_rows > result.current_rows  # base answered three quarters of the requests
