"""Statistics helpers against independent computations (scipy, numpy)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from headlens.analysis.stats import bootstrap_ci, bootstrap_indices, mean_ci, normalised_area, spearman


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = rng.integers(0, 6, size=15).astype(float)
        b = a * 0.5 + rng.normal(size=15)
        assert spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0


def test_bootstrap_ci_matches_scipy_percentile_bootstrap():
    x = np.random.default_rng(2).exponential(size=40)
    low, high = bootstrap_ci(x, n_boot=20000, seed=3)
    ref = scipy.stats.bootstrap((x,), np.mean, n_resamples=20000, method="percentile",
                                random_state=np.random.default_rng(4)).confidence_interval
    assert low == pytest.approx(ref.low, abs=0.02)
    assert high == pytest.approx(ref.high, abs=0.02)
    assert low < x.mean() < high


def test_bootstrap_ci_of_rows_equals_per_row_and_explicit_loop():
    v = np.random.default_rng(5).normal(size=(3, 12))
    low, high = bootstrap_ci(v, n_boot=500, seed=7)
    idx = bootstrap_indices(12, 500, seed=7)
    for r in range(3):
        means = [v[r, row].mean() for row in idx]
        assert low[r] == pytest.approx(np.quantile(means, 0.025))
        assert high[r] == pytest.approx(np.quantile(means, 0.975))
        lo_r, hi_r = bootstrap_ci(v[r], n_boot=500, seed=7)
        assert (lo_r, hi_r) == pytest.approx((low[r], high[r]))
    m, lo, hi = mean_ci(v, n_boot=500, seed=7)
    np.testing.assert_allclose(m, v.mean(axis=1))
    np.testing.assert_allclose(lo, low)
    np.testing.assert_allclose(hi, high)


def test_bootstrap_ci_custom_statistic_and_coverage():
    rng = np.random.default_rng(8)
    hits = 0
    for _ in range(200):
        x = rng.normal(loc=1.0, size=30)
        lo, hi = bootstrap_ci(x, n_boot=400, seed=int(rng.integers(1 << 30)))
        hits += lo <= 1.0 <= hi
    assert 0.85 <= hits / 200 <= 0.99  # nominal 95 %, percentile bootstrap is a little narrow at n = 30
    # a skewed sample whose median (1) and mean (≈ 9) differ: the CI must be the median's, from the same resamples
    x = np.array([0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 40.0, 50.0, 0.8, 1.2, 0.9])
    med_lo, med_hi = bootstrap_ci(x, statistic=lambda a: np.median(a, axis=-1), n_boot=300, seed=4)
    meds = [np.median(x[row]) for row in bootstrap_indices(len(x), 300, seed=4)]
    assert (med_lo, med_hi) == pytest.approx((np.quantile(meds, 0.025), np.quantile(meds, 0.975)))
    assert med_hi < x.mean() < bootstrap_ci(x, n_boot=300, seed=4)[1]  # the mean's interval reaches far higher
    with pytest.raises(ValueError, match="confidence level"):
        bootstrap_ci(np.ones(3), level=95)


def test_normalised_area_is_mean_gap():
    ks = np.array([0, 1, 11, 21, 22])
    up, low = np.array([0.3, 0.3, 0.29, 0.2, 0.18]), np.array([0.3, 0.25, 0.15, 0.12, 0.18])
    expected = np.trapezoid(up - low, ks) / 22
    assert normalised_area(ks, up, low) == pytest.approx(expected)
    assert normalised_area([0, 5, 10], [1, 1, 1], [0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert normalised_area(ks, low, up) == pytest.approx(-expected)
    batch = normalised_area(ks, np.stack([up, low]), np.stack([low, up]))
    np.testing.assert_allclose(batch, [expected, -expected])
    with pytest.raises(ValueError, match="same length"):
        normalised_area([0, 1], [1, 2, 3], [1, 2, 3])
