"""Bad input to training and evaluation: one clear error instead of a traceback or a silently wrong result."""
from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from loopstack import Project
from loopstack.errors import LoopstackError
from loopstack.training import evaluation as E
from loopstack.training.evaluation import EvaluationError
from loopstack.training.splits import RandomSplit, TemporalSplit
from loopstack.training.datasets import DatasetError, _store, content_hash, list_datasets
from loopstack.training.trainers import TrainingError

from .conftest import FEATURES as FEATURES_VIEW
from .conftest import T0, labels_for
from .test_trainers import FEATURES, frame


def _dataset(project: Project, train, eval_, name: str = "tiny"):
    manifest = {"name": name, "content_hash": content_hash(train, eval_), "features": FEATURES,
                "columns": {"entities": ["author_id"], "time": "event_timestamp", "label": "label",
                            "label_time": "label_timestamp"},
                "rows": {"train": len(train), "eval": len(eval_)}}
    return _store(project, manifest, train, eval_)


@pytest.fixture
def bare(tmp_path):
    p = Project.init(tmp_path / "proj", example=False)
    yield p
    p.close()


def test_a_train_part_with_one_class_is_refused_before_fitting(bare):
    """A tree fitted on all-negative labels scored 'probability of class 0' as the spam score (mean 1.0)."""
    train, eval_ = frame(300, 0, "2026-11-01"), frame(200, 1, "2026-11-20")
    train["label"] = 0
    ds = _dataset(bare, train, eval_)
    with pytest.raises(TrainingError, match=r"label 'label' holds only the value 0 in its 300 rows"):
        bare.train(DecisionTreeClassifier(), ds)
    assert bare.runs.search() == []       # refused before a run was started


class _NaNModel:
    """A model (e.g. from a custom loop) that has no score for any row."""
    classes_ = np.array([0, 1])

    def predict_proba(self, X):
        return np.full((len(X), 2), np.nan)


def test_nan_scores_are_an_error_not_negatives(bare):
    """NaN scores were counted as negatives: precision 0, recall 0 and a PR-AUC, all logged as if real."""
    ds = _dataset(bare, frame(300, 0, "2026-11-01"), frame(200, 1, "2026-11-20"))
    with pytest.raises(EvaluationError, match="NaN scores for 200 of 200 rows"):
        bare.train(None, ds, custom_loop=lambda *a: _NaNModel(), save_model=False)
    with pytest.raises(EvaluationError, match="NaN scores for 1 of 3 rows"):
        E.roc_auc([0, 1, 1], [0.1, np.nan, 0.8])


def test_string_labels_are_an_evaluation_error(bare):
    """'spam'/'ham' labels trained fine and then died in evaluation with numpy's ValueError."""
    train, eval_ = frame(300, 0, "2026-11-01"), frame(200, 1, "2026-11-20")
    for f in (train, eval_):
        f["label"] = np.where(f["label"] == 1, "spam", "ham")
    ds = _dataset(bare, train, eval_)
    with pytest.raises(EvaluationError, match=r"binary 0/1.*\['ham', 'spam'\]|binary 0/1.*\['spam', 'ham'\]"):
        bare.train(LogisticRegression(max_iter=200), ds)


@pytest.mark.parametrize("options, fragment", [
    ({"threshold": float("nan")}, "threshold"),
    ({"precision_target": 5}, "precision_target"),
    ({"precision_target": 0}, "precision_target"),
])
def test_nonsense_evaluation_options_are_refused_before_fitting(bare, options, fragment):
    """threshold=NaN reported precision 0 and recall 0; precision_target=5 silently 'not met'."""
    ds = _dataset(bare, frame(300, 0, "2026-11-01"), frame(200, 1, "2026-11-20"))
    with pytest.raises(EvaluationError, match=fragment):
        bare.train(LogisticRegression(max_iter=200), ds, **options)
    assert bare.runs.search() == []
    with pytest.raises(EvaluationError, match=fragment):
        E.evaluate_scores([0, 1], [0.2, 0.7], **options)


