"""The drift engine: one engine for tabular batches, request logs and eval history.

Data arrive as chunks (DataFrames), so a large file or log is never held in memory whole.
Per column the engine keeps a uniform reservoir sample, fine histogram counts on bins fixed
from the reference quantiles, streaming moments, missing counts and category counts. When both
sides fit in the reservoir the tests are exact (scipy on the raw values); otherwise they run on
the aligned histograms. Test choice follows the column type and the reference size (configurable)::

    import pandas as pd
    from llmops.monitoring.engine import DriftConfig, detect_drift
    result = detect_drift(pd.read_csv("ref.csv"), pd.read_csv("cur.csv"), DriftConfig())
    print(result.dataset_drift, [c.column for c in result.columns if c.drifted])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from llmops.config import StrictModel
from llmops.monitoring import stats

log = logging.getLogger(__name__)

TestName = Literal["auto", "ks", "wasserstein", "psi", "jensen_shannon", "chi_squared"]
NUMERIC_TESTS = {"ks", "wasserstein", "psi", "jensen_shannon"}
CATEGORICAL_TESTS = {"chi_squared", "psi", "jensen_shannon"}
OTHER = "__other__"


class ColumnOverride(StrictModel):
    """Per-column choices that replace the automatic ones."""

    kind: Literal["auto", "numeric", "categorical"] = Field("auto", description="Column type.")
    test: TestName = Field("auto", description="Statistical test for this column.")
    threshold: float | None = Field(None, gt=0, description="Threshold for this column's test.")


class DriftConfig(StrictModel):
    """How drift is tested. Defaults follow common practice (and Evidently's defaults)."""

    columns: list[str] | None = Field(None, description="Columns to test (None: all in reference).")
    exclude: list[str] = Field(default_factory=list, description="Columns never tested (ids, times).")
    prediction_column: str | None = Field(
        None, description="Model output column; its drift is reported as prediction drift."
    )
    numeric_test: TestName = Field(
        "auto", description="Test for numeric columns; auto: ks up to small_sample_rows, else wasserstein."
    )
    categorical_test: TestName = Field(
        "auto",
        description="Test for categorical columns; auto: chi_squared up to small_sample_rows, "
        "else jensen_shannon.",
    )
    small_sample_rows: int = Field(
        1000, ge=1, description="Reference size up to which p-value tests are used in auto mode."
    )
    categorical_max_unique: int = Field(
        5, ge=1, description="A numeric column with at most this many distinct values is categorical."
    )
    thresholds: dict[str, float] = Field(
        default_factory=lambda: {
            "ks": 0.05, "chi_squared": 0.05, "wasserstein": 0.1, "psi": 0.1, "jensen_shannon": 0.1,
        },
        description="Per test: p-value below which (ks, chi_squared) or distance from which "
        "(wasserstein, psi, jensen_shannon) a column counts as drifted.",
    )
    per_column: dict[str, ColumnOverride] = Field(
        default_factory=dict, description="Overrides by column name."
    )
    drift_share: float = Field(
        0.5, gt=0, le=1, description="Dataset drift when at least this share of columns drifted."
    )
    missing_share_delta: float = Field(
        0.1, gt=0, le=1, description="A rise of the missing-value share by this much is drift."
    )
    chunk_rows: int = Field(100_000, ge=100, description="Rows per chunk when reading files.")
    exact_max_rows: int = Field(
        200_000, ge=100, description="Reservoir size per column; up to this many rows tests are exact."
    )
    fine_bins: int = Field(1000, ge=10, description="Histogram bins for tests on streamed data.")
    psi_bins: int = Field(10, ge=2, description="Bins (reference quantiles) for PSI on numeric data.")
    js_bins: int = Field(30, ge=2, description="Bins for Jensen-Shannon on numeric data.")
    max_categories: int = Field(
        1000, ge=2, description="Distinct categories kept per column; the rarest merge into __other__."
    )
    seed: int = Field(0, description="Seed of the reservoir sampling.")

    @model_validator(mode="after")
    def _check(self) -> DriftConfig:
        unknown = set(self.thresholds) - (NUMERIC_TESTS | CATEGORICAL_TESTS)
        if unknown:
            raise ValueError(f"thresholds has unknown tests {sorted(unknown)}")
        defaults = DriftConfig.model_fields["thresholds"].default_factory()
        self.thresholds = {**defaults, **self.thresholds}
        if self.numeric_test not in NUMERIC_TESTS | {"auto"}:
            raise ValueError(f"numeric_test must be one of {sorted(NUMERIC_TESTS)} or auto")
        if self.categorical_test not in CATEGORICAL_TESTS | {"auto"}:
            raise ValueError(f"categorical_test must be one of {sorted(CATEGORICAL_TESTS)} or auto")
        return self


@dataclass
class ColumnResult:
    column: str
    kind: str  # numeric | categorical | unknown
    test: str  # ks, wasserstein, ..., or "schema" / "missing" when those decided
    statistic: float | None
    p_value: float | None
    threshold: float | None
    drifted: bool
    reason: str
    method: str  # exact | binned | none
    missing_share_reference: float
    missing_share_current: float
    plot: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("plot")
        for k in ("statistic", "p_value"):
            if d[k] is not None and not np.isfinite(d[k]):
                d[k] = None if np.isnan(d[k]) else "inf"
        return d


@dataclass
class DriftResult:
    status: Literal["ok", "invalid"]
    dataset_drift: bool | None
    share_drifted: float
    drift_share: float
    n_columns: int
    n_drifted: int
    reference_rows: int
    current_rows: int
    columns: list[ColumnResult]
    prediction_drift: ColumnResult | None
    schema: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "dataset_drift": self.dataset_drift,
            "share_drifted": self.share_drifted,
            "drift_share": self.drift_share,
            "n_columns": self.n_columns,
            "n_drifted": self.n_drifted,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "columns": [c.to_json() for c in self.columns],
            "prediction_drift": self.prediction_drift.to_json() if self.prediction_drift else None,
            "schema": self.schema,
        }


