"""The closed loop's policy core: steps, the transition table, and every decision. Pure, no I/O.

Steps, in order::

    dataset -> train -> gate -> register -> shadow -> canary -> experiment -> promote -> done
                                   \\           \\        \\          \\
                                    failed      failed    failed     failed | rolled_back

Each step ends in an outcome: ``pass`` (go on), ``fail`` (stop: ``failed``) or, in the experiment,
``rollback`` (a blocking guardrail was breached: ``rolled_back``). A failed gate still registers the
version (as a candidate with the failed gate recorded, for a human to look at) and then fails. The
live steps (shadow, canary, experiment) also return ``wait`` until they have enough evidence: N
requests or T minutes for shadow/canary, a significant sequential test (or the horizon) for the
experiment. `RetrainPipeline` (loop/pipeline.py) executes the steps; this module only decides.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from loopstack.errors import LoopstackError
from loopstack.experiments.guardrails import Guardrail, GuardrailReport, evaluate_guardrails
from loopstack.experiments.sequential import SequentialTest
from loopstack.loop.policy_checks import check_goal, check_live, check_plan, check_policy
from loopstack.registry.gate import finite_number

DATASET, TRAIN, GATE, REGISTER, SHADOW, CANARY, EXPERIMENT, PROMOTE = (
    "dataset", "train", "gate", "register", "shadow", "canary", "experiment", "promote")
DONE, FAILED, ROLLED_BACK = "done", "failed", "rolled_back"
STEPS: tuple[str, ...] = (DATASET, TRAIN, GATE, REGISTER, SHADOW, CANARY, EXPERIMENT, PROMOTE)
TERMINAL: tuple[str, ...] = (DONE, FAILED, ROLLED_BACK)
LIVE: tuple[str, ...] = (SHADOW, CANARY, EXPERIMENT)
PASS, FAIL, WAIT, ROLLBACK = "pass", "fail", "wait", "rollback"

# (step, outcome) -> next step. Anything not listed is a bug in the caller.
TRANSITIONS: dict[tuple[str, str], str] = {
    (DATASET, PASS): TRAIN, (DATASET, FAIL): FAILED,
    (TRAIN, PASS): GATE, (TRAIN, FAIL): FAILED,
    (GATE, PASS): REGISTER, (GATE, FAIL): REGISTER,      # a failed gate is registered, then fails
    (REGISTER, PASS): SHADOW, (REGISTER, FAIL): FAILED,
    (SHADOW, PASS): CANARY, (SHADOW, FAIL): FAILED,
    (CANARY, PASS): EXPERIMENT, (CANARY, FAIL): FAILED,
    (EXPERIMENT, PASS): PROMOTE, (EXPERIMENT, FAIL): FAILED, (EXPERIMENT, ROLLBACK): ROLLED_BACK,
    (PROMOTE, PASS): DONE, (PROMOTE, FAIL): FAILED,
}


class LoopError(LoopstackError):
    """The loop cannot do what was asked (bad policy, no run to resume, a run already active, ...)."""


def next_step(step: str, outcome: str) -> str:
    """Where the loop goes after `step` ended with `outcome` (``wait`` stays on the step)."""
    if outcome == WAIT:
        if step not in LIVE:
            raise LoopError(f"step {step!r} cannot wait for evidence; only {', '.join(LIVE)} do")
        return step
    try:
        return TRANSITIONS[(step, outcome)]
    except KeyError:
        raise LoopError(f"no transition from step {step!r} on outcome {outcome!r}") from None


@dataclass(frozen=True)
class Decision:
    """The outcome of one step (or one look at a live step), why, and the evidence it rests on."""
    outcome: str
    reason: str
    evidence: Mapping[str, Any] = field(default_factory=dict)


# -- thresholds ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LiveChecks:
    """Shadow or canary: wait for `min_requests` or `max_minutes`, then check the version's live numbers."""
    min_requests: int = 1000
    max_minutes: float = 60.0
    max_error_rate: float = 0.01
    max_p99_ms: float = 200.0
    max_score_psi: float | None = 0.2     # None: do not compare the score distribution

    def __post_init__(self) -> None:
        check_live(self)


@dataclass(frozen=True)
class Goal:
    """The experiment's goal metric, tested with the mSPRT (tau: the effect scale, in metric units)."""
    metric: str
    tau: float
    higher_is_better: bool = True
    alpha: float = 0.05
    min_samples: int = 100

    def __post_init__(self) -> None:
        check_goal(self)


