"""`Registry`: model versions with lineage, aliases, rollout states, audit log, gates and profiles.

Every change to a model runs in one transaction that first increments the model's `generation`
(its row version). That UPDATE takes the row lock on PostgreSQL and the write lock on SQLite, so
changes to one model are serialized and each one decides on fresh state; a caller that read
generation g can pass `expected_generation=g` and the change applies only if nothing happened since
(compare-and-swap), so of two concurrent promotions decided on the same state exactly one wins.
Policy (which transitions are allowed) lives in the pure `stages` module.
"""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loopstack.meta.artifacts import ArtifactStore
from loopstack.meta.db import MetadataStore
from loopstack.meta.tx import insert_ignore, run_transaction
from loopstack.registry import stages
from loopstack.registry.artifact_io import deserialize, serialize, verify
from loopstack.registry.entities import (ModelSignature, ModelVersion, clean_metrics, coerce_signature, dumps,
                                         json_mapping, utc)
from loopstack.registry.errors import (ArtifactIntegrityError, ConcurrentUpdateError, ModelReferenceError,
                                       RegistryError)
from loopstack.registry.gate import decision_dict
from loopstack.registry.lineage import actor_name, bounded, cached_code_version, dataset_lineage, reference_profile
from loopstack.registry.refs import ModelRef, parse_ref, validate_alias, validate_name, validate_version
from loopstack.registry.rows import alias_version, audit_entry, stored_profile, version_from_row
from loopstack.registry.schema import model_aliases as A
from loopstack.registry.schema import model_audit as L
from loopstack.registry.schema import model_versions as V
from loopstack.registry.schema import models as M

