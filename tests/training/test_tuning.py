"""Successive halving: the pure schedule/promotion rules, and a study where every trial is a tracked run."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from loopstack import Project
from loopstack.training.tuning import TuningError, promote, rung_schedule, sample_configs, successive_halving
from tests.training.test_trainers import make_dataset


class Weighted:
    """A model whose quality is its config: w=1 scores by the true signal, w=0 by noise."""

    def __init__(self, w: float = 0.5, n_estimators: int = 1):
        self.w, self.n_estimators = w, n_estimators

    def get_params(self, deep=False):
        return {"w": self.w, "n_estimators": self.n_estimators}

    def fit(self, X, y):
        self.fitted_rows_ = len(X)
        return self

    def predict_proba(self, X):
        signal = 1.2 * X["spam_7d"].to_numpy() + 2.0 * X["url_ratio"].to_numpy()
        noise = np.random.default_rng(len(X)).random(len(X)) * 4
        z = self.w * signal + (1 - self.w) * noise - 2
        p = 1 / (1 + np.exp(-z))
        return np.column_stack([1 - p, p])


@pytest.fixture
def tiny(tmp_path):
    p = Project.init(tmp_path / "proj", example=False)
    yield p, make_dataset(p)
    p.close()


def test_schedule_and_promotion_rules():
    assert rung_schedule(9, 1, 9, eta=3) == [(9, 1), (3, 3), (1, 9)]
    assert rung_schedule(27, 10, 90, eta=3) == [(27, 10), (9, 30), (3, 90)]
    assert rung_schedule(8, 0.25, 1.0, eta=2) == [(8, 0.25), (4, 0.5), (2, 1.0)]
    assert rung_schedule(4, 10, 50, eta=3) == [(4, 10), (1, 50)]  # last rung at max_budget
    with pytest.raises(TuningError, match="eta"):
        rung_schedule(9, 1, 9, eta=1)
    with pytest.raises(TuningError, match="min_budget"):
        rung_schedule(9, 10, 5)
    assert promote({0: 0.5, 1: 0.9, 2: None, 3: 0.7}, 2) == [1, 3]
    assert promote({0: 0.5, 1: 0.9, 2: float("nan"), 3: 0.7}, 2, mode="min") == [0, 3]
    assert promote({0: None, 1: 0.1}, 2) == [1, 0]
    cfgs = sample_configs({"lr": ("loguniform", 1e-3, 1e-1), "leaves": [7, 15], "d": ("int", 2, 4), "k": 5}, 20)
    assert len(cfgs) == 20 and all(1e-3 <= c["lr"] <= 1e-1 and c["leaves"] in (7, 15) and 2 <= c["d"] <= 4
                                   and c["k"] == 5 for c in cfgs)
    assert sample_configs({"a": [1, 2, 3]}, 5, seed=4) == sample_configs({"a": [1, 2, 3]}, 5, seed=4)


def test_sh_keeps_the_best_trial_and_tracks_every_trial_per_rung(tiny):
    project, ds = tiny
    configs = [{"w": w} for w in (0.1, 0.3, 1.0, 0.0, 0.5, 0.2, 0.4, 0.6, 0.05)]
    res = successive_halving(project, Weighted, ds, configs=configs, eta=3, min_budget=1, max_budget=9,
                             metric="roc_auc", study="s1")
    assert res.schedule == [(9, 1), (3, 3), (1, 9)]
    assert res.best_config == {"w": 1.0} and res.best_budget == 9
    runs = project.runs.search("tags.study = 's1'")
    assert len(runs) == 9 + 3 + 1 == len(res.trials)
    assert Counter(r.tags["rung"] for r in runs) == {"0": 9, "1": 3, "2": 1}
    assert {(r.tags["trial"], r.tags["rung"]) for r in runs} == {(str(t.trial), str(t.rung)) for t in res.trials}
    best = project.runs.get(res.best_run_id)
    assert best.tags["rung"] == "2" and best.tags["budget"] == "9" and best.params["n_estimators"] == "9"
    assert best.metrics["roc_auc"] == pytest.approx(res.best_score)
    # each rung promotes exactly the top 1/eta of the previous one
    for rung in (1, 2):
        prev = {t.trial: t.score for t in res.trials if t.rung == rung - 1}
        now = sorted(t.trial for t in res.trials if t.rung == rung)
        assert now == sorted(promote(prev, len(now)))


def test_sh_on_data_fraction_with_sklearn(tiny):
    project, ds = tiny
    res = successive_halving(project, LogisticRegression(max_iter=100), ds, space={"C": [0.01, 0.1, 1.0, 10.0]},
                             n_trials=4, eta=2, budget="data_fraction", min_budget=0.25, max_budget=1.0,
                             metric="log_loss", mode="min", study="frac", seed=1)
    runs = project.runs.search("tags.study = 'frac'")
    assert len(runs) == 4 + 2 + 1
    rows = {r.tags["rung"]: r.metrics["train_rows"] for r in runs}
    assert rows == {"0": 75, "1": 150, "2": 300}
    assert res.best_run_id in {r.run_id for r in runs if r.tags["rung"] == "2"}
    with pytest.raises(TuningError, match="fractions"):
        successive_halving(project, LogisticRegression(), ds, configs=[{}], budget="data_fraction", max_budget=5)


@pytest.mark.parametrize("spec, fragment", [
    (("loguniform", 0, 1), "numbers > 0"), (("loguniform", -1.0, 1.0), "numbers > 0"),
    (("int", 10, 1), "lo <= hi"), (("int", 1.5, 4), "whole numbers"),
    (("uniform", 1.0, 0.0), "lo <= hi"), (("uniform", 0.0, float("nan")), "finite numbers"),
])
def test_sample_configs_refuses_undrawable_ranges(spec, fragment):
    """loguniform from 0 was 'math domain error', int 10..1 numpy's 'low >= high', uniform 1..0 drew silently."""
    with pytest.raises(TuningError, match=fragment):
        sample_configs({"C": spec}, 3)
    assert sample_configs({"C": ("loguniform", 0.01, 1.0), "k": ("int", 2, 2)}, 2)[0]["k"] == 2


def test_successive_halving_with_no_configs_says_so():
    """configs=[] was blamed on n_trials, which the caller did not give."""
    with pytest.raises(TuningError, match="configs= is empty"):
        successive_halving(None, None, None, configs=[])
