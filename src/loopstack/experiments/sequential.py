"""Sequential testing: mSPRT always-valid p-values, so an automated ramp may peek every hour.

A fixed-horizon test is valid at one pre-planned look. Checking it at every look and stopping at
the first p < alpha inflates false positives (50 looks at alpha = 0.05: roughly one A/A test in four
"wins"). The mixture sequential probability ratio test (Robbins 1970; Johari, Pekelis & Walsh,
"Always valid inference", 2017/2022) gives a p-value that may be read at any time.

Model: the difference estimate d_n = mean_b - mean_a is ~ N(theta, v_n) with v_n = var_a/n_a +
var_b/n_b. Against H0: theta = theta0 put a normal mixture prior theta ~ N(theta0, tau^2) on the
alternative. The mixture likelihood ratio has a closed form:

    Lambda_n = sqrt(v_n / (v_n + tau^2)) * exp(tau^2 (d_n - theta0)^2 / (2 v_n (v_n + tau^2)))

It is a non-negative martingale under H0, so by Ville's inequality P(exists n: Lambda_n >= 1/alpha)
<= alpha. The always-valid p-value is p_n = min(p_{n-1}, 1 / Lambda_n); reject once p_n <= alpha.
Inverting it gives an always-valid confidence sequence, theta0 with Lambda_n(theta0) < 1/alpha:

    |d_n - theta0| < sqrt(2 v_n (v_n + tau^2) / tau^2 * (ln(1/alpha) + ln((v_n + tau^2) / v_n) / 2))

``tau`` is in the metric's units: the scale of effects you expect (about the MDE is a good choice).
Any tau keeps the guarantee; a tau near the true effect detects it fastest. Variances are plug-in
estimates (for proportions p(1 - p)), which is exact only asymptotically: looks before
``min_samples`` units per arm are skipped so the estimates have settled. Counts must be cumulative
(the whole experiment so far), never per-look increments.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import special

from loopstack.experiments.statistics import ExperimentError, _check_alpha, _check_count, _check_finite


def msprt_log_lr(difference: Any, variance: Any, tau: float, theta0: float = 0.0) -> np.ndarray:
    """ln Lambda of the normal-mixture SPRT; ``variance`` is Var(difference estimate). Vectorised."""
    if not tau > 0:
        raise ExperimentError(f"tau must be > 0 (the expected effect scale, in metric units), got {tau!r}")
    d = np.asarray(difference, dtype="float64") - theta0
    v = np.asarray(variance, dtype="float64")
    t2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 0.5 * np.log(v / (v + t2)) + t2 * d * d / (2 * v * (v + t2))
    return np.where(v > 0, out, 0.0)          # no variance estimate yet: no evidence


def always_valid_p_values(log_lr: Any, axis: int = -1) -> np.ndarray:
    """Running minimum of min(1, 1/Lambda) along ``axis`` (the looks)."""
    p = np.minimum(1.0, np.exp(-np.asarray(log_lr, dtype="float64")))
    return np.minimum.accumulate(p, axis=axis)


def confidence_halfwidth(variance: Any, tau: float, alpha: float) -> np.ndarray:
    """Half-width of the always-valid (1 - alpha) confidence sequence around the difference."""
    _check_alpha(alpha)
    v = np.asarray(variance, dtype="float64")
    t2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.sqrt(2 * v * (v + t2) / t2 * (math.log(1 / alpha) + 0.5 * np.log((v + t2) / v)))
    return np.where(v > 0, w, np.inf)


@dataclass(frozen=True)
class SequentialResult:
    """The state after one look. ``relative_ci`` divides the CI by the control mean (treated as known)."""

    looks: int
    n_control: int
    n_treatment: int
    control: float
    treatment: float
    difference: float
    ci: tuple[float, float]
    relative_difference: float
    relative_ci: tuple[float, float]
    p_value: float
    log_lr: float
    alpha: float

    @property
    def significant(self) -> bool:
        return self.p_value <= self.alpha

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["significant"] = self.significant
        return {k: ([_f(x) for x in v] if isinstance(v, tuple) else _f(v) if isinstance(v, float) else v)
                for k, v in d.items()}


class SequentialTest:
    """mSPRT on a difference in means or proportions; call `update` at every look with cumulative stats."""

    def __init__(self, tau: float, *, alpha: float = 0.05, theta0: float = 0.0, min_samples: int = 100) -> None:
        _check_alpha(alpha)
        if not tau > 0:
            raise ExperimentError(f"tau must be > 0 (the expected effect scale, in metric units), got {tau!r}")
        if isinstance(min_samples, bool) or not isinstance(min_samples, numbers.Integral) or min_samples < 1:
            raise ExperimentError(f"min_samples must be a whole number >= 1 (units per arm before the first "
                                  f"look counts), got {min_samples!r}")
        self.tau, self.alpha, self.theta0, self.min_samples = float(tau), float(alpha), float(theta0), int(min_samples)
        self.p_value = 1.0
        self.ci = (-math.inf, math.inf)
        self.looks = 0
        self.last: SequentialResult | None = None

    def update(self, n_a: int, mean_a: float, var_a: float, n_b: int, mean_b: float, var_b: float) -> SequentialResult:
        """One look at cumulative n, mean and sample variance per arm; returns the always-valid state."""
        for arm, n, mean, var in (("control", n_a, mean_a, var_a), ("treatment", n_b, mean_b, var_b)):
            _check_count(n, f"{arm}: n")
            _check_finite(mean, f"{arm}: mean")
            if _check_finite(var, f"{arm}: variance") < 0:
                raise ExperimentError(f"{arm}: variance must be >= 0 (the sample variance), got {var!r}")
        if n_a < self.last_n("control") or n_b < self.last_n("treatment"):
            raise ExperimentError("sample sizes went down between looks: pass cumulative counts, not increments")
        self.looks += 1
        diff = mean_b - mean_a
        log_lr = 0.0
        if min(n_a, n_b) >= self.min_samples:
            v = var_a / n_a + var_b / n_b
            log_lr = float(msprt_log_lr(diff, v, self.tau, self.theta0))
            self.p_value = min(self.p_value, min(1.0, math.exp(-log_lr)))
            w = float(confidence_halfwidth(v, self.tau, self.alpha))
            lo, hi = max(self.ci[0], diff - w), min(self.ci[1], diff + w)
            self.ci = (lo, hi) if lo <= hi else (diff - w, diff + w)
        rel = diff / mean_a if mean_a else math.nan
        rel_ci = (self.ci[0] / mean_a, self.ci[1] / mean_a) if mean_a > 0 else (math.nan, math.nan)
        self.last = SequentialResult(self.looks, int(n_a), int(n_b), float(mean_a), float(mean_b), diff, self.ci,
                                     rel, rel_ci, self.p_value, log_lr, self.alpha)
        return self.last

    def update_proportions(self, successes_a: int, n_a: int, successes_b: int, n_b: int) -> SequentialResult:
        """One look at cumulative conversions per arm (Bernoulli variance p(1 - p))."""
        if n_a <= 0 or n_b <= 0 or not (0 <= successes_a <= n_a and 0 <= successes_b <= n_b):
            raise ExperimentError(f"need 0 <= successes <= n and n > 0, got {successes_a}/{n_a}, "
                                  f"{successes_b}/{n_b}")
        pa, pb = successes_a / n_a, successes_b / n_b
        return self.update(n_a, pa, pa * (1 - pa), n_b, pb, pb * (1 - pb))

    def last_n(self, arm: str) -> int:
        if self.last is None:
            return 0
        return self.last.n_control if arm == "control" else self.last.n_treatment

    def to_dict(self) -> dict[str, Any]:
        """State to persist between looks (the loop resumes after a crash)."""
        return {"tau": self.tau, "alpha": self.alpha, "theta0": self.theta0, "min_samples": self.min_samples,
                "p_value": self.p_value, "ci": [_f(self.ci[0]), _f(self.ci[1])], "looks": self.looks,
                "last": None if self.last is None else self.last.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SequentialTest:
        t = cls(d["tau"], alpha=d["alpha"], theta0=d["theta0"], min_samples=d["min_samples"])
        t.p_value, t.looks = float(d["p_value"]), int(d["looks"])
        lo, hi = d["ci"]
        t.ci = (-math.inf if lo is None else lo, math.inf if hi is None else hi)
        if d.get("last"):
            last = dict(d["last"])
            last.pop("significant", None)
            for k in ("ci", "relative_ci"):
                last[k] = tuple(math.nan if v is None else v for v in last[k])
            t.last = SequentialResult(**{k: (math.nan if v is None else v) for k, v in last.items()})
        return t


@dataclass(frozen=True)
class SimulationResult:
    """Share of simulated experiments that rejected H0, per procedure (FPR when effect = 0)."""

    msprt: float
    naive: float
    fixed_horizon: float
    n_sims: int
    looks: int
    alpha: float

    @property
    def mc_se(self) -> float:
        """Monte-Carlo standard error of a rate near alpha."""
        return math.sqrt(self.alpha * (1 - self.alpha) / self.n_sims)


def simulate_false_positive_rate(n_sims: int = 2000, looks: int = 50, n_per_look: int = 200, *,
                                 metric: str = "mean", tau: float | None = None, alpha: float = 0.05,
                                 effect: float = 0.0, sd: float = 1.0, baseline: float = 0.1,
                                 min_samples: int = 100, seed: int = 0) -> SimulationResult:
    """Simulate ``n_sims`` experiments peeked at ``looks`` times (``n_per_look`` new units per arm each).

    Compares the mSPRT (reject once the always-valid p <= alpha), naive peeking (reject at the first
    look with a fixed-horizon p < alpha: Welch t for means, pooled z for proportions) and a single
    look at the end. ``metric="mean"``: normal data with ``sd``; ``"proportion"``: Bernoulli with
    ``baseline``. ``effect`` is added to the treatment (0 gives false-positive rates). ``tau``
    defaults to 0.1 x the per-unit standard deviation. Vectorised over simulations: the per-look
    sufficient statistics are drawn directly (normal means with chi-squared sums of squares, or
    binomial counts), so 10 000 x 50 looks take well under a second.
    """
    if metric not in ("mean", "proportion"):
        raise ExperimentError(f"metric must be 'mean' or 'proportion', got {metric!r}")
    for name, value, least in (("n_sims", n_sims, 1), ("looks", looks, 1), ("n_per_look", n_per_look, 2)):
        if _check_count(value, name) < least:
            raise ExperimentError(f"{name} must be at least {least}, got {value!r}")
    _check_alpha(alpha)
    if metric == "mean" and not (math.isfinite(sd) and sd > 0):
        raise ExperimentError(f"sd must be a finite number > 0, got {sd!r}")
    if metric == "proportion" and not (0 < baseline < 1 and 0 <= baseline + effect <= 1):
        raise ExperimentError(f"baseline {baseline!r} must be in (0, 1) and baseline + effect "
                              f"{baseline + effect!r} in [0, 1]")
    rng = np.random.default_rng(seed)
    shape = (n_sims, looks)
    m = int(n_per_look)
    n = m * np.arange(1, looks + 1, dtype="float64")
    if metric == "mean":
        unit_sd = sd
        stats = [_cumulative_normal(rng, shape, m, n, mu, sd) for mu in (0.0, effect)]
    else:
        unit_sd = math.sqrt(baseline * (1 - baseline))
        stats = []
        for p in (baseline, baseline + effect):
            x = np.cumsum(rng.binomial(m, p, size=shape), axis=1)
            ph = x / n
            stats.append((ph, ph * (1 - ph)))
    tau = 0.1 * unit_sd if tau is None else tau
    (mean_a, var_a), (mean_b, var_b) = stats
    diff = mean_b - mean_a
    v = var_a / n + var_b / n
    ok = n >= min_samples
    log_lr = np.where(ok, msprt_log_lr(diff, v, tau), -np.inf)
    msprt = (always_valid_p_values(log_lr, axis=1)[:, -1] <= alpha).mean()
    if metric == "mean":
        with np.errstate(divide="ignore", invalid="ignore"):
            t = diff / np.sqrt(v)
            df = v ** 2 / ((var_a / n) ** 2 / (n - 1) + (var_b / n) ** 2 / (n - 1))
        p_naive = 2 * special.stdtr(df, -np.abs(t))
    else:
        pooled = (mean_a + mean_b) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            z = diff / np.sqrt(pooled * (1 - pooled) * 2 / n)
        p_naive = 2 * special.ndtr(-np.abs(z))
    p_naive = np.where(ok & np.isfinite(p_naive), p_naive, 1.0)
    naive = (p_naive < alpha).any(axis=1).mean()
    fixed = (p_naive[:, -1] < alpha).mean()
    return SimulationResult(float(msprt), float(naive), float(fixed), n_sims, looks, alpha)


def _cumulative_normal(rng: np.random.Generator, shape: tuple[int, int], m: int, n: np.ndarray, mu: float,
                       sd: float) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative mean and sample variance of normal data, drawn look by look from sufficient statistics."""
    batch_mean = mu + sd / math.sqrt(m) * rng.standard_normal(shape)
    batch_m2 = sd * sd * rng.chisquare(m - 1, size=shape)
    total = np.cumsum(m * batch_mean, axis=1)
    sumsq = np.cumsum(batch_m2 + m * batch_mean ** 2, axis=1)
    mean = total / n
    var = np.maximum(sumsq - n * mean ** 2, 0.0) / (n - 1)
    return mean, var


def _f(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v
