"""Successive-halving hyperparameter search (synchronous SH, the rung schedule ASHA uses), over runs.

`n_trials` configurations start on the smallest budget; after each rung only the best ``1/eta``
(at least one) go on to a budget ``eta`` times larger, until `max_budget`. The budget is either a
parameter of the estimator (``budget="n_estimators"``: boosting rounds, epochs, ...) or the
fraction of training rows (``budget="data_fraction"``: a fixed random order, so each rung's rows
contain the previous rung's). Every trial on every rung is a tracked run tagged with the study,
the trial, the rung and the budget, and scored on the dataset's holdout.

The schedule (`rung_schedule`) and the promotion rule (`promote`) are pure and tested alone.
"""
from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from loopstack.errors import LoopstackError

DATA_FRACTION = "data_fraction"


class TuningError(LoopstackError):
    """The search cannot run as asked (bad space, budgets, metric, ...)."""


# -- pure core -----------------------------------------------------------------------------------
def rung_schedule(n_trials: int, min_budget: float, max_budget: float, eta: int = 3) -> list[tuple[int, float]]:
    """[(trials on the rung, budget), ...]: budgets min_budget * eta**i up to max_budget (the last rung
    always runs at max_budget), trials n, n//eta, ... (at least 1)."""
    if eta < 2:
        raise TuningError(f"eta must be >= 2, got {eta}")
    if not 0 < min_budget <= max_budget:
        raise TuningError(f"need 0 < min_budget <= max_budget, got {min_budget}, {max_budget}")
    if n_trials < 1:
        raise TuningError("n_trials must be at least 1")
    n_rungs = int(math.floor(math.log(max_budget / min_budget, eta) + 1e-9)) + 1
    return [(max(1, n_trials // eta ** i), max_budget if i == n_rungs - 1 else min_budget * eta ** i)
            for i in range(n_rungs)]


def promote(scores: Mapping[int, float | None], k: int, mode: str = "max") -> list[int]:
    """The `k` best trial ids by score (None/NaN scores last, ties by trial id)."""
    sign = -1.0 if mode == "max" else 1.0

    def key(item: tuple[int, float | None]) -> tuple[float, int]:
        t, s = item
        bad = s is None or not math.isfinite(s)
        return (math.inf if bad else sign * s, t)

    return [t for t, _ in sorted(scores.items(), key=key)[:k]]


def _check_range(key: str, kind: str, lo: Any, hi: Any) -> None:
    """A (kind, lo, hi) search dimension must be drawable: finite lo <= hi, lo > 0 for loguniform, ints for int."""
    nums = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
               for v in (lo, hi))
    ok = nums and lo <= hi and (kind != "loguniform" or lo > 0) and (
        kind != "int" or all(float(v).is_integer() for v in (lo, hi)))
    if not ok:
        need = {"uniform": "finite numbers", "loguniform": "numbers > 0", "int": "whole numbers"}[kind]
        raise TuningError(f"search space {key!r} = ({kind!r}, {lo!r}, {hi!r}): lo and hi must be {need} with "
                          "lo <= hi")


def sample_configs(space: Mapping[str, Any], n: int, seed: int = 0) -> list[dict]:
    """`n` configs from a space: list/tuple-of-choices -> choice, ('uniform'|'loguniform'|'int', lo, hi)
    -> that distribution, callable(rng) -> its value, anything else -> the constant."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        cfg = {}
        for k, spec in space.items():
            if callable(spec):
                v = spec(rng)
            elif isinstance(spec, tuple) and len(spec) == 3 and spec[0] in ("uniform", "loguniform", "int"):
                kind, lo, hi = spec
                _check_range(k, kind, lo, hi)
                if kind == "uniform":
                    v = float(rng.uniform(lo, hi))
                elif kind == "loguniform":
                    v = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
                else:
                    v = int(rng.integers(lo, hi + 1))
            elif isinstance(spec, (list, tuple)):
                if not spec:
                    raise TuningError(f"search space {k!r} is an empty list of choices")
                v = spec[int(rng.integers(len(spec)))]
                v = v.item() if hasattr(v, "item") else v
            else:
                v = spec
            cfg[k] = v
        out.append(cfg)
    return out


# -- the study -----------------------------------------------------------------------------------
@dataclass
class Trial:
    trial: int
    config: dict
    rung: int
    budget: float
    run_id: str | None
    score: float | None
    error: str | None = None


@dataclass
class StudyResult:
    """Outcome of a search: the best config (at the largest budget it reached), its run, every trial."""
    study: str
    metric: str
    mode: str
    best_config: dict
    best_run_id: str
    best_score: float | None
    best_budget: float
    trials: list[Trial] = field(default_factory=list)
    schedule: list = field(default_factory=list)

    def table(self) -> list[dict]:
        return [t.__dict__ for t in self.trials]


def _make(estimator: Any, config: dict, budget_param: str | None, budget: float) -> Any:
    params = dict(config)
    if budget_param:
        params[budget_param] = int(round(budget))
    if isinstance(estimator, type) or (callable(estimator) and not hasattr(estimator, "fit")):
        return estimator(**params)
    from sklearn.base import clone
    est = clone(estimator)
    est.set_params(**params)
    return est


def successive_halving(project: Any, estimator: Any, dataset: Any, space: Mapping[str, Any] | None = None, *,
                       configs: Sequence[Mapping[str, Any]] | None = None, n_trials: int = 9, eta: int = 3,
                       budget: str = "n_estimators", min_budget: float = 10, max_budget: float = 90,
                       metric: str = "pr_auc", mode: str = "max", study: str | None = None, seed: int = 0,
                       label: str | None = None, fit_kwargs: Mapping[str, Any] | None = None,
                       progress: Callable[[Trial], None] | None = None) -> StudyResult:
    """Run the search; `estimator` is an estimator to clone (set_params(**config)) or a factory(**config).

    With ``budget="data_fraction"``, min_budget/max_budget are fractions of the train rows (e.g. 1/9 .. 1).
    Returns the best config on the last rung, its run id and score, and every trial.
    """
    if mode not in ("max", "min"):
        raise TuningError(f"mode must be 'max' or 'min', got {mode!r}")
    if budget == DATA_FRACTION and not 0 < max_budget <= 1:
        raise TuningError(f"with budget='data_fraction' the budgets are fractions in (0, 1]; max_budget={max_budget}")
    if configs is None:
        if space is None:
            raise TuningError("give a search space (space=) or explicit configs=")
        configs = sample_configs(space, n_trials, seed)
    configs = [dict(c) for c in configs]
    if not configs:   # rung_schedule would blame n_trials, which the caller did not give
        raise TuningError("configs= is empty: give at least one configuration (or a search space with space=)")
    study = study or f"sh-{uuid.uuid4().hex[:8]}"
    schedule = rung_schedule(len(configs), min_budget, max_budget, eta)
    from loopstack.training.trainers import fit_and_log
    if not hasattr(dataset, "manifest"):
        dataset = project.dataset(dataset)
    train_full, eval_frame = dataset.train, dataset.eval
    order = np.random.default_rng(seed).permutation(len(train_full))
    alive = list(range(len(configs)))
    trials: list[Trial] = []
    for rung, (n_keep, b) in enumerate(schedule):
        alive = alive[:n_keep] if rung == 0 else alive
        if budget == DATA_FRACTION:
            rows = max(2, int(math.ceil(b * len(train_full))))
            train_frame, budget_param = train_full.iloc[np.sort(order[:rows])], None
        else:
            train_frame, budget_param = train_full, budget
        scores: dict[int, float | None] = {}
        for t in alive:
            tags = {"loopstack.task": "tuning", "study": study, "trial": t, "rung": rung, "budget": b,
                    "budget_kind": budget}
            run_id, score, err = None, None, None
            try:
                est = _make(estimator, configs[t], budget_param, b)
                res = fit_and_log(project, est, dataset, train_frame, eval_frame, label=label,
                                  run_name=f"{study}-t{t}-r{rung}", fit_kwargs=fit_kwargs, tags=tags,
                                  report=False, save_model=False)
                run_id = res.run_id
                if metric not in res.metrics:
                    raise TuningError(f"metric {metric!r} was not measured; measured: {sorted(res.metrics)}")
                score = res.metrics[metric]
            except TuningError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed trial loses its place, the study goes on
                err = f"{type(exc).__name__}: {exc}"
            scores[t] = score
            trial = Trial(t, configs[t], rung, b, run_id, score, err)
            trials.append(trial)
            if progress:
                progress(trial)
        if rung + 1 < len(schedule):
            alive = promote(scores, schedule[rung + 1][0], mode)
    last = [tr for tr in trials if tr.rung == len(schedule) - 1]
    best_id = promote({tr.trial: tr.score for tr in last}, 1, mode)[0]
    best = next(tr for tr in last if tr.trial == best_id)
    if best.run_id is None or best.score is None:
        raise TuningError(f"every trial of study {study!r} failed on its last rung; first error: "
                          f"{next((tr.error for tr in trials if tr.error), None)}")
    return StudyResult(study, metric, mode, dict(best.config), best.run_id, best.score, best.budget, trials,
                       schedule)
