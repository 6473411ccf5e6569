"""`LoopStore`: the loop's runs and schedules in the metadata database (the I/O edge of the core)."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from loopstack.loop.core import TERMINAL, LoopError, LoopState
from loopstack.loop.schema import loop_runs as R
from loopstack.loop.schema import loop_schedules as S
from loopstack.meta.tx import lock_key, run_transaction


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


class LoopStore:
    """Read and write loop runs (one row per run, rewritten after every step) and schedules."""

    def __init__(self, meta: Any) -> None:
        self.engine = meta.engine

    # -- runs --------------------------------------------------------------------------------------
    def create(self, state: LoopState, now: datetime) -> LoopState:
        """Insert a new run; refuses when the model already has an unfinished run (checked under a
        per-model lock, so two processes starting a run at once cannot both pass the check)."""

        def write(conn: sa.engine.Connection) -> None:
            lock_key(conn, f"loopstack:loop:{state.model}")
            active = conn.execute(sa.select(R.c.run_id, R.c.step).where(
                R.c.model == state.model, R.c.step.notin_(TERMINAL))).first()
            if active is not None:
                raise LoopError(f"model {state.model!r} already has an unfinished loop run {active.run_id} (at step "
                                f"{active.step}); resume it with `loopstack loop resume` or wait for it to finish")
            conn.execute(R.insert().values(run_id=state.run_id, model=state.model, step=state.step,
                                           trigger=state.trigger, state=_dumps(state), revision=1,
                                           created_at=now, updated_at=now))
        run_transaction(self.engine, write)
        return state

    def save(self, state: LoopState, now: datetime) -> None:
        """Persist the state of a run (one transaction: a crash leaves the previous or the new state)."""
        text = _dumps(state)

        def write(conn: sa.engine.Connection) -> int:
            return conn.execute(sa.update(R).where(R.c.run_id == state.run_id).values(
                step=state.step, state=text, revision=R.c.revision + 1, updated_at=now)).rowcount
        if run_transaction(self.engine, write) == 0:
            raise LoopError(f"no loop run {state.run_id!r} to save; start one with `loopstack loop run`")

    def get(self, run_id: str) -> LoopState:
        with self.engine.connect() as conn:
            text = conn.execute(sa.select(R.c.state).where(R.c.run_id == run_id)).scalar()
        if text is None:
            raise LoopError(f"no loop run {run_id!r}; list runs with `loopstack loop status`")
        return LoopState.from_dict(json.loads(text))

    def active(self, model: str) -> LoopState | None:
        """The model's unfinished run, if any (what `resume` continues)."""
        with self.engine.connect() as conn:
            text = conn.execute(sa.select(R.c.state).where(R.c.model == model, R.c.step.notin_(TERMINAL))
                                .order_by(R.c.created_at.desc()).limit(1)).scalar()
        return None if text is None else LoopState.from_dict(json.loads(text))

    def runs(self, model: str | None = None, limit: int = 20) -> list[LoopState]:
        """Newest first."""
        q = sa.select(R.c.state).order_by(R.c.created_at.desc()).limit(limit)
        if model:
            q = q.where(R.c.model == model)
        with self.engine.connect() as conn:
            return [LoopState.from_dict(json.loads(t)) for t in conn.execute(q).scalars()]

    def last_started(self, model: str, trigger: str | None = None) -> datetime | None:
        q = sa.select(sa.func.max(R.c.created_at)).where(R.c.model == model)
        if trigger:
            q = q.where(R.c.trigger == trigger)
        with self.engine.connect() as conn:
            ts = conn.execute(q).scalar()
        return None if ts is None else _utc(ts)

    # -- schedules ---------------------------------------------------------------------------------
    def schedule(self, model: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(S).where(S.c.model == model)).first()
        if row is None:
            return None
        d = dict(row._mapping)
        d["next_run_at"], d["updated_at"] = _utc(d["next_run_at"]), _utc(d["updated_at"])
        return d

    def set_schedule(self, model: str, every_seconds: float, next_run_at: datetime, now: datetime,
                     last_run_id: str | None = None) -> None:
        values = {"every_seconds": float(every_seconds), "next_run_at": next_run_at, "updated_at": now}
        if last_run_id is not None:
            values["last_run_id"] = last_run_id

        def write(conn: sa.engine.Connection) -> None:
            lock_key(conn, f"loopstack:schedule:{model}")   # update-or-insert: one writer per model
            if conn.execute(sa.update(S).where(S.c.model == model).values(**values)).rowcount == 0:
                conn.execute(S.insert().values(model=model, last_run_id=last_run_id,
                                               **{k: v for k, v in values.items() if k != "last_run_id"}))
        run_transaction(self.engine, write)


def _dumps(state: LoopState) -> str:
    from loopstack.registry.entities import dumps
    return dumps(state.to_dict())
