"""Text classifiers (hashed TF-IDF + logistic regression) trained from labelled JSONL, registered.

The guardrails' injection classifier is trained here, so it has the same lineage, CV metrics
and registry life cycle as every other classic model::

    from classic_ml.text import TextClassifierConfig, run
    result = run(TextClassifierConfig())   # data/guardrails/injection_public.jsonl, split == train
"""

from __future__ import annotations

import hashlib
import json
import logging
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
from llmops.contracts import SECOND_STAGE_FILE, EmbeddingStageSpec, RegistryAPI
from llmops.errors import LLMOpsError

log = logging.getLogger(__name__)


class EmbeddingStage(StrictModel):
    """A second stage for a binary classifier: logistic regression on a sentence-embedding model's vector of the
    text plus the n-gram model's score. It is trained on, and consulted for, only the texts the n-gram model is
    unsure of, which keeps its cost (one embedding, ~10-40 ms on 2 cores) off most requests."""

    embedding_model: str = Field("all-MiniLM-L6-v2", description="Sentence-transformers model prepared by `make "
                                 "assets` (the one the topics rail and RAG already load), by name: the stage "
                                 "records its manifest's sha256 and the rail refuses another model.")
    max_chars: int = Field(1000, ge=50, description="What the embedding reads of a text: its head and tail up to "
                           "this many characters (MiniLM reads 256 word pieces at most).")
    train_from: float = Field(0.0, ge=0, lt=1, description="Training rows: those whose cross-validated n-gram "
                              "probability is at least this (0: all; the rail consults the stage from a higher one). "
                              "Fewer rows train faster: 0.02 keeps a third of them, at a lower held-out recall.")
    c: float = Field(4.0, gt=0, description="Inverse regularisation of the stage's logistic regression.")


