"""Profiles: registry-compatible layout, exact merges, incremental windows, JSON round trips, speed."""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopstack.monitoring import MonitoringError, Profile
from loopstack.monitoring.profiles import quantiles_sorted
from loopstack.registry.profile import bin_counts, build_profile


@pytest.fixture
def df():
    rng = np.random.default_rng(0)
    n = 1000
    x = rng.normal(10, 2, n)
    x[:50] = np.nan
    country = np.array(["US"] * 500 + ["DE"] * 300 + ["FR"] * 100 + [f"c{i}" for i in range(80)] + [None] * 20,
                       dtype=object)
    return pd.DataFrame({"x": x, "urls": rng.poisson(1.0, n), "country": country,
                         "new_account": rng.random(n) < 0.1, "const": np.full(n, 3.0)})


def _approx_equal(a, b, path=""):
    """Deep equality of profile dicts, floats compared with a relative tolerance."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _approx_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _approx_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-9), path
    else:
        assert a == b, path


def test_fit_matches_the_registry_profile_format(df):
    reg = build_profile(df, top_k=100)
    mine = Profile(max_categories=100).fit(df).to_dict()
    for col, f in reg["features"].items():
        for key, value in f.items():          # every registry key, same meaning and value
            if isinstance(value, float):
                assert mine["features"][col][key] == pytest.approx(value), (col, key)
            else:
                assert mine["features"][col][key] == value, (col, key)
    x = mine["features"]["x"]
    assert x["underflow"] == x["overflow"] == 0 and sum(x["counts"]) == 950
    assert mine["features"]["country"]["complete"] is True


def test_reads_a_registry_profile_and_counts_like_bin_counts(df):
    reg = build_profile(df, scores=np.linspace(0, 1, len(df)))
    ref = Profile.from_dict(json.loads(json.dumps(reg)))
    assert ref["x"].n == 950 and ref["x"].underflow == 0 and ref.scores is not None
    assert ref["country"].complete is False           # registry kept the top 20 of 83: vocabulary truncated
    live = pd.DataFrame({"x": [-1e9, 1e9, reg["features"]["x"]["bin_edges"][1], None], "urls": [0, 1, 2, 3],
                         "country": ["US", "US", "JP", None], "new_account": [True] * 4, "const": [3.0] * 4})
    w = ref.empty().update(live)
    d = w.to_dict()["features"]
    assert d["x"]["counts"] == bin_counts(reg["features"]["x"], live["x"])["counts"]   # folded = registry rule
    assert d["x"]["underflow"] == 1 and d["x"]["overflow"] == 1 and d["x"]["null_count"] == 1
    assert d["country"]["counts"]["US"] == 2 and d["country"]["other_count"] == 1
    assert d["country"]["unseen_count"] == 0           # cannot tell "JP" from the reference's other bucket


def test_unseen_categories_tracked_with_a_bound():
    ref = Profile(max_unseen=2).fit(pd.DataFrame({"c": ["a", "b", "a", None]}))
    w = ref.empty().update(pd.DataFrame({"c": ["a", "z", "z", "y", "x", "x", "x", None]}))
    c = w["c"]
    assert c.counts.tolist() == [1, 0] and c.other_count == 6 and c.unseen_count == 6
    assert c.unseen == {"x": 3, "z": 2}                # the two most frequent names; the total stays exact
    assert c.null_count == 1 and c.count == 8


def test_window_merge_equals_the_profile_of_the_concatenation(df):
    ref = Profile().fit(df, scores=np.linspace(0, 1, len(df)))
    rng = np.random.default_rng(1)
    a = df.sample(300, random_state=1).assign(x=lambda d: d["x"] + 3)      # some values out of range
    b = df.sample(500, random_state=2)
    sa, sb = rng.random(300), rng.random(500)
    merged = Profile.merge(ref.empty().update(a, scores=sa), ref.empty().update(b, scores=sb))
    whole = ref.empty().update(pd.concat([a, b]), scores=np.concatenate([sa, sb]))
    incremental = ref.empty().update(a, scores=sa).update(b, scores=sb)
    _approx_equal(merged.to_dict(), whole.to_dict())
    _approx_equal(incremental.to_dict(), whole.to_dict())
    assert merged.n_rows == 800 and merged["x"].overflow > 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6)), min_size=0, max_size=60), st.integers(0, 60))
def test_merge_property_numeric(values, cut):
    ref = Profile(bins=5).fit({"v": np.array([0.0, 1.0, 2.0, 5.0, 9.0, 100.0])})
    arr = np.array([np.nan if v is None else v for v in values], dtype="float64")
    cut = min(cut, len(arr))
    merged = Profile.merge(ref.empty().update({"v": arr[:cut]}), ref.empty().update({"v": arr[cut:]}))
    whole = ref.empty().update({"v": arr})
    m, w = merged["v"], whole["v"]
    assert m.counts.tolist() == w.counts.tolist() and m.null_count == w.null_count and m.count == w.count
    if w.n:
        valid = arr[np.isfinite(arr)]
        assert m.mean == pytest.approx(valid.mean(), rel=1e-9, abs=1e-6)
        assert m.m2 == pytest.approx(((valid - valid.mean()) ** 2).sum(), rel=1e-7, abs=1e-3)
        assert (m.min, m.max) == (valid.min(), valid.max())


def test_moments_are_welford_exact_on_large_offsets():
    x = 1e9 + np.random.default_rng(3).normal(0, 1, 10_000)
    ref = Profile().fit({"x": x})
    w = ref.empty()
    for chunk in np.array_split(x, 17):
        w.update({"x": chunk})
    assert w["x"].variance == pytest.approx(np.var(x, ddof=1), rel=1e-6)
    assert ref["x"].variance == pytest.approx(np.var(x, ddof=1), rel=1e-6)


def test_json_round_trip_is_strict_and_lossless(df):
    ref = Profile(bins=7).fit(df, scores=np.linspace(0, 1, len(df)))
    w = ref.empty().update(df.iloc[:10], scores=np.full(10, 0.95))
    for p in (ref, w):
        text = json.dumps(p.to_dict(), allow_nan=False)
        back = Profile.from_dict(json.loads(text))
        assert back.to_dict() == p.to_dict()
    assert w.scores.above.tolist() == [10, 10]            # 0.5 and 0.9 thresholds counted exactly
    empty = Profile().fit({"x": np.array([np.nan, np.nan])})
    assert json.loads(json.dumps(empty.to_dict(), allow_nan=False))["features"]["x"]["min"] is None


def test_arrow_and_pandas_give_the_same_profile(df):
    a = Profile().fit(df).to_dict()
    b = Profile().fit(pa.Table.from_pandas(df, preserve_index=False)).to_dict()
    for col in df.columns:
        fa, fb = a["features"][col], b["features"][col]
        assert fa["counts"] == fb["counts"] and fa["null_count"] == fb["null_count"], col


def test_quantiles_match_numpy():
    x = np.random.default_rng(5).normal(size=1001)
    qs = np.array([0, 0.01, 0.1, 0.333, 0.5, 0.99, 1.0])
    assert np.array_equal(quantiles_sorted(np.sort(x), qs), np.quantile(x, qs))


def test_errors_say_what_to_do(df):
    with pytest.raises(MonitoringError, match="fit"):
        Profile().update(df)
    ref = Profile().fit(df)
    with pytest.raises(MonitoringError, match="lacks profiled columns"):
        ref.empty().update(df.drop(columns=["x"]))
    other = Profile(bins=3).fit(df)
    with pytest.raises(MonitoringError, match="reference.empty"):
        Profile.merge(ref.empty(), other.empty())
    with pytest.raises(MonitoringError, match="without scores"):
        ref.empty().update(df, scores=np.zeros(len(df)))
    with pytest.raises(MonitoringError, match="pandas DataFrame"):
        Profile().fit([1, 2, 3])
    with pytest.raises(MonitoringError, match="columns"):
        Profile(columns=["nope"]).fit(df)


def test_a_misspelt_categorical_column_is_an_error_not_a_numeric_profile():
    # a typo in `categorical=` was ignored: the int-coded column was profiled (and drift-tested) as numeric
    codes = pd.DataFrame({"country_code": np.tile([1, 2, 3, 44], 50), "x": np.arange(200.0)})
    with pytest.raises(MonitoringError, match=r"categorical columns \['contry_code'\].*fix `categorical=`"):
        Profile(categorical=["contry_code"]).fit(codes)
    with pytest.raises(MonitoringError, match="not among the profiled columns"):
        Profile(columns=["x"], categorical=["country_code"]).fit(codes)
    assert Profile(categorical=["country_code"]).fit(codes)["country_code"].kind == "categorical"


@pytest.mark.parametrize("kwargs, match", [
    ({"max_unseen": -1}, "max_unseen"),                        # silently dropped the last unseen name
    ({"max_unseen": 2.5}, "max_unseen"),
    ({"score_thresholds": [float("nan")]}, "score_thresholds"),   # counted nothing, stored as key 'nan'
    ({"score_thresholds": [0.5, float("inf")]}, "score_thresholds"),
    ({"score_thresholds": "0.9"}, "score_thresholds"),
])
def test_bad_profile_config_is_refused(kwargs, match):
    with pytest.raises(MonitoringError, match=match):
        Profile(**kwargs)


def test_one_million_rows_by_25_columns_is_fast():
    rng = np.random.default_rng(0)
    n = 1_000_000
    data = {f"x{i}": rng.normal(i, 1, n) for i in range(20)}
    cats = np.array([f"c{i}" for i in range(30)], dtype=object)
    data.update({f"k{j}": cats[rng.integers(0, 30, n)] for j in range(5)})
    frame = pd.DataFrame(data)
    t0 = time.perf_counter()
    ref = Profile().fit(frame)
    t1 = time.perf_counter()
    ref.empty().update(frame)
    t2 = time.perf_counter()
    # ~0.5 s / 0.3 s on an idle core; generous bounds because the CI machine is shared
    assert t1 - t0 < 4.0 and t2 - t1 < 3.0, (t1 - t0, t2 - t1)
