"""A/B statistics from summary numbers: tests, confidence intervals, power, SRM (pure; scipy.special).

Conventions: arm ``a`` is control, ``b`` is treatment; ``difference = b - a``; ``relative = b / a - 1``.
Every test works from aggregates (counts, or n / mean / sample variance), which are mergeable, so
readouts never need row-level data.

- `two_proportion_ztest`: z with the pooled standard error (the test), CI with the unpooled one.
- `welch_ttest`: t = (mean_b - mean_a) / sqrt(var_a/n_a + var_b/n_b), Welch-Satterthwaite df; same
  numbers as ``scipy.stats.ttest_ind_from_stats(..., equal_var=False)``.
- Relative CI (both tests): delta method, Var(b/a) ~ se_b^2/a^2 + b^2 se_a^2/a^4, normal quantile.
- Power / sample size / MDE: normal approximation. Proportions use the pooled variance under H0
  and the unpooled one under H1 (Fleiss, without continuity correction): 10 % -> 12 %, alpha 0.05
  two-sided, power 0.8 needs 3 841 users per arm. Means: n = (z_a + z_b)^2 sd^2 (1 + 1/k) / mde^2.
- `sample_ratio_mismatch`: chi-squared goodness of fit of arm counts to the configured weights.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, Mapping, NamedTuple

from scipy import special

from loopstack.errors import LoopstackError
from loopstack.experiments.assignment import AssignmentError, normalized_weights

ALTERNATIVES = ("two-sided", "greater", "less")


class ExperimentError(LoopstackError, ValueError):
    """Bad input to an experiment statistic (negative counts, alpha outside (0, 1), ...)."""


@dataclass(frozen=True)
class TestResult:
    """A two-arm comparison: estimates, (1 - alpha) two-sided CIs, statistic and p-value."""

    test: str
    control: float
    treatment: float
    n_control: int
    n_treatment: int
    difference: float
    ci: tuple[float, float]
    relative_difference: float
    relative_ci: tuple[float, float]
    statistic: float
    p_value: float
    alpha: float
    alternative: str
    df: float | None = None

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["significant"] = self.significant
        return _jsonable(d)


def _z(p: float) -> float:
    return float(special.ndtri(p))


def _check_alpha(alpha: float, name: str = "alpha") -> None:
    if not 0 < alpha < 1:
        raise ExperimentError(f"{name} must be in (0, 1), got {alpha!r}")


def _check_positive(value: float, name: str) -> float:
    """``value`` as a float, refusing NaN, infinities, zero and negatives (sizes, ratios, sds)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ExperimentError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_finite(value: float, name: str) -> float:
    """``value`` as a float, refusing NaN and infinities (means, effects)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ExperimentError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_count(value: int, name: str) -> int:
    """``value`` as an int, refusing negatives, fractions, NaN (counts of units or successes)."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or value < 0 or value != int(value)):
        raise ExperimentError(f"{name} must be a whole number >= 0, got {value!r}")
    return int(value)


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ExperimentError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")


def _p_from_z(z: float, alternative: str) -> float:
    if alternative == "greater":
        return float(special.ndtr(-z))
    if alternative == "less":
        return float(special.ndtr(z))
    return float(2 * special.ndtr(-abs(z)))


def _relative(mean_a: float, se_a: float, mean_b: float, se_b: float, crit: float) -> tuple[float, tuple]:
    if mean_a == 0:
        return math.nan, (math.nan, math.nan)
    rel = mean_b / mean_a - 1
    se = math.sqrt(se_b ** 2 / mean_a ** 2 + mean_b ** 2 * se_a ** 2 / mean_a ** 4)
    return rel, (rel - crit * se, rel + crit * se)


def two_proportion_ztest(successes_a: int, n_a: int, successes_b: int, n_b: int, *, alpha: float = 0.05,
                         alternative: str = "two-sided") -> TestResult:
    """Two-proportion z-test (pooled SE) with unpooled Wald CIs for the difference and the lift."""
    _check_alpha(alpha)
    _check_alternative(alternative)
    for name, x, n in (("a", successes_a, n_a), ("b", successes_b, n_b)):
        x, n = _check_count(x, f"arm {name}: successes"), _check_count(n, f"arm {name}: n")
        if n <= 0 or x > n:
            raise ExperimentError(f"arm {name}: need 0 <= successes <= n and n > 0, got {x} of {n}")
    pa, pb = successes_a / n_a, successes_b / n_b
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    diff = pb - pa
    z = diff / se0 if se0 > 0 else 0.0
    se_a, se_b = math.sqrt(pa * (1 - pa) / n_a), math.sqrt(pb * (1 - pb) / n_b)
    se1 = math.hypot(se_a, se_b)
    crit = _z(1 - alpha / 2)
    rel, rel_ci = _relative(pa, se_a, pb, se_b, crit)
    return TestResult("two_proportion_z", pa, pb, int(n_a), int(n_b), diff, (diff - crit * se1, diff + crit * se1),
                      rel, rel_ci, z, _p_from_z(z, alternative), alpha, alternative)


