"""A/B statistics against scipy, closed forms and textbook values."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from loopstack.experiments import (ExperimentError, mde_means, mde_two_proportions, power_means,
                                   power_two_proportions, sample_ratio_mismatch, sample_size_means,
                                   sample_size_two_proportions, two_proportion_ztest, welch_ttest)


def test_two_proportion_ztest_closed_form():
    r = two_proportion_ztest(100, 1000, 130, 1000)
    pooled = 230 / 2000
    z = 0.03 / math.sqrt(pooled * (1 - pooled) * (2 / 1000))
    assert r.statistic == pytest.approx(z) and r.p_value == pytest.approx(2 * stats.norm.sf(abs(z)))
    se = math.sqrt(0.1 * 0.9 / 1000 + 0.13 * 0.87 / 1000)
    assert r.ci == pytest.approx((0.03 - 1.959964 * se, 0.03 + 1.959964 * se), rel=1e-6)
    assert r.relative_difference == pytest.approx(0.3) and r.significant
    assert r.relative_ci[0] < 0.3 < r.relative_ci[1]
    greater = two_proportion_ztest(100, 1000, 130, 1000, alternative="greater")
    assert greater.p_value == pytest.approx(r.p_value / 2)
    assert json.loads(json.dumps(r.to_dict()))["significant"] is True


def test_ztest_matches_chi2_without_correction():
    r = two_proportion_ztest(45, 500, 62, 520)
    table = np.array([[45, 455], [62, 458]])
    chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
    assert r.statistic ** 2 == pytest.approx(chi2) and r.p_value == pytest.approx(p)


def test_welch_matches_scipy_from_stats_and_raw_data():
    r = welch_ttest(50, 10.0, 4.0, 60, 11.0, 9.0)
    s = stats.ttest_ind_from_stats(11.0, 3.0, 60, 10.0, 2.0, 50, equal_var=False)
    assert r.statistic == pytest.approx(s.statistic) and r.p_value == pytest.approx(s.pvalue)
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 300), rng.normal(0.2, 2, 200)
    raw = stats.ttest_ind(b, a, equal_var=False)
    mine = welch_ttest(len(a), a.mean(), a.var(ddof=1), len(b), b.mean(), b.var(ddof=1))
    assert mine.p_value == pytest.approx(raw.pvalue) and mine.df == pytest.approx(raw.df)
    ci = raw.confidence_interval(0.95)
    assert mine.ci == pytest.approx((ci.low, ci.high))
    less = welch_ttest(len(a), a.mean(), a.var(ddof=1), len(b), b.mean(), b.var(ddof=1), alternative="less")
    assert less.p_value == pytest.approx(stats.ttest_ind(b, a, equal_var=False, alternative="less").pvalue)


def test_relative_ci_covers_the_true_lift_about_95_percent():
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(400):
        a, b = rng.normal(10, 3, 400), rng.normal(10.5, 3, 400)
        r = welch_ttest(400, a.mean(), a.var(ddof=1), 400, b.mean(), b.var(ddof=1))
        hits += r.relative_ci[0] <= 0.05 <= r.relative_ci[1]
    assert 0.92 <= hits / 400 <= 0.98


def test_textbook_sample_sizes():
    # 10 % -> 12 %, alpha 0.05 two-sided, 80 % power (Fleiss without continuity correction): 3841 per arm
    assert sample_size_two_proportions(0.10, 0.02) == (3841, 3841)
    assert sample_size_two_proportions(0.10, 0.20, relative=True) == (3841, 3841)
    # d = 0.5 standard deviations: 63 per group by the normal approximation (64 with the t correction)
    assert sample_size_means(1.0, 0.5) == (63, 63)
    # 2:1 allocation: n_control = 7.849 * (1 + 1/2) / 0.25 = 47.1; the unbalanced design needs more in total
    unequal = sample_size_means(1.0, 0.5, ratio=2.0)
    assert unequal == (48, 95) and unequal.total > 126


def test_power_and_mde_invert_sample_size():
    n = sample_size_two_proportions(0.05, 0.01, power=0.9).control
    assert power_two_proportions(0.05, 0.01, n) == pytest.approx(0.9, abs=0.002)
    assert mde_two_proportions(0.05, n, power=0.9) == pytest.approx(0.01, rel=0.01)
    assert mde_two_proportions(0.05, n, power=0.9, relative=True) == pytest.approx(0.2, rel=0.01)
    m = sample_size_means(2.0, 0.3, alpha=0.01).control
    assert power_means(2.0, 0.3, m, alpha=0.01) == pytest.approx(0.8, abs=0.002)
    assert mde_means(2.0, m, alpha=0.01) == pytest.approx(0.3, rel=0.01)
    assert power_means(1.0, 0.5, 63, alternative="greater") > power_means(1.0, 0.5, 63)


def test_power_matches_simulation():
    rng = np.random.default_rng(2)
    n, p1, p2 = 2000, 0.10, 0.125
    xa, xb = rng.binomial(n, p1, 4000), rng.binomial(n, p2, 4000)
    pooled = (xa + xb) / (2 * n)
    z = (xb - xa) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    simulated = (np.abs(z) > 1.959964).mean()
    assert power_two_proportions(p1, p2 - p1, n) == pytest.approx(simulated, abs=0.03)


def test_sample_ratio_mismatch_matches_scipy_chisquare():
    ok = sample_ratio_mismatch({"control": 5050, "treatment": 4950})
    assert ok.p_value == pytest.approx(stats.chisquare([5050, 4950]).pvalue) and not ok.mismatch
    bad = sample_ratio_mismatch({"control": 5300, "treatment": 4700})
    assert bad.mismatch and bad.p_value < 1e-8
    weighted = sample_ratio_mismatch({"a": 9000, "b": 1050}, {"a": 0.9, "b": 0.1})
    expected = stats.chisquare([9000, 1050], f_exp=[0.9 * 10050, 0.1 * 10050])
    assert weighted.statistic == pytest.approx(expected.statistic) and weighted.dof == 1
    three = sample_ratio_mismatch({"a": 100, "b": 100, "c": 160})
    assert three.dof == 2 and three.mismatch
    assert json.dumps(bad.to_dict())


def test_errors_name_the_problem():
    with pytest.raises(ExperimentError, match="successes"):
        two_proportion_ztest(11, 10, 1, 10)
    with pytest.raises(ExperimentError, match="n >= 2"):
        welch_ttest(1, 0.0, 1.0, 10, 0.0, 1.0)
    with pytest.raises(ExperimentError, match="alpha"):
        two_proportion_ztest(1, 10, 1, 10, alpha=5)
    with pytest.raises(ExperimentError, match="alternative"):
        welch_ttest(5, 0, 1, 5, 0, 1, alternative="bigger")
    with pytest.raises(ExperimentError, match="arms differ"):
        sample_ratio_mismatch({"a": 1}, {"b": 1})
    with pytest.raises(ExperimentError, match="cannot reach power"):
        mde_two_proportions(0.5, 5, power=0.99)
    with pytest.raises(ExperimentError, match=r"\(0, 1\)"):
        sample_size_two_proportions(0.95, 0.1)


@pytest.mark.parametrize("call, fragment", [
    (lambda: power_two_proportions(0.1, 0.02, 0), "n_control"),
    (lambda: power_two_proportions(0.1, 0.02, -5), "n_control"),
    (lambda: power_two_proportions(0.1, 0.02, 1000, ratio=0), "ratio"),
    (lambda: sample_size_two_proportions(0.1, 0.02, ratio=-1), "ratio"),
    (lambda: sample_size_two_proportions(0.1, 0.02, ratio=math.nan), "ratio"),
    (lambda: mde_two_proportions(0.1, 0), "n_control"),
    (lambda: mde_two_proportions(0.0, 1000), "baseline must be a proportion"),
    (lambda: power_means(1.0, 0.1, 0), "n_control"),
    (lambda: power_means(-1.0, 0.1, 100), "sd"),
    (lambda: power_means(1.0, math.nan, 100), "mde"),
    (lambda: sample_size_means(1.0, 0.1, ratio=-1), "ratio"),
    (lambda: sample_size_means(math.nan, 0.1), "sd"),
    (lambda: sample_size_means(1.0, math.nan), "mde"),
    (lambda: mde_means(-1.0, 100), "sd"),
    (lambda: mde_means(1.0, 0), "n_control"),
])
def test_planning_refuses_empty_arms_and_impossible_ratios(call, fragment):
    """A sample size of 0, a ratio <= 0 or a negative sd was a ZeroDivisionError, or a silent answer
    (SampleSize(0, 0) for ratio=-1, a negative MDE for sd=-1)."""
    with pytest.raises(ExperimentError, match=fragment):
        call()


@pytest.mark.parametrize("call, fragment", [
    (lambda: two_proportion_ztest(1.5, 10, 2, 10), "successes must be a whole number"),
    (lambda: two_proportion_ztest(1, math.nan, 2, 10), "n must be a whole number"),
    (lambda: welch_ttest(10, math.nan, 1.0, 10, 1.0, 1.0), "mean must be a finite number"),
    (lambda: welch_ttest(math.nan, 0.0, 1.0, 10, 1.0, 1.0), "n must be a whole number"),
    (lambda: sample_ratio_mismatch({"a": math.nan, "b": 10}), "count of arm 'a'"),
    (lambda: sample_ratio_mismatch({"a": 10.5, "b": 10}), "count of arm 'a'"),
])
def test_tests_refuse_fractional_counts_and_nan_means(call, fragment):
    """1.5 successes was tested as if real, a NaN mean gave a result of Nones marked not significant."""
    with pytest.raises(ExperimentError, match=fragment):
        call()