@dataclass(frozen=True)
class ExperimentPlan:
    """A/B between production (control) and the candidate, `treatment_percent` % of users on it."""
    goal: Goal
    guardrails: tuple[Guardrail, ...] = ()
    treatment_percent: float = 50.0
    max_minutes: float = 24 * 60.0          # the horizon: inconclusive by then -> the candidate fails
    min_minutes: float = 0.0                # run at least this long (novelty) before promoting
    srm_alpha: float = 0.001
    guardrail_tau: Mapping[str, float] = field(default_factory=dict)  # default: the tolerance's scale

    def __post_init__(self) -> None:
        check_plan(self)


@dataclass(frozen=True)
class LoopPolicy:
    """Every threshold of the ladder. Defaults follow docs/monitoring.md."""
    experiment: ExperimentPlan
    shadow: LiveChecks = LiveChecks()
    canary: LiveChecks = LiveChecks(min_requests=500)
    shadow_sample: float = 1.0
    canary_percent: float = 5.0
    holdback_percent: float = 2.0
    poll_seconds: float = 60.0

    def __post_init__(self) -> None:
        check_policy(self)


# -- decisions ---------------------------------------------------------------------------------------
def decide_gate(gate: Mapping[str, Any]) -> Decision:
    """The gate step: its decision dict (GateDecision.to_dict()) passed or not."""
    failed = [r[0] for r in gate.get("reasons", []) if not r[1]]
    if gate.get("passed"):
        return Decision(PASS, "gate passed", {"gate": dict(gate)})
    return Decision(FAIL, f"gate failed: {', '.join(map(str, failed)) or 'no reasons'}", {"gate": dict(gate)})


def decide_live(step: str, checks: LiveChecks, evidence: Mapping[str, Any], elapsed_s: float) -> Decision:
    """Shadow/canary: wait until N requests or T minutes, then check error rate, p99 and score PSI."""
    n = _count(evidence.get("requests"), f"{step} evidence: requests")
    ev = {"requests": n, "elapsed_s": round(float(elapsed_s), 3),
          **{k: evidence.get(k) for k in ("error_rate", "p99_ms", "score_psi")}}
    timed_out = elapsed_s >= checks.max_minutes * 60
    if n < checks.min_requests and not timed_out:
        return Decision(WAIT, f"{step}: {n}/{checks.min_requests} requests after {elapsed_s / 60:.1f} of "
                              f"{checks.max_minutes:g} min", ev)
    if n == 0:
        return Decision(FAIL, f"{step}: no requests reached the version in {checks.max_minutes:g} min; check "
                              "that the server routes to it (traffic settings) and logs predictions", ev)
    problems = []
    err, p99, psi = (finite_number(evidence.get(k)) for k in ("error_rate", "p99_ms", "score_psi"))
    if err is None or err > checks.max_error_rate:
        problems.append(f"error rate {_fmt(err)} > {checks.max_error_rate}")
    if p99 is None or p99 > checks.max_p99_ms:
        problems.append(f"p99 {_fmt(p99)} ms > {checks.max_p99_ms} ms")
    if checks.max_score_psi is not None and (psi is None or psi > checks.max_score_psi):
        problems.append(f"score PSI vs offline {_fmt(psi)} > {checks.max_score_psi}")
    if problems:
        return Decision(FAIL, f"{step} failed on {n} requests: " + "; ".join(problems), ev)
    return Decision(PASS, f"{step} passed on {n} requests: error rate {_fmt(err)}, p99 {_fmt(p99)} ms, "
                          f"score PSI {_fmt(psi)}", ev)


def arm_stats(arm: Mapping[str, Any], metric: str, side: str = "arm") -> tuple[int, float, float]:
    """(n, mean, sample variance) of one metric in one arm's evidence.

    An arm is ``{"users": n, "metrics": {name: {"mean": m, "var": v} | {"successes": k}, ...}}``; a
    metric may carry its own ``"n"``. Successes are a proportion (variance p(1 - p)). Evidence that is
    not a count, a finite mean or a variance >= 0 is a LoopError naming it (it is never read as a result).
    """
    metrics = arm.get("metrics") or {}
    if metric not in metrics:
        raise LoopError(f"experiment evidence has no metric {metric!r} (it has {sorted(metrics)}); the evidence "
                        "provider must report the goal and every blocking guardrail")
    m = metrics[metric]
    where = f"experiment evidence, {side} arm, metric {metric!r}"
    n = _count(m.get("n", arm.get("users", 0)), f"{where}: n (or the arm's users)")
    if "successes" in m:
        k = finite_number(m["successes"])
        if k is None or not 0 <= k <= n:
            raise LoopError(f"{where}: successes = {m['successes']!r} must be a number between 0 and n = {n}; "
                            "fix the evidence provider")
        p = k / n if n else 0.0
        return n, p, p * (1 - p)
    mean, var = finite_number(m.get("mean", 0.0)), finite_number(m.get("var", 0.0))
    if mean is None or var is None or var < 0:
        raise LoopError(f"{where}: mean = {m.get('mean')!r}, var = {m.get('var')!r} must be finite numbers with "
                        "var >= 0 (the sample variance); fix the evidence provider")
    return n, mean, var


