"""Paired comparison of two evaluations on the same rows: bootstrap intervals, exact McNemar, non-inferiority.

Each compared metric is a per-row score (a token F1, a 0/1 refusal) that both versions have on the
same row ids. The difference ``challenger - baseline`` is taken row by row, oriented so that positive
means better (latency and error-like rates are lower-is-better), and resampled with a percentile
bootstrap; rates of 0/1 outcomes also get McNemar's exact test on the discordant rows. The decision
per metric is one of three::

    pass          the interval's lower bound is above -margin (non-inferior) and no significant loss
    fail          significantly worse (the interval lies below 0, or McNemar's one-sided p < alpha / 2),
                  or worse than the margin with confidence (upper bound below -margin)
    inconclusive  fewer paired rows than ``min_samples`` (unless an exact test already shows a loss:
                  McNemar for rates, the sign test otherwise), or the interval straddles -margin;
                  the result says roughly how many rows would decide it

Example::

    cmp = compare_paired("task.token_f1", {"1": 0.5, "2": 0.7}, {"1": 0.5, "2": 0.6}, margin=0.02)
    cmp.outcome, cmp.low, cmp.high, cmp.needed_n
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Outcome = Literal["pass", "fail", "inconclusive"]


@dataclass
class PairedComparison:
    """One metric of a challenger against its baseline on the rows both answered."""

    metric: str
    n: int
    value: float | None  # challenger mean over the paired rows
    baseline: float | None  # baseline mean over the same rows
    diff: float | None  # value - baseline (raw orientation)
    low: float | None  # confidence interval of diff (raw orientation)
    high: float | None
    margin: float  # allowed loss (absolute, in the metric's unit)
    confidence: float
    binary: bool
    p_worse: float | None  # McNemar exact, one-sided towards "worse" (binary metrics)
    outcome: Outcome
    reason: str
    needed_n: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_mean_ci(diffs: np.ndarray, confidence: float, resamples: int = 2000,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (vectorised, seeded: the same input
    gives the same interval)."""
    n = len(diffs)
    if n == 0:
        return math.nan, math.nan
    if np.all(diffs == diffs[0]):
        return float(diffs[0]), float(diffs[0])
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, 2_000_000 // n)  # bounded memory for large sets
    for start in range(0, resamples, step):
        stop = min(resamples, start + step)
        means[start:stop] = diffs[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def mcnemar_worse_p(worse: int, better: int) -> float:
    """One-sided exact McNemar p-value that the challenger loses more rows than it wins
    (``worse`` rows went 1 -> 0, ``better`` rows 0 -> 1, in the better-is-1 orientation)."""
    from scipy.stats import binomtest

    total = worse + better
    if total == 0:
        return 1.0
    return float(binomtest(worse, total, 0.5, alternative="greater").pvalue)


def sign_test_worse_p(worse: int, better: int) -> float:
    """One-sided exact sign test that more rows got worse than better (ties left out); the same
    binomial test as McNemar's, on the signs of continuous differences."""
    return mcnemar_worse_p(worse, better)


def compare_paired(metric: str, current: dict[str, float], baseline: dict[str, float], *, margin: float,
                   confidence: float = 0.95, min_samples: int = 20, lower_is_better: bool = False,
                   relative_margin: bool = False, resamples: int = 2000, seed: int = 0) -> PairedComparison:
    """Compare one metric row by row (rows matched by id; rows without a score on either side are left out).

    ``relative_margin`` reads ``margin`` as a share of the baseline mean (latency in ms).
    """
    ids = sorted(set(current) & set(baseline))
    cur = np.array([float(current[i]) for i in ids])
    base = np.array([float(baseline[i]) for i in ids])
    n = len(ids)
    binary = n > 0 and bool(np.all(np.isin(cur, (0.0, 1.0))) and np.all(np.isin(base, (0.0, 1.0))))
    sign = -1.0 if lower_is_better else 1.0
    alpha = 1 - confidence

    def result(outcome: Outcome, reason: str, **kw: Any) -> PairedComparison:
        fields: dict[str, Any] = dict(value=None, baseline=None, diff=None, low=None, high=None, p_worse=None)
        fields.update(kw)
        return PairedComparison(metric, n, margin=abs_margin, confidence=confidence, binary=binary,
                                outcome=outcome, reason=reason, **fields)

    base_mean = float(base.mean()) if n else None
    abs_margin = margin * abs(base_mean) if (relative_margin and base_mean is not None) else margin
    if n == 0:
        return result("inconclusive", "no row has this metric in both evaluations", needed_n=min_samples)
    d = cur - base
    low, high = bootstrap_mean_ci(d, confidence, resamples, seed)
    p_worse = None
    if binary:
        worse = int(np.sum(sign * d < 0))
        p_worse = mcnemar_worse_p(worse, int(np.sum(sign * d > 0)))
    stats = dict(value=float(cur.mean()), baseline=base_mean, diff=float(d.mean()), low=low, high=high,
                 p_worse=p_worse)
    # oriented: positive = better
    o_low, o_high = sorted((sign * low, sign * high))
    o_mean = sign * float(d.mean())
    small = n < min_samples
    if small:
        # a small set may still show a clear loss, but only an exact test says so (a bootstrap of a handful
        # of rows is too narrow): McNemar for rates, the sign test on the row differences otherwise
        p_exact = p_worse if binary else sign_test_worse_p(int(np.sum(sign * d < 0)), int(np.sum(sign * d > 0)))
        if p_exact < alpha / 2:
            return result("fail", f"significantly worse than the baseline on only {n} paired rows "
                          f"({'McNemar' if binary else 'sign test'} p={p_exact:.3g})", **stats)
        return result("inconclusive", f"{n} paired rows, fewer than min_samples={min_samples}",
                      needed_n=min_samples, **stats)
    if o_high < 0 or (p_worse is not None and p_worse < alpha / 2):
        why = (f"McNemar p={p_worse:.3g}" if p_worse is not None and p_worse < alpha / 2
               else f"{confidence:.0%} interval [{low:+.4f}, {high:+.4f}] excludes 0")
        return result("fail", f"significantly worse than the baseline ({why})", **stats)
    if o_high < -abs_margin:
        return result("fail", f"worse than the margin {abs_margin:.4g} with {confidence:.0%} confidence", **stats)
    if o_low > -abs_margin or (abs_margin == 0 and o_low == 0):
        return result("pass", f"non-inferior: the interval's worst end {sign * o_low:+.4f} is within the margin "
                      f"{abs_margin:.4g}", **stats)
    half = (o_high - o_low) / 2
    room = o_mean + abs_margin
    # the half-width shrinks like 1/sqrt(n): rows at which it would fit between the mean and the margin
    needed = max(n + 1, math.ceil(n * (half / room) ** 2)) if room > 0 and half > 0 else None
    more = (f"about {needed} paired rows would decide it" if needed else
            "the observed difference is beyond the margin; more rows would decide it either way")
    bound = -sign * abs_margin  # the margin on the metric's own scale (+ for lower-is-better)
    return result("inconclusive", f"the interval [{low:+.4f}, {high:+.4f}] crosses the margin {bound:+.4g}; "
                  + more, needed_n=needed, **stats)
