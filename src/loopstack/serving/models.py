"""Model handles: which versions of each served model are loaded, and the traffic policy over them.

A watcher thread polls, at most every `poll_interval_s`, each model's registry generation and its
stored traffic-settings revision (two indexed queries). On a change it rebuilds the policy
(`router.policy_from_states`), loads any version the policy newly needs, then switches to a new
`Snapshot` in one assignment, then retires versions no longer needed once their in-flight requests
are done: load, switch, drain, so a hot swap fails no request. A version that fails to load (or
fails its sha256 check) is refused: logged, counted, left out of the policy, and the version it
would have replaced keeps serving.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from loopstack.registry import stages
from loopstack.serving.batcher import DynamicBatcher
from loopstack.serving.config import ModelSpec, ServingConfig
from loopstack.serving.errors import ServingError
from loopstack.serving.ladder import CircuitBreaker
from loopstack.serving.policy_store import PolicyStore
from loopstack.serving.router import TrafficPolicy, policy_from_states
from loopstack.serving.runtime import ModelError, RegistryLoader, make_runtime
from loopstack.serving.vector import VectorBuilder
from loopstack.heap import freeze_new, tune_gc
from loopstack.threads import name_os_thread

log = logging.getLogger("loopstack.serving")


class UnknownModel(ServingError):
    """The request names a model this server does not serve (HTTP 404)."""


@dataclass(eq=False)
class LoadedVersion:
    """One loaded model version: its runtime, batcher, breaker and vector builder."""
    model: str
    version: int
    builder: VectorBuilder
    runtime: Any
    batcher: DynamicBatcher
    breaker: CircuitBreaker
    loaded_at: float = field(default_factory=time.time)
    _inflight: int = 0
    _retired: bool = False
    _cv: threading.Condition = field(default_factory=threading.Condition)

    def acquire(self) -> bool:
        """Count one request in; False once the version is being retired (re-read the snapshot)."""
        with self._cv:
            if self._retired:
                return False
            self._inflight += 1
            return True

    def release(self) -> None:
        with self._cv:
            self._inflight -= 1
            if self._retired:     # only `retire` waits on the count
                self._cv.notify_all()

    def retire(self, timeout: float) -> None:
        """Refuse new requests, wait (up to `timeout`) for in-flight ones, then stop batcher and runtime."""
        with self._cv:
            self._retired = True
            self._cv.wait_for(lambda: self._inflight <= 0, timeout)
        self.batcher.close(drain=True, timeout=timeout)
        self.runtime.close()

    def stats(self) -> dict:
        return {"model": self.model, "version": self.version, "batcher": self.batcher.stats(),
                "breaker": self.breaker.snapshot(), "runtime": self.runtime.stats(), "inflight": self._inflight}


@dataclass(frozen=True)
class Snapshot:
    """What a model serves right now: the effective policy and the loaded versions it names."""
    policy: TrafficPolicy | None
    versions: Mapping[int, LoadedVersion]
    generation: int
    revision: int
    notes: tuple[str, ...] = ()

    def roles(self, version: int) -> list[str]:
        p = self.policy
        if p is None:
            return []
        out = [r for r in ("production", "shadow", "canary", "holdback", "fallback") if getattr(p, r) == version]
        return out + [f"experiment:{k}" for k, v in p.variants.items() if v == version and k != "control"]


def production_history(audit: list[dict]) -> list[int]:
    """The production stack from a model's audit log (as `Registry.rollback` reads it)."""
    events = []
    for e in audit:
        if e["action"] == "transition" and e["to_state"] == stages.PRODUCTION:
            events.append(("promote", e["version"]))
        elif e["action"] == "transition" and e["from_state"] == stages.PRODUCTION:
            events.append(("demote", e["version"]))
        elif e["action"] == "rollback" and e["from_state"] == stages.PRODUCTION:
            events.append(("rollback", e["version"]))
    return stages.production_stack(events)


