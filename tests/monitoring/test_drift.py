"""Drift detection: bands, the estimator API, profile-only scoring, power and no false alarms."""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from loopstack.monitoring import (DataDriftDetector, MonitoringError, Profile, Thresholds, column_drift,
                                  score_profile)
from loopstack.registry.profile import build_profile

CATS = np.array(["US", "DE", "FR", "GB", "IN"], dtype=object)


def frame(n: int, seed: int, *, shift: float = 0.0, cat_p=(0.4, 0.25, 0.15, 0.1, 0.1)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "amount": rng.lognormal(3 + shift, 1, n),
        "length": rng.normal(100 + 30 * shift, 20, n),
        "urls": rng.poisson(1 + shift, n),
        "country": rng.choice(CATS, size=n, p=cat_p),
    })


def test_bands_follow_the_configured_thresholds():
    th = Thresholds()
    assert [th.band("psi", v, None) for v in (0.05, 0.1, 0.15, 0.2, 0.21)] == \
        ["stable", "watch", "watch", "watch", "act"]
    assert th.band("ks", 0.3, 0.01) == "act" and th.band("ks", 0.3, 0.2) == "stable"
    assert th.band("psi", float("nan"), None) == "no_data"
    custom = Thresholds.from_config({"psi": {"watch": 0.05, "act": 0.5}, "ks_alpha": 0.001})
    assert custom.band("psi", 0.3, None) == "watch" and custom.band("ks", 0.1, 0.01) == "stable"
    with pytest.raises(MonitoringError, match="watch <= act"):
        Thresholds(psi=(0.3, 0.1))
    with pytest.raises(MonitoringError, match="unknown drift threshold"):
        Thresholds.from_config({"psy": 0.1})


@pytest.mark.parametrize("kwargs", [
    {"psi": 0.2},                          # a scalar: TypeError 'float' object is not iterable
    {"psi": "0.1"},                        # a string: ValueError could not convert '.'
    {"psi": "12"},                         # a string that happened to parse as (1.0, 2.0)
    {"psi": (0.1, float("inf"))},          # accepted: the act band could never fire
    {"ks_alpha": "x"},                     # ValueError could not convert string to float
    {"chi2_alpha": None},                  # TypeError
])
def test_bad_threshold_values_are_monitoring_errors(kwargs):
    with pytest.raises(MonitoringError, match="thresholds"):
        Thresholds(**kwargs)
    with pytest.raises(MonitoringError, match="thresholds"):
        Thresholds.from_config(kwargs)


def test_bad_threshold_config_shapes_are_monitoring_errors():
    with pytest.raises(MonitoringError, match="'watch' and 'act'"):   # was KeyError: 'act'
        Thresholds.from_config({"psi": {"watch": 0.1}})
    with pytest.raises(MonitoringError, match="'watch' and 'act'"):   # a typo was silently dropped
        Thresholds.from_config({"psi": {"watch": 0.1, "act": 0.3, "acts": 0.5}})
    with pytest.raises(MonitoringError, match="must be a mapping"):
        Thresholds.from_config([0.1, 0.2])
    assert Thresholds(ks_alpha=np.float32(0.01)).ks_alpha == pytest.approx(0.01)


def test_identical_data_scores_zero_and_stable():
    ref = frame(5000, 0)
    report = DataDriftDetector().fit(ref).score(ref)
    for col in report:
        assert col.band == "stable" and not col.drifted
        assert col["psi"].statistic == pytest.approx(0.0, abs=1e-12)
        assert col["js"].statistic == pytest.approx(0.0, abs=1e-6)
    assert report["amount"]["ks"].statistic == 0.0 and report["amount"]["ks"].approximate is False


def test_no_false_alarm_on_same_distribution_data():
    det = DataDriftDetector().fit(frame(50_000, 1))
    report = det.score(frame(20_000, 2))
    assert report.drifted_columns == [], report.to_frame()
    assert all(r.band == "stable" for r in report)
    assert all(r["psi"].statistic < 0.01 for r in report)


def test_detects_shifted_data_in_every_column():
    det = DataDriftDetector().fit(frame(50_000, 1))
    report = det.score(frame(20_000, 3, shift=0.5, cat_p=(0.1, 0.1, 0.2, 0.3, 0.3)))
    assert report.drifted_columns == ["amount", "length", "urls", "country"]
    assert report["amount"]["psi"].statistic > 0.2 and report["amount"]["ks"].p_value < 1e-6
    assert report["country"]["chi2"].p_value < 1e-6 and report["country"]["psi"].band == "act"
    assert report.share_drifted == 1.0


