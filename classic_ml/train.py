"""Train a tabular model: preprocessing Pipeline, cross-validated metrics, MLflow registration.

The registered version holds the MLflow model (signature, input example), the reference data
profile and a reference sample that drift monitoring compares new batches against::

    from classic_ml.train import ClassicTrainConfig, run
    result = run(ClassicTrainConfig())
    print(result.version.ref, result.metrics["roc_auc"])
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from classic_ml.data import DataError, load_table, write_table
from llmops.config import StrictModel, config_hash
from llmops.contracts import RegistryAPI

log = logging.getLogger(__name__)


class ClassicDataConfig(StrictModel):
    """Where the training table comes from and which columns matter."""

    source: str = Field(
        "generate:credit_risk",
        description="generate:credit_risk, sklearn:<dataset> (e.g. sklearn:breast_cancer) or a "
        "CSV/Parquet path.",
    )
    rows: int = Field(5000, ge=50, description="Rows to generate (generate: sources only).")
    seed: int = Field(0, description="Seed for generation, CV folds and the model.")
    target: str = Field("default", description="Label column.")
    features: list[str] | None = Field(None, description="Feature columns (None: all but target/drop).")
    drop: list[str] = Field(default_factory=list, description="Columns never used (ids, timestamps).")


class ModelConfig(StrictModel):
    """The estimator at the end of the pipeline."""

    type: Literal["logistic_regression", "random_forest", "hist_gradient_boosting"] = Field(
        "hist_gradient_boosting", description="scikit-learn estimator."
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Estimator keyword arguments.")


class ClassicTrainConfig(StrictModel):
    """A classic training run that ends as a registered model version."""

    data: ClassicDataConfig = Field(default_factory=ClassicDataConfig, description="Training data.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Estimator.")
    cv_folds: int = Field(5, ge=2, le=20, description="Stratified cross-validation folds.")
    registry_name: str = Field("credit-risk", description="Registered model name.")
    alias: str | None = Field("champion", description="Alias set on the new version (None: none).")
    reference_out: str | None = Field(
        "data/classic/reference.parquet",
        description="Where to also write the training table (drift reference); None: don't.",
    )
    reference_sample_rows: int = Field(
        50_000, ge=100, description="Rows of the reference sample stored with the version."
    )


@dataclass(frozen=True)
class TrainResult:
    version: Any  # llmops.registry.ModelVersion
    metrics: dict[str, float]
    features: list[str]


def dataset_sha256(df: pd.DataFrame) -> str:
    """Content hash of a table (values and column names, not the index)."""
    h = hashlib.sha256(",".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()


def split_columns(df: pd.DataFrame, features: list[str]) -> tuple[list[str], list[str]]:
    """(numeric, categorical) feature names; bools and strings are categorical."""
    numeric = [c for c in features
               if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
    return numeric, [c for c in features if c not in numeric]


def build_pipeline(df: pd.DataFrame, features: list[str], cfg: ModelConfig, seed: int):
    """Imputation, scaling and one-hot encoding, then the estimator."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric, categorical = split_columns(df, features)
    pre = ColumnTransformer([
        ("num", Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                          ("scale", StandardScaler())]), numeric),
        ("cat", Pipeline([("impute", SimpleImputer(strategy="most_frequent", keep_empty_features=True)),
                          ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False))]),
         categorical),
    ])
    estimators = {
        "logistic_regression": lambda: LogisticRegression(max_iter=2000, **cfg.params),
        "random_forest": lambda: RandomForestClassifier(random_state=seed, **cfg.params),
        "hist_gradient_boosting": lambda: HistGradientBoostingClassifier(random_state=seed, **cfg.params),
    }
    try:
        estimator = estimators[cfg.type]()
    except TypeError as e:
        raise DataError(f"model.params are not valid for {cfg.type}: {e}") from e
    return Pipeline([("preprocess", pre), ("model", estimator)])


def profile(df: pd.DataFrame) -> dict[str, Any]:
    """A reference data profile: per column dtype, missing share, summary or category shares."""
    out: dict[str, Any] = {"rows": len(df), "columns": {}}
    for col in df.columns:
        s = df[col]
        entry: dict[str, Any] = {"dtype": str(s.dtype), "missing_share": float(s.isna().mean())}
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            q = s.quantile([0.01, 0.25, 0.5, 0.75, 0.99]).tolist()
            entry.update(mean=float(s.mean()), std=float(s.std()), min=float(s.min()),
                         max=float(s.max()), quantiles=dict(zip(["p1", "p25", "p50", "p75", "p99"], q,
                                                                strict=True)))
        else:
            entry["shares"] = {str(k): float(v) for k, v in s.value_counts(normalize=True).head(50).items()}
        out["columns"][col] = entry
    return out