def _count(v: Any, what: str) -> int:
    """A user/sample count from evidence: a whole number >= 0 (LoopError otherwise)."""
    f = finite_number(0 if v is None else v)
    if f is None or f < 0 or f != int(f):
        raise LoopError(f"{what} = {v!r} must be a whole number >= 0; fix the evidence provider")
    return int(f)


def decide_experiment(plan: ExperimentPlan, evidence: Mapping[str, Any], elapsed_s: float,
                      tests: Mapping[str, Mapping[str, Any]] | None = None
                      ) -> tuple[Decision, dict[str, dict[str, Any]]]:
    """One look at the A/B: returns the decision and the updated sequential-test states (to persist).

    Order: sample-ratio mismatch (broken assignment: fail) -> blocking guardrail failed (rollback) ->
    goal significantly worse (fail) -> goal significantly better, guardrails passed and min_minutes
    reached (pass, possibly long before the horizon: an early stop) -> horizon reached (fail,
    inconclusive) -> wait. Every look updates the always-valid tests, so looking often is safe.
    """
    from loopstack.experiments.statistics import sample_ratio_mismatch
    control, treatment = evidence.get("control") or {}, evidence.get("treatment") or {}
    states = {k: dict(v) for k, v in (tests or {}).items()}
    n_c = _count(control.get("users"), "experiment evidence, control arm: users")
    n_t = _count(treatment.get("users"), "experiment evidence, treatment arm: users")
    ev: dict[str, Any] = {"users": {"control": n_c, "treatment": n_t}, "elapsed_s": round(float(elapsed_s), 3)}
    if n_c == 0 or n_t == 0:
        return _horizon_or_wait(plan, elapsed_s, ev, "no users in an arm yet"), states
    share = plan.treatment_percent / 100
    srm = sample_ratio_mismatch({"control": n_c, "treatment": n_t},
                                {"control": 1 - share, "treatment": share}, alpha=plan.srm_alpha)
    ev["srm"] = srm.to_dict()
    if srm.mismatch:
        return Decision(FAIL, f"sample-ratio mismatch (p = {srm.p_value:.2g}): {n_c} control vs {n_t} "
                              f"treatment users for a {100 - plan.treatment_percent:g}/{plan.treatment_percent:g} "
                              "split; assignment or logging is broken, the readout cannot be trusted", ev), states
    results = {}
    for metric, tau in _tested_metrics(plan, control):
        st = states.get(metric)
        test = SequentialTest.from_dict(st) if st else SequentialTest(tau, alpha=plan.goal.alpha,
                                                                      min_samples=plan.goal.min_samples)
        a, b = arm_stats(control, metric, "control"), arm_stats(treatment, metric, "treatment")
        if a[0] < test.last_n("control") or b[0] < test.last_n("treatment"):
            raise LoopError(f"experiment evidence for {metric!r} went down between looks; the provider must "
                            "report cumulative counts since the experiment started")
        results[metric] = test.update(*a, *b)
        states[metric] = test.to_dict()
    report: GuardrailReport = evaluate_guardrails(plan.guardrails, results)
    goal = results[plan.goal.metric]
    ev["goal"] = {"metric": plan.goal.metric, **goal.to_dict()}
    ev["guardrails"] = report.to_dict()
    if report.decision == "fail":
        return Decision(ROLLBACK, f"blocking guardrail breached: {', '.join(report.failed)} "
                                  f"({_details(report)})", ev), states
    lo, hi = goal.ci
    better = lo > 0 if plan.goal.higher_is_better else hi < 0
    worse = hi < 0 if plan.goal.higher_is_better else lo > 0
    g = f"{plan.goal.metric} {goal.control:.4g} -> {goal.treatment:.4g} (always-valid p = {goal.p_value:.3g})"
    if goal.significant and worse:
        return Decision(FAIL, f"goal metric significantly worse: {g}", ev), states
    if goal.significant and better:
        if report.decision != "pass":
            return _horizon_or_wait(plan, elapsed_s, ev, f"goal improved ({g}) but guardrails are inconclusive"), states
        if plan.min_minutes > 0 and elapsed_s < plan.min_minutes * 60:
            return Decision(WAIT, f"goal improved ({g}); running until min_minutes={plan.min_minutes:g}", ev), states
        early = elapsed_s < plan.max_minutes * 60
        ev["stopped_early"] = early
        return Decision(PASS, f"goal improved: {g}; guardrails passed"
                              + (f" (stopped early after {goal.looks} looks)" if early else ""), ev), states
    return _horizon_or_wait(plan, elapsed_s, ev, f"not significant yet: {g}"), states