def test_small_shift_lands_in_the_watch_band():
    det = DataDriftDetector(columns=["length"], methods=["psi"]).fit(frame(100_000, 1))
    report = det.score(frame(100_000, 4, shift=0.3))     # mean +9 on sd 20: PSI ~ 0.19
    assert report["length"].band == "watch", report["length"]["psi"].statistic


def test_profile_only_scoring_needs_no_raw_data_and_agrees():
    ref_df, cur_df = frame(50_000, 1), frame(20_000, 3, shift=0.5)
    det = DataDriftDetector().fit(ref_df)
    stored = json.loads(json.dumps(det.reference_.to_dict()))          # as kept in the metadata store
    window = Profile.from_dict(stored).empty()
    for chunk in np.array_split(np.arange(len(cur_df)), 7):            # batches arrive over the hour
        window.update(cur_df.iloc[chunk])
    from_profiles = score_profile(stored, window.to_dict())
    from_raw = det.score(cur_df)
    assert from_profiles.flags() == from_raw.flags()
    assert from_profiles["amount"]["ks"].approximate and not from_raw["amount"]["ks"].approximate
    for c in ("amount", "length", "urls", "country"):
        assert from_profiles[c]["psi"].statistic == pytest.approx(from_raw[c]["psi"].statistic)


def test_detector_accepts_a_registry_profile():
    ref_df = frame(20_000, 1)
    det = DataDriftDetector().fit(build_profile(ref_df))
    same, shifted = det.score(frame(5000, 5)), det.score(frame(5000, 6, shift=0.5))
    assert not same["length"].drifted and shifted["length"].drifted
    assert same["length"]["ks"].approximate


def test_methods_apply_by_column_kind_and_report_is_json():
    report = DataDriftDetector(methods=["psi", "ks", "ks_binned", "chi2", "js"]).fit(frame(2000, 1)).score(
        frame(2000, 2))
    assert set(report["amount"].results) == {"psi", "ks", "ks_binned", "js"}
    assert set(report["country"].results) == {"psi", "chi2", "js"}
    text = json.dumps(report.to_dict(), allow_nan=False)
    assert "amount" in text
    df = report.to_frame()
    assert len(df) == 4 * 3 + 3 and set(df["band"]) <= {"stable", "watch", "act"}


def test_unseen_category_raises_psi_and_chi2():
    ref = pd.DataFrame({"c": ["a"] * 500 + ["b"] * 500})
    cur = pd.DataFrame({"c": ["a"] * 450 + ["b"] * 450 + ["new"] * 100})
    report = DataDriftDetector().fit(ref).score(cur)
    assert report["c"].drifted and report["c"]["psi"].statistic > 0.5


def test_empty_window_is_no_data_not_a_false_alarm():
    det = DataDriftDetector().fit(frame(1000, 1))
    window = det.reference_.empty()
    report = det.score(window)
    assert all(r.band == "no_data" and not r.drifted for r in report)


def test_errors():
    det = DataDriftDetector()
    with pytest.raises(MonitoringError, match="not fitted"):
        det.score(frame(10, 1))
    with pytest.raises(MonitoringError, match="unknown drift methods"):
        DataDriftDetector(methods=["wasserstein"])
    a = Profile().fit(frame(100, 1))
    b = Profile(bins=4).fit(frame(100, 1))
    with pytest.raises(MonitoringError, match="bin edges"):
        column_drift("amount", a["amount"], b["amount"])
    with pytest.raises(MonitoringError, match="not in both"):
        score_profile(a, b, columns=["nope"])


def test_one_column_name_as_a_string_is_that_column_not_its_letters():
    # columns="amount" was read as ["a", "m", "o", ...]: "columns are not in the data"/"not in both profiles";
    # categorical="urls" became {"u", "r", "l", "s"} and urls stayed numeric
    ref, cur = frame(2000, 1), frame(2000, 2, shift=1.0)
    det = DataDriftDetector(columns="amount").fit(ref)
    assert list(det.score(cur).columns) == ["amount"] and det.score(cur)["amount"].drifted
    assert DataDriftDetector(categorical="urls").fit(ref).reference_["urls"].kind == "categorical"
    a, b = Profile(columns="length").fit(ref), Profile().fit(ref).empty().update(cur)
    assert list(a.features) == ["length"]
    assert list(score_profile(Profile().fit(ref), b, columns="length").columns) == ["length"]
    from loopstack.monitoring import data_checks
    assert {c.column for c in data_checks(Profile().fit(ref), b, columns="country")} == {"country"}


def test_profile_check_of_a_window_is_milliseconds():
    det = DataDriftDetector().fit(frame(200_000, 1))
    window = det.reference_.empty().update(frame(100_000, 2))
    t0 = time.perf_counter()
    score_profile(det.reference_, window)
    assert time.perf_counter() - t0 < 0.5
