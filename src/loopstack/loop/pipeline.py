"""`RetrainPipeline`: executes the loop's steps against a Project, in-process, resumable after a crash.

The decisions come from the pure core (loop/core.py); this edge does the work of each step, asks the
evidence provider for live numbers, moves the version up the registry's ladder, changes the stored
traffic settings, and saves the run's state in the metadata store after every step (and every look
at a live step). Every action is idempotent against the registry's own state, so a run killed at
any point resumes at its saved step without redoing what was committed:

- ``register`` finds the version already registered from the same training run;
- entering a rung skips the promotion when the version is already there;
- a live step whose version was archived (by this run before a crash, or by a human) ends as the
  archive's audit entry says.

Every step leaves an audit entry on the version (action ``loop``: step, outcome, reason, evidence),
next to the registry's own ``register``/``gate``/``transition`` entries.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Callable

from loopstack.errors import LoopstackError
from loopstack.loop import core
from loopstack.loop.core import (CANARY, EXPERIMENT, FAIL, PASS, PROMOTE, REGISTER, ROLLBACK, SHADOW, WAIT, Decision,
                                 LoopError, LoopState)
from loopstack.loop.evidence import SystemClock, live_evidence
from loopstack.loop.spec import LoopSpec, dataset_step, gate_step, register_step, train_step
from loopstack.loop.store import LoopStore

ACTOR = "loopstack-loop"
LOOP_SETTINGS = ("shadow_sample", "canary_percent", "experiment_weights")   # restored when a run ends
_OFFLINE = {core.DATASET: dataset_step, core.TRAIN: train_step, core.GATE: gate_step}


class RetrainPipeline:
    """Drive retrain runs of one model: ``run()`` starts one, ``resume()`` continues an unfinished one.

    `evidence`: an EvidenceProvider (shadow / canary / experiment numbers). `clock`: ``now()`` and
    ``sleep(s)`` (SystemClock; ManualClock in tests). `on_step(state)`: called after every save.
    """

    def __init__(self, project: Any, spec: LoopSpec, evidence: Any, *, clock: Any = None,
                 on_step: Callable[[LoopState], None] | None = None, console: Any = None, actor: str = ACTOR) -> None:
        self.project, self.spec, self.evidence = project, spec, evidence
        self.clock = clock or SystemClock()
        self.on_step, self.console, self.actor = on_step, console, actor
        self.store = LoopStore(project.meta)

    # -- entry points -------------------------------------------------------------------------------
    def start(self, trigger: str = "manual", reason: str = "") -> LoopState:
        now = self._now()
        state = LoopState(run_id=f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}", model=self.spec.model,
                          trigger=trigger, reason=reason, started_at=now.isoformat(), updated_at=now.isoformat())
        self.store.create(state, now)
        self._say(f"[bold]loop run {state.run_id}[/] for {state.model!r} ({trigger}{': ' + reason if reason else ''})")
        return state

    def run(self, trigger: str = "manual", reason: str = "") -> LoopState:
        """Start a run and drive it to the end (done, failed or rolled_back)."""
        return self.drive(self.start(trigger, reason))

    def resume(self, run_id: str | None = None) -> LoopState:
        """Continue the model's unfinished run (or `run_id`) from its saved step."""
        state = self.store.get(run_id) if run_id else self.store.active(self.spec.model)
        if state is None:
            raise LoopError(f"model {self.spec.model!r} has no unfinished loop run to resume; start one with "
                            "`loopstack loop run`")
        self._say(f"[bold]resuming loop run {state.run_id}[/] at step {state.step}")
        return self.drive(state)

    def drive(self, state: LoopState, max_steps: int | None = None) -> LoopState:
        """Execute steps (and looks) until the run finishes, or `max_steps` of them."""
        n = 0
        while not state.finished and (max_steps is None or n < max_steps):
            state = self.step(state)
            n += 1
        return state

    def step(self, state: LoopState) -> LoopState:
        """Execute the current step once (one look for a live step), persist, return the new state."""
        name = state.step
        try:
            decision = self._execute(state)
        except LoopError:
            raise
        except LoopstackError as exc:  # a user-caused, deterministic failure (no labels, bad gate, ...)
            decision = Decision(FAIL, f"{name} failed: {exc}", {"error": type(exc).__name__})
        now = self._now()
        new = core.advance(state, decision, now.isoformat())
        if decision.outcome == WAIT:
            self._save(new, now)
            self._say(f"  [dim]{name}: {decision.reason}[/]")
            self.clock.sleep(self.spec.policy.poll_seconds)
            return new
        if decision.outcome in (FAIL, ROLLBACK) and new.version is not None:
            self._reject(new, decision)
        self._audit_steps(new)
        self._save(new, now)
        style = {"pass": "green", "fail": "red", "rollback": "red"}.get(decision.outcome, "")
        self._say(f"  {name:<10} [{style}]{decision.outcome}[/] {decision.reason}")
        return new

    # -- steps -----------------------------------------------------------------------------------------
    def _execute(self, state: LoopState) -> Decision:
        now = self._now()
        if state.step in _OFFLINE:
            decision, fields = _OFFLINE[state.step](self.project, self.spec, state, now)
        elif state.step == REGISTER:
            decision, fields = register_step(self.project, self.spec, state, now, self.actor)
        elif state.step in core.LIVE:
            return self._live(state, now)
        elif state.step == PROMOTE:
            return self._promote(state)
        else:
            raise LoopError(f"run {state.run_id} is at {state.step!r}: nothing to execute")
        for k, v in fields.items():
            setattr(state, k, v)
        return decision

    def _live(self, state: LoopState, now: datetime) -> Decision:
        version = self.project.models.get(f"models:/{state.model}/{state.version}")
        if version.state == "archived":
            return self._archived_outcome(state)
        if state.traffic_before is None:    # saved before the first change, restored on failure
            current = self._traffic_store().get(state.model)
            state.traffic_before = {k: current[k] for k in LOOP_SETTINGS if k in current}
            self._save(state, now)
        if state.step_started_at is None:   # entering the rung: promote, route traffic, start the clock
            self._enter(state, version.state)
            state.step_started_at = now.isoformat()
            self._save(state, now)
        elapsed = max(0.0, (now - datetime.fromisoformat(state.step_started_at)).total_seconds())
        policy = self.spec.policy
        if state.step in (SHADOW, CANARY):
            checks = policy.shadow if state.step == SHADOW else policy.canary
            ev = live_evidence(self.evidence, state.step, state.model, state.version)
            return core.decide_live(state.step, checks, ev, elapsed)
        if state.production_version is None:
            return Decision(PASS, "no production version to compare with (first model): the experiment is "
                                  "skipped", {"production_version": None})
        ev = dict(self.evidence.experiment(state.model, state.production_version, state.version))
        decision, tests = core.decide_experiment(policy.experiment, ev, elapsed, state.tests)
        state.tests = tests
        return decision

    def _enter(self, state: LoopState, current: str) -> None:
        p, v = self.spec.policy, state.version
        if current != state.step:
            last = state.history[-1] if state.history else {"reason": "", "step": ""}
            self.project.models.promote(f"models:/{state.model}/{v}", state.step,
                                        reason=f"loop run {state.run_id}: {last['reason']}",
                                        evidence={"loop_run": state.run_id, "after_step": last["step"]},
                                        actor=self.actor)
        settings = {SHADOW: {"shadow_sample": p.shadow_sample}, CANARY: {"canary_percent": p.canary_percent},
                    EXPERIMENT: {"experiment_weights": {"control": 100 - p.experiment.treatment_percent,
                                                        f"v{v}": p.experiment.treatment_percent}}}[state.step]
        self._traffic(state.model, settings)

    def _promote(self, state: LoopState) -> Decision:
        ref = f"models:/{state.model}/{state.version}"
        exp = next((h for h in reversed(state.history) if h["step"] == EXPERIMENT), {"reason": ""})
        if self.project.models.get(ref).state != "production":
            self.project.models.promote(ref, "production", reason=f"loop run {state.run_id}: {exp['reason']}",
                                        evidence={"loop_run": state.run_id, "experiment": state.last_evidence},
                                        actor=self.actor)
        holdback = self.spec.policy.holdback_percent
        settings = self._traffic(state.model, {**self._restore(state), "holdback_percent": holdback})
        prev = state.production_version
        kept = (f"a {holdback:g} % holdback stays on version {prev}" if prev and holdback
                else "no holdback (no previous production version)" if holdback else "no holdback")
        return Decision(PASS, f"{ref} promoted to production; {kept}", {"traffic": settings})

    def _reject(self, state: LoopState, decision: Decision) -> None:
        """Take a failed or guardrail-breaching candidate out of traffic: archive it, reset the settings.

        Production is untouched until the promote step, so it keeps (or takes back) all the traffic.
        """
        ref = f"models:/{state.model}/{state.version}"
        mv = self.project.models.get(ref)
        if mv.state not in ("archived", "candidate", "production"):
            what = "rollback: " if decision.outcome == ROLLBACK else ""
            self.project.models.promote(ref, "archived", reason=f"loop run {state.run_id}: {what}{decision.reason}",
                                        evidence={"loop_run": state.run_id, "loop_outcome": decision.outcome,
                                                  "loop_reason": decision.reason, **dict(decision.evidence)},
                                        actor=self.actor)
        if state.traffic_before is not None:   # this run changed traffic settings: put them back
            self._traffic(state.model, self._restore(state))

    def _archived_outcome(self, state: LoopState) -> Decision:
        """The version was archived mid-step: by this run just before a crash (its outcome is in the
        audit entry), or by a human (the run fails)."""
        for e in reversed(self.project.models.audit(state.model, state.version)):
            if e["action"] == "transition" and e["to_state"] == "archived":
                ev = e["evidence"] or {}
                if ev.get("loop_run") == state.run_id and ev.get("loop_outcome") in (FAIL, ROLLBACK):
                    return Decision(ev["loop_outcome"], ev.get("loop_reason") or e["reason"], {})
                return Decision(FAIL, f"version {state.version} was archived by {e['actor']}: {e['reason']}", {})
        return Decision(FAIL, f"version {state.version} is archived", {})

    # -- edges -----------------------------------------------------------------------------------------
    def _traffic_store(self) -> Any:
        from loopstack.serving.policy_store import PolicyStore
        return PolicyStore(self.project.meta)

    def _traffic(self, model: str, changes: dict) -> dict:
        return self._traffic_store().update(model, changes, actor=self.actor)

    @staticmethod
    def _restore(state: LoopState) -> dict:
        """Changes that put the loop's settings back as they were before the run (None removes a key)."""
        before = state.traffic_before or {}
        return {k: before.get(k) for k in LOOP_SETTINGS}

    def _audit_steps(self, state: LoopState) -> None:
        """One ``loop`` audit entry per finished step of this run on the version (once it exists);
        steps before registration are written when the version appears. Idempotent."""
        if state.version is None:
            return
        reg = self.project.models
        done = {(e["evidence"] or {}).get("step") for e in reg.audit(state.model, state.version)
                if e["action"] == "loop" and (e["evidence"] or {}).get("loop_run") == state.run_id}
        for h in state.history:
            if h["step"] not in done:
                ev = {"loop_run": state.run_id, "step": h["step"], "outcome": h["outcome"], "trigger": state.trigger,
                      "evidence": h.get("evidence") or {}}
                reg.record_event(f"models:/{state.model}/{state.version}", "loop",
                                 f"{h['step']} {h['outcome']}: {h['reason']}", ev, actor=self.actor)

    def _save(self, state: LoopState, now: datetime) -> None:
        self.store.save(state, now)
        if self.on_step is not None:
            self.on_step(state)

    def _now(self) -> datetime:
        return self.clock.now()

    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)
