"""Reference profile: null rates, quantiles, bins whose counts add up, categories, score distribution."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from loopstack.registry import RegistryError
from loopstack.registry.profile import bin_counts, build_profile


@pytest.fixture
def df():
    rng = np.random.default_rng(0)
    n = 1000
    x = rng.normal(10, 2, n)
    x[:50] = np.nan                                   # 5 % nulls
    country = np.array(["US"] * 500 + ["DE"] * 300 + ["FR"] * 100 + [f"c{i}" for i in range(80)] + [None] * 20,
                       dtype=object)
    return pd.DataFrame({"x": x, "urls": rng.poisson(1.0, n), "country": country,
                         "new_account": rng.random(n) < 0.1, "const": np.full(n, 3.0)})


def test_numeric_profile(df):
    p = build_profile(df, bins=10)
    f = p["features"]["x"]
    assert f["kind"] == "numeric" and f["null_count"] == 50 and f["null_rate"] == pytest.approx(0.05)
    assert sum(f["counts"]) == 950 and len(f["counts"]) == len(f["bin_edges"]) - 1 == 10
    assert f["bin_edges"] == sorted(f["bin_edges"]) and f["bin_edges"][0] == f["min"] and f["bin_edges"][-1] == f["max"]
    assert max(f["counts"]) - min(f["counts"]) <= 2    # quantile bins are (nearly) equally filled
    assert f["quantiles"]["0.5"] == pytest.approx(np.nanmedian(df["x"])) and 9.5 < f["mean"] < 10.5
    u = p["features"]["urls"]                          # few distinct values: duplicate edges merged
    assert sum(u["counts"]) == 1000 and len(set(u["bin_edges"])) == len(u["bin_edges"])
    c = p["features"]["const"]
    assert c["bin_edges"] == [3.0, 3.0] and c["counts"] == [1000]


def test_categorical_profile_top_k_and_other(df):
    f = build_profile(df, top_k=3)["features"]["country"]
    assert f["kind"] == "categorical" and f["null_count"] == 20 and f["n_unique"] == 83
    assert f["counts"] == {"US": 500, "DE": 300, "FR": 100} and f["other_count"] == 80
    assert f["frequencies"]["US"] == pytest.approx(500 / 980) and f["other_frequency"] == pytest.approx(80 / 980)
    assert sum(f["counts"].values()) + f["other_count"] + f["null_count"] == 1000
    b = build_profile(df)["features"]["new_account"]   # bools are categorical
    assert b["kind"] == "categorical" and set(b["counts"]) == {"True", "False"}
    forced = build_profile(df, categorical=["urls"])["features"]["urls"]
    assert forced["kind"] == "categorical"


def test_score_distribution_and_json(df):
    scores = np.column_stack([np.linspace(1, 0, 1000), np.linspace(0, 1, 1000)])   # predict_proba shape
    p = build_profile(df, scores=scores)
    s = p["scores"]
    assert s["count"] == 1000 and sum(s["counts"]) == 1000 and len(s["counts"]) == 20
    assert s["min"] == 0.0 and s["max"] == 1.0 and s["quantiles"]["0.5"] == pytest.approx(0.5)
    assert json.loads(json.dumps(p, allow_nan=False)) == p   # strict JSON: no NaN/inf


def test_bin_counts_reproduce_reference_and_count_outliers(df):
    p = build_profile(df)
    f = p["features"]["x"]
    assert bin_counts(f, df["x"])["counts"] == f["counts"] and bin_counts(f, df["x"])["null_count"] == 50
    live = bin_counts(f, [-1e9, 1e9, f["bin_edges"][1], None])   # outside the range -> outer bins
    assert live["counts"][0] == 1 and live["counts"][-1] == 1 and live["counts"][1] == 1 and live["null_count"] == 1
    c = p["features"]["country"]
    live = bin_counts(c, ["US", "US", "JP", None])
    assert live["counts"]["US"] == 2 and live["other_count"] == 1 and live["null_count"] == 1


def test_all_null_column():
    f = build_profile(pd.DataFrame({"x": [np.nan, np.nan]}))["features"]["x"]
    assert f["null_rate"] == 1.0 and f["counts"] == [] and f["min"] is None


@pytest.mark.parametrize("kwargs,match", [
    ({"scores": [0.1, 0.2]}, r"scores have shape \(2,\) but the profiled data has 1000 rows"),   # silently kept
    ({"scores": ["spam"] * 1000}, "scores must be numbers"),                                    # ValueError
    ({"categorical": ["contry"]}, r"categorical names column\(s\) \['contry'\]"),              # typo ignored
    ({"bins": 0}, "bins must be a whole number >= 1"),
    ({"bins": -3}, "bins must be a whole number >= 1"),                                         # numpy ValueError
    ({"top_k": -1}, "top_k must be a whole number >= 0"),                                       # dropped a category
    ({"quantiles": [1.5]}, "quantiles must be between 0 and 1"),
])
def test_build_profile_refuses_inputs_that_profile_nonsense(df, kwargs, match):
    with pytest.raises(RegistryError, match=match):
        build_profile(df, **kwargs)


def test_build_profile_refuses_empty_data_and_duplicate_columns():
    with pytest.raises(RegistryError, match=r"empty \(0 rows, 0 columns\)"):
        build_profile(pd.DataFrame())
    with pytest.raises(RegistryError, match=r"column\(s\) \['a'\] appear more than once"):   # was TypeError
        build_profile(pd.DataFrame([[1, 2]], columns=["a", "a"]))
