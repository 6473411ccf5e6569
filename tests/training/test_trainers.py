"""project.train: sklearn/LightGBM estimators and a custom loop, tracked runs, saved model + signature."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from loopstack import Project
from loopstack.training.datasets import _store, content_hash
from loopstack.training.trainers import Signature, SignatureError, TrainingError, load_model, predict_scores

FEATURES = [{"ref": "author_stats:spam_7d", "view": "author_stats", "feature": "spam_7d", "view_version": 3,
             "column": "spam_7d"},
            {"ref": "author_stats:comments_7d", "view": "author_stats", "feature": "comments_7d", "view_version": 3,
             "column": "comments_7d"},
            {"ref": "url_ratio", "on_demand": True, "version": 1, "column": "url_ratio"}]


def frame(n: int, seed: int, t0: str) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    spam = rng.poisson(1.0, n).astype("int64")
    comments = rng.integers(1, 20, n).astype("int64")
    ratio = rng.random(n)
    new = rng.random(n) < 0.3
    logit = -2.0 + 1.2 * spam + 2.0 * ratio + 0.8 * new
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64")
    return pd.DataFrame({"author_id": rng.integers(0, 50, n),
                         "event_timestamp": pd.date_range(t0, periods=n, freq="min", tz="UTC"),
                         "spam_7d": spam, "comments_7d": comments, "url_ratio": ratio, "new_account": new,
                         "label": label})


def make_dataset(project: Project, n_train: int = 300, n_eval: int = 200, seed: int = 0):
    """A stored dataset snapshot with the manifest build_dataset writes, without the feature pipeline."""
    train, eval_ = frame(n_train, seed, "2026-11-01"), frame(n_eval, seed + 1, "2026-11-20")
    manifest = {"name": "tiny", "content_hash": content_hash(train, eval_), "features": FEATURES,
                "columns": {"entities": ["author_id"], "time": "event_timestamp", "label": "label",
                            "label_time": "label_timestamp"},
                "rows": {"train": n_train, "eval": n_eval}}
    return _store(project, manifest, train, eval_)


@pytest.fixture
def tiny(tmp_path):
    p = Project.init(tmp_path / "proj", example=False)
    yield p, make_dataset(p)
    p.close()


def test_train_sklearn_tracks_everything_and_saves_model_with_signature(tiny):
    project, ds = tiny
    res = project.train(LogisticRegression(max_iter=200), ds, run_name="lr", params={"C": 0.5},
                        slices=["new_account"])
    info = project.runs.get(res.run_id)
    assert info.status == "FINISHED" and info.name == "lr" and info.duration_s > 0
    assert info.params["C"] == "0.5" and info.params["max_iter"] == "200"
    assert info.params["estimator_class"].endswith("LogisticRegression")
    assert [d["dataset_id"] for d in info.datasets] == [ds.id]
    for k in ("roc_auc", "pr_auc", "log_loss", "ece", "fit_seconds", "slice.new_account.True.count"):
        assert k in info.metrics, k
    assert info.metrics["roc_auc"] == pytest.approx(res.metrics["roc_auc"]) and res.metrics["roc_auc"] > 0.6
    paths = {a["path"] for a in info.artifacts}
    assert {"model/model.joblib", "model/signature.json", "evaluation.json", "evaluation.html"} <= paths

    sig = res.signature
    assert sig.feature_refs == ["author_stats:spam_7d", "author_stats:comments_7d", "url_ratio"]
    assert [i.version for i in sig.inputs] == [3, 3, 1]
    assert sig.dtypes == {"spam_7d": "int64", "comments_7d": "int64", "url_ratio": "float64"}
    assert sig.outputs[0]["kind"] == "probability" and sig.outputs[0]["positive_class"] == 1
    assert Signature.from_dict(json.loads(json.dumps(sig.to_dict()))) == sig

    model, sig2 = load_model(project, res.run_id)
    assert sig2 == sig
    X = ds.eval[sig.columns]
    np.testing.assert_allclose(model.predict_proba(X)[:, 1], res.model.predict_proba(X)[:, 1])
    # serving: a wider frame in another order is reduced to exactly the training vector
    wide = ds.eval[["url_ratio", "author_id", "spam_7d", "comments_7d"]]
    np.testing.assert_allclose(predict_scores(model, sig, wide), res.model.predict_proba(X)[:, 1])


def test_signature_check_names_every_mismatch(tiny):
    project, ds = tiny
    res = project.train(LogisticRegression(max_iter=100), ds, report=False)
    sig = res.signature
    X = ds.eval[sig.columns]
    sig.check(X)  # the training vector passes
    with pytest.raises(SignatureError, match=r"missing column\(s\) \['url_ratio'\].*'url_ratio'"):
        sig.check(X.drop(columns=["url_ratio"]))
    with pytest.raises(SignatureError, match=r"unexpected column\(s\) \['author_id'\]"):
        sig.check(ds.eval[[*sig.columns, "author_id"]])
    with pytest.raises(SignatureError, match="order"):
        sig.check(X[list(reversed(sig.columns))])
    with pytest.raises(SignatureError, match=r"spam_7d: float64 \(trained on int64\)"):
        sig.check(X.astype({"spam_7d": "float64"}))
    with pytest.raises(SignatureError, match="DataFrame"):
        sig.check(X.to_numpy())
    # the registry stores this very signature: columns, dtypes and label survive registration
    project.models.register("spam", res.model, signature=sig, run_id=res.run_id)
    stored = project.models.get("models:/spam/1").signature
    assert stored == sig and stored.columns == sig.columns and stored.label == sig.label
    stored.check(X)  # serving can check a frame against what the registry returns


def test_train_lightgbm(tiny):
    import lightgbm as lgb
    project, ds = tiny
    est = lgb.LGBMClassifier(n_estimators=10, num_leaves=7, n_jobs=1, verbose=-1)
    res = project.train(est, ds, report=False)
    info = project.runs.get(res.run_id)
    assert info.params["n_estimators"] == "10" and info.tags["estimator"] == "LGBMClassifier"
    assert 0.5 < res.metrics["roc_auc"] <= 1.0


def test_train_xgboost(tiny):
    import xgboost as xgb
    project, ds = tiny
    est = xgb.XGBClassifier(n_estimators=10, max_depth=3, n_jobs=1)
    res = project.train(est, ds, report=False)
    info = project.runs.get(res.run_id)
    assert info.params["max_depth"] == "3" and info.tags["estimator"] == "XGBClassifier"
    assert 0.5 < res.metrics["roc_auc"] <= 1.0
    assert res.signature.columns == ds.feature_columns


class Mean:
    """A hand-written "model" (as a custom loop returns): the positive rate as every row's score."""

    def __init__(self, p):
        self.p = p

    def predict_proba(self, X):
        return np.column_stack([np.full(len(X), 1 - self.p), np.full(len(X), self.p)])