def test_zero_calibration_bins_are_refused():
    """n_bins=0 returned an ECE of 0 over no bins."""
    with pytest.raises(EvaluationError, match="n_bins"):
        E.evaluate_scores([0, 1], [0.2, 0.7], n_bins=0)


@pytest.mark.parametrize("name", ["spam@2", "spam:v2"])
def test_a_dataset_name_that_reads_as_a_version_is_refused(project, comment_events, name):
    """A dataset named 'spam@2' was stored, then `dataset show spam@2` said: no dataset 'spam@2'; known
    datasets: ['spam@2']."""
    with pytest.raises(DatasetError, match="holds '@' or ':'"):
        project.build_dataset(labels_for(comment_events), FEATURES_VIEW, cutoff=T0 + timedelta(days=30), name=name)
    assert list_datasets(project) == []


@pytest.mark.parametrize("kwargs, fragment", [
    ({"train_weeks": 0}, "train_weeks = 0"), ({"train_weeks": -1}, "train_weeks = -1"),
    ({"eval_weeks": 0}, "eval_weeks = 0"), ({"eval_weeks": float("nan")}, "eval_weeks = nan"),
])
def test_weekly_split_refuses_empty_or_negative_week_counts(kwargs, fragment):
    """train_weeks=0 silently meant 'every week before T'; -1 said 'train_start must be before train_end'."""
    with pytest.raises(LoopstackError, match=fragment):
        TemporalSplit.weekly("2026-11-08", **kwargs)
    assert TemporalSplit.weekly("2026-11-08", train_weeks=2).train_start.isoformat() == "2026-10-25T00:00:00+00:00"


def test_random_split_fraction_that_is_not_a_number():
    """fraction='x' was float()'s ValueError."""
    with pytest.raises(LoopstackError, match="RandomSplit.fraction = 'x'"):
        RandomSplit(fraction="x")


def test_a_part_that_is_neither_train_nor_eval_is_refused(bare):
    """evaluate(part='evaluation') silently scored the train part (optimistic metrics); X_y('test') gave eval."""
    ds = _dataset(bare, frame(300, 0, "2026-11-01"), frame(200, 1, "2026-11-20"))
    model = LogisticRegression(max_iter=200).fit(*ds.X_y("train"))
    with pytest.raises(EvaluationError, match="part must be 'eval'"):
        E.evaluate(model, ds, part="evaluation")
    with pytest.raises(DatasetError, match="part must be 'train' or 'eval'"):
        ds.X_y("test")
    assert E.evaluate(model, ds, part="train").metrics["count"] == 300


def test_slice_frame_of_another_length_is_an_evaluation_error():
    """A frame not row-aligned with the labels was numpy's IndexError."""
    with pytest.raises(EvaluationError, match="slice frame has 2 rows but there are 4 labels"):
        E.evaluate_scores([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], pd.DataFrame({"c": [1, 2]}), slices=["c"])


def test_a_feature_listed_twice_is_refused(project, comment_events):
    """The dataset was built with the feature twice in its manifest; training then died with pandas'
    DuplicateError."""
    with pytest.raises(DatasetError, match="'author_stats:spam_7d' is listed twice"):
        project.build_dataset(labels_for(comment_events), [*FEATURES_VIEW, FEATURES_VIEW[0]],
                              cutoff=T0 + timedelta(days=30), name="dup")
    assert list_datasets(project) == []