log = logging.getLogger("loopstack.registry")


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Registry:
    """The model registry of a project: `project.models`."""

    def __init__(self, meta: MetadataStore, artifacts: ArtifactStore, cache_dir: str | Path | None = None) -> None:
        self.meta, self.artifacts, self.cache_dir = meta, artifacts, cache_dir
        self.engine = meta.engine

    # -- registering ---------------------------------------------------------------------------
    def register(self, name: str, model: Any, *, signature: ModelSignature | Mapping, run_id: str | None = None,
                 dataset: Any = None, metrics: Mapping | None = None, params: Mapping | None = None,
                 profile: Any = None, holdout_scores: Any = None, feature_versions: Mapping | None = None,
                 code_version: str | None = None, description: str = "", actor: str | None = None) -> ModelVersion:
        """Store the artifact (sha256 recorded) and its lineage as the next version, state `candidate`.

        `dataset`: an id, or {"id": ..., "hash": ...}. `profile`: a reference profile from
        `profile.build_profile`, or a DataFrame of training/holdout features to profile (with
        `holdout_scores`, the model's scores on the holdout).
        """
        validate_name(name)
        actor = actor_name(actor)
        run_id, code_version = bounded(run_id, "run_id", 255), bounded(code_version, "code_version", 255)
        sig = coerce_signature(signature)
        ds_id, ds_hash = dataset_lineage(dataset)
        prof = reference_profile(profile, holdout_scores)
        prof = None if prof is None else json_mapping(prof, "profile", "build_profile(holdout_df)")
        metrics_json = dumps(clean_metrics(metrics))
        params_json = dumps(json_mapping(params, "params", "{'lr': 0.1}"))
        fv = json_mapping(feature_versions, "feature_versions", "{'author:spam_7d': 2}") or sig.feature_versions
        data, fmt, filename = serialize(model)
        folder = f"models/{name}/{uuid.uuid4().hex}"
        rel = f"{folder}/{filename}"
        now = _now()

        def write(conn: Connection) -> int:
            # the model's row is created in the same transaction as its first version: a registration that
            # fails part-way leaves neither (it used to leave a model with no versions, its name taken)
            insert_ignore(conn, M, dict(name=name, description=description, generation=0, created_at=now,
                                        updated_at=now), ["name"])
            gen = self._lock(conn, name)
            version = (conn.execute(sa.select(sa.func.max(V.c.version)).where(V.c.name == name)).scalar() or 0) + 1
            conn.execute(V.insert().values(
                name=name, version=version, state=stages.CANDIDATE, run_id=run_id,
                dataset_id=ds_id, dataset_hash=ds_hash,
                code_version=code_version if code_version is not None else cached_code_version(),
                feature_versions=dumps(fv),
                params=params_json, metrics=metrics_json, signature=dumps(sig.to_dict()),
                artifact_path=rel, artifact_uri=f"{self.artifacts.root}/{rel}", artifact_sha256=sha,
                artifact_format=fmt, profile=None if prof is None else dumps(prof), gate=None, gate_passed=None,
                description=description, created_by=actor, created_at=now, updated_at=now))
            self._audit(conn, name, version, "register", gen, actor, f"registered from run {run_id}",
                        {"sha256": sha, "artifact_uri": f"{self.artifacts.root}/{rel}"}, to_state=stages.CANDIDATE)
            return version
        try:
            sha = self.artifacts.put_bytes(rel, data)
            version = run_transaction(self.engine, write)
        except BaseException:
            self._discard_artifact(folder, rel)
            raise
        return self.get(ModelRef(name, version=version))

    def _discard_artifact(self, folder: str, rel: str) -> None:
        """Remove the artifact of a registration that failed, unless a version row does point at it
        (a commit whose acknowledgement was lost); if that cannot be checked, the file is kept."""
        try:
            with self.engine.connect() as conn:
                if conn.execute(sa.select(V.c.version).where(V.c.artifact_path == rel)).first() is None:
                    self.artifacts.delete(folder)
        except Exception:  # noqa: BLE001 - best effort: the registration's own error is the one to raise
            log.warning("could not remove the artifact %s of a failed registration", rel, exc_info=True)

    # -- reading -------------------------------------------------------------------------------
    def resolve(self, ref: str | ModelRef, conn: Connection | None = None) -> tuple[str, int]:
        """(name, version) a reference points at now; ModelReferenceError naming what exists otherwise."""
        r = parse_ref(ref)
        if conn is None:
            with self.engine.connect() as c:
                return self.resolve(r, c)
        if conn.execute(sa.select(M.c.name).where(M.c.name == r.name)).first() is None:
            known = [row.name for row in conn.execute(sa.select(M.c.name).order_by(M.c.name))]
            raise ModelReferenceError(f"no model named {r.name!r} in the registry (models: "
                                      f"{', '.join(known) or 'none yet'}); register one first")
        if r.alias:
            v = conn.execute(sa.select(A.c.version).where(A.c.name == r.name, A.c.alias == r.alias)).scalar()
            if v is None:
                aliases = [f"@{a}" for a in conn.execute(sa.select(A.c.alias).where(A.c.name == r.name)).scalars()]
                raise ModelReferenceError(f"model {r.name!r} has no alias {r.alias!r} (aliases: "
                                          f"{', '.join(sorted(aliases)) or 'none'})")
            return r.name, alias_version(r.name, r.alias, v,
                                         conn.execute(sa.select(V.c.version).where(V.c.name == r.name)).scalars())
        versions = list(conn.execute(sa.select(V.c.version).where(V.c.name == r.name)).scalars())
        if not versions:   # its first registration failed after the model's row was created
            raise ModelReferenceError(f"model {r.name!r} has no versions yet: register one first")
        if r.latest:
            return r.name, max(versions)
        if r.version not in versions:
            raise ModelReferenceError(f"model {r.name!r} has no version {r.version} (versions: "
                                      f"{', '.join(map(str, sorted(versions)))})")
        return r.name, r.version  # type: ignore[return-value]

    def get(self, ref: str | ModelRef, *, strict: bool = True) -> ModelVersion:
        """The version `ref` points at. Stored fields that cannot be read (rows written by older loopstack
        versions) are empty and named in `.problems`; an unreadable signature raises a RegistryError
        unless `strict=False` (for display: the version then has an empty signature)."""
        with self.engine.connect() as conn:
            name, version = self.resolve(ref, conn)
            row = conn.execute(sa.select(V).where(V.c.name == name, V.c.version == version)).one()
            aliases = conn.execute(sa.select(A.c.alias).where(A.c.name == name, A.c.version == version)).scalars()
            mv = version_from_row(row, aliases)
        if strict and "signature" in mv.problems:
            raise RegistryError(f"{mv.ref}: its stored signature is unreadable: {mv.problems['signature']}")
        return mv

    def load(self, ref: str | ModelRef) -> Any:
        """The model object (pickle/joblib) or a local path (registered files/folders), after checking
        the artifact's sha256 against the one recorded at registration (ArtifactIntegrityError if not)."""
        mv = self.get(ref, strict=False)
        if not self.artifacts.exists(mv.artifact_path):
            raise ArtifactIntegrityError(f"the artifact of {mv.ref} is missing ({mv.artifact_uri}): it was deleted or "
                                         "moved after registration; restore it there or register the model again")
        data = self.artifacts.get_bytes(mv.artifact_path)
        verify(data, mv.artifact_sha256, mv.ref, mv.artifact_uri)
        try:
            return deserialize(data, mv.artifact_format, Path(mv.artifact_path).name, mv.artifact_sha256,
                               self.cache_dir)
        except (ImportError, AttributeError) as exc:   # the pickled classes are not importable here
            raise RegistryError(f"cannot load {mv.ref}: {exc}. The model's classes must be importable where it "
                                "loads: install the package that defines them or add its folder to PYTHONPATH") from exc

    def versions(self, name: str) -> list[ModelVersion]:
        validate_name(name)
        with self.engine.connect() as conn:
            self.resolve(ModelRef(name, latest=True), conn)  # clear error for an unknown model
            amap: dict[int, list[str]] = {}
            for a in conn.execute(sa.select(A).where(A.c.name == name)):
                amap.setdefault(a.version, []).append(a.alias)
            rows = conn.execute(sa.select(V).where(V.c.name == name).order_by(V.c.version))
            return [version_from_row(r, amap.get(r.version, [])) for r in rows]

    def list(self) -> list[dict]:
        """One summary per model: versions, latest, production version, aliases, versions per state."""
        with self.engine.connect() as conn:
            out = {r.name: {"name": r.name, "description": r.description, "generation": r.generation,
                            "updated_at": utc(r.updated_at), "versions": 0, "latest": None, "production": None,
                            "aliases": {}, "states": {}} for r in conn.execute(sa.select(M).order_by(M.c.name))}
            for r in conn.execute(sa.select(V.c.name, V.c.version, V.c.state)):
                m = out[r.name]
                m["versions"] += 1
                m["latest"] = max(m["latest"] or 0, r.version)
                m["states"][r.state] = m["states"].get(r.state, 0) + 1
            for r in conn.execute(sa.select(A)):
                out[r.name]["aliases"][r.alias] = r.version
                if r.alias == stages.PRODUCTION_ALIAS:
                    out[r.name]["production"] = r.version
        return list(out.values())

    def generation(self, name: str) -> int:
        """The model's row version: pass it as `expected_generation` to make a change conditional."""
        with self.engine.connect() as conn:
            g = conn.execute(sa.select(M.c.generation).where(M.c.name == validate_name(name))).scalar()
        if g is None:
            raise ModelReferenceError(f"no model named {name!r} in the registry")
        return g

    def profile(self, ref: str | ModelRef) -> dict:
        """The reference profile stored at registration (see `profile.build_profile`)."""
        with self.engine.connect() as conn:
            name, version = self.resolve(ref, conn)
            text = conn.execute(sa.select(V.c.profile).where(V.c.name == name, V.c.version == version)).scalar()
        if text is None:
            raise RegistryError(f"models:/{name}/{version} was registered without a reference profile; pass "
                                "profile=<holdout features> (and holdout_scores=...) to register")
        return stored_profile(f"models:/{name}/{version}", text)

    def audit(self, name: str, version: int | None = None) -> list[dict]:
        """The audit log of a model (optionally one version), oldest first."""
        q = sa.select(L).where(L.c.name == validate_name(name))
        if version is not None:
            q = q.where(L.c.version == version)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(L.c.id)).all()
            if not rows:
                self.resolve(ModelRef(name, latest=True), conn)   # an unknown model: say so, not an empty log
        return [audit_entry(r) for r in rows]

    # -- changing state ------------------------------------------------------------------------
    def _lock(self, conn: Connection, name: str, expected: int | None = None) -> int:
        """Increment the model's generation (taking its row/write lock) and return the new value."""
        res = conn.execute(sa.update(M).where(M.c.name == name)
                           .values(generation=M.c.generation + 1, updated_at=_now()))
        if res.rowcount == 0:
            self.resolve(ModelRef(name, latest=True), conn)  # raises "no model named ..."
        gen = conn.execute(sa.select(M.c.generation).where(M.c.name == name)).scalar_one()
        if expected is not None and gen - 1 != expected:
            raise ConcurrentUpdateError(
                f"model {name!r} changed since you read it (generation {expected}, now {gen - 1}): another "
                "promotion, rollback, alias move or gate won. Re-read it (`loopstack models show`) and retry")
        return gen

    def _audit(self, conn: Connection, name: str, version: int | None, action: str, gen: int, actor: str,
               reason: str, evidence: Any = None, *, from_state: str | None = None, to_state: str | None = None,
               alias: str | None = None, override: bool = False) -> None:
        conn.execute(L.insert().values(name=name, version=version, action=action, from_state=from_state,
                                       to_state=to_state, alias=alias, override=override, actor=actor,
                                       reason=reason or "", evidence=dumps(evidence or {}), generation=gen,
                                       at=_now()))

    def _apply(self, conn: Connection, name: str, plan: stages.Plan, gen: int, actor: str, reason: str,
               evidence: Any, action: str) -> None:
        now = _now()
        for i, t in enumerate(plan.transitions):
            conn.execute(sa.update(V).where(V.c.name == name, V.c.version == t.version)
                         .values(state=t.to_state, updated_at=now))
            if action == "rollback":
                act, why, ovr = "rollback", reason, False
            elif i == 0:
                act, why, ovr = "transition", reason, bool(t.overridden)
            else:
                act, why, ovr = "replaced", f"replaced in production by version {plan.transitions[0].version}: " \
                                            f"{reason}", False
            ev = dict(evidence or {})
            if ovr:
                ev["overridden"] = list(t.overridden)
            self._audit(conn, name, t.version, act, gen, actor, why, ev, from_state=t.from_state,
                        to_state=t.to_state, override=ovr)
        for m in plan.aliases:
            self._move_alias(conn, name, m.alias, m.to_version, now)
            self._audit(conn, name, m.to_version, "alias", gen, actor, reason,
                        {"from_version": m.from_version, "to_version": m.to_version}, alias=m.alias)

    def _move_alias(self, conn: Connection, name: str, alias: str, version: int | None, now: datetime) -> None:
        conn.execute(sa.delete(A).where(A.c.name == name, A.c.alias == alias))
        if version is not None:
            conn.execute(A.insert().values(name=name, alias=alias, version=version, updated_at=now))

    def _states(self, conn: Connection, name: str) -> dict[int, str]:
        return {r.version: r.state for r in conn.execute(sa.select(V.c.version, V.c.state).where(V.c.name == name))}

    def _production(self, conn: Connection, name: str) -> int | None:
        return conn.execute(sa.select(A.c.version).where(A.c.name == name,
                                                          A.c.alias == stages.PRODUCTION_ALIAS)).scalar()

    def promote(self, ref: str | ModelRef, to_state: str, reason: str, evidence: Mapping | None = None,
                actor: str | None = None, *, override: bool = False,
                expected_generation: int | None = None) -> ModelVersion:
        """Move a version to `to_state` as the stage machine allows; audited. Promoting to production
        archives the previous production version and moves the `production` alias, atomically."""
        r = parse_ref(ref)
        actor = actor_name(actor)
        evidence = json_mapping(evidence, "evidence", "{'shadow_p99_ms': 12}")

        def write(conn: Connection) -> tuple[str, int]:
            gen = self._lock(conn, validate_name(r.name), expected_generation)
            name, version = self.resolve(r, conn)
            gate_passed = conn.execute(sa.select(V.c.gate_passed).where(V.c.name == name,
                                                                         V.c.version == version)).scalar()
            plan = stages.plan_promotion(version, self._states(conn, name), to_state, gate_passed=gate_passed,
                                         production_version=self._production(conn, name), override=override,
                                         reason=reason)
            self._apply(conn, name, plan, gen, actor, reason, evidence, "transition")
            return name, version
        name, version = run_transaction(self.engine, write)
        return self.get(ModelRef(name, version=version), strict=False)   # it moved; unreadable fields don't undo that

    def rollback(self, name: str, reason: str, actor: str | None = None, *, current_to: str = stages.ARCHIVED,
                 expected_generation: int | None = None) -> ModelVersion:
        """Put the previous production version back in production (one transaction); the current
        one goes to `current_to` (archived or candidate). Returns the restored version."""
        if not reason or not str(reason).strip():
            raise RegistryError("a reason is required for a rollback (it goes in the audit log): pass --reason")
        actor = actor_name(actor)

        def write(conn: Connection) -> stages.Plan:
            gen = self._lock(conn, validate_name(name), expected_generation)
            events = []
            for e in conn.execute(sa.select(L.c.action, L.c.version, L.c.from_state, L.c.to_state)
                                  .where(L.c.name == name, L.c.action.in_(("transition", "rollback")))
                                  .order_by(L.c.id)):
                if e.action == "transition" and e.to_state == stages.PRODUCTION:
                    events.append(("promote", e.version))
                elif e.action == "transition" and e.from_state == stages.PRODUCTION:
                    events.append(("demote", e.version))
                elif e.action == "rollback" and e.from_state == stages.PRODUCTION:
                    events.append(("rollback", e.version))
            plan = stages.plan_rollback(stages.production_stack(events), self._states(conn, name),
                                        self._production(conn, name), current_to)
            self._apply(conn, name, plan, gen, actor, reason,
                        {"from_version": plan.transitions[0].version, "to_version": plan.transitions[1].version},
                        "rollback")
            return plan
        plan = run_transaction(self.engine, write)
        return self.get(ModelRef(name, version=plan.transitions[1].version), strict=False)

    def set_alias(self, name: str, alias: str, version: int, reason: str = "", actor: str | None = None, *,
                  expected_generation: int | None = None) -> None:
        """Point `models:/name@alias` at `version` (atomically; moving it from wherever it was)."""
        self._alias(name, alias, validate_version(version), reason, actor, expected_generation)

    def delete_alias(self, name: str, alias: str, reason: str = "", actor: str | None = None) -> None:
        self._alias(name, alias, None, reason, actor, None)

    def _alias(self, name: str, alias: str, version: int | None, reason: str, actor: str | None,
               expected: int | None) -> None:
        validate_alias(alias)
        who = actor_name(actor)
        if alias == stages.PRODUCTION_ALIAS:
            raise RegistryError("the 'production' alias follows the rollout state: use promote(ref, 'production') "
                                "or rollback(name) to move it")

        def write(conn: Connection) -> None:
            gen = self._lock(conn, validate_name(name), expected)
            if version is not None:
                self.resolve(ModelRef(name, version=version), conn)
            old = conn.execute(sa.select(A.c.version).where(A.c.name == name, A.c.alias == alias)).scalar()
            if version is None and old is None:
                raise ModelReferenceError(f"model {name!r} has no alias {alias!r} to delete")
            self._move_alias(conn, name, alias, version, _now())
            self._audit(conn, name, version, "alias", gen, who, reason,
                        {"from_version": old, "to_version": version}, alias=alias)
        run_transaction(self.engine, write)

    def record_gate(self, ref: str | ModelRef, decision: Any, actor: str | None = None) -> None:
        """Store a gate decision (GateDecision or its dict) and every reason with the version; audited."""
        d = json_mapping(decision_dict(decision), "gate decision", "ModelValidationGate(...).evaluate(...)")
        who = actor_name(actor)
        r = parse_ref(ref)

        def write(conn: Connection) -> None:
            gen = self._lock(conn, validate_name(r.name))
            name, version = self.resolve(r, conn)
            conn.execute(sa.update(V).where(V.c.name == name, V.c.version == version)
                         .values(gate=dumps(d), gate_passed=bool(d["passed"]), updated_at=_now()))
            failed = [check for check, ok, _ in d["reasons"] if not ok]
            self._audit(conn, name, version, "gate", gen, who,
                        "gate passed" if d["passed"] else f"gate failed: {', '.join(map(str, failed))}", d)
        run_transaction(self.engine, write)

    def record_event(self, ref: str | ModelRef, action: str, reason: str, evidence: Mapping | None = None,
                     actor: str | None = None) -> None:
        """Append an audit entry for a version without changing it (e.g. a closed-loop step and its
        evidence). `action` must not be one the registry writes itself."""
        if not isinstance(action, str) or not action.strip() or len(action) > 32 or action != action.strip():
            raise RegistryError(f"action {action!r} must be a short name (1-32 characters, no surrounding "
                                "spaces), e.g. 'loop' or 'drift-check'")
        if action in ("register", "transition", "replaced", "alias", "gate", "rollback"):
            raise RegistryError(f"action {action!r} is written by the registry itself; use another name")
        evidence = json_mapping(evidence, "evidence", "{'psi': 0.31}")
        who = actor_name(actor)
        r = parse_ref(ref)

        def write(conn: Connection) -> None:
            gen = self._lock(conn, validate_name(r.name))
            name, version = self.resolve(r, conn)
            self._audit(conn, name, version, action, gen, who, reason, evidence)
        run_transaction(self.engine, write)
