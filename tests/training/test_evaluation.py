"""Evaluation metrics against scikit-learn on the same arrays, ECE by hand, slices, the HTML report."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression

from loopstack import Project
from loopstack.errors import LoopstackError
from loopstack.training import evaluation as E
from tests.training.test_trainers import make_dataset


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(7)
    y = (rng.random(400) < 0.3).astype(int)
    s = np.clip(0.3 * y + rng.random(400) * 0.7, 0, 1)
    s[:40] = np.round(s[:40], 1)  # ties
    return y, s


def test_metrics_match_sklearn(arrays):
    y, s = arrays
    assert E.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert E.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert E.log_loss(y, s) == pytest.approx(skm.log_loss(y, s), rel=1e-9)
    assert E.brier(y, s) == pytest.approx(skm.brier_score_loss(y, s))
    for t in (0.2, 0.5, 0.8):
        at = E.precision_recall_at(y, s, t)
        pred = (s >= t).astype(int)
        assert at["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
        assert at["recall"] == pytest.approx(skm.recall_score(y, pred))
        assert at["tp"] + at["fp"] + at["fn"] + at["tn"] == len(y)
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    c = E.roc_curve(y, s)
    np.testing.assert_allclose(c["fpr"], fpr)
    np.testing.assert_allclose(c["tpr"], tpr)
    p, r, thr = skm.precision_recall_curve(y, s)
    c = E.pr_curve(y, s)
    np.testing.assert_allclose(c["precision"][::-1], p[:-1])
    np.testing.assert_allclose(c["recall"][::-1], r[:-1])
    np.testing.assert_allclose(c["thresholds"][::-1], thr)


def test_single_class_has_no_auc():
    assert E.roc_auc([0, 0, 0], [0.1, 0.2, 0.3]) is None
    assert E.average_precision([0, 0], [0.1, 0.2]) is None
    with pytest.raises(E.EvaluationError, match="binary"):
        E.roc_auc([0, 2], [0.1, 0.2])


def test_threshold_meeting_precision_target():
    # scores descending: labels 1 1 1 0 1 0 0 1 0 0
    s = np.array([0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    y = np.array([1, 1, 1, 0, 1, 0, 0, 1, 0, 0])
    r = E.threshold_for_precision(y, s, 0.8)
    # at 0.7: 4 tp / 5 predicted = 0.8 (the lowest threshold reaching it); recall 4/5
    assert r == {"target": 0.8, "threshold": 0.7, "precision": 0.8, "recall": 0.8, "met": True}
    assert E.threshold_for_precision(y, s, 1.0)["threshold"] == 0.85  # 3/3, recall 0.6
    assert E.threshold_for_precision(y, s, 1.0)["recall"] == pytest.approx(0.6)
    assert E.threshold_for_precision([0, 1], [0.9, 0.1], 0.95)["met"] is False
    # cross-check the rule with sklearn's curve: max recall among thresholds with precision >= target
    rng = np.random.default_rng(1)
    y2 = (rng.random(300) < 0.4).astype(int)
    s2 = np.clip(0.5 * y2 + rng.random(300) * 0.6, 0, 1)
    p, rc, thr = skm.precision_recall_curve(y2, s2)
    ok = p[:-1] >= 0.9
    got = E.threshold_for_precision(y2, s2, 0.9)
    assert got["recall"] == pytest.approx(rc[:-1][ok].max())
    assert got["threshold"] == pytest.approx(thr[ok].min())
    assert E.precision_recall_at(y2, s2, got["threshold"])["precision"] >= 0.9


def test_ece_by_hand():
    # 5 bins; bin [0, .2): scores .1 .1 labels 0 0 -> gap .1; bin [.6, .8): .7 .7 .7 .7 labels 1 1 1 0 -> |.75-.7|=.05
    # bin [.8, 1]: 1.0 1.0 labels 1 1 -> gap 0 (1.0 falls in the last bin)
    s = [0.1, 0.1, 0.7, 0.7, 0.7, 0.7, 1.0, 1.0]
    y = [0, 0, 1, 1, 1, 0, 1, 1]
    cal = E.calibration(y, s, n_bins=5)
    assert cal["ece"] == pytest.approx(2 / 8 * 0.1 + 4 / 8 * 0.05 + 0)
    assert cal["mce"] == pytest.approx(0.1)
    assert [b["count"] for b in cal["bins"]] == [2, 0, 0, 4, 2]
    assert cal["bins"][1]["mean_score"] is None and cal["bins"][3]["fraction_positive"] == 0.75
    assert E.calibration([0, 1], [0.0, 1.0])["ece"] == 0.0


def test_slice_metrics_counts_and_values(arrays):
    y, s = arrays
    frame = pd.DataFrame({"new_account": np.arange(len(y)) % 4 == 0, "score_bucket": np.linspace(0, 1, len(y)),
                          "country": ["de"] * 150 + [None] * 50 + ["us"] * 200})
    out = E.slice_metrics(y, s, frame, ["new_account", "country", "score_bucket"])
    na = {r["value"]: r for r in out["new_account"]}
    assert {k: r["count"] for k, r in na.items()} == {"False": 300, "True": 100}
    m = frame["new_account"].to_numpy()
    assert na["True"]["positives"] == int(y[m].sum())
    assert na["True"]["roc_auc"] == pytest.approx(skm.roc_auc_score(y[m], s[m]))
    assert [(r["value"], r["count"]) for r in out["country"]] == [("us", 200), ("de", 150), ("null", 50)]
    assert len(out["score_bucket"]) == 5 and sum(r["count"] for r in out["score_bucket"]) == 400
    with pytest.raises(E.EvaluationError, match=r"slice column\(s\) \['nope'\]"):
        E.slice_metrics(y, s, frame, ["nope"])


def test_evaluate_model_logs_to_run_and_writes_report(tmp_path):
    project = Project.init(tmp_path / "proj", example=False)
    ds = make_dataset(project)
    model = LogisticRegression(max_iter=200).fit(*ds.X_y("train"))
    with project.start_run("eval") as run:
        ev = E.evaluate(model, ds, threshold=0.5, precision_target=0.95, slices=["new_account"], run=run)
    X, y = ds.X_y("eval")
    p = model.predict_proba(X)[:, 1]
    assert ev.metrics["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert ev.metrics["pr_auc"] == pytest.approx(skm.average_precision_score(y, p))
    assert ev.metrics["count"] == 200 and ev.dataset["dataset_id"] == ds.id
    assert sum(r["count"] for r in ev.slices["new_account"]) == 200
    info = project.runs.get(run.run_id)
    assert info.metrics["roc_auc"] == pytest.approx(ev.metrics["roc_auc"])
    assert info.metrics["slice.new_account.True.count"] == int(ds.eval["new_account"].sum())
    stored = json.loads(project.runs.artifact(run.run_id, "evaluation.json"))
    assert stored["metrics"]["count"] == 200

    page = project.runs.artifact(run.run_id, "evaluation.html").decode()
    for kind in ("roc", "pr", "reliability", "histogram"):
        assert re.search(rf'<svg class="plot" data-plot="{kind}"', page), kind
    assert page.count("<svg") == 4 and page.count("</svg>") == 4
    assert "<polyline" in page and 'class="bin"' in page
    assert '<table class="slices" data-column="new_account">' in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "<script" not in page
    with pytest.raises(E.EvaluationError, match=r"slice column\(s\) \['region'\]"):
        E.evaluate(model, ds, slices=["region"])
    written = ev.write_report(tmp_path / "ev.html", title="évaluation")
    assert "évaluation" in written.read_text(encoding="utf-8")
    with pytest.raises(LoopstackError, match=r"cannot write the evaluation report to .*no-such-dir.*writable folder"):
        ev.write_report(tmp_path / "no-such-dir" / "ev.html")
    project.close()