@pytest.mark.parametrize("column", ["event_timestamp", "label_timestamp"])
def test_a_time_column_of_numbers_is_refused(project, comment_events, column):
    """Epoch numbers (or a 0/1 column named by mistake) were read as nanoseconds: every time in 1970, and the
    split then blamed train_end."""
    labels = labels_for(comment_events)
    labels[column] = (labels[column].astype("int64") // 10**9).astype("int64")   # epoch seconds
    with pytest.raises(DatasetError, match=rf"column '{column}' holds numbers \(int64\), not times"):
        project.build_dataset(labels, FEATURES_VIEW, cutoff=T0 + timedelta(days=30), name="nums")
    assert list_datasets(project) == []


MARGINS = ([0, 1, 0, 1], [-2.0, 3.0, 0.5, 0.9])


@pytest.mark.parametrize("metric", [E.log_loss, E.brier, E.calibration, E.core_metrics, E.evaluate_scores])
def test_probability_metrics_refuse_scores_outside_0_1(metric):
    """log_loss of margins was 0.17 (clipped to [eps, 1 - eps]: nonsense) and Brier 2.3: both logged as real."""
    with pytest.raises(EvaluationError, match=r"scores must be probabilities in \[0, 1\].* 2 of 4 are outside it "
                                              r"\(min -2, max 3\)"):
        metric(*MARGINS)


def test_probabilities_off_by_float_rounding_are_accepted():
    y, s = [0, 1, 0, 1], [-1e-12, 1 + 2e-16, 0.2, 0.7]
    assert E.log_loss(y, s) == pytest.approx(E.log_loss(y, [0.0, 1.0, 0.2, 0.7]))
    assert E.evaluate_scores(y, s).metrics["brier"] == pytest.approx(E.brier(y, [0.0, 1.0, 0.2, 0.7]))


def test_ranking_metrics_still_take_any_scores():
    assert E.roc_auc(*MARGINS) == 1.0 and E.average_precision(*MARGINS) == 1.0


class _LabelModel:
    """A model whose predict gives class labels 0/2 (trained on other labels than 0/1), no predict_proba."""

    def predict(self, X):
        return np.where(np.arange(len(X)) % 2 == 0, 2.0, 0.0)


def test_a_model_scoring_outside_0_1_is_named_in_evaluation(bare):
    """Its log_loss, Brier score and calibration were computed on labels 2.0 and logged as if real."""
    ds = _dataset(bare, frame(300, 0, "2026-11-01"), frame(200, 1, "2026-11-20"))
    with pytest.raises(EvaluationError, match=r"the scores of _LabelModel.predict on the eval part must be "
                                              r"probabilities in \[0, 1\].*100 of 200 are outside it"):
        E.evaluate(_LabelModel(), ds)
    with pytest.raises(EvaluationError, match=r"the scores of _LabelModel.predict on the eval part"):
        bare.train(None, ds, custom_loop=lambda *a: _LabelModel(), save_model=False)


def test_a_run_with_unreadable_packages_is_still_shown(bare):
    """A malformed stored `packages` field made `runs list|show` (and every search) fail with JSONDecodeError."""
    import sqlalchemy as sa

    from loopstack.training.schema import runs
    with bare.start_run("ok") as run:
        run.log_metric("auc", 0.9)
    with bare.meta.engine.begin() as conn:
        conn.execute(sa.update(runs).where(runs.c.run_id == run.run_id).values(packages="{oops"))
    info = bare.runs.get(run.run_id)
    assert info.packages == {} and info.metrics == {"auc": 0.9}
    assert "not a JSON object of package versions" in info.problems["packages"]
    assert [r.run_id for r in bare.runs.search()] == [run.run_id]
    from typer.testing import CliRunner

    from loopstack.training.cli import runs_app
    shown = CliRunner().invoke(runs_app, ["show", run.run_id, "-p", str(bare.root)])
    assert shown.exception is None and "bad stored packages" in shown.stdout


def test_a_dataset_with_an_unreadable_manifest_is_a_dataset_error(bare):
    import sqlalchemy as sa

    from loopstack.training.schema import datasets
    ds = _dataset(bare, frame(300, 0, "2026-11-01"), frame(200, 1, "2026-11-20"))
    with bare.meta.engine.begin() as conn:
        conn.execute(sa.update(datasets).where(datasets.c.dataset_id == ds.id).values(manifest="[1, 2]"))
    with pytest.raises(DatasetError, match=r"stored manifest of dataset 'tiny' is unreadable .*rebuild the dataset"):
        bare.dataset("tiny")