def without(policy: TrafficPolicy, missing: set[int], keep_production: int | None) -> TrafficPolicy:
    """`policy` minus versions that are not loaded (refused): production falls back to `keep_production`."""
    if not missing:
        return policy
    changes: dict[str, Any] = {key: None for key in ("shadow", "canary", "holdback", "fallback")
                               if getattr(policy, key) in missing}
    production = policy.production
    if production in missing:
        production = changes["production"] = keep_production if keep_production not in missing else None
    exp = {k: v for k, v in policy.experiment.items() if k != "control" and v not in missing}
    if exp != {k: v for k, v in policy.experiment.items() if k != "control"} or "production" in changes:
        if exp and production is not None:
            exp = {"control": production, **exp}
        changes["experiment"] = exp
        changes["experiment_weights"] = {k: w for k, w in policy.experiment_weights.items() if k in exp}
    notes = tuple(policy.notes) + (f"version(s) {sorted(missing)} not loaded (refused): left out",)
    if policy.production is not None and production is None:
        # no production to answer: a canary or experiment version would get every user (the rule of a first
        # rollout), far more than its share; nothing answers instead, and /readyz says which version was refused
        changes.update(canary=None, experiment={}, experiment_weights={})
        notes += (f"production version {policy.production} refused and no earlier one loaded: canary and "
                  "experiment versions do not take its users",)
    return dataclasses.replace(policy, notes=notes, **changes)


def _model_raised(exc: BaseException) -> bool:
    """A batch failed because the model raised on its inputs (not a dead worker): split it to find whose."""
    return isinstance(exc, ModelError)