LOGIT_SCALE = 4.0  # the n-gram score enters the second stage as logit(p) / LOGIT_SCALE


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
    second_stage: EmbeddingStage | None = Field(None, description="Binary labels only: an embedding stage for the "
                                                "texts the n-gram model is unsure of (the injection classifier).")


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
    same config (and, with a second stage, the same prepared embedding model); None otherwise."""
    if not cfg.alias:
        return None
    digest = hashlib.sha256(Path(cfg.data).read_bytes()).hexdigest()
    try:
        version = registry.resolve(f"{cfg.registry_name}@{cfg.alias}")
    except LLMOpsError:
        return None
    same = (version.tags.get("lineage.dataset_sha256") == digest
            and version.tags.get("lineage.config_hash") == config_hash(cfg))
    if same and cfg.second_stage is not None:  # and its stage was built with the embedding model prepared now
        from llmops.assets import prepared_model

        try:
            spec = EmbeddingStageSpec.model_validate_json(
                (Path(version.local_path) / SECOND_STAGE_FILE).read_bytes())
            same = spec.model_sha256 == prepared_model(cfg.second_stage.embedding_model)[1]
        except (OSError, ValueError, TypeError, LLMOpsError):  # no folder, no stage file, model not prepared
            same = False
    return version if same else None


def logit(p: Any) -> Any:
    import numpy as np

    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def embedding_cache_dir() -> Path:
    """Where training embeddings are kept between runs: $LLMOPS_CACHE_DIR or ~/.cache/llmops, /embeddings."""
    root = os.environ.get("LLMOPS_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "llmops"
    return Path(root).expanduser() / "embeddings"


def embed(stage: EmbeddingStage, texts: list[str], cache: bool = True) -> Any:
    """Unit-length sentence embeddings of the texts' heads and tails, as the rail computes them.

    With ``cache``, the matrix is kept under :func:`embedding_cache_dir`, keyed by the model's manifest (every
    file's sha256) and the exact texts: a second training run on the same data (another C, the demo after the
    tests) reads it back instead of embedding again (~2 minutes for the injection set on 2 cores). A cache
    entry that cannot be read is redone; one that cannot be written is skipped.

    Raises:
        AssetError: the embedding model is not prepared (`make assets`).
    """
    import numpy as np

    from llmops.assets import prepared_model, sentence_model
    from llmops.textnorm import head_and_tail

    _, model_sha = prepared_model(stage.embedding_model)
    inputs = [head_and_tail(t, stage.max_chars) for t in texts]
    path = None
    if cache:
        h = hashlib.sha256(model_sha.encode())
        for t in inputs:
            h.update(hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest())
        path = embedding_cache_dir() / f"{h.hexdigest()[:32]}.npy"
        try:
            found = np.load(path, allow_pickle=False)
            if found.shape[0] == len(inputs) and np.isfinite(found).all():
                return found
        except Exception as e:  # noqa: BLE001 - a damaged entry (empty, truncated, not .npy) is redone
            if path.exists():
                log.warning("embedding cache %s unreadable (%s); embedding again", path, e)
    log.info("embedding %d texts with %s", len(inputs), stage.embedding_model)
    vectors = sentence_model(stage.embedding_model).encode(inputs, batch_size=32, normalize_embeddings=True,
                                                           show_progress_bar=len(inputs) >= 1000)
    if path is not None:
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
                tmp = f.name
                np.save(f, vectors, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # whole or absent: never a half-written matrix
        except OSError as e:
            log.warning("embedding cache %s not written (%s)", path, e)
            if tmp and os.path.exists(tmp):
                os.unlink(tmp)
    return vectors


def fit_second_stage(stage: EmbeddingStage, texts: list[str], y: Any, first: Any,
                     folds: int) -> tuple[EmbeddingStageSpec, dict]:
    """Train the embedding stage on the rows whose cross-validated first-stage probability ``first`` is at least
    ``stage.train_from``. Returns (the stage as plain numbers, its cross-validated metrics)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rows = np.flatnonzero(first >= stage.train_from)
    ys = y[rows]
    if len(set(ys.tolist())) < 2 or min(np.bincount(ys)) < folds:
        raise DataError(f"the second stage needs both labels among the rows the n-gram model is unsure of "
                        f"(probability >= {stage.train_from}); found {np.bincount(ys, minlength=2).tolist()}. "
                        "Lower second_stage.train_from or add data.")
    features = np.hstack([embed(stage, [texts[i] for i in rows]), (logit(first[rows]) / LOGIT_SCALE)[:, None]])
    lr = LogisticRegression(C=stage.c, max_iter=3000, class_weight="balanced")
    oof = cross_val_predict(lr, features, ys, cv=StratifiedKFold(folds, shuffle=True, random_state=0),
                            method="predict_proba")[:, 1]
    lr.fit(features, ys)
    from llmops.assets import prepared_model

    spec = EmbeddingStageSpec(
        embedding_model=stage.embedding_model, model_sha256=prepared_model(stage.embedding_model)[1],
        max_chars=stage.max_chars, logit_scale=LOGIT_SCALE, train_from=stage.train_from,
        dimension=features.shape[1] - 1, coef=[float(c) for c in lr.coef_.ravel()], intercept=float(lr.intercept_[0]))
    metrics = {"second_stage_rows": float(len(rows)), "second_stage_roc_auc": float(roc_auc_score(ys, oof))}
    # where the shipped policy consults it (n-gram score in [unsure_from 0.3, threshold 0.8)): how it separates them
    band = (first[rows] >= 0.3) & (first[rows] < 0.8)
    if band.any() and len(set(ys[band].tolist())) == 2:
        metrics["second_stage_band_rows"] = float(band.sum())
        metrics["second_stage_band_roc_auc"] = float(roc_auc_score(ys[band], oof[band]))
    return spec, metrics


