"""Each drift statistic against scipy or a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st

from llmops.monitoring import stats


@pytest.fixture
def samples():
    rng = np.random.default_rng(42)
    return rng.normal(0, 1, 800), rng.normal(0.3, 1.2, 600)


def test_ks_matches_scipy(samples):
    a, b = samples
    res = stats.ks(a, b, 0.05)
    ref = st.ks_2samp(a, b)
    assert res.statistic == pytest.approx(ref.statistic) and res.p_value == pytest.approx(ref.pvalue)
    assert res.drifted == (ref.pvalue < 0.05)


def test_wasserstein_normed_matches_scipy_and_handles_constants(samples):
    a, b = samples
    res = stats.wasserstein_normed(a, b)
    assert res.statistic == pytest.approx(st.wasserstein_distance(a, b) / np.std(a))
    # hand example: shift by 2 with std 1 -> distance 2
    x = np.array([-1.0, 1.0])
    assert stats.wasserstein_normed(x, x + 2).statistic == pytest.approx(2.0)
    assert stats.wasserstein_normed(np.ones(5), np.ones(3)).statistic == 0.0
    assert stats.wasserstein_normed(np.ones(5), np.full(3, 2.0)).drifted


def test_psi_hand_computed():
    r = np.array([50.0, 30.0, 20.0])
    c = np.array([30.0, 30.0, 40.0])
    expected = sum((ci - ri) * np.log(ci / ri) for ri, ci in [(0.5, 0.3), (0.3, 0.3), (0.2, 0.4)])
    assert stats.psi(r, c).statistic == pytest.approx(expected)
    assert stats.psi(r, r).statistic == pytest.approx(0.0)


def test_jensen_shannon_hand_computed():
    p, q = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert stats.jensen_shannon(p, q).statistic == pytest.approx(np.sqrt(np.log(2)))  # disjoint, natural log
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    m = (p + q) / 2
    kl = lambda x, y: np.sum(x * np.log(x / y))  # noqa: E731
    assert stats.jensen_shannon(p * 10, q * 10).statistic == pytest.approx(np.sqrt((kl(p, m) + kl(q, m)) / 2))


def test_chi_squared_matches_scipy_and_z_test():
    r, c = np.array([30.0, 50.0, 20.0]), np.array([45.0, 35.0, 20.0])
    res = stats.chi_squared(r, c)
    ref = st.chi2_contingency(np.vstack([r, c]), correction=False)
    assert res.statistic == pytest.approx(ref.statistic) and res.p_value == pytest.approx(ref.pvalue)
    # binary: equals the two-proportion z-test
    r2, c2 = np.array([60.0, 40.0]), np.array([45.0, 55.0])
    p1, p2 = 0.6, 0.45
    pooled = (60 + 45) / 200
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1 / 100 + 1 / 100))
    assert stats.chi_squared(r2, c2).p_value == pytest.approx(2 * st.norm.sf(abs(z)))
    # one category only: nothing to test
    assert stats.chi_squared(np.array([5.0, 0.0]), np.array([7.0, 0.0])).p_value == 1.0


def test_binned_versions_agree_with_exact_on_large_samples():
    rng = np.random.default_rng(7)
    a, b = rng.normal(0, 1, 200_000), rng.normal(0.1, 1.1, 150_000)
    edges = stats.quantile_edges(a, 1000)
    ra, rb = stats.histogram(a, edges), stats.histogram(b, edges)
    assert stats.ks_binned(ra, rb).statistic == pytest.approx(st.ks_2samp(a, b).statistic, abs=2e-3)
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    wb = stats.wasserstein_binned(ra, rb, edges, lo, hi, float(np.std(a))).statistic
    assert wb == pytest.approx(stats.wasserstein_normed(a, b).statistic, rel=0.03)
    merged = stats.merge_bins(ra, rb, 10)
    assert stats.psi(*merged).statistic == pytest.approx(stats.psi_samples(a, b).statistic, rel=0.05)


def test_psi_by_hand():
    # shares 0.5/0.5 -> 0.25/0.75: (0.25-0.5)*ln(0.5) + (0.75-0.5)*ln(1.5) = 0.17329 + 0.10137
    assert stats.psi(np.array([50.0, 50.0]), np.array([25.0, 75.0])).statistic == pytest.approx(0.27465, abs=1e-5)
    assert stats.psi(np.array([10.0, 30.0]), np.array([1.0, 3.0])).statistic == pytest.approx(0.0)
    # an empty bin is smoothed, not infinite
    assert 0 < stats.psi(np.array([10.0, 0.0]), np.array([5.0, 5.0])).statistic < 20


def test_histogram_bins_are_open_at_the_ends():
    edges = np.array([1.0, 2.0])
    assert stats.histogram(np.array([-5.0, 1.0, 1.5, 2.0, 9.0]), edges).tolist() == [1, 2, 2]