def _tested_metrics(plan: ExperimentPlan, control: Mapping[str, Any]) -> list[tuple[str, float]]:
    out = [(plan.goal.metric, plan.goal.tau)]
    for g in plan.guardrails:
        if g.metric == plan.goal.metric or g.metric not in (control.get("metrics") or {}):
            continue  # a missing blocking guardrail is reported by evaluate_guardrails
        tau = plan.guardrail_tau.get(g.metric)
        if tau is None:
            base = abs(arm_stats(control, g.metric, "control")[1]) if g.relative else 1.0
            tau = (g.tolerance or 0.01) * (base or 1.0)
        out.append((g.metric, float(tau)))
    return out


def _horizon_or_wait(plan: ExperimentPlan, elapsed_s: float, ev: dict, why: str) -> Decision:
    if elapsed_s >= plan.max_minutes * 60:
        return Decision(FAIL, f"experiment inconclusive at its horizon ({plan.max_minutes:g} min): {why}; "
                              "nothing moves without evidence", ev)
    return Decision(WAIT, why, ev)


def _details(report: GuardrailReport) -> str:
    return "; ".join(f"{o.guardrail.metric}: {o.detail}" for o in report.outcomes if o.status == "fail")



def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


# -- the persisted state -------------------------------------------------------------------------
@dataclass
class LoopState:
    """Everything a run needs to resume: where it is and what each committed step produced."""
    run_id: str
    model: str
    step: str = DATASET
    trigger: str = "manual"
    reason: str = ""
    started_at: str = ""
    updated_at: str = ""
    step_started_at: str | None = None    # when the current live step began (its T-minute window)
    dataset_id: str | None = None
    train_run_id: str | None = None
    metrics: dict = field(default_factory=dict)
    gate: dict | None = None
    version: int | None = None            # the registered version (the idempotency key of `register`)
    production_version: int | None = None
    looks: int = 0
    tests: dict = field(default_factory=dict)   # sequential-test states of the experiment
    last_evidence: dict = field(default_factory=dict)
    traffic_before: dict | None = None    # the loop's traffic settings before it changed them
    history: list = field(default_factory=list)  # [{step, outcome, reason, at}]
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.step in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoopState:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def advance(state: LoopState, decision: Decision, at: str) -> LoopState:
    """The state after `decision` on the current step (pure: returns a new object)."""
    nxt = next_step(state.step, decision.outcome)
    d = LoopState.from_dict(state.to_dict())
    d.updated_at = at
    d.last_evidence = dict(decision.evidence)
    if decision.outcome == WAIT:
        d.looks += 1
        return d
    d.history = [*state.history, {"step": state.step, "outcome": decision.outcome, "reason": decision.reason,
                                  "at": at, "evidence": dict(decision.evidence)}]
    if nxt != state.step:
        d.step, d.step_started_at, d.looks = nxt, None, 0
    if nxt in (FAILED, ROLLED_BACK):
        d.error = decision.reason
    return d


def summary(state: LoopState) -> Sequence[str]:
    """Human-readable lines for `loopstack loop status`."""
    lines = [f"run {state.run_id} model {state.model!r}: step {state.step} (trigger {state.trigger}"
             + (f": {state.reason}" if state.reason else "") + ")"]
    if state.version is not None:
        lines.append(f"  candidate models:/{state.model}/{state.version} vs production "
                     f"{state.production_version or 'none'}")
    for h in state.history:
        lines.append(f"  {h['at'][:19]} {h['step']:<10} {h['outcome']:<8} {h['reason']}")
    if not state.finished and state.looks:
        lines.append(f"  {state.looks} look(s) at the {state.step} evidence so far")
    return lines