def welch_ttest(n_a: int, mean_a: float, var_a: float, n_b: int, mean_b: float, var_b: float, *,
                alpha: float = 0.05, alternative: str = "two-sided") -> TestResult:
    """Welch's unequal-variance t-test from n, mean and sample variance (ddof=1) of each arm."""
    _check_alpha(alpha)
    _check_alternative(alternative)
    for name, n, m, v in (("a", n_a, mean_a, var_a), ("b", n_b, mean_b, var_b)):
        _check_count(n, f"arm {name}: n")
        _check_finite(m, f"arm {name}: mean")
        if n < 2 or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
            raise ExperimentError(f"arm {name}: need n >= 2 and a finite variance >= 0, got n={n}, var={v}")
    va, vb = var_a / n_a, var_b / n_b
    se = math.sqrt(va + vb)
    diff = mean_b - mean_a
    if se == 0:
        t, df = (0.0 if diff == 0 else math.copysign(math.inf, diff)), float(n_a + n_b - 2)
    else:
        t = diff / se
        df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))
    if alternative == "greater":
        p = float(special.stdtr(df, -t))
    elif alternative == "less":
        p = float(special.stdtr(df, t))
    else:
        p = float(2 * special.stdtr(df, -abs(t)))
    crit = float(special.stdtrit(df, 1 - alpha / 2))
    rel, rel_ci = _relative(mean_a, math.sqrt(va), mean_b, math.sqrt(vb), crit)
    return TestResult("welch_t", float(mean_a), float(mean_b), int(n_a), int(n_b), diff,
                      (diff - crit * se, diff + crit * se), rel, rel_ci, t, p, alpha, alternative, df)


# -- power, sample size, minimum detectable effect -------------------------------------------------
class SampleSize(NamedTuple):
    control: int
    treatment: int

    @property
    def total(self) -> int:
        return self.control + self.treatment


def _crit(alpha: float, alternative: str) -> float:
    _check_alpha(alpha)
    _check_alternative(alternative)
    return _z(1 - alpha / 2) if alternative == "two-sided" else _z(1 - alpha)


def _abs_effect(baseline: float, mde: float, relative: bool) -> float:
    return baseline * mde if relative else mde


def _normal_power(effect: float, se0: float, se1: float, crit: float, alternative: str) -> float:
    """P(reject) when the estimate ~ N(effect, se1^2) and the test rejects beyond crit * se0."""
    if alternative == "greater":
        return float(special.ndtr((effect - crit * se0) / se1))
    if alternative == "less":
        return float(special.ndtr((-effect - crit * se0) / se1))
    return float(special.ndtr((abs(effect) - crit * se0) / se1) + special.ndtr((-abs(effect) - crit * se0) / se1))


def _proportion_ses(p1: float, p2: float, n_a: float, n_b: float) -> tuple[float, float]:
    pooled = (p1 * n_a + p2 * n_b) / (n_a + n_b)
    return (math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b)),
            math.sqrt(p1 * (1 - p1) / n_a + p2 * (1 - p2) / n_b))


def _check_proportions(baseline: float, effect: float) -> float:
    p2 = baseline + effect
    if not 0 < baseline < 1 or not 0 < p2 < 1:
        raise ExperimentError(f"baseline {baseline} and baseline + effect {p2} must both lie in (0, 1)")
    return p2


def power_two_proportions(baseline: float, mde: float, n_control: int, *, alpha: float = 0.05, ratio: float = 1.0,
                          alternative: str = "two-sided", relative: bool = False) -> float:
    """Power of the two-proportion z-test to detect ``mde`` (absolute, or relative to baseline)."""
    crit = _crit(alpha, alternative)
    n_control, ratio = _check_positive(n_control, "n_control"), _check_positive(ratio, "ratio")
    effect = _abs_effect(baseline, mde, relative)
    p2 = _check_proportions(baseline, effect)
    se0, se1 = _proportion_ses(baseline, p2, n_control, n_control * ratio)
    return _normal_power(effect, se0, se1, crit, alternative)


def sample_size_two_proportions(baseline: float, mde: float, *, alpha: float = 0.05, power: float = 0.8,
                                ratio: float = 1.0, alternative: str = "two-sided",
                                relative: bool = False) -> SampleSize:
    """Users per arm (treatment = ratio x control) to detect ``mde`` with the given power."""
    crit = _crit(alpha, alternative)
    _check_alpha(power, "power")
    ratio = _check_positive(ratio, "ratio")
    effect = _abs_effect(baseline, mde, relative)
    if effect == 0:
        raise ExperimentError("mde must be non-zero")
    p1, p2, k = baseline, _check_proportions(baseline, effect), float(ratio)
    pooled = (p1 + k * p2) / (1 + k)
    n = (crit * math.sqrt(pooled * (1 - pooled) * (1 + 1 / k))
         + _z(power) * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2) / k)) ** 2 / effect ** 2
    return SampleSize(math.ceil(n - 1e-9), math.ceil(n * k - 1e-9))


