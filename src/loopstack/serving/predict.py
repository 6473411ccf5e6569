"""The response path of one prediction: route, assemble the vector, walk the degradation ladder,
answer; then log it and send the shadow copy in the background.

Ladder (per request): the routed version ("model" rung) -> the policy's fallback version
("fallback") -> the static baseline ("baseline"). A rung is skipped while its version's circuit
breaker is open. Each rung gets ``min(its budget, time left before the deadline)``; a rung that
fails or runs out of budget hands over to the next. The baseline needs no time, so it answers even
when the deadline is spent; without a baseline a request whose deadline passed gets 504. A full
queue on the model rung answers 429 (load is shed, not moved onto the fallback).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, Callable, Sequence

from loopstack.serving.answers import Answer, DeadlineError, NotReady, Request, Unavailable
from loopstack.serving.batcher import BatcherClosed, DeadlineExceeded, QueueFull, time_out
from loopstack.serving.cache import ResultCache, cache_key
from loopstack.serving.config import ServingConfig
from loopstack.serving.errors import ServingError
from loopstack.serving.ladder import Rung, plan_rungs
from loopstack.serving.models import LoadedVersion, ModelFleet, ModelHandle, Snapshot
from loopstack.serving.records import records
from loopstack.serving.router import Assignment, route_many
from loopstack.serving.shadow import send_shadow

log = logging.getLogger("loopstack.serving")


class _Where(Sequence[str]):
    """The "instance N: " prefixes of error messages, made only when an error needs one."""

    def __init__(self, idxs: Sequence[int]) -> None:
        self.idxs = idxs

    def __len__(self) -> int:
        return len(self.idxs)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [f"instance {i}: " for i in self.idxs[k]]
        return f"instance {self.idxs[k]}: "


class PredictService:
    """Answers predictions for the models of a fleet (see module docstring)."""

    def __init__(self, fleet: ModelFleet, cfg: ServingConfig, metrics: Any, plog: Any = None) -> None:
        self.fleet, self.cfg, self.metrics, self.plog = fleet, cfg, metrics, plog
        self.cache = ResultCache(cfg.cache_entries, cfg.cache_ttl_s) if cfg.cache_entries else None
        self.background: set[asyncio.Task] = set()
        model, base = Rung("model", cfg.model_budget_ms / 1000), Rung("baseline", 0.0)
        fallback = Rung("fallback", cfg.fallback_budget_ms / 1000)
        # the ladder of a request, by (has a fallback version, has a baseline): built once, not per request
        self._rungs = {(f, b): [model, *([fallback] if f else []), *([base] if b else [])]
                       for f in (False, True) for b in (False, True)}

    # -- entry point -------------------------------------------------------------------------
    async def predict(self, name: str, requests: Sequence[Request], deadline_ms: float | None,
                      floats: bool = False) -> list[Answer]:
        """Answers for `requests` (one model); raises a ServingError subclass for the HTTP error. `floats`:
        the caller checked that every field value is a float (the vector builder need not again)."""
        handle = self.fleet.get(name)
        t0 = time.monotonic()
        deadline = t0 + (deadline_ms or self.cfg.default_deadline_ms) / 1000
        held: list[LoadedVersion] = []
        try:
            snap, routed = self._route(handle, requests, held)
            vectors = self._vectors(snap, routed, requests, floats)
            if len(requests) == 1:   # the common case: no task per request
                try:
                    answers: list = [await self._ladder(handle, snap, *routed[0], vectors[0], requests[0], deadline,
                                                        held)]
                except Exception as exc:  # noqa: BLE001 - as gather(return_exceptions=True)
                    answers = [exc]
            else:
                answers = await self._many(handle, snap, routed, vectors, requests, deadline, held)
        finally:
            for lv in held:
                lv.release()
        return await self.finish(name, handle, snap, requests, answers, time.monotonic() - t0)

    async def finish(self, name: str, handle: ModelHandle, snap: Snapshot, requests: Sequence[Request],
                     answers: list, latency: float) -> list[Answer]:
        """After the answers of one call: their records and metrics (made once the answer is written, when the
        log has room), the first failure raised, the shadow copies sent."""
        await self.log_records(functools.partial(records, name, requests, answers, latency, self.cfg.feature_sample,
                                                 self.metrics), len(requests))
        errors = [a for a in answers if isinstance(a, BaseException)]
        if errors:
            raise errors[0]
        if snap.policy.shadow is not None:
            for r, ans in zip(requests, answers):
                if ans.assignment is not None and ans.assignment.shadow_version is not None and ans.rung == "model":
                    self._spawn(send_shadow(self, handle, snap, r, ans))
        return answers  # type: ignore[return-value]

    async def log_records(self, make: Callable[[], list[dict]], n: int) -> None:
        """The prediction-log records (and metrics) `make()` returns for `n` instances: made right after the
        answer is written when the log has room (the usual case), else now, a full queue holding the answer
        back (backpressure)."""
        plog = self.plog
        if plog is not None and plog.has_room(n):
            plog.defer(make, n)
            return
        recs = make()
        if recs and plog is not None:
            await plog.put_many_async(recs)

    def _route(self, handle: ModelHandle, requests: Sequence[Request], held: list[LoadedVersion]
               ) -> tuple[Snapshot, list[tuple[Assignment, LoadedVersion]]]:
        for _ in range(5):    # a hot swap retiring a version between reading the snapshot and acquiring it
            snap = handle.snapshot
            if snap.policy is None or not snap.versions:
                reason = handle.not_ready_reason() or "no loaded version yet"   # e.g. its versions were refused
                raise NotReady(f"model {handle.name!r} cannot answer: {reason}; retry shortly (see /readyz)")
            assigned = route_many(snap.policy, [r.user_id for r in requests], [r.request_id for r in requests])
            pairs: dict[int, tuple[Assignment, LoadedVersion]] = {}   # one (assignment, version) per distinct one
            for a in {id(a): a for a in assigned}.values():   # in order: the first failing instance raises
                if a.version not in snap.versions:
                    raise NotReady(f"model {handle.name!r} version {a.version} is not loaded; retry shortly")
                pairs[id(a)] = (a, snap.versions[a.version])
            routed = [next(iter(pairs.values()))] * len(assigned) if len(pairs) == 1 else \
                [pairs[id(a)] for a in assigned]
            got = []
            for lv in {id(lv): lv for _, lv in pairs.values()}.values():
                if not lv.acquire():
                    break
                got.append(lv)
            else:
                held.extend(got)
                return snap, routed
            for lv in got:
                lv.release()
            time.sleep(0.001)
        raise NotReady(f"model {handle.name!r} is switching versions; retry")

    def _vectors(self, snap: Snapshot, routed: list, requests: Sequence[Request], floats: bool = False
                 ) -> list[Sequence]:
        first = routed[0][0].version
        if all(a.version == first for a, _ in routed):   # the common case: one version for all (no regrouping)
            by_version: dict[int, Sequence[int]] = {first: range(len(requests))}
        else:
            by_version = {}
            for i, (a, _) in enumerate(routed):
                by_version.setdefault(a.version, []).append(i)   # type: ignore[union-attr]
        out: list[Sequence] = [()] * len(requests)
        many = len(requests) > 1
        for v, idxs in by_version.items():
            builder = snap.versions[v].builder
            online = self.fleet.project.online if builder.view_refs else None   # no store read without features
            vecs = builder.build(online, [(requests[i].entities, requests[i].fields) for i in idxs],
                                 _Where(idxs) if many else None, floats=floats)
            if len(by_version) == 1:
                return vecs
            for i, vec in zip(idxs, vecs):
                out[i] = vec
        return out

    async def _many(self, handle: ModelHandle, snap: Snapshot, routed: list, vectors: list[list],
                    requests: Sequence[Request], deadline: float, held: list[LoadedVersion]) -> list:
        """The answers of several instances. The model rung of the instances that can take it plainly (no
        result cache, breaker closed, time left) is queued as one block per version (run in one batch) and
        awaited together, with no task per instance; the others, and those whose model rung failed, go
        through the whole ladder."""
        loop = asyncio.get_running_loop()
        t = time.monotonic()
        left = deadline - t
        out: list[Any] = [None] * len(requests)   # Answer | failure of the model rung (str) | None
        groups: dict[int, list[int]] = {}          # id(loaded version) -> instances: one queue block each
        one = routed[0][1]
        if self.cache is None and left > 0 and all(lv is one for _, lv in routed):   # the common case
            if one.breaker.state == "closed":
                groups[id(one)] = list(range(len(requests)))
        elif self.cache is None and left > 0:
            closed: dict[int, bool] = {}
            for i, (_a, lv) in enumerate(routed):
                ok = closed.get(id(lv))
                if ok is None:
                    ok = closed[id(lv)] = lv.breaker.state == "closed"
                if ok:
                    groups.setdefault(id(lv), []).append(i)
        blocks, futs, timers = [], [], []
        expired: set[int] = set()   # instances whose model rung timed out at the request's deadline
        try:
            for idxs in groups.values():
                a, lv = routed[idxs[0]]
                budget = self.model_budget(snap, a.version, left)
                rows = vectors if len(idxs) == len(vectors) else [vectors[i] for i in idxs]
                fut = lv.batcher.submit_block(rows, deadline=t + budget)
                blocks.append((idxs, lv, budget))
                futs.append(fut)
                timers.append(loop.call_later(budget, time_out, fut))
        except BaseException:   # QueueFull (429 for the whole request): the queued ones are not needed
            for fut, timer in zip(futs, timers):
                timer.cancel()
                fut.cancel()
            raise
        if len(futs) == 1:   # as gather(return_exceptions=True), without its extra task and loop iteration
            try:
                results: list = [await futs[0]]
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the model rung failed: handled below
                results = [exc]
        else:
            results = await asyncio.gather(*futs, return_exceptions=True)
        for timer in timers:
            timer.cancel()
        elapsed = time.monotonic() - t
        for (idxs, lv, budget), res in zip(blocks, results):
            if isinstance(res, asyncio.CancelledError):
                raise res
            lv.breaker.record(not isinstance(res, BaseException), elapsed)
            if not isinstance(res, BaseException):
                cols, version = lv.builder.columns, lv.version
                if len(idxs) == len(out):   # the whole request in one block: no indexing per instance
                    out[:] = [Answer(value, version, a.variant, "model", req.request_id, False, vec, a, [], cols)
                              for value, (a, _), req, vec in zip(res, routed, requests, vectors)]
                    continue
                for i, value in zip(idxs, res):
                    a = routed[i][0]
                    out[i] = Answer(value, version, a.variant, "model", requests[i].request_id, False, vectors[i],
                                    a, [], cols)
                continue
            why, late = self.block_failed(handle.name, lv, res, budget, left, len(idxs))
            for i in idxs:
                out[i] = why
            if late:
                expired.update(idxs)
        return await self.rescue(handle, snap, routed, vectors, requests, deadline, held, out, expired)

    def model_budget(self, snap: Snapshot, version: int, left: float) -> float:
        """The model rung's time of a block: all that is `left` when no other rung could answer, else at
        most the rung's budget."""
        policy = snap.policy
        fb = policy.fallback not in (None, version) and policy.fallback in snap.versions
        return left if not fb and policy.baseline is None else min(self.cfg.model_budget_ms / 1000, left)

    def block_failed(self, model: str, lv: LoadedVersion, res: BaseException, budget: float, left: float,
                     n: int) -> tuple[str, bool]:
        """Why the model rung of a block of `n` instances failed (counted in metrics), and whether the
        request's deadline passed with it (it timed out having all the time left)."""
        if isinstance(res, (asyncio.TimeoutError, DeadlineExceeded)):
            why, reason = f"model (v{lv.version}): no answer within {budget * 1000:.0f} ms", "timeout"
        else:
            reason = "closed" if isinstance(res, BatcherClosed) else "error"
            why = f"model (v{lv.version}): {res}"
        self.metrics.rung_failures.labels(model, str(lv.version), "model", reason).inc(n)
        return why, reason == "timeout" and budget >= left

    async def rescue(self, handle: ModelHandle, snap: Snapshot, routed: list, vectors: Sequence,
                     requests: Sequence[Request], deadline: float, held: list[LoadedVersion], out: list,
                     expired: set[int]) -> list:
        """`out` with each instance that has no Answer yet (its model rung failed: `out[i]` says why)
        answered by the rest of its ladder (or the exception it ends with)."""
        rest = [i for i, ans in enumerate(out) if not isinstance(ans, Answer)]
        if rest:
            more = await asyncio.gather(*(self._ladder(handle, snap, *routed[i], vectors[i], requests[i], deadline,
                                                       held, out[i], i in expired) for i in rest),
                                        return_exceptions=True)
            for i, ans in zip(rest, more):
                out[i] = ans
        return out

    # -- the ladder --------------------------------------------------------------------------
    async def _ladder(self, handle: ModelHandle, snap: Snapshot, a: Assignment, lv: LoadedVersion, vec: list,
                      req: Request, deadline: float, held: list[LoadedVersion], model_failed: str | None = None,
                      expired: bool = False) -> Answer:
        """Try the rungs in order (`model_failed`: the model rung was tried already and failed so; `expired`:
        it timed out at the request's deadline).

        A rung that timed out with all the time left marks the request expired rather than reading the
        clock again: the loop's timers (uvloop's cached clock) can fire a little before `time.monotonic()`
        reaches the deadline, and that must still be a 504, not a 503."""
        policy, rid = snap.policy, req.request_id
        fb = snap.versions.get(policy.fallback) if policy.fallback not in (None, a.version) else None
        rungs = self._rungs[(fb is not None, policy.baseline is not None)]
        breakers = {"model": lv.breaker, **({"fallback": fb.breaker} if fb is not None else {})}
        failures: list[str] = [] if model_failed is None else [model_failed]
        for rung in plan_rungs(rungs, breakers):
            if rung.name == "model" and model_failed is not None:
                continue
            if rung.name == "baseline":
                return Answer(policy.baseline, None, a.variant, "baseline", rid, vector=vec, assignment=a,
                              failures=failures, columns=lv.builder.columns)
            target = lv if rung.name == "model" else fb
            last = rung is rungs[-1]
            left = deadline - time.monotonic()
            if left <= 0:      # only the baseline (no time needed) can still answer
                expired = True
                continue
            if not target.breaker.allow() and not last:
                failures.append(f"{rung.name} (v{target.version}): circuit breaker open")
                self.metrics.rung_failures.labels(handle.name, str(target.version), rung.name, "breaker_open").inc()
                continue
            vec_r = vec
            if target is fb:
                if not fb.acquire():
                    continue
                held.append(fb)
                if fb.builder.signature != lv.builder.signature:
                    try:
                        vec_r = fb.builder.build(self.fleet.project.online, [(req.entities, req.fields)])[0]
                    except ServingError as exc:
                        failures.append(f"fallback (v{fb.version}): {exc}")
                        continue
            budget = left if last else min(rung.budget_s, left)
            try:
                value, cached = await self._run(handle.name, target, vec_r, budget)
            except QueueFull:
                if rung.name == "model":
                    raise
                failures.append(f"{rung.name}: queue full")
                continue
            except (asyncio.TimeoutError, DeadlineExceeded):
                expired = expired or budget >= left
                failures.append(f"{rung.name} (v{target.version}): no answer within {budget * 1000:.0f} ms")
                self.metrics.rung_failures.labels(handle.name, str(target.version), rung.name, "timeout").inc()
                continue
            except Exception as exc:  # noqa: BLE001 - the next rung answers; the breaker learns
                failures.append(f"{rung.name} (v{target.version}): {exc}")
                reason = "closed" if isinstance(exc, BatcherClosed) else "error"
                self.metrics.rung_failures.labels(handle.name, str(target.version), rung.name, reason).inc()
                continue
            return Answer(value, target.version, a.variant, rung.name, rid, cached, vec_r, a, failures,
                          target.builder.columns)
        if expired or time.monotonic() >= deadline:
            err: ServingError = DeadlineError(
                f"no answer from model {handle.name!r} within the request's deadline "
                f"({'; '.join(failures) or 'no time left'}); raise deadline_ms or configure a baseline "
                "(`loopstack models traffic NAME --baseline VALUE`)")
        else:
            err = Unavailable(f"model {handle.name!r} could not answer: {'; '.join(failures) or 'no rung left'}")
        err.answer = Answer(None, a.version, a.variant, "model", rid, vector=vec, assignment=a,  # type: ignore
                            failures=failures, columns=lv.builder.columns)
        raise err

    async def _run(self, model: str, lv: LoadedVersion, vec: list, budget: float) -> tuple[Any, bool]:
        """One rung attempt: the cache, else the batcher; the breaker records the outcome."""
        key = None
        if self.cache is not None:
            key = cache_key(model, lv.version, vec)
            hit, value = self.cache.get(key)
            self.metrics.child(self.metrics.cache, model, "hit" if hit else "miss").inc()
            if hit:
                return value, True
        t = time.monotonic()
        try:
            value = await lv.batcher.submit_async(vec, deadline=t + budget, timeout=budget)
        except (QueueFull, asyncio.CancelledError):   # overload and cancelled callers say nothing about the model
            raise
        except BaseException:
            lv.breaker.record(False, time.monotonic() - t)
            raise
        lv.breaker.record(True, time.monotonic() - t)
        if key is not None:
            self.cache.put(key, value)
        return value, False

    # -- after the answer --------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("shadow request failed: %r", task.exception())

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for shadow copies still running (graceful shutdown)."""
        if self.background:
            await asyncio.wait(list(self.background), timeout=timeout)
