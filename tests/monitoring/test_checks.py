"""Data-layer and model-layer checks, calibration (ECE and curve) against sklearn."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve as sk_calibration_curve

from loopstack.monitoring import (CalibrationBins, MonitoringError, Profile, calibration_curve, data_checks,
                                  expected_calibration_error, high_score_share, mean_score_shift, score_drift,
                                  share_above)


@pytest.fixture
def reference():
    rng = np.random.default_rng(0)
    n = 20_000
    df = pd.DataFrame({"x": rng.normal(0, 1, n), "c": rng.choice(["a", "b", "c"], n)})
    df.loc[:199, "x"] = np.nan                          # 1 % nulls
    return Profile().fit(df, scores=rng.beta(1, 8, n))


def window(ref: Profile, n: int, seed: int, *, nulls: float = 0.01, x_shift: float = 0.0, cats=("a", "b", "c"),
           score_beta=(1, 8)) -> Profile:
    rng = np.random.default_rng(seed)
    x = rng.normal(x_shift, 1, n)
    x[rng.random(n) < nulls] = np.nan
    df = pd.DataFrame({"x": x, "c": rng.choice(list(cats), n)})
    return ref.empty().update(df, scores=rng.beta(*score_beta, n))


def by(results, check, column):
    return next(r for r in results if r.check == check and r.column == column)


def test_healthy_window_passes_every_data_check(reference):
    results = data_checks(reference, window(reference, 5000, 1))
    assert [r.status for r in results] == ["ok"] * 4, [r.to_dict() for r in results]


def test_null_spike_out_of_range_and_unseen_categories_alert(reference):
    results = data_checks(reference, window(reference, 5000, 2, nulls=0.2, x_shift=5, cats=("a", "zz")))
    nulls = by(results, "null_rate", "x")
    assert nulls.alert and nulls.value == pytest.approx(0.2, abs=0.02) and nulls.reference == pytest.approx(0.01)
    rng_check = by(results, "out_of_range", "x")
    assert rng_check.alert and rng_check.value > 0.3 and "above" in rng_check.detail
    unseen = by(results, "unseen_categories", "c")
    assert unseen.alert and unseen.value == pytest.approx(0.5, abs=0.03) and "'zz'" in unseen.detail


@pytest.mark.parametrize("kwargs", [{"max_null_increase": float("nan")}, {"max_out_of_range": float("nan")},
                                    {"max_unseen": float("nan")}, {"max_null_increase": -0.01},
                                    {"max_out_of_range": "0.01"}, {"max_unseen": 2}])
def test_bad_data_check_tolerances_are_refused(reference, kwargs):
    # NaN made every check "ok" even on a broken window; a negative tolerance alerted on a healthy one
    bad = window(reference, 5000, 2, nulls=0.2, x_shift=5, cats=("a", "zz"))
    with pytest.raises(MonitoringError, match=f"{next(iter(kwargs))} = .* must be"):
        data_checks(reference, bad, **kwargs)


@pytest.mark.parametrize("call", [
    lambda r, w: mean_score_shift(r, w, max_shift=float("nan")),      # never alerted
    lambda r, w: mean_score_shift(r, w, alpha=5),                      # every shift "significant"
    lambda r, w: high_score_share(r, w, max_change=float("nan")),     # never alerted
    lambda r, w: high_score_share(r, w, threshold=float("nan")),      # IndexError traceback
    lambda r, w: share_above(r.scores, float("nan")),                  # IndexError traceback
])
def test_bad_model_check_parameters_are_refused(reference, call):
    with pytest.raises(MonitoringError, match="must be|needs"):
        call(reference, window(reference, 5000, 4, score_beta=(1, 3)))
    assert share_above(reference.scores, float("inf")) == 0.0 and share_above(reference.scores, -np.inf) == 1.0


def test_unseen_is_unknown_when_the_reference_vocabulary_was_truncated():
    ref = Profile(max_categories=2).fit(pd.DataFrame({"c": ["a", "a", "b", "c"]}))
    results = data_checks(ref, ref.empty().update(pd.DataFrame({"c": ["q"]})))
    assert by(results, "unseen_categories", "c").status == "unknown"


def test_score_distribution_shift_is_caught(reference):
    calm = window(reference, 5000, 3)
    shifted = window(reference, 5000, 4, score_beta=(1, 3))        # mean score 0.11 -> 0.25
    assert not score_drift(reference, calm).drifted
    assert score_drift(reference, shifted).drifted
    assert mean_score_shift(reference, calm).status == "ok"
    shift = mean_score_shift(reference, shifted)
    assert shift.alert and shift.value - shift.reference == pytest.approx(0.14, abs=0.01) and shift.p_value < 1e-6


def test_share_of_high_scores_exact_and_interpolated(reference):
    hot = window(reference, 4000, 5, score_beta=(8, 1))           # most scores above 0.9
    check = high_score_share(reference, hot)
    assert check.alert and "interpolated" not in check.detail
    rng = np.random.default_rng(5)
    assert check.value == pytest.approx((rng.beta(8, 1, 4000) > 0.9).mean(), abs=0.03)
    scores = np.random.default_rng(9).beta(2, 3, 20_000)
    s = Profile().fit({"x": np.zeros(20_000)}, scores=scores).scores
    assert share_above(s, 0.9) == (scores > 0.9).mean()          # tracked threshold: exact
    assert share_above(s, 0.3) == pytest.approx((scores > 0.3).mean(), abs=0.005)   # linear inside its bin
    assert share_above(s, -1) == 1.0 and share_above(s, 2) == 0.0


def test_model_checks_need_scores():
    ref = Profile().fit(pd.DataFrame({"x": [1.0, 2.0]}))
    with pytest.raises(MonitoringError, match="scores"):
        mean_score_shift(ref, ref.empty())


def test_ece_and_curve_match_sklearn_and_merge():
    rng = np.random.default_rng(0)
    s = rng.random(20_000)
    y = (rng.random(20_000) < s ** 1.5).astype(int)              # over-confident model
    frac_pos, mean_pred = sk_calibration_curve(y, s, n_bins=10, strategy="uniform")
    curve = calibration_curve(s, y, bins=10)
    assert np.allclose(curve["observed_rate"], frac_pos) and np.allclose(curve["mean_predicted"], mean_pred)
    counts = np.array(curve["count"])
    ece_by_hand = np.sum(counts / counts.sum() * np.abs(frac_pos - mean_pred))
    assert expected_calibration_error(s, y) == pytest.approx(ece_by_hand)
    merged = CalibrationBins.from_arrays(s[:7000], y[:7000]) + CalibrationBins.from_arrays(s[7000:], y[7000:])
    assert expected_calibration_error(merged) == pytest.approx(expected_calibration_error(s, y))
    calibrated = (rng.random(20_000) < s).astype(int)
    assert expected_calibration_error(s, calibrated) < 0.02 < expected_calibration_error(s, y)
    assert CalibrationBins.from_dict(merged.to_dict()).count.tolist() == merged.count.tolist()


def test_calibration_input_errors():
    with pytest.raises(MonitoringError, match="one label per score"):
        expected_calibration_error([0.1, 0.2], [1])
    with pytest.raises(MonitoringError, match=r"\[0, 1\]"):
        expected_calibration_error([1.5], [1])
    with pytest.raises(MonitoringError, match="0/1"):
        expected_calibration_error([0.5], [2])