def mde_two_proportions(baseline: float, n_control: int, *, alpha: float = 0.05, power: float = 0.8,
                        ratio: float = 1.0, alternative: str = "two-sided", relative: bool = False) -> float:
    """Smallest increase over ``baseline`` detected with ``power`` (absolute, or relative if asked)."""
    _check_alpha(power, "power")
    _check_positive(n_control, "n_control")
    _check_positive(ratio, "ratio")
    if not 0 < baseline < 1:
        raise ExperimentError(f"baseline must be a proportion in (0, 1), got {baseline!r}")
    alt = "greater" if alternative == "less" else alternative     # symmetric: solve for an increase

    def gap(effect: float) -> float:
        return power_two_proportions(baseline, effect, n_control, alpha=alpha, ratio=ratio, alternative=alt) - power

    hi = (1 - baseline) * (1 - 1e-9)
    if gap(hi) < 0:
        raise ExperimentError(f"{n_control} users per arm cannot reach power {power} for any effect over "
                              f"baseline {baseline}: increase the sample size")
    from scipy.optimize import brentq
    effect = float(brentq(gap, 1e-12, hi, xtol=1e-12))
    return effect / baseline if relative else effect


def power_means(sd: float, mde: float, n_control: int, *, alpha: float = 0.05, ratio: float = 1.0,
                alternative: str = "two-sided") -> float:
    """Power of a two-sample test on means (common ``sd``) to detect a difference ``mde``."""
    crit = _crit(alpha, alternative)
    sd, mde = _check_positive(sd, "sd"), _check_finite(mde, "mde")
    n_control, ratio = _check_positive(n_control, "n_control"), _check_positive(ratio, "ratio")
    se = sd * math.sqrt(1 / n_control + 1 / (n_control * ratio))
    return _normal_power(mde, se, se, crit, alternative)


def sample_size_means(sd: float, mde: float, *, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0,
                      alternative: str = "two-sided") -> SampleSize:
    """Users per arm to detect a difference ``mde`` in means with common standard deviation ``sd``."""
    crit = _crit(alpha, alternative)
    _check_alpha(power, "power")
    sd, mde, ratio = _check_positive(sd, "sd"), _check_finite(mde, "mde"), _check_positive(ratio, "ratio")
    if mde == 0:
        raise ExperimentError(f"need mde != 0 and sd > 0, got mde={mde}, sd={sd}")
    n = (crit + _z(power)) ** 2 * sd ** 2 * (1 + 1 / ratio) / mde ** 2
    return SampleSize(math.ceil(n - 1e-9), math.ceil(n * ratio - 1e-9))


def mde_means(sd: float, n_control: int, *, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0,
              alternative: str = "two-sided") -> float:
    """Smallest difference in means detected with ``power`` (the far tail of a two-sided test ignored)."""
    crit = _crit(alpha, alternative)
    _check_alpha(power, "power")
    sd = _check_positive(sd, "sd")
    n_control, ratio = _check_positive(n_control, "n_control"), _check_positive(ratio, "ratio")
    return (crit + _z(power)) * sd * math.sqrt(1 / n_control + 1 / (n_control * ratio))


# -- sample-ratio mismatch ------------------------------------------------------------------------
@dataclass(frozen=True)
class SRMResult:
    """Chi-squared goodness of fit of observed arm counts to the expected weights."""

    statistic: float
    p_value: float
    dof: int
    observed: dict[str, int]
    expected_share: dict[str, float]
    observed_share: dict[str, float]
    alpha: float

    @property
    def mismatch(self) -> bool:
        return self.p_value < self.alpha

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mismatch"] = self.mismatch
        return _jsonable(d)


def sample_ratio_mismatch(counts: Mapping[str, int], weights: Mapping[str, float] | None = None, *,
                          alpha: float = 0.001) -> SRMResult:
    """SRM check: are the arm counts consistent with the assignment weights (default: equal)?

    A mismatch (p < alpha; 0.001 by default, as usual for this check since it runs on every
    experiment) means assignment or logging is broken: do not trust the readout.
    """
    _check_alpha(alpha)
    if weights is None:
        weights = {k: 1.0 for k in counts}
    if set(counts) != set(weights):
        raise ExperimentError(f"arms differ: counts has {sorted(counts)}, weights has {sorted(weights)}")
    try:
        shares = normalized_weights(weights)
    except AssignmentError as e:
        raise ExperimentError(str(e)) from None
    counts = {k: _check_count(v, f"count of arm {k!r}") for k, v in counts.items()}
    total = sum(counts.values())
    if total == 0:
        raise ExperimentError("no units were counted in any arm")
    stat = 0.0
    for k, share in shares.items():
        expected = share * total
        if expected == 0:
            stat = math.inf if counts[k] > 0 else stat
            continue
        stat += (counts[k] - expected) ** 2 / expected
    dof = sum(1 for s in shares.values() if s > 0) - 1
    p = 0.0 if math.isinf(stat) else (float(special.chdtrc(dof, stat)) if dof > 0 else 1.0)
    return SRMResult(stat, p, dof, {k: int(counts[k]) for k in shares}, shares,
                     {k: counts[k] / total for k in shares}, alpha)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    def fix(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, (tuple, list)):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v
    return {k: fix(v) for k, v in d.items()}
