"""The drift job: files in, HTML + JSON report out, MLflow run, optional webhook and retrain.

Example::

    from llmops.monitoring.job import DriftJobConfig, run
    result = run(DriftJobConfig(reference="ref.parquet", current="cur.csv", out="reports/drift"))
    print(result.drift.dataset_drift, result.html)
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from llmops.config import StrictModel
from llmops.errors import ConfigError
from llmops.monitoring.engine import DriftConfig, DriftResult, detect_drift
from llmops.monitoring.io import chunk_reader
from llmops.monitoring.report import write_report

log = logging.getLogger(__name__)


class DriftJobConfig(StrictModel):
    """A drift check between two tabular files (CSV or Parquet)."""

    reference: str | None = Field(None, description="Reference batch (CSV/Parquet); --reference.")
    current: str | None = Field(None, description="Current batch (CSV/Parquet); --current.")
    out: str = Field("reports/drift", description="Folder for drift_report.html / .json; --out.")
    title: str = Field("Drift report", description="Report heading.")
    reference_eval: str | None = Field(None, description="Reference eval_report.json: per-sample eval scores "
                                       "(with current_eval) instead of reference/current tables.")
    current_eval: str | None = Field(None, description="Current eval_report.json (see reference_eval).")
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Tests and thresholds.")
    request_log: str | list[str] | None = Field(
        None, description="Gateway request log (SQLite), or a list of them (one per gateway: merged in time "
        "order); replaces reference/current: requests before `split` are the reference, the rest current."
    )
    split: str | None = Field(
        None, description="Split time for request_log: ISO time (2026-11-25T12:00) or '-24h' (hours ago). With "
        "by_version: only requests from then on (default: the whole log)."
    )
    by_version: str | None = Field(
        None, description="With request_log: compare the traffic of two registry versions of this public model "
        "(a rollout's champion and challenger) instead of before/after `split`; --by-version MODEL.")
    versions: list[str] | None = Field(
        None, description="With by_version: the (reference, current) versions; default the two highest in the log.")
    model: str | None = Field(
        None, description="Registry version monitored (name@alias or name/version); the report "
        "is logged as an MLflow run linked to it."
    )
    webhook: str | None = Field(None, description="URL that receives a JSON summary on drift.")
    on_drift: str | None = Field(
        None, description="Command run when drift is detected (e.g. 'make train-classic')."
    )


@dataclass(frozen=True)
class DriftJobResult:
    drift: DriftResult
    html: Path
    json: Path
    run_id: str | None
    retrain_exit_code: int | None

    @property
    def exit_code(self) -> int:
        """0 no drift, 1 drift, 2 invalid input (the CLI contract)."""
        if self.drift.dataset_drift is None:
            return 2
        return 1 if self.drift.dataset_drift else 0


def run(cfg: DriftJobConfig) -> DriftJobResult:
    """Compare ``cfg.current`` with ``cfg.reference`` and write the report.

    Raises:
        ConfigError: reference or current not given.
        DriftInputError: a file that is missing or unreadable.
    """
    if cfg.request_log and cfg.by_version:
        from llmops.monitoring.llm import version_drift

        if cfg.versions is not None and len(cfg.versions) != 2:
            raise ConfigError("versions takes two registry versions: reference,current (e.g. --versions 3,4).")
        result = version_drift(cfg.request_log, cfg.by_version, cfg.versions,
                               parse_split(cfg.split) if cfg.split else None, cfg.drift)
    elif cfg.by_version:
        raise ConfigError("--by-version reads the gateway's request log: pass --request-log too.")
    elif cfg.request_log:
        from llmops.monitoring.llm import request_log_drift

        result = request_log_drift(cfg.request_log, parse_split(cfg.split or "-24h"), cfg.drift)
    elif cfg.reference_eval or cfg.current_eval:
        from llmops.monitoring.llm import eval_scores_drift

        if not (cfg.reference_eval and cfg.current_eval):
            raise ConfigError("Pass both --reference-eval and --current-eval (eval_report.json files).")
        result = eval_scores_drift(cfg.reference_eval, cfg.current_eval, cfg.drift)
    else:
        missing = [k for k in ("reference", "current") if not getattr(cfg, k)]
        if missing:
            raise ConfigError(f"Missing {' and '.join(missing)}: pass --{missing[0]} FILE (or --request-log).")
        ref = chunk_reader(cfg.reference, cfg.drift.chunk_rows)
        cur = chunk_reader(cfg.current, cfg.drift.chunk_rows)
        result = detect_drift(ref, cur, cfg.drift)
    html_path, json_path = write_report(result, cfg.out, cfg.title)
    log.info("drift report: %s", html_path)

    run_id = None
    if cfg.model:
        from llmops.registry import Registry

        run_id = Registry().log_run(
            "drift-report", model_ref=cfg.model, artifacts=[html_path, json_path],
            params={"reference": cfg.reference, "current": cfg.current, "request_log": cfg.request_log},
            metrics={"share_drifted": result.share_drifted, "n_drifted": result.n_drifted,
                     "dataset_drift": float(bool(result.dataset_drift))},
            tags={"llmops.job": "drift"},
        )
    retrain_code = None
    if result.dataset_drift:
        if cfg.webhook:
            _post(cfg.webhook, result, html_path)
        if cfg.on_drift:
            log.warning("drift detected: running %s", cfg.on_drift)
            retrain_code = subprocess.run(shlex.split(cfg.on_drift), check=False).returncode
    return DriftJobResult(result, html_path, json_path, run_id, retrain_code)


def parse_split(value: str) -> float:
    """'-24h' (hours before now) or an ISO time -> a Unix timestamp. Raises ConfigError."""
    import datetime as dt
    import time

    v = value.strip()
    try:
        if v.startswith("-") and v.endswith("h"):
            return time.time() - float(v[1:-1]) * 3600
        when = dt.datetime.fromisoformat(v)
        return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()
    except ValueError as e:
        raise ConfigError(f"split {value!r} is neither '-<hours>h' nor an ISO time (2026-11-25T12:00).") from e


def _post(url: str, result: DriftResult, html_path: Path) -> None:
    import httpx

    summary = {
        "dataset_drift": result.dataset_drift,
        "share_drifted": result.share_drifted,
        "drifted_columns": [c.column for c in result.columns if c.drifted],
        "report": str(html_path.resolve()),
    }
    try:
        httpx.post(url, json=summary, timeout=10).raise_for_status()
    except httpx.HTTPError as e:  # an alert that fails must not hide the report
        log.warning("webhook %s failed: %s", url, e)
