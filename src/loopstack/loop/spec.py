"""`LoopSpec`: what a retrain run builds and trains, and the offline steps (dataset, train, gate, register).

Each offline step takes the project, the spec and the run's state, does its work through the
project's public API (build_dataset, train, the registry) and returns a `Decision` plus the state
fields it produced. `register` is idempotent: the training run id is the key, so a run that crashed
after registering finds its version instead of registering a second one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping, Sequence

from loopstack.loop.core import FAIL, PASS, Decision, LoopError, LoopPolicy, LoopState, decide_gate


@dataclass
class LoopSpec:
    """A model's retrain recipe.

    `labels`: a DataFrame, a Parquet path or a log topic, or a callable ``labels(now)`` returning one
    (fresh labels each run). `estimator`: a callable returning a new unfitted estimator. `split`: a
    TemporalSplit, a callable ``split(now)``, or None (the last `eval_window` evaluates). The dataset is
    cut off at the run's start, so only labels final for `label_delay` by then are used.
    """
    model: str
    labels: Any
    features: Sequence[str]
    estimator: Callable[[], Any]
    gate: Any                                   # registry.gate.ModelValidationGate
    policy: LoopPolicy
    label_delay: Any = "24h"
    split: Any = None
    dataset_name: str | None = None
    dataset_options: Mapping[str, Any] = field(default_factory=dict)
    train_options: Mapping[str, Any] = field(default_factory=lambda: {"report": False})
    latency_sample_rows: int = 200

    def __post_init__(self) -> None:
        from loopstack.loop.policy_checks import check_range
        from loopstack.timeutil import parse_duration
        if not isinstance(self.model, str) or not self.model:
            raise LoopError(f"LoopSpec: model must be the registered model's name, got {self.model!r}")
        if isinstance(self.features, str):      # one feature, not its letters
            self.features = [self.features]
        if not self.features:
            raise LoopError("LoopSpec: features is empty; list the features to train on, e.g. ['view:feature']")
        if not callable(self.estimator):
            raise LoopError(f"LoopSpec: estimator must be a callable returning a new unfitted estimator (e.g. "
                            f"`lambda: LogisticRegression()`), got {self.estimator!r}")
        check_range("LoopSpec", "latency_sample_rows", self.latency_sample_rows, 1, integer=True)
        parse_duration(self.label_delay)     # a bad duration fails here, not at the run's dataset step


def _call(value: Any, now: datetime) -> Any:
    return value(now) if callable(value) and not hasattr(value, "assign") else value


def dataset_step(project: Any, spec: LoopSpec, state: LoopState, now: datetime) -> tuple[Decision, dict]:
    ds = project.build_dataset(_call(spec.labels, now), list(spec.features), label_delay=spec.label_delay,
                               split=_call(spec.split, now), cutoff=now, name=spec.dataset_name or spec.model,
                               **dict(spec.dataset_options))
    m = ds.manifest
    ev = {"dataset_id": ds.id, "content_hash": ds.content_hash, "rows": m["rows"], "cutoff": m["cutoff"],
          "label_delay": m["label_delay"], "dropped": m["dropped"]}
    if not m["rows"]["eval"]:
        return Decision(FAIL, f"dataset {ds.id} has no evaluation rows, so the gate cannot judge a model; widen "
                              "the label window or the split", ev), {"dataset_id": ds.id}
    return Decision(PASS, f"dataset {ds.name} v{ds.version} ({ds.id}): {m['rows']['train']} train, "
                          f"{m['rows']['eval']} eval rows, labels final >= {m['label_delay']} before "
                          f"{m['cutoff'][:19]}", ev), {"dataset_id": ds.id}


def train_step(project: Any, spec: LoopSpec, state: LoopState, now: datetime) -> tuple[Decision, dict]:
    ds = project.dataset(state.dataset_id)
    opts = dict(spec.train_options)
    opts["tags"] = {**dict(opts.get("tags") or {}), "loop_run": state.run_id}
    result = project.train(spec.estimator(), ds, run_name=f"loop-{spec.model}", **opts)
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    return (Decision(PASS, f"trained run {result.run_id}", {"train_run_id": result.run_id, "metrics": metrics}),
            {"train_run_id": result.run_id, "metrics": metrics})


def _model_and_eval(project: Any, state: LoopState) -> tuple[Any, Any, Any]:
    from loopstack.training.trainers import load_model
    model, signature = load_model(project, state.train_run_id)
    X_eval, _ = project.dataset(state.dataset_id).X_y("eval")
    return model, signature, X_eval


def production_version(registry: Any, name: str) -> tuple[int | None, dict | None]:
    """(version, metrics) of the model's production version, or (None, None)."""
    summary = next((m for m in registry.list() if m["name"] == name), None)
    if summary is None or summary["production"] is None:
        return None, None
    v = summary["production"]
    return v, registry.get(f"models:/{name}/{v}").metrics


def gate_step(project: Any, spec: LoopSpec, state: LoopState, now: datetime) -> tuple[Decision, dict]:
    from loopstack.training.trainers import predict_scores
    model, signature, X_eval = _model_and_eval(project, state)
    prod, prod_metrics = production_version(project.models, spec.model)
    sample = X_eval.head(spec.latency_sample_rows)
    decision = spec.gate.evaluate(state.metrics, prod_metrics,
                                  predict_fn=lambda x: predict_scores(model, signature, x), sample=sample)
    gate = decision.to_dict()
    d = decide_gate(gate)
    reason = d.reason + (f" (against production version {prod})" if prod else " (no production version yet)")
    return Decision(d.outcome, reason, {**d.evidence, "production_version": prod}), \
        {"gate": gate, "production_version": prod}


def find_registered(registry: Any, name: str, train_run_id: str) -> Any:
    """The version registered from `train_run_id`, if any (the idempotency key of `register`)."""
    if not any(m["name"] == name and m["versions"] for m in registry.list()):
        return None
    return next((v for v in registry.versions(name) if v.run_id == str(train_run_id)), None)


def register_step(project: Any, spec: LoopSpec, state: LoopState, now: datetime, actor: str
                  ) -> tuple[Decision, dict]:
    from loopstack.registry.profile import build_profile
    from loopstack.training.trainers import predict_scores
    reg = project.models
    mv = find_registered(reg, spec.model, state.train_run_id)
    if mv is None:
        model, signature, X_eval = _model_and_eval(project, state)
        ds = project.dataset(state.dataset_id)
        mv = reg.register(spec.model, model, signature=signature, run_id=state.train_run_id,
                          dataset={"id": ds.id, "hash": ds.content_hash}, metrics=state.metrics,
                          profile=build_profile(X_eval, predict_scores(model, signature, X_eval)),
                          description=f"retrained by loop run {state.run_id} ({state.trigger})", actor=actor)
    if mv.gate is None:
        reg.record_gate(mv.ref, state.gate, actor=actor)
    ev = {"version": mv.version, "sha256": mv.artifact_sha256, "gate_passed": bool(state.gate["passed"])}
    if not state.gate["passed"]:
        return Decision(FAIL, f"registered {mv.ref} as a candidate with its failed gate recorded; it goes no "
                              "further (a human decides: fix and retrain, or promote with --override)", ev), \
            {"version": mv.version}
    return Decision(PASS, f"registered {mv.ref} (gate passed)", ev), {"version": mv.version}
