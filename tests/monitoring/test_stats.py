"""Drift statistics against scipy and closed forms, plus their defining properties."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from loopstack.monitoring import MonitoringError
from loopstack.monitoring.stats import chi2_test, js_distance, ks_2samp, ks_binned, ks_pvalue, ks_statistic_sorted, psi


def test_psi_closed_form_and_properties():
    p, q = [50, 30, 20], [40, 30, 30]
    expected = (0.4 - 0.5) * math.log(0.4 / 0.5) + 0 + (0.3 - 0.2) * math.log(0.3 / 0.2)
    assert psi(p, q) == pytest.approx(expected)
    assert psi(p, q) == pytest.approx(psi(q, p))                 # symmetric
    assert psi(p, [5, 3, 2]) == pytest.approx(0.0, abs=1e-15)     # identical proportions
    assert psi([0, 10], [0, 10]) == 0.0


def test_psi_epsilon_smoothing_keeps_empty_bins_finite():
    value = psi([100, 0], [90, 10], eps=1e-4)
    expected = (0.9 - 1.0) * math.log(0.9) + (0.1 - 1e-4) * math.log(0.1 / 1e-4)
    assert value == pytest.approx(expected) and math.isfinite(value)
    assert math.isnan(psi([0, 0], [1, 2]))


def test_js_distance_matches_scipy_and_is_symmetric_and_bounded():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, q = rng.integers(0, 50, 8), rng.integers(0, 50, 8)
        p[0] += 1
        q[0] += 1
        assert js_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2), abs=1e-12)
        assert js_distance(p, q) == pytest.approx(js_distance(q, p))
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_distance([3, 4], [6, 8]) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("n1,n2", [(50, 80), (3000, 2000), (20_000, 15_000)])
def test_exact_ks_matches_scipy(n1, n2):
    rng = np.random.default_rng(n1)
    a, b = rng.normal(size=n1), rng.normal(0.05, 1.1, size=n2)
    mine = ks_2samp(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = stats.ks_2samp(a, b) if max(n1, n2) <= 10_000 else stats.ks_2samp(a, b, method="asymp")
    assert mine.statistic == pytest.approx(ref.statistic, abs=1e-12)
    assert mine.p_value == pytest.approx(ref.pvalue, rel=0.01, abs=1e-12)
    srt = ks_2samp(np.sort(a), b, reference_sorted=True)
    assert srt.statistic == mine.statistic


@pytest.mark.filterwarnings("ignore::RuntimeWarning")     # scipy's asymp p-value on tiny samples
def test_fast_ks_statistic_handles_ties_exactly():
    rng = np.random.default_rng(1)
    for trial in range(400):
        n1, n2 = rng.integers(1, 40, 2)
        k = rng.integers(1, 6)
        a, b = rng.integers(0, k, n1).astype(float), rng.integers(0, k, n2).astype(float)
        if trial % 2:
            a, b = rng.normal(size=n1), rng.normal(0.3, 1, size=n2)
        expected = stats.ks_2samp(a, b, method="asymp").statistic
        assert ks_statistic_sorted(np.sort(a), np.sort(b)) == pytest.approx(expected, abs=1e-12)


def test_large_sample_ks_pvalue_is_close_to_scipy_kstwo():
    assert ks_pvalue(0.004217, 1_000_000, 1_000_000) == pytest.approx(3.773e-8, rel=0.01)
    assert ks_pvalue(0.01, 100_000, 100_000) == pytest.approx(stats.kstwo.sf(0.01, 50_000), rel=0.01)


def test_binned_ks_is_a_lower_bound_with_a_conservative_p_value():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=5000), rng.normal(0.1, 1, size=5000)
    edges = np.quantile(a, np.linspace(0, 1, 11))
    ca = np.histogram(a, edges)[0]
    cb = np.histogram(np.clip(b, edges[0], edges[-1]), edges)[0]
    approx, exact = ks_binned(ca, cb), ks_2samp(a, b)
    assert approx.statistic <= exact.statistic + 1e-12 and approx.statistic > 0.5 * exact.statistic
    assert approx.p_value >= exact.p_value


def test_chi2_homogeneity_matches_scipy_contingency():
    ref, cur = np.array([500, 300, 150, 50]), np.array([480, 290, 190, 40])
    mine = chi2_test(ref, cur)
    stat, p, dof, _ = stats.chi2_contingency(np.vstack([ref, cur]), correction=False)
    assert (mine.statistic, mine.p_value, mine.dof) == (pytest.approx(stat), pytest.approx(p), dof)
    zero = chi2_test([10, 0, 5], [8, 0, 7])                       # a category empty on both sides is dropped
    assert zero.dof == 1


def test_chi2_goodness_of_fit_matches_scipy_chisquare():
    ref, cur = np.array([500, 300, 200]), np.array([45, 35, 20])
    mine = chi2_test(ref, cur, reference_is_fixed=True)
    r = stats.chisquare(cur, f_exp=ref / ref.sum() * cur.sum())
    assert mine.statistic == pytest.approx(r.statistic) and mine.p_value == pytest.approx(r.pvalue)


def test_bad_counts_are_rejected():
    with pytest.raises(MonitoringError, match="same bins"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(MonitoringError, match="non-negative"):
        js_distance([1, -2], [1, 2])
