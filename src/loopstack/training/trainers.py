"""Training: any scikit-learn-compatible estimator (or a custom loop) on a dataset, tracked in a run.

`train(project, estimator, dataset)` fits on the dataset's train part, evaluates on its temporal
holdout (`evaluation.evaluate`), and records everything in one run: the estimator's params, the
dataset snapshot, fit time, metrics, the pickled model (``model/model.joblib``) and its
**signature** (``model/signature.json``): the ordered feature references with their definition
versions, the input dtypes and the output schema, so serving assembles exactly the training vector
(`Signature.check(frame)` refuses a frame that differs).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from loopstack.errors import LoopstackError
from loopstack.signature import FeatureInput, Signature, SignatureError  # noqa: F401 - re-exported

MODEL_PATH, SIGNATURE_PATH = "model/model.joblib", "model/signature.json"


class TrainingError(LoopstackError):
    """Training cannot run as asked (missing label, empty train part, unsavable model, ...)."""


def output_schema(model: Any, positive_class: Any = 1) -> tuple[dict, ...]:
    classes = getattr(model, "classes_", None)
    if hasattr(model, "predict_proba"):
        cls_list = [c.item() if hasattr(c, "item") else c for c in classes] if classes is not None else None
        pos = positive_class if cls_list is None or positive_class in cls_list else cls_list[-1]
        return ({"name": "score", "dtype": "float64", "kind": "probability",
                 "description": f"probability of class {pos}", "positive_class": pos, "classes": cls_list},)
    return ({"name": "prediction", "dtype": "float64", "kind": "prediction"},)


def signature_for(dataset: Any, X: pd.DataFrame, model: Any, label: str | None = None,
                  positive_class: Any = 1) -> Signature:
    """The signature of a model trained on `X` (columns of `dataset`'s features, in reference order)."""
    by_col = {f["column"]: f for f in dataset.manifest.get("features", [])}
    inputs = []
    for c in X.columns:
        f = by_col.get(c, {})
        version = f.get("view_version", f.get("version"))
        inputs.append(FeatureInput(str(f.get("ref", c)), None if version is None else int(version), str(c),
                                   str(X[c].dtype)))
    return Signature(tuple(inputs), output_schema(model, positive_class), label)


# -- the result ----------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What `project.train` returns: the fitted model, the run it was tracked in, signature, metrics."""
    model: Any
    run_id: str
    signature: Signature
    metrics: dict
    evaluation: Any = None
    duration_s: float = 0.0
    artifacts: list = field(default_factory=list)


def _param_values(estimator: Any) -> dict:
    if not hasattr(estimator, "get_params"):
        return {}
    try:
        return {k: v for k, v in estimator.get_params(deep=False).items()}
    except Exception:  # noqa: BLE001 - an odd estimator must not stop training
        return {}


def _split(frame: pd.DataFrame, features: Sequence[str], label: str, part: str) -> tuple[pd.DataFrame, pd.Series]:
    missing = [c for c in [*features, label] if c not in frame.columns]
    if missing:
        raise TrainingError(f"the {part} part lacks column(s) {missing}; it has {list(frame.columns)} "
                            "(name the label with label=)")
    return frame[list(features)], frame[label]


def fit_and_log(project: Any, estimator: Any, dataset: Any, train_frame: pd.DataFrame,
                eval_frame: pd.DataFrame, *, label: str | None = None, run_name: str | None = None,
                params: Mapping[str, Any] | None = None, fit_kwargs: Mapping[str, Any] | None = None,
                custom_loop: Callable | None = None, tags: Mapping[str, Any] | None = None,
                threshold: float = 0.5, precision_target: float = 0.95, slices: Sequence[str] | None = None,
                report: bool = True, save_model: bool = True) -> TrainResult:
    """The core of `train`, on explicit train/eval frames (tuning passes subsamples)."""
    from loopstack.training.evaluation import check_options, evaluate

    check_options(threshold, precision_target)
    label = label or dataset.label_column
    features = dataset.feature_columns
    if estimator is None and custom_loop is None:
        raise TrainingError("give an estimator (with fit) or a custom_loop(X_train, y_train, X_eval, y_eval, run)")
    if custom_loop is None and not hasattr(estimator, "fit"):
        raise TrainingError(f"{type(estimator).__name__} has no fit(): pass a scikit-learn-compatible estimator "
                            "or custom_loop=")
    X_tr, y_tr = _split(train_frame, features, label, "train")
    X_ev, y_ev = _split(eval_frame, features, label, "eval")
    if X_tr.empty:
        raise TrainingError("the train part has no rows: rebuild the dataset with a later train_end")
    values = [v.item() if hasattr(v, "item") else v for v in pd.unique(y_tr.dropna())]
    if len(values) < 2:
        only = f"only the value {values[0]!r}" if values else "no value"
        raise TrainingError(f"the train part's label {label!r} holds {only} in its {len(y_tr)} rows: a classifier "
                            "needs examples of both classes (it would score every row as that class); move "
                            "train_end so the train part has both, or check the labels")
    params = dict(params or {})
    if params and custom_loop is None:
        if not hasattr(estimator, "set_params"):
            raise TrainingError(f"params= needs an estimator with set_params(); {type(estimator).__name__} has none")
        estimator.set_params(**params)
    kind = type(estimator).__name__ if estimator is not None else getattr(custom_loop, "__name__", "custom_loop")
    all_tags = {"loopstack.task": "train", "estimator": kind, "trainer": "custom_loop" if custom_loop else "fit",
                **(tags or {})}
    with project.start_run(run_name or f"train-{kind}", tags=all_tags) as run:
        run.log_dataset(dataset)
        run.log_params({**{k: v for k, v in _param_values(estimator).items()}, **params,
                        "estimator_class": f"{type(estimator).__module__}.{kind}" if estimator is not None else kind,
                        "label": label, "features": ",".join(features)})
        t0 = time.perf_counter()
        if custom_loop is not None:
            model = custom_loop(X_tr, y_tr, X_ev, y_ev, run)
            if model is None:
                raise TrainingError("custom_loop returned None: return the trained model (with predict_proba "
                                    "or predict)")
        else:
            fitted = estimator.fit(X_tr, y_tr, **dict(fit_kwargs or {}))
            model = fitted if fitted is not None else estimator
        fit_s = time.perf_counter() - t0
        run.log_metrics({"fit_seconds": fit_s, "train_rows": len(X_tr), "eval_rows": len(X_ev)})
        signature = signature_for(dataset, X_tr, model, label)
        ev = None
        metrics: dict = {"fit_seconds": fit_s}
        if len(X_ev):
            view = _FramesView(dataset, train_frame, eval_frame)
            ev = evaluate(model, view, threshold, precision_target, slices, label=label, run=run, report=report)
            metrics.update(ev.flat_metrics(include_slices=False))
        stored = _save(run, model, signature) if save_model else []
        run.set_tags({"model_artifact": MODEL_PATH if save_model else "", "signature_artifact": SIGNATURE_PATH})
    return TrainResult(model, run.run_id, signature, metrics, ev, fit_s, stored)


class _FramesView:
    """A dataset with other train/eval frames (same manifest): lets evaluate() score subsamples."""

    def __init__(self, dataset: Any, train: pd.DataFrame, eval_: pd.DataFrame) -> None:
        self.manifest, self.train, self.eval = dataset.manifest, train, eval_
        self.label_column, self.feature_columns = dataset.label_column, dataset.feature_columns


def _save(run: Any, model: Any, signature: Signature) -> list[str]:
    import joblib
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "model"
        d.mkdir()
        try:
            joblib.dump(model, d / "model.joblib")
        except Exception as exc:  # noqa: BLE001 - say what failed and what to do
            raise TrainingError(f"the trained {type(model).__name__} cannot be pickled ({type(exc).__name__}: "
                                f"{exc}); return a picklable model from the custom loop, or train with "
                                "save_model=False and log your own artifact") from exc
        (d / "signature.json").write_text(signature.to_json())
        return run.log_artifact(d)


def train(project: Any, estimator: Any, dataset: Any, *, label: str | None = None, run_name: str | None = None,
          params: Mapping[str, Any] | None = None, fit_kwargs: Mapping[str, Any] | None = None,
          custom_loop: Callable | None = None, **options: Any) -> TrainResult:
    """Fit on the dataset's train part, evaluate on its holdout, record it all in a run (module docstring).

    `options`: tags, threshold, precision_target, slices, report, save_model (see `fit_and_log`).
    """
    if not hasattr(dataset, "manifest"):
        dataset = project.dataset(dataset)
    return fit_and_log(project, estimator, dataset, dataset.train, dataset.eval, label=label, run_name=run_name,
                       params=params, fit_kwargs=fit_kwargs, custom_loop=custom_loop, **options)


def load_model(project: Any, run_id: str) -> tuple[Any, Signature]:
    """The model and signature a training run saved."""
    import io

    import joblib
    runs = project.runs
    model = joblib.load(io.BytesIO(runs.artifact(run_id, MODEL_PATH)))
    return model, Signature.from_json(runs.artifact(run_id, SIGNATURE_PATH))


def predict_scores(model: Any, signature: Signature, frame: pd.DataFrame) -> np.ndarray:
    """Scores for a serving frame, after checking it against the signature."""
    from loopstack.training.scoring import positive_scores
    out = signature.outputs[0] if signature.outputs else {}
    return positive_scores(model, signature.prepare(frame), out.get("positive_class", 1))
