"""LLM traffic signals for the drift engine, read from the gateway's request log.

The request log is the SQLite table of :mod:`llmops.contracts` (``RequestRecord``; the gateway
writes it, :func:`llmops.contracts.read_request_log` reads it). From it come per-request
signals: prompt and completion tokens, latency, TTFT, status class, model, how answers ended
(finish_reason) and whether they were degenerate (loops, empty, wrong script), and the guardrail
action per rail; plus prompt-embedding drift by a domain classifier (can a model tell reference
prompts from current ones?)::

    from llmops.monitoring.llm import request_log_drift
    result = request_log_drift("data/requestlog/requests.sqlite", split_ts=time.time() - 86400)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from llmops.contracts import RequestLogError, read_request_log
from llmops.monitoring.engine import ColumnResult, DriftConfig, DriftResult, detect_drift
from llmops.monitoring.io import DriftInputError

SIGNALS = ["prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms", "status_class", "model", "endpoint",
           "finish_reason", "degenerate"]


def request_signals(path: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """Signals per request, with ``ts`` and (when logged) ``prompt_embedding``. Several logs (one per gateway
    behind a load balancer) are merged into one traffic in time order.

    Raises:
        DriftInputError: no such file or no ``requests`` table.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths:
        raise DriftInputError("No request log given.")
    try:
        frames = [read_request_log(p) for p in paths]
    except RequestLogError as e:
        raise DriftInputError(str(e)) from e
    raw = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    raw = raw.sort_values("ts", kind="stable").reset_index(drop=True)
    df = pd.DataFrame({
        "ts": raw["ts"].astype(float),
        "prompt_tokens": pd.to_numeric(raw["prompt_tokens"], errors="coerce"),
        "completion_tokens": pd.to_numeric(raw["completion_tokens"], errors="coerce"),
        "latency_ms": pd.to_numeric(raw["latency_ms"], errors="coerce"),
        "ttft_ms": pd.to_numeric(raw["ttft_ms"], errors="coerce"),
        "status_class": (raw["status"].astype(int) // 100).astype(str) + "xx",
        "model": raw["model"].fillna("unknown").astype(str),
        "endpoint": raw["endpoint"].astype(str),
        # which registry version answered (not a signal: what --by-version splits on)
        "registry_version": raw["registry_version"].astype(object).where(raw["registry_version"].notna(), None),
        # a rollout's shadow answers (never returned): part of a version's traffic, not of what users got
        "shadow": raw["shadow"].fillna(0).astype(int) == 1,
    })
    # how answers ended and whether they looped. Rows written before the gateway judged answers have
    # neither: they are missing values (a fall in the missing share is no drift), not a category
    judged = raw["finish_reason"].notna() | raw["degenerate"].notna()
    if judged.any():
        since = raw.loc[judged, "ts"].astype(float).min()
        before = df["ts"] < since
        df["finish_reason"] = raw["finish_reason"].fillna("none").astype(str).where(~before)
        df["degenerate"] = pd.Series([("yes" if int(v) else "no") if pd.notna(v) else "not judged"
                                      for v in raw["degenerate"]], index=df.index).where(~before)
    rails: dict[str, list[str]] = {}
    for i, records in enumerate(raw["guardrails"]):
        for v in records:
            rails.setdefault(f"guardrail_{v.stage}_{v.rail}", ["allow"] * len(raw))[i] = v.action
    for name, values in rails.items():
        df[name] = values
    if raw["prompt_embedding"].notna().any():
        df["prompt_embedding"] = list(raw["prompt_embedding"])
    return df


def embedding_drift(reference: np.ndarray, current: np.ndarray, threshold: float = 0.55,
                    seed: int = 0) -> ColumnResult:
    """Domain-classifier drift: ROC-AUC of a logistic regression telling current from reference
    embeddings (cross-validated). 0.5 = indistinguishable; drift from ``threshold`` up."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    n = min(len(reference), len(current), 5000)
    rng = np.random.default_rng(seed)
    ref = reference[rng.choice(len(reference), n, replace=False)]
    cur = current[rng.choice(len(current), n, replace=False)]
    X = np.vstack([ref, cur])
    y = np.r_[np.zeros(n), np.ones(n)]
    folds = StratifiedKFold(min(5, n), shuffle=True, random_state=seed)
    proba = cross_val_predict(LogisticRegression(max_iter=1000, C=1.0), X, y, cv=folds, method="predict_proba")
    auc = float(roc_auc_score(y, proba[:, 1]))
    drifted = auc >= threshold
    return ColumnResult("prompt_embedding", "embedding", "domain_classifier", auc, None, threshold, drifted,
                        "prompts moved to other topics" if drifted else "no drift", "exact", 0.0, 0.0)


def request_log_drift(path: str | Path | Sequence[str | Path], split_ts: float, cfg: DriftConfig | None = None,
                      embedding_threshold: float = 0.55) -> DriftResult:
    """Drift of requests at or after ``split_ts`` against those before it.

    Raises:
        DriftInputError: unreadable log.
    """
    df = request_signals(path)
    df = df[~df["shadow"]]  # users' traffic only: a shadow rollout is no drift
    ref, cur = df[df.ts < split_ts], df[df.ts >= split_ts]
    columns = [c for c in df.columns if c in SIGNALS or c.startswith("guardrail_")]
    base = cfg or DriftConfig()
    result = detect_drift(ref[columns].reset_index(drop=True), cur[columns].reset_index(drop=True),
                          base.model_copy(update={"columns": columns}))
    if "prompt_embedding" in df:
        r = [e for e in ref["prompt_embedding"] if e is not None]
        c = [e for e in cur["prompt_embedding"] if e is not None]
        if len(r) >= 10 and len(c) >= 10:
            col = embedding_drift(np.vstack(r), np.vstack(c), embedding_threshold)
            result.columns.append(col)
            result.n_columns += 1
            result.n_drifted += int(col.drifted)
            result.share_drifted = round(result.n_drifted / result.n_columns, 6)
            if result.dataset_drift is not None:
                result.dataset_drift = result.share_drifted >= result.drift_share
    return result


def version_drift(path: str | Path | Sequence[str | Path], model: str, versions: Sequence[str] | None = None,
                  since: float | None = None, cfg: DriftConfig | None = None) -> DriftResult:
    """The traffic of one registry version of ``model`` against another's (a rollout's champion and challenger,
    shadow answers included): the same signals as :func:`request_log_drift`, split by the version that answered
    instead of by time. ``versions``: (reference, current); by default the two highest versions in the log.

    Raises:
        DriftInputError: unreadable log, or fewer than two versions of ``model`` in it.
    """
    df = request_signals(path)
    df = df[(df["model"] == model) & df["registry_version"].notna()]
    if since is not None:
        df = df[df["ts"] >= since]
    # numbers in order; "base" (a first release's base-model arm) before them: the reference by default
    present = sorted({str(v) for v in df["registry_version"]}, key=lambda v: (v.isdigit(), len(v), v))
    if versions is None:
        if len(present) < 2:
            raise DriftInputError(f"The request log has {len(present)} registry version(s) of {model!r} "
                                  f"({', '.join(present) or 'none'}): --by-version compares two.")
        versions = present[-2:]
    missing = [v for v in versions if v not in present]
    if missing:
        raise DriftInputError(f"No requests of {model!r} version {', '.join(missing)} in the log (it has "
                              f"{', '.join(present) or 'none'}).")
    ref = df[df["registry_version"].astype(str) == str(versions[0])]
    cur = df[df["registry_version"].astype(str) == str(versions[1])]
    columns = [c for c in df.columns if (c in SIGNALS or c.startswith("guardrail_")) and c != "model"]
    base = cfg or DriftConfig()
    return detect_drift(ref[columns].reset_index(drop=True), cur[columns].reset_index(drop=True),
                        base.model_copy(update={"columns": columns}))


# Per-sample scores of an eval report that are tracked across versions.
EVAL_SCORES = ("token_f1", "rouge_l", "exact_match", "citation_precision", "mrr", "context_recall", "refused",
               "redacted", "false_refusal", "abstained", "latency_ms",
               # degenerate output (llmops.degenerate): loops, empty, cut at max_tokens, wrong script
               "repetitive", "empty", "truncated", "charset_mismatch", "degenerate")


def read_eval_scores(path: str | Path) -> pd.DataFrame:
    """Per-sample scores of an ``eval_report.json`` as one frame, columns ``<suite>.<score>``.

    Raises:
        DriftInputError: missing or malformed report.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        suites = data["suites"]
    except (OSError, ValueError, KeyError) as e:
        raise DriftInputError(f"{p} is not an eval report (eval_report.json from `llmops eval run`): {e}") from e
    frames = []
    for suite, body in sorted(suites.items()):
        rows = []
        for s in body.get("samples", []):
            rows.append({f"{suite}.{k}": v for k, v in s.items() if (k in EVAL_SCORES or k.startswith(("hit_at_",
                         "judge_"))) and isinstance(v, int | float) and not isinstance(v, bool)})
        if rows:
            frames.append(pd.DataFrame(rows))
    if not frames:
        raise DriftInputError(f"{p} holds no per-sample scores.")
    return pd.concat(frames, ignore_index=True)


def eval_scores_drift(reference: str | Path, current: str | Path, cfg: DriftConfig | None = None) -> DriftResult:
    """Drift of per-sample eval scores between two eval reports (e.g. the champion and a new version,
    or the same version evaluated last week and today)."""
    ref, cur = read_eval_scores(reference), read_eval_scores(current)
    columns = sorted(set(ref.columns) | set(cur.columns))
    base = cfg or DriftConfig()
    return detect_drift(ref.reindex(columns=columns), cur.reindex(columns=columns),
                        base.model_copy(update={"columns": columns}))
