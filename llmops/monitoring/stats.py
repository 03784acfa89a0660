"""Drift statistics, vectorised with numpy/scipy.

Two shapes of input: raw samples (exact tests, for data that fits) and aligned histograms
(``ref_counts``/``cur_counts`` over the same bins, for data streamed in chunks). Every function
returns a :class:`TestResult`; for p-value tests drift means ``p_value < threshold``, for
distances ``statistic >= threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as st
from scipy.spatial.distance import jensenshannon

EPS = 1e-4  # smoothing for empty bins in PSI (as is usual for PSI)


@dataclass(frozen=True)
class TestResult:
    test: str
    statistic: float
    p_value: float | None
    threshold: float
    drifted: bool


def _pvalue_result(test: str, stat: float, p: float, threshold: float) -> TestResult:
    return TestResult(test, float(stat), float(p), threshold, bool(p < threshold))


def _distance_result(test: str, dist: float, threshold: float) -> TestResult:
    return TestResult(test, float(dist), None, threshold, bool(dist >= threshold))


# ---------------------------------------------------------------- raw samples (exact)
def ks(ref: np.ndarray, cur: np.ndarray, threshold: float = 0.05) -> TestResult:
    """Two-sample Kolmogorov-Smirnov test (scipy's exact/asymptotic choice)."""
    res = st.ks_2samp(ref, cur)
    return _pvalue_result("ks", res.statistic, res.pvalue, threshold)


def wasserstein_normed(ref: np.ndarray, cur: np.ndarray, threshold: float = 0.1) -> TestResult:
    """Wasserstein-1 distance divided by the reference standard deviation.

    A constant reference has no scale: identical data gives 0, anything else infinity.
    """
    std = float(np.std(ref))
    dist = float(st.wasserstein_distance(ref, cur))
    if std == 0.0:
        value = 0.0 if dist == 0.0 else float("inf")
    else:
        value = dist / std
    return _distance_result("wasserstein", value, threshold)


def quantile_edges(ref: np.ndarray, n_bins: int) -> np.ndarray:
    """Interior bin edges at reference quantiles (duplicates removed)."""
    qs = np.quantile(ref, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.unique(qs)


def histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of ``values`` in the bins (-inf, e0), [e0, e1), ..., [e_last, inf)."""
    idx = np.searchsorted(edges, values, side="right")
    return np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)


def psi_samples(ref: np.ndarray, cur: np.ndarray, threshold: float = 0.1, n_bins: int = 10) -> TestResult:
    """Population stability index over reference-quantile bins."""
    edges = quantile_edges(ref, n_bins)
    return psi(histogram(ref, edges), histogram(cur, edges), threshold)


def jensen_shannon_samples(
    ref: np.ndarray, cur: np.ndarray, threshold: float = 0.1, n_bins: int = 30
) -> TestResult:
    """Jensen-Shannon distance (natural log) between histograms on the joint range."""
    lo = min(ref.min(), cur.min())
    hi = max(ref.max(), cur.max())
    if lo == hi:
        return _distance_result("jensen_shannon", 0.0, threshold)
    edges = np.linspace(lo, hi, n_bins + 1)[1:-1]
    return jensen_shannon(histogram(ref, edges), histogram(cur, edges), threshold)


# ------------------------------------------------------------------ histograms / counts
def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total > 0 else counts


def psi(ref_counts: np.ndarray, cur_counts: np.ndarray, threshold: float = 0.1) -> TestResult:
    """PSI = sum((c - r) * ln(c / r)) over bins, with empty bins smoothed by EPS."""
    r = np.clip(_shares(ref_counts), EPS, None)
    c = np.clip(_shares(cur_counts), EPS, None)
    return _distance_result("psi", float(np.sum((c - r) * np.log(c / r))), threshold)


def jensen_shannon(ref_counts: np.ndarray, cur_counts: np.ndarray, threshold: float = 0.1) -> TestResult:
    """Jensen-Shannon distance with natural logarithms (0 = same, sqrt(ln 2) ~ 0.83 = disjoint), the
    convention of scipy and Evidently, so a threshold means the same in both."""
    value = jensenshannon(_shares(ref_counts), _shares(cur_counts))
    return _distance_result("jensen_shannon", 0.0 if np.isnan(value) else float(value), threshold)


def chi_squared(ref_counts: np.ndarray, cur_counts: np.ndarray, threshold: float = 0.05) -> TestResult:
    """Chi-squared test of homogeneity on the 2 x k table of category counts.

    With two categories this equals the two-proportion z-test (z^2 = chi^2, no continuity
    correction). Categories empty in both samples are dropped; a single category cannot drift.
    """
    table = np.vstack([ref_counts, cur_counts])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return _pvalue_result("chi_squared", 0.0, 1.0, threshold)
    stat, p, _, _ = st.chi2_contingency(table, correction=False)
    return _pvalue_result("chi_squared", stat, p, threshold)


def ks_binned(ref_counts: np.ndarray, cur_counts: np.ndarray, threshold: float = 0.05) -> TestResult:
    """KS statistic from aligned fine histograms (exact at bin edges), asymptotic p-value."""
    n, m = ref_counts.sum(), cur_counts.sum()
    d = float(np.max(np.abs(np.cumsum(ref_counts) / n - np.cumsum(cur_counts) / m)))
    en = np.sqrt(n * m / (n + m))
    return _pvalue_result("ks", d, float(st.kstwobign.sf(en * d)), threshold)


def wasserstein_binned(
    ref_counts: np.ndarray,
    cur_counts: np.ndarray,
    edges: np.ndarray,
    lo: float,
    hi: float,
    ref_std: float,
    threshold: float = 0.1,
) -> TestResult:
    """Normed Wasserstein-1 from aligned histograms: integral of |F_ref - F_cur| over x.

    ``lo``/``hi`` are the observed minimum and maximum of both samples (the outer bin edges).
    Accurate to the bin width; with quantile bins from the reference that is small where the
    mass is.
    """
    bounds = np.concatenate([[lo], edges, [hi]])
    widths = np.diff(bounds)
    cdf_r = np.cumsum(ref_counts) / ref_counts.sum()
    cdf_c = np.cumsum(cur_counts) / cur_counts.sum()
    # Inside a bin the CDF rises from its value at the left bound to the one at the right:
    # take the mean of the two (the trapezoid rule).
    mid_r = 0.5 * (np.concatenate([[0.0], cdf_r[:-1]]) + cdf_r)
    mid_c = 0.5 * (np.concatenate([[0.0], cdf_c[:-1]]) + cdf_c)
    diffs = np.abs(mid_r - mid_c)
    dist = float(np.sum(diffs * widths))
    if ref_std == 0.0:
        value = 0.0 if dist == 0.0 else float("inf")
    else:
        value = dist / ref_std
    return _distance_result("wasserstein", value, threshold)


def merge_bins(ref_counts: np.ndarray, cur_counts: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge fine quantile bins into about ``n_bins`` groups of equal reference mass."""
    share = np.cumsum(ref_counts) / max(ref_counts.sum(), 1.0)
    group = np.minimum((share * n_bins - 1e-9).astype(int), n_bins - 1).clip(0)
    ref = np.bincount(group, weights=ref_counts, minlength=n_bins)
    cur = np.bincount(group, weights=cur_counts, minlength=n_bins)
    return ref, cur
