"""Batch prediction with a registered classic model: CSV/Parquet in, predictions out.

Every output row names the model version that produced it::

    from classic_ml.predict import PredictConfig, run
    run(PredictConfig(model="credit-risk@champion", input="batch.csv", output="scored.parquet"))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from classic_ml.data import DataError, read_table, write_table
from llmops.config import StrictModel
from llmops.contracts import RegistryAPI

log = logging.getLogger(__name__)


class PredictConfig(StrictModel):
    """A batch scoring run."""

    model: str = Field("credit-risk@champion", description="Registry reference of the model.")
    input: str = Field(description="CSV/Parquet file to score.")
    output: str = Field(description="CSV/Parquet file to write (input columns + predictions).")


@dataclass(frozen=True)
class PredictResult:
    output: Path
    model_ref: str
    rows: int


def run(cfg: PredictConfig, registry: RegistryAPI | None = None) -> PredictResult:
    """Score ``cfg.input`` with ``cfg.model``.

    Raises:
        DataError: unreadable input or missing feature columns. RegistryError: unknown model.
    """
    from llmops.registry import Registry, load_sklearn_model

    registry = registry or Registry()
    version = registry.resolve(cfg.model)
    model, columns = load_sklearn_model(version.local_path)
    df = read_table(cfg.input)
    if df.empty:
        raise DataError(f"{cfg.input} has no rows to score.")
    columns = columns or list(df.columns)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{cfg.input} lacks the model's input columns: {', '.join(missing)}.")
    X = df[columns]
    out = df.copy()
    out["prediction"] = model.predict(X)
    if hasattr(model, "predict_proba"):
        proba = model.predict_proba(X)
        out["probability"] = proba[:, 1] if proba.shape[1] == 2 else proba.max(axis=1)
    out["model_name"] = version.name
    out["model_version"] = version.version
    path = write_table(out, cfg.output)
    log.info("scored %d rows with %s -> %s", len(out), version.ref, path)
    return PredictResult(path, version.ref, len(out))
