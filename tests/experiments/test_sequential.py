"""mSPRT: closed form, always-valid p-values under hourly peeking, confidence sequences, state."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from scipy.integrate import trapezoid

from loopstack.experiments import (ExperimentError, SequentialTest, always_valid_p_values, msprt_log_lr,
                                   simulate_false_positive_rate)
from loopstack.experiments.sequential import confidence_halfwidth


def test_log_lr_closed_form_equals_the_mixture_integral():
    # Lambda = integral of N(d; theta, v) N(theta; 0, tau^2) dtheta / N(d; 0, v) (numerically)
    d, v, tau = 0.3, 0.01, 0.2
    theta = np.linspace(-3, 3, 200_001)
    like = np.exp(-(d - theta) ** 2 / (2 * v)) / np.sqrt(2 * np.pi * v)
    prior = np.exp(-theta ** 2 / (2 * tau ** 2)) / np.sqrt(2 * np.pi * tau ** 2)
    mixture = trapezoid(like * prior, theta)
    null = np.exp(-d ** 2 / (2 * v)) / np.sqrt(2 * np.pi * v)
    assert float(msprt_log_lr(d, v, tau)) == pytest.approx(math.log(mixture / null), rel=1e-6)


def test_confidence_sequence_is_the_inversion_of_the_test():
    d, v, tau, alpha = 0.3, 0.01, 0.2, 0.05
    w = float(confidence_halfwidth(v, tau, alpha))
    for theta0 in (d - w, d + w):                     # on the boundary Lambda(theta0) = 1/alpha
        assert float(msprt_log_lr(d, v, tau, theta0)) == pytest.approx(math.log(1 / alpha))


def test_p_values_only_go_down():
    p = always_valid_p_values([0.0, 1.0, 0.5, 3.0, 2.0])
    assert p.tolist() == pytest.approx([1.0, math.exp(-1), math.exp(-1), math.exp(-3), math.exp(-3)])


@pytest.mark.parametrize("metric", ["mean", "proportion"])
def test_hourly_peeking_keeps_the_false_positive_rate_at_alpha(metric):
    t0 = time.perf_counter()
    r = simulate_false_positive_rate(n_sims=10_000, looks=50, n_per_look=200, metric=metric, seed=7)
    elapsed = time.perf_counter() - t0
    tolerance = 3 * r.mc_se                                       # Monte-Carlo slack (~0.0065)
    assert r.msprt <= r.alpha + tolerance, r                      # always valid under 50 looks
    assert abs(r.fixed_horizon - r.alpha) <= tolerance, r         # one look: nominal
    assert r.naive >= 0.2, r                                      # peeking a t/z test: ~30 %, > 4x alpha
    assert elapsed < 10


def test_msprt_still_finds_a_real_effect():
    r = simulate_false_positive_rate(n_sims=2000, looks=50, n_per_look=200, effect=0.05, seed=3)
    assert r.msprt > 0.6                                          # power, at the price of validity
    assert r.naive > r.msprt


def test_sequential_test_object_over_looks_and_its_state():
    rng = np.random.default_rng(0)
    test = SequentialTest(tau=0.02, alpha=0.05)
    xa = xb = na = nb = 0
    decided_at = None
    for look in range(1, 49):                                     # hourly looks at a conversion rate
        na += 1000
        nb += 1000
        xa += rng.binomial(1000, 0.10)
        xb += rng.binomial(1000, 0.115)
        r = test.update_proportions(xa, na, xb, nb)
        if r.significant and decided_at is None:
            decided_at = look
    assert decided_at is not None and r.ci[0] > 0                 # the 1.5-point lift is found, CI excludes 0
    assert r.ci[0] <= 0.015 <= r.ci[1]
    restored = SequentialTest.from_dict(json.loads(json.dumps(test.to_dict())))
    assert restored.p_value == test.p_value and restored.looks == 48 and restored.ci == pytest.approx(test.ci)
    nxt = restored.update_proportions(xa + 100, na + 1000, xb + 120, nb + 1000)
    assert nxt.p_value <= r.p_value and nxt.looks == 49


def test_sequential_errors_and_burn_in():
    with pytest.raises(ExperimentError, match="tau"):
        SequentialTest(tau=0)
    t = SequentialTest(tau=0.1, min_samples=100)
    r = t.update(50, 0.0, 1.0, 50, 5.0, 1.0)                      # huge effect but before the burn-in
    assert r.p_value == 1.0 and not r.significant
    with pytest.raises(ExperimentError, match="cumulative"):
        t.update(40, 0.0, 1.0, 40, 0.0, 1.0)


@pytest.mark.parametrize("call, fragment", [
    (lambda: SequentialTest(0.1, min_samples=0).update(0, 0.0, 1.0, 0, 0.0, 1.0), "min_samples"),
    (lambda: SequentialTest(0.1, min_samples=1).update(10, 0.0, -1.0, 10, 1.0, -1.0), "variance must be >= 0"),
    (lambda: SequentialTest(0.1, min_samples=1).update(10, math.nan, 1.0, 10, 1.0, 1.0), "mean must be a finite"),
    (lambda: SequentialTest(0.1).update(-1, 0.0, 1.0, 10, 1.0, 1.0), "n must be a whole number"),
    (lambda: msprt_log_lr(1.0, 1.0, math.nan), "tau"),
    (lambda: confidence_halfwidth(1.0, 1.0, 0.0), "alpha"),
    (lambda: simulate_false_positive_rate(n_sims=0, looks=2), "n_sims"),
    (lambda: simulate_false_positive_rate(n_sims=5, looks=0), "looks"),
    (lambda: simulate_false_positive_rate(n_sims=5, looks=3, n_per_look=1), "n_per_look"),
    (lambda: simulate_false_positive_rate(n_sims=5, looks=3, alpha=2), "alpha"),
    (lambda: simulate_false_positive_rate(n_sims=5, looks=3, metric="proportion", baseline=0.9, effect=0.2),
     "baseline"),
])
def test_sequential_refuses_impossible_looks(call, fragment):
    """min_samples=0 with an empty arm was a ZeroDivisionError; a negative variance or NaN mean was read as
    "no evidence yet"; n_sims=0 returned NaN rates; looks=0 an IndexError; alpha=2 a 100 % "rejection" rate."""
    with pytest.raises(ExperimentError, match=fragment):
        call()
