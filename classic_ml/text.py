"""Text classifiers (hashed TF-IDF + logistic regression) trained from labelled JSONL, registered.

The guardrails' injection classifier is trained here, so it has the same lineage, CV metrics
and registry life cycle as every other classic model::

    from classic_ml.text import TextClassifierConfig, run
    result = run(TextClassifierConfig())   # data/guardrails/injection_public.jsonl, split == train
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import Field

from classic_ml.data import DataError
from llmops.config import StrictModel, config_hash
from llmops.contracts import RegistryAPI
from llmops.errors import LLMOpsError


class TextClassifierConfig(StrictModel):
    """A text classifier training run."""

    data: str = Field("data/guardrails/injection_public.jsonl", description="JSONL with text and label columns "
                      "(the default is built by `llmops guardrails data` from public packages).")
    text_column: str = Field("text", description="Input text column.")
    label_column: str = Field("label", description="Label column: 0/1, or class names (e.g. the content-safety "
                              "categories and 'safe'), which trains a multi-class model.")
    split_column: str | None = Field("split", description="Column selecting rows; None: use all rows.")
    split_value: str = Field("train", description="Value of split_column used for training.")
    registry_name: str = Field("injection-classifier", description="Registered model name.")
    alias: str | None = Field("champion", description="Alias set on the new version.")
    c: float = Field(4.0, gt=0, description="Inverse regularisation of the logistic regression.")
    cv_folds: int = Field(5, ge=2, description="Cross-validation folds.")
    max_chars: int = Field(4000, ge=100, description="Longer texts are read as their first 3/4 and last 1/4 of "
                           "this many characters, as the injection rail reads a long prompt.")


@dataclass(frozen=True)
class TextTrainResult:
    version: Any
    metrics: dict[str, float]
    reused: bool = False


def build_text_pipeline(c: float):
    """Character n-grams (robust to obfuscation) + word n-grams, hashed (2**18 features each) and TF-IDF
    weighted, then logistic regression. Hashing keeps the registered model small and quick to store and
    load with skops (a vocabulary of ~290k n-grams made a 300 MB model; this one is ~9 MB)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline

    def hashed(**kw):
        return make_pipeline(HashingVectorizer(n_features=2**18, alternate_sign=False, norm=None, **kw),
                             TfidfTransformer(sublinear_tf=True))

    # input: a DataFrame with a "text" column (what the MLflow signature records)
    features = ColumnTransformer([("text", FeatureUnion([
        ("chars", hashed(analyzer="char_wb", ngram_range=(2, 5))),
        ("words", hashed(analyzer="word", ngram_range=(1, 2))),
    ]), "text")])
    return Pipeline([("features", features),
                     ("model", LogisticRegression(C=c, max_iter=2000, class_weight="balanced"))])


def load_labelled(cfg: TextClassifierConfig) -> pd.DataFrame:
    """Rows for training. Raises DataError naming the line of a bad row."""
    path = Path(cfg.data)
    if not path.is_file():
        hint = " Build it with `llmops guardrails data`." if path.name == "injection_public.jsonl" else ""
        raise DataError(f"{path} does not exist.{hint}")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):  # not splitlines: U+2028 is text
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: not valid JSON ({e.msg}).") from e
        label = row.get(cfg.label_column)
        if not isinstance(row.get(cfg.text_column), str) or not (label in (0, 1) and not isinstance(label, bool)
                                                                   or isinstance(label, str) and label.strip()):
            raise DataError(f"{path}:{i}: needs a string '{cfg.text_column}' and a '{cfg.label_column}' that is 0/1 "
                            "or a class name.")
        rows.append(row)
    df = pd.DataFrame(rows)
    if cfg.split_column and cfg.split_column in df:
        df = df[df[cfg.split_column] == cfg.split_value]
    if df.empty or df[cfg.label_column].nunique() < 2:
        raise DataError(f"{path}: the training rows need at least two labels (0 and 1, or two class names).")
    if df[cfg.label_column].map(type).nunique() > 1:
        raise DataError(f"{path}: '{cfg.label_column}' mixes numbers and class names.")
    return df


def trained_on(cfg: TextClassifierConfig, registry: RegistryAPI) -> Any | None:
    """The version ``cfg.alias`` points at when it was trained on the same data file (sha256) with the
    same config; None otherwise."""
    if not cfg.alias:
        return None
    digest = hashlib.sha256(Path(cfg.data).read_bytes()).hexdigest()
    try:
        version = registry.resolve(f"{cfg.registry_name}@{cfg.alias}")
    except LLMOpsError:
        return None
    same = (version.tags.get("lineage.dataset_sha256") == digest
            and version.tags.get("lineage.config_hash") == config_hash(cfg))
    return version if same else None


def run(cfg: TextClassifierConfig, registry: RegistryAPI | None = None, reuse: bool = False) -> TextTrainResult:
    """Train on normalised text, cross-validate, register (kind guardrail_model).

    ``reuse``: when the alias already names a version trained on the same data (sha256) and config,
    return it without training (``reused``), e.g. for a second `make demo`."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold, cross_validate

    from llmops.registry import Lineage, Registry, save_sklearn_model
    from llmops.textnorm import head_and_tail, normalize

    if reuse:
        registry = registry or Registry()
        if not Path(cfg.data).is_file():
            load_labelled(cfg)  # raises the usual error for a missing file
        found = trained_on(cfg, registry)
        if found is not None:
            return TextTrainResult(found, {}, reused=True)
    df = load_labelled(cfg)
    X = pd.DataFrame({"text": [head_and_tail(normalize(t), cfg.max_chars) for t in df[cfg.text_column]]})
    labels = df[cfg.label_column]
    binary = set(labels.unique()) <= {0, 1}
    y = labels.astype(int).to_numpy() if binary else labels.astype(str).to_numpy()
    pipe = build_text_pipeline(cfg.c)
    # the folds' fits run side by side on the machine's cores (logistic regression's solver uses one)
    workers = max(1, min(cfg.cv_folds, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                         else (os.cpu_count() or 1)))
    cv = cross_validate(pipe, X, y, n_jobs=workers, cv=StratifiedKFold(cfg.cv_folds, shuffle=True, random_state=0),
                        scoring=["roc_auc", "f1", "precision", "recall"] if binary else
                        ["f1_macro", "accuracy", "recall_macro"])
    metrics = {k.removeprefix("test_"): float(np.mean(v)) for k, v in cv.items() if k.startswith("test_")}
    pipe.fit(X, y)
    registry = registry or Registry()
    digest = hashlib.sha256(Path(cfg.data).read_bytes()).hexdigest()
    tmp = Path(tempfile.mkdtemp(prefix="textclf-"))
    try:
        model_dir = save_sklearn_model(pipe, tmp / cfg.registry_name, X.head(3))
        version = registry.register(
            cfg.registry_name, model_dir, kind="guardrail_model",
            lineage=Lineage(dataset_sha256=digest, config_hash=config_hash(cfg), extra={"data": cfg.data}),
            aliases=[cfg.alias] if cfg.alias else [], metrics=metrics,
            params={"rows": len(df), "c": cfg.c, "max_chars": cfg.max_chars}, reason="text classifier training run")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TextTrainResult(version, metrics)