def prepare_xy(df: pd.DataFrame, cfg: ClassicDataConfig) -> tuple[pd.DataFrame, pd.Series, list[str]]:
    """Validate the table and split features from the target.

    Raises:
        DataError: empty table, missing target/feature columns, fewer than two classes.
    """
    if df.empty:
        raise DataError("The training table is empty.")
    if cfg.target not in df.columns:
        names = ", ".join(map(str, df.columns))
        raise DataError(f"Target column {cfg.target!r} not found; columns are: {names}. Set data.target.")
    features = cfg.features or [c for c in df.columns if c != cfg.target and c not in cfg.drop]
    missing = [c for c in features if c not in df.columns]
    if missing:
        raise DataError(f"Feature columns not in the table: {', '.join(missing)}.")
    y = df[cfg.target]
    if y.isna().any():
        raise DataError(f"Target {cfg.target!r} has {int(y.isna().sum())} missing values; drop those rows.")
    if y.nunique() < 2:
        raise DataError(f"Target {cfg.target!r} has a single class; a classifier needs two or more.")
    return df[features], y, features


def run(cfg: ClassicTrainConfig, registry: RegistryAPI | None = None) -> TrainResult:
    """Train, cross-validate, and register the model with lineage; all or nothing.

    Raises:
        DataError: bad training data. RegistryError: registration failed (rolled back).
    """
    from sklearn.model_selection import StratifiedKFold, cross_validate

    from llmops.registry import Lineage, Registry, save_sklearn_model

    df = load_table(cfg.data.source, cfg.data.rows, cfg.data.seed)
    X, y, features = prepare_xy(df, cfg.data)
    binary = y.nunique() == 2
    scoring = (["roc_auc", "f1", "accuracy", "precision", "recall"] if binary
               else ["roc_auc_ovr", "f1_macro", "accuracy"])
    pipe = build_pipeline(X, features, cfg.model, cfg.data.seed)
    folds = StratifiedKFold(cfg.cv_folds, shuffle=True, random_state=cfg.data.seed)
    log.info("cross-validating %s on %d rows x %d features (%d folds)", cfg.model.type, len(X),
             len(features), cfg.cv_folds)
    cv = cross_validate(pipe, X, y, cv=folds, scoring=scoring, n_jobs=1)
    metrics = {}
    for name in scoring:
        scores = cv[f"test_{name}"]
        key = name.replace("_ovr", "").replace("_macro", "")
        metrics[key] = float(np.mean(scores))
        metrics[f"{key}_std"] = float(np.std(scores))
    pipe.fit(X, y)

    registry = registry or Registry()
    digest = dataset_sha256(df)
    tmp = Path(tempfile.mkdtemp(prefix="classic-"))
    try:
        # integer columns declared as float: a batch with missing values must still match
        example = X.head(5).astype({c: "float64" for c in X.columns if pd.api.types.is_integer_dtype(X[c])})
        model_dir = save_sklearn_model(pipe, tmp / cfg.registry_name, example)
        (model_dir / "reference_profile.json").write_text(json.dumps(profile(df), indent=2))
        sample = df.sample(min(len(df), cfg.reference_sample_rows), random_state=cfg.data.seed)
        write_table(sample, model_dir / "reference.parquet")
        version = registry.register(
            cfg.registry_name, model_dir, kind="classic_model",
            lineage=Lineage(dataset_sha256=digest, config_hash=config_hash(cfg),
                            extra={"data_source": cfg.data.source}),
            aliases=[cfg.alias] if cfg.alias else [],
            params={"model": cfg.model.type, "rows": len(df), "features": ",".join(features),
                    **{f"param.{k}": v for k, v in cfg.model.params.items()}},
            metrics=metrics, reason="classic training run",
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if cfg.reference_out:
        write_table(df, cfg.reference_out)
    log.info("registered %s with cv %s", version.ref, {k: round(v, 4) for k, v in metrics.items()})
    return TrainResult(version, metrics, features)
