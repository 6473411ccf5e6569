"""Bad input to training and evaluation: one clear error instead of a traceback or a silently wrong result."""
from __future__ import annotations

import pytest
from sklearn.tree import DecisionTreeClassifier

from loopstack import Project
from loopstack.training.datasets import _store, content_hash
from loopstack.training.trainers import TrainingError

from .test_trainers import FEATURES, frame


def _dataset(project: Project, train, eval_, name: str = "tiny"):
    manifest = {"name": name, "content_hash": content_hash(train, eval_), "features": FEATURES,
                "columns": {"entities": ["author_id"], "time": "event_timestamp", "label": "label",
                            "label_time": "label_timestamp"},
                "rows": {"train": len(train), "eval": len(eval_)}}
    return _store(project, manifest, train, eval_)


@pytest.fixture
def project(tmp_path):
    p = Project.init(tmp_path / "proj", example=False)
    yield p
    p.close()


def test_a_train_part_with_one_class_is_refused_before_fitting(project):
    """A tree fitted on all-negative labels scored 'probability of class 0' as the spam score (mean 1.0)."""
    train, eval_ = frame(300, 0, "2026-11-01"), frame(200, 1, "2026-11-20")
    train["label"] = 0
    ds = _dataset(project, train, eval_)
    with pytest.raises(TrainingError, match=r"label 'label' holds only the value 0 in its 300 rows"):
        project.train(DecisionTreeClassifier(), ds)
    assert project.runs.search() == []       # refused before a run was started