Chunks = pd.DataFrame | Callable[[], Iterable[pd.DataFrame]]


def _chunks(source: Chunks) -> Iterator[pd.DataFrame]:
    if isinstance(source, pd.DataFrame):
        yield source
    else:
        yield from source()


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _as_float(series: pd.Series) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(series):
        out = series.astype("int64").astype(np.float64)
        out[series.isna().to_numpy()] = np.nan
        return out.to_numpy()
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


class _Reservoir:
    """Uniform sample of at most ``size`` values from a stream (random keys, keep the smallest)."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng = size, rng
        self.keys = np.empty(0)
        self.values = np.empty(0)
        self.seen = 0

    def add(self, values: np.ndarray) -> None:
        self.seen += len(values)
        keys = np.concatenate([self.keys, self.rng.random(len(values))])
        vals = np.concatenate([self.values, values])
        if len(vals) > self.size:
            keep = np.argpartition(keys, self.size - 1)[: self.size]
            keys, vals = keys[keep], vals[keep]
        self.keys, self.values = keys, vals

    @property
    def complete(self) -> bool:
        return self.seen <= self.size


@dataclass
class _Numeric:
    reservoir: _Reservoir
    n: int = 0
    missing: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    lo: float = np.inf
    hi: float = -np.inf
    counts: np.ndarray | None = None
    edges: np.ndarray | None = None

    def add(self, values: np.ndarray, edges: np.ndarray | None) -> None:
        finite = values[~np.isnan(values)]
        self.missing += len(values) - len(finite)
        if len(finite) == 0:
            return
        self.n += len(finite)
        # shifted moments would be more stable; float64 sums are fine for monitoring-scale data
        self.total += float(finite.sum())
        self.total_sq += float(np.square(finite).sum())
        self.lo, self.hi = min(self.lo, float(finite.min())), max(self.hi, float(finite.max()))
        self.reservoir.add(finite)
        if edges is not None:
            h = stats.histogram(finite, edges)
            self.counts = h if self.counts is None else self.counts + h

    @property
    def std(self) -> float:
        if self.n == 0:
            return 0.0
        mean = self.total / self.n
        return float(np.sqrt(max(self.total_sq / self.n - mean * mean, 0.0)))


@dataclass
class _Categorical:
    counts: dict[str, float] = field(default_factory=dict)
    missing: int = 0
    n: int = 0

    def add(self, series: pd.Series, max_categories: int) -> None:
        present = series.dropna()
        self.missing += len(series) - len(present)
        self.n += len(present)
        counted = present.value_counts()
        if _is_numeric(series):  # 1, 1.0 and "1" are one category whichever dtype a chunk got
            keys = [f"{float(k):.12g}" for k in counted.index]
        else:
            keys = [str(k) for k in counted.index]
        for key, value in zip(keys, counted.to_numpy(), strict=True):
            self.counts[key] = self.counts.get(key, 0.0) + float(value)
        if len(self.counts) > max_categories:
            ranked = sorted(self.counts.items(), key=lambda kv: -kv[1])
            kept = dict(ranked[: max_categories - 1])
            kept[OTHER] = kept.get(OTHER, 0.0) + sum(v for _, v in ranked[max_categories - 1 :])
            self.counts = kept


@dataclass
class _Side:
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    dtypes: dict[str, str] = field(default_factory=dict)
    numeric: dict[str, _Numeric] = field(default_factory=dict)
    categorical: dict[str, _Categorical] = field(default_factory=dict)


def _scan(
    source: Chunks,
    cfg: DriftConfig,
    kinds: dict[str, str] | None,
    edges: dict[str, np.ndarray] | None,
    rng: np.random.Generator,
) -> _Side:
    """One pass over a source.

    ``kinds`` None is the reference pass: column kinds come from the first chunk's dtypes (CSV
    chunks may infer others later), and numeric columns also keep category counts while they
    have at most ``categorical_max_unique`` distinct values, to be treated as categorical.
    """
    side = _Side()
    first: dict[str, str] = {}
    many: set[str] = set()
    for chunk in _chunks(source):
        chunk.columns = [str(c) for c in chunk.columns]
        if not side.columns:
            side.columns = list(chunk.columns)
            side.dtypes = {c: str(t) for c, t in chunk.dtypes.items()}
            first = {c: "numeric" if _is_numeric(chunk[c]) else "categorical" for c in chunk.columns}
        side.rows += len(chunk)
        for col in chunk.columns:
            kind = kinds.get(col) if kinds is not None else first.get(col)
            if kind is None:
                continue  # added column: schema report only
            if kind == "numeric":
                acc = side.numeric.setdefault(col, _Numeric(_Reservoir(cfg.exact_max_rows, rng)))
                acc.add(_as_float(chunk[col]), (edges or {}).get(col))
                if kinds is not None or col in many:
                    continue
                limit = cfg.categorical_max_unique  # a cheap look at the head first
                if chunk[col].iloc[:10_000].nunique() > limit or chunk[col].nunique() > limit:
                    many.add(col)
                    side.categorical.pop(col, None)
                    continue
                cat = side.categorical.setdefault(col, _Categorical())
                cat.add(chunk[col], cfg.max_categories)
                if len(cat.counts) > cfg.categorical_max_unique:
                    many.add(col)
                    del side.categorical[col]
            else:
                side.categorical.setdefault(col, _Categorical()).add(chunk[col], cfg.max_categories)
    return side


def _ref_kinds(ref: _Side, cfg: DriftConfig) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for col in ref.columns:
        override = cfg.per_column.get(col)
        if override and override.kind != "auto":
            kinds[col] = override.kind
        elif col in ref.numeric and col not in ref.categorical:
            kinds[col] = "numeric"
        else:
            kinds[col] = "categorical"
    return kinds


def _choose_test(col: str, kind: str, ref_rows: int, cfg: DriftConfig) -> tuple[str, float]:
    override = cfg.per_column.get(col)
    test = override.test if override and override.test != "auto" else None
    if test is None:
        test = cfg.numeric_test if kind == "numeric" else cfg.categorical_test
    if test == "auto":
        small = ref_rows <= cfg.small_sample_rows
        test = ("ks" if small else "wasserstein") if kind == "numeric" else (
            "chi_squared" if small else "jensen_shannon")
    if kind == "categorical" and test not in CATEGORICAL_TESTS:
        test = "chi_squared"  # ks/wasserstein need an order; categories have none
    threshold = override.threshold if override and override.threshold else cfg.thresholds[test]
    return test, threshold


def _numeric_test(test: str, threshold: float, r: _Numeric, c: _Numeric, cfg: DriftConfig) -> tuple:
    exact = r.reservoir.complete and c.reservoir.complete
    if exact:
        a, b = r.reservoir.values, c.reservoir.values
        fn = {
            "ks": lambda: stats.ks(a, b, threshold),
            "wasserstein": lambda: stats.wasserstein_normed(a, b, threshold),
            "psi": lambda: stats.psi_samples(a, b, threshold, cfg.psi_bins),
            "jensen_shannon": lambda: stats.jensen_shannon_samples(a, b, threshold, cfg.js_bins),
        }[test]
        return fn(), "exact"
    edges = r.edges
    rc, cc = r.counts, c.counts
    fn = {
        "ks": lambda: stats.ks_binned(rc, cc, threshold),
        "wasserstein": lambda: stats.wasserstein_binned(
            rc, cc, edges, min(r.lo, c.lo), max(r.hi, c.hi), r.std, threshold),
        "psi": lambda: stats.psi(*stats.merge_bins(rc, cc, cfg.psi_bins), threshold),
        "jensen_shannon": lambda: stats.jensen_shannon(*stats.merge_bins(rc, cc, cfg.js_bins), threshold),
    }[test]
    return fn(), "binned"


def _plot_numeric(r: _Numeric, c: _Numeric, bins: int = 30) -> dict[str, Any]:
    a, b = r.reservoir.values, c.reservoir.values
    lo, hi = min(r.lo, c.lo), max(r.hi, c.hi)
    if not np.isfinite(lo) or lo == hi:
        hi = lo + 1.0 if np.isfinite(lo) else 1.0
        lo = lo if np.isfinite(lo) else 0.0
    edges = np.linspace(lo, hi, bins + 1)
    ra, _ = np.histogram(a, edges)
    cb, _ = np.histogram(b, edges)
    return {"edges": edges.tolist(), "reference": (ra / max(ra.sum(), 1)).tolist(),
            "current": (cb / max(cb.sum(), 1)).tolist()}


def detect_drift(reference: Chunks, current: Chunks, cfg: DriftConfig | None = None) -> DriftResult:
    """Compare ``current`` against ``reference`` column by column.

    Args:
        reference, current: a DataFrame, or a callable returning an iterable of DataFrame
            chunks (called twice for the reference when it exceeds ``exact_max_rows``).
        cfg: test choices and thresholds.

    Returns:
        DriftResult; ``status == "invalid"`` (and ``dataset_drift`` None) when a side is empty
        or no column can be compared. Schema problems are reported and count as drift of the
        affected column; they never raise.
    """
    cfg = cfg or DriftConfig()
    rng = np.random.default_rng(cfg.seed)
    ref = _scan(reference, cfg, None, None, rng)
    kinds = _ref_kinds(ref, cfg)
    wanted = [c for c in (cfg.columns or ref.columns) if c not in cfg.exclude]

    # Fine bins from reference quantiles; a second reference pass only when it was sampled.
    edges: dict[str, np.ndarray] = {}
    for col, acc in ref.numeric.items():
        if kinds.get(col) == "numeric" and acc.n:
            edges[col] = stats.quantile_edges(acc.reservoir.values, cfg.fine_bins)
            acc.edges = edges[col]
            if acc.reservoir.complete:
                acc.counts = stats.histogram(acc.reservoir.values, edges[col])
    if any(not a.reservoir.complete for a in ref.numeric.values()) and edges:
        second = _scan(reference, cfg, kinds, edges, rng)
        for col in edges:
            ref.numeric[col].counts = second.numeric[col].counts
    cur = _scan(current, cfg, kinds, edges, rng)

    schema: dict[str, Any] = {
        "missing_columns": [c for c in wanted if c in ref.columns and c not in cur.columns],
        "added_columns": [c for c in cur.columns if c not in ref.columns],
        "unknown_columns": [c for c in wanted if c not in ref.columns],
        "dtype_changes": [],
        "problems": [],
    }
    if schema["unknown_columns"]:
        schema["problems"].append(
            f"configured columns not in the reference: {', '.join(schema['unknown_columns'])}")
    if ref.rows == 0:
        schema["problems"].append("the reference batch is empty")
    if cur.rows == 0:
        schema["problems"].append("the current batch is empty")

    results = [
        r for col in wanted if col in ref.columns
        if (r := _compare_column(col, kinds[col], ref, cur, schema, cfg)) is not None
    ]

    prediction = None
    if cfg.prediction_column:
        prediction = next((r for r in results if r.column == cfg.prediction_column), None)
        if prediction is None:
            schema["problems"].append(f"prediction column {cfg.prediction_column!r} not found")
        results = [r for r in results if r.column != cfg.prediction_column]

    n_drifted = sum(r.drifted for r in results)
    share = n_drifted / len(results) if results else 0.0
    invalid = ref.rows == 0 or cur.rows == 0 or not results
    if not results and not schema["problems"]:
        schema["problems"].append("no column could be compared")
    return DriftResult(
        status="invalid" if invalid else "ok",
        dataset_drift=None if invalid else bool(share >= cfg.drift_share),
        share_drifted=round(share, 6),
        drift_share=cfg.drift_share,
        n_columns=len(results),
        n_drifted=n_drifted,
        reference_rows=ref.rows,
        current_rows=cur.rows,
        columns=results,
        prediction_drift=prediction,
        schema=schema,
    )


def _compare_column(
    col: str, kind: str, ref: _Side, cur: _Side, schema: dict[str, Any], cfg: DriftConfig
) -> ColumnResult | None:
    """Test one column; schema and missing-value problems decide before any statistic."""
    r_acc = ref.numeric.get(col) if kind == "numeric" else ref.categorical.get(col)
    ref_missing = (r_acc.missing / ref.rows) if (r_acc and ref.rows) else 0.0

    def row(test, stat, p, thr, drifted, reason, method, cur_missing=0.0, plot=None) -> ColumnResult:
        return ColumnResult(col, kind, test, stat, p, thr, drifted, reason, method,
                            round(ref_missing, 6), round(cur_missing, 6), plot or {})

    if col in schema["missing_columns"]:
        return row("schema", None, None, None, True, "column missing in current", "none", 1.0)
    if cur.rows == 0 or ref.rows == 0:
        return None
    c_acc = cur.numeric.get(col) if kind == "numeric" else cur.categorical.get(col)
    cur_missing = c_acc.missing / cur.rows if c_acc else 1.0
    if kind == "numeric" and cur.dtypes.get(col) and not _dtype_numeric(cur.dtypes[col]):
        schema["dtype_changes"].append(
            {"column": col, "reference": ref.dtypes[col], "current": cur.dtypes[col]})
        bad = cur_missing - ref_missing
        if bad > cfg.missing_share_delta:
            return row("schema", None, None, None, True,
                       f"dtype changed {ref.dtypes[col]} -> {cur.dtypes[col]}; "
                       f"{bad:.0%} of values are not numbers", "none", cur_missing)
    ref_n = r_acc.n if r_acc else 0
    cur_n = c_acc.n if c_acc else 0
    if ref_n == 0 and cur_n == 0:
        return row("missing", None, None, None, False,
                   "all values missing in both batches (not testable)", "none", cur_missing)
    if ref_n == 0 or cur_n == 0:
        where = "reference" if ref_n == 0 else "current"
        return row("missing", None, None, None, True,
                   f"all values missing in the {where} batch", "none", cur_missing)
    test, threshold = _choose_test(col, kind, ref.rows, cfg)
    if kind == "numeric":
        res, method = _numeric_test(test, threshold, r_acc, c_acc, cfg)
        plot = _plot_numeric(r_acc, c_acc)
    else:
        cats = sorted(set(r_acc.counts) | set(c_acc.counts))
        rc = np.array([r_acc.counts.get(k, 0.0) for k in cats])
        cc = np.array([c_acc.counts.get(k, 0.0) for k in cats])
        fn = {"chi_squared": stats.chi_squared, "psi": stats.psi,
              "jensen_shannon": stats.jensen_shannon}[test]
        res, method = fn(rc, cc, threshold), "exact"
        top = np.argsort(-(rc / rc.sum() + cc / cc.sum()))[:20]
        plot = {"categories": [cats[i] for i in top], "reference": (rc[top] / rc.sum()).tolist(),
                "current": (cc[top] / cc.sum()).tolist()}
    rise = cur_missing - ref_missing
    drifted, reason = res.drifted, ("distribution changed" if res.drifted else "no drift")
    if rise >= cfg.missing_share_delta:
        drifted = True
        reason = (reason + "; " if res.drifted else "") + f"missing share rose by {rise:.0%}"
    return row(res.test, res.statistic, res.p_value, res.threshold, drifted, reason, method,
               cur_missing, plot)


def _dtype_numeric(dtype: str) -> bool:
    return dtype.startswith(("int", "uint", "float", "Int", "UInt", "Float", "datetime"))