def fit_out_of_fold(pipe: Any, X: pd.DataFrame, y: Any, folds: int, workers: int) -> tuple[Any, Any]:
    """``pipe`` fitted on every row, and every row's out-of-fold class probabilities (columns in sorted class
    order), as ``cross_val_predict`` followed by ``fit`` give them. The fit on every row, the longest, starts first
    and runs beside the folds' fits: on 2 cores training takes about the time of that fit alone instead of the
    folds' plus its own."""
    import numpy as np
    from joblib import Parallel, delayed
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    splits = list(StratifiedKFold(folds, shuffle=True, random_state=0).split(X, y))

    def fit(rows: Any) -> Any:
        return clone(pipe).fit(X.iloc[rows], y[rows])

    fitted = Parallel(n_jobs=workers)(delayed(fit)(rows) for rows in [np.arange(len(y)), *(tr for tr, _ in splits)])
    classes = np.unique(y)
    proba = np.zeros((len(y), len(classes)))
    for (_, test), model in zip(splits, fitted[1:], strict=True):  # a fold may lack a rare class: map by name
        proba[np.ix_(test, np.searchsorted(classes, model.classes_))] = model.predict_proba(X.iloc[test])
    return fitted[0], proba


def _cv_metrics(y: Any, proba: Any, classes: Any, binary: bool) -> dict[str, float]:
    """Metrics of out-of-fold predictions (every row scored by a model that did not see it)."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    if binary:
        pred = (proba[:, 1] >= 0.5).astype(int)
        return {"roc_auc": float(roc_auc_score(y, proba[:, 1])), "f1": float(f1_score(y, pred)),
                "precision": float(precision_score(y, pred, zero_division=0)), "recall": float(recall_score(y, pred))}
    pred = classes[proba.argmax(axis=1)]
    return {"f1_macro": float(f1_score(y, pred, average="macro")), "accuracy": float(accuracy_score(y, pred)),
            "recall_macro": float(recall_score(y, pred, average="macro"))}


def run(cfg: TextClassifierConfig, registry: RegistryAPI | None = None, reuse: bool = False) -> TextTrainResult:
    """Train on normalised text, cross-validate, register (kind guardrail_model).

    With ``second_stage``, the embedding stage is trained on the n-gram model's out-of-fold scores and stored
    in the same registered model folder (:data:`SECOND_STAGE_FILE`), so both have one version and lineage.

    ``reuse``: when the alias already names a version trained on the same data (sha256) and config,
    return it without training (``reused``), e.g. for a second `make demo`.

    Raises:
        DataError: bad rows, one label only, or a second stage asked for with more than two labels.
    """
    import numpy as np

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
    texts = [normalize(t) for t in df[cfg.text_column]]
    X = pd.DataFrame({"text": [head_and_tail(t, cfg.max_chars) for t in texts]})
    labels = df[cfg.label_column]
    binary = set(labels.unique()) <= {0, 1}
    if cfg.second_stage is not None and not binary:
        raise DataError(f"{cfg.data}: second_stage needs labels 0/1, not class names.")
    y = labels.astype(int).to_numpy() if binary else labels.astype(str).to_numpy()
    # the fits run side by side on the machine's cores (logistic regression's solver uses one)
    workers = max(1, min(cfg.cv_folds + 1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                         else (os.cpu_count() or 1)))
    pipe, proba = fit_out_of_fold(build_text_pipeline(cfg.c), X, y, cfg.cv_folds, workers)
    metrics = _cv_metrics(y, proba, np.unique(y), binary)
    stage = None
    if cfg.second_stage is not None:
        stage, stage_metrics = fit_second_stage(cfg.second_stage, texts, y, proba[:, 1], cfg.cv_folds)
        metrics.update(stage_metrics)
    registry = registry or Registry()
    digest = hashlib.sha256(Path(cfg.data).read_bytes()).hexdigest()
    tmp = Path(tempfile.mkdtemp(prefix="textclf-"))
    try:
        model_dir = save_sklearn_model(pipe, tmp / cfg.registry_name, X.head(3))
        if stage is not None:
            (model_dir / SECOND_STAGE_FILE).write_text(stage.model_dump_json(exclude_none=True))
        version = registry.register(
            cfg.registry_name, model_dir, kind="guardrail_model",
            lineage=Lineage(dataset_sha256=digest, config_hash=config_hash(cfg), extra={"data": cfg.data}),
            aliases=[cfg.alias] if cfg.alias else [], metrics=metrics,
            params={"rows": len(df), "c": cfg.c, "max_chars": cfg.max_chars,
                    "second_stage": cfg.second_stage.embedding_model if cfg.second_stage else "none"},
            reason="text classifier training run")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TextTrainResult(version, metrics)