def test_custom_loop_is_used_and_can_log_to_the_run(tiny):
    project, ds = tiny
    seen = {}

    def loop(X_train, y_train, X_eval, y_eval, run):
        seen.update(cols=list(X_train.columns), n=len(X_train), n_eval=len(X_eval))
        for epoch in range(3):
            run.log_metric("train_loss", 1.0 / (epoch + 1), step=epoch)
        return Mean(float(y_train.mean()))

    res = project.train(None, ds, custom_loop=loop, run_name="custom", report=False)
    assert seen == {"cols": ["spam_7d", "comments_7d", "url_ratio"], "n": 300, "n_eval": 200}
    assert isinstance(res.model, Mean)
    assert res.metrics["roc_auc"] == pytest.approx(0.5)  # constant scores: no ranking
    info = project.runs.get(res.run_id)
    assert info.tags["trainer"] == "custom_loop" and info.metrics["train_loss"] == pytest.approx(1 / 3)
    assert [s for s, _, _ in project.runs.metric_history(res.run_id, "train_loss")] == [0, 1, 2]


def test_errors_are_clear_and_failed_runs_recorded(tiny):
    project, ds = tiny
    with pytest.raises(TrainingError, match=r"lacks column\(s\) \['is_spam'\]"):
        project.train(LogisticRegression(), ds, label="is_spam")
    with pytest.raises(TrainingError, match="has no fit"):
        project.train(object(), ds)
    with pytest.raises(TrainingError, match="returned None"):
        project.train(None, ds, custom_loop=lambda *a: None, run_name="broken")
    failed = project.runs.search(status="FAILED")
    assert [r.name for r in failed] == ["broken"] and "returned None" in failed[0].error