class ModelHandle:
    """One served model: polls the registry and traffic settings, loads versions, hot-swaps them."""

    def __init__(self, spec: ModelSpec, project: Any, cfg: ServingConfig, metrics: Any = None) -> None:
        self.spec, self.name, self.project, self.cfg, self.metrics = spec, spec.name, project, cfg, metrics
        self.snapshot = Snapshot(None, {}, -1, -1)
        self.refused: dict[int, str] = {}
        self.error: str | None = None     # why the last refresh failed (shown by /readyz)
        self._lock = threading.Lock()
        self._retiring: list[threading.Thread] = []

    @property
    def ready(self) -> bool:
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why the model cannot answer (None when it can): what /readyz says."""
        snap = self.snapshot   # one snapshot: a swap meanwhile must not mix two
        p, versions = snap.policy, snap.versions
        if p is None:
            return f"not loaded yet ({self.error})" if self.error else "not loaded yet"
        route = p.default_route()
        if route is None and self.refused:   # there are versions to serve: they failed to load
            why = "; ".join(f"version {v}: {e}" for v, e in sorted(self.refused.items()))
            return (f"no version that could answer is loaded, refused: {why}; fix it or register a new version "
                    "(the server tries refused versions again after the next registry change)")
        if route is None:
            return (f"no production, canary or experiment version; promote one, e.g. `loopstack models promote "
                    f"models:/{self.name}/<version> production --reason ...`")
        if route[1] not in versions:
            why = self.refused.get(route[1])
            return f"version {route[1]} ({route[0]}) is not loaded" + (f": refused ({why})" if why else "")
        return None

    def refresh(self, store: PolicyStore, revisions: Mapping[str, int] | None = None) -> bool:
        """Apply registry / settings changes; True if the snapshot changed."""
        with self._lock:
            gen = self.project.models.generation(self.name)
            rev = (revisions or {}).get(self.name, 0) if revisions is not None else store.revision(self.name)
            snap = self.snapshot
            if gen == snap.generation and rev == snap.revision:
                return False
            if gen != snap.generation:
                self.refused.clear()    # a registry change: give refused versions another chance
            policy = self._policy(store)
            new = self._load_missing(policy)
            effective = without(policy, policy.versions() - set(new), snap.policy.production if snap.policy else None)
            keep = {v: lv for v, lv in new.items() if v in effective.versions()}
            self.snapshot = Snapshot(effective, keep, gen, rev, effective.notes)
            for v, lv in {**snap.versions, **new}.items():
                if v not in keep and lv not in keep.values():
                    self._retire(lv)
            if self.metrics is not None:
                self.metrics.swaps.labels(self.name).inc()
            log.info("model %s: serving %s (generation %s, settings revision %s)", self.name,
                     {v: self.snapshot.roles(v) for v in keep}, gen, rev)
            return True

    def _policy(self, store: PolicyStore) -> TrafficPolicy:
        reg = self.project.models
        states = {v.version: v.state for v in reg.versions(self.name)}
        policy = policy_from_states(self.name, states, production_history(reg.audit(self.name)),
                                    store.get(self.name))
        if self.spec.alias != stages.PRODUCTION_ALIAS:
            _, v = reg.resolve(f"models:/{self.name}@{self.spec.alias}")
            policy = dataclasses.replace(policy, production=v)
        return policy

    def _load_missing(self, policy: TrafficPolicy) -> dict[int, LoadedVersion]:
        """Loaded versions for every version the policy names (already loaded ones are reused)."""
        out = {}
        for v in sorted(policy.versions(), key=lambda x: x != policy.production):
            lv = self.snapshot.versions.get(v)
            if lv is None and v not in self.refused:
                try:
                    lv = self.load(v)
                except Exception as exc:  # noqa: BLE001 - any failure refuses the version
                    self.refused[v] = f"{type(exc).__name__}: {exc}"
                    log.error("model %s version %s refused: %s; the current versions keep serving", self.name, v,
                              self.refused[v])
                    if self.metrics is not None:
                        self.metrics.refused.labels(self.name, str(v)).inc()
            if lv is not None:
                out[v] = lv
        return out

    def load(self, version: int) -> LoadedVersion:
        """Load one version (sha256-checked by the registry) with its runtime and batcher."""
        ref = f"models:/{self.name}/{version}"
        mv = self.project.models.get(ref)
        builder = VectorBuilder(mv.signature, self.project.online.views, self.project.on_demand_features())
        if self.cfg.runtime == "process":
            loader: Any = RegistryLoader(str(self.project.root), ref)
            runtime = make_runtime("process", loader, name=f"{self.name}/v{version}",
                                   load_timeout_s=self.cfg.load_timeout_s, batch_timeout_s=self.cfg.batch_timeout_s)
        else:
            models = self.project.models

            def loader() -> tuple[Any, Any]:
                return models.load(ref), mv.signature
            runtime = make_runtime("thread", loader, name=f"{self.name}/v{version}")
        runtime.start()
        batcher = DynamicBatcher(self.cfg.batch, runtime.run_batch, name=f"{self.name}/v{version}",
                                 split_on=_model_raised)
        return LoadedVersion(self.name, version, builder, runtime, batcher, CircuitBreaker(**self.cfg.breaker))

    def _retire(self, lv: LoadedVersion) -> None:
        t = threading.Thread(target=lv.retire, args=(self.cfg.drain_timeout_s,), daemon=True,
                             name=f"retire-{self.name}-v{lv.version}")
        t.start()
        self._retiring.append(t)

    def close(self, timeout: float | None = None) -> None:
        """Drain and stop every loaded version."""
        timeout = self.cfg.drain_timeout_s if timeout is None else timeout
        with self._lock:
            versions = list(self.snapshot.versions.values())
            self.snapshot = Snapshot(None, {}, self.snapshot.generation, self.snapshot.revision)
        for lv in versions:
            self._retire(lv)
        for t in self._retiring:
            t.join(timeout + 5)


class ModelFleet:
    """Every served model, plus the watcher thread that keeps them current."""

    def __init__(self, project: Any, cfg: ServingConfig, metrics: Any = None) -> None:
        if not cfg.models:
            raise ServingError("no model to serve: pass --model NAME (repeatable), e.g. `loopstack serve --model spam`")
        self.project, self.cfg = project, cfg
        self.store = PolicyStore(project.meta)
        self.handles = {m.name: ModelHandle(m, project, cfg, metrics) for m in cfg.models}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, name: str) -> ModelHandle:
        h = self.handles.get(name)
        if h is None:
            raise UnknownModel(f"model {name!r} is not served here (served: {', '.join(sorted(self.handles))}); "
                               f"start the server with --model {name}")
        return h

    def refresh_all(self) -> None:
        revisions = self.store.revisions()
        for h in self.handles.values():
            try:
                h.refresh(self.store, revisions)
                h.error = None
            except Exception as exc:  # noqa: BLE001 - keep serving what is loaded, say why in /readyz
                h.error = f"{type(exc).__name__}: {exc}"
                log.error("refreshing model %s failed: %s", h.name, h.error)

    def start(self, settle_heap: bool = False) -> None:
        """Start the watcher (its first pass loads every model). `settle_heap` (a process that only serves):
        `heap.tune_gc` before the first pass (no model is served yet, so its collection delays nobody), then
        `heap.freeze_new` after every pass that loaded a version, so the collector never walks a model."""
        def run() -> None:
            name_os_thread()
            if settle_heap:
                tune_gc()
            while not self._stop.is_set():
                before = {id(lv) for lv in self.versions()}
                self.refresh_all()
                if settle_heap and not {id(lv) for lv in self.versions()} <= before:
                    freeze_new()
                self._stop.wait(self.cfg.poll_interval_s)
        self._thread = threading.Thread(target=run, name="model-watcher", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        return all(h.ready for h in self.handles.values())

    def versions(self) -> list[LoadedVersion]:
        return [lv for h in self.handles.values() for lv in h.snapshot.versions.values()]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        for h in self.handles.values():
            h.close()
