"""The block path of a :predict_batch request (docs/serving.md, "Batch requests").

When every instance of a batch request takes one plain route — one user (so one assignment and one
version), every model input a float request field and every value a float, no result cache, no shadow
copy, the version's breaker closed — the vectors are the request's rows as they came and go to the batcher
as one block, and the answer is written from a template: no request, answer or item object is made per
instance before the answer is written. Its prediction-log records and metrics are made afterwards
(`records.block_records`) and equal the general path's. Anything else takes the general path
(`PredictService.predict`), and so does a block whose model rung fails: each instance then walks the rest
of its ladder exactly as there.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import orjson

from loopstack.serving.answers import Answer, Request
from loopstack.serving.batcher import time_out
from loopstack.serving.errors import NoRoute
from loopstack.serving.predict import PredictService
from loopstack.serving.records import block_records
from loopstack.serving.router import route
from loopstack.serving.vector import VectorBuilder


@dataclass(slots=True)
class Block:
    """The model's outputs for a block's instances, in order, from one version and variant."""
    version: int
    variant: str
    outputs: list


async def predict_block(service: PredictService, name: str, user_id: str | None, request_id: str, n: int,
                        vectors_of: Callable[[VectorBuilder], Sequence | None], deadline_ms: float | None,
                        requests_of: Callable[[], list[Request]]) -> Block | list[Answer] | None:
    """The answer of `n` instances of user `user_id` as one block: a `Block`, or the general path's Answers
    when the model rung failed and the ladder answered; None when the request is not a plain block (the
    caller then takes the general path). `vectors_of(builder)`: the vectors, or None if they need the
    per-instance path; `requests_of()`: the instances as the general path's requests (made only if needed).
    Raises as `PredictService.predict` does (429 on a full queue, the ladder's errors)."""
    handle = service.fleet.get(name)
    snap = handle.snapshot
    policy = snap.policy
    if policy is None or policy.shadow is not None or service.cache is not None:
        return None
    try:
        a = route(policy, user_id, f"{request_id}:0")
    except NoRoute:
        return None
    lv = snap.versions.get(a.version)
    if lv is None or lv.breaker.state != "closed":
        return None
    vecs = vectors_of(lv.builder)
    if vecs is None or not lv.acquire():
        return None
    held = [lv]
    try:
        t0 = time.monotonic()
        left = (deadline_ms or service.cfg.default_deadline_ms) / 1000
        budget = service.model_budget(snap, a.version, left)
        fut = lv.batcher.submit_block(vecs, deadline=t0 + budget)
        timer = asyncio.get_running_loop().call_later(budget, time_out, fut)
        try:
            res: Any = await fut
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the model rung failed: the ladder answers below
            res = exc
        finally:
            timer.cancel()
        lv.breaker.record(not isinstance(res, BaseException), time.monotonic() - t0)
        if isinstance(res, BaseException):
            why, late = service.block_failed(name, lv, res, budget, left, n)
            requests = requests_of()
            answers = await service.rescue(handle, snap, [(a, lv)] * n, vecs, requests, t0 + left, held, [why] * n,
                                           set(range(n)) if late else set())
    finally:
        for v in held:
            v.release()
    latency = time.monotonic() - t0
    if isinstance(res, BaseException):
        return await service.finish(name, handle, snap, requests, answers, latency)

    def make() -> list[dict]:   # after the answer is written, as a rule (see `PredictService.log_records`)
        first = Answer(res[0], lv.version, a.variant, "model", f"{request_id}:0", False, vecs[0], a, [],
                       lv.builder.columns)
        return block_records(name, user_id, first, [f"{request_id}:{i}" for i in range(n)], res, vecs, latency,
                             service.cfg.feature_sample, service.metrics)
    await service.log_records(make, n)
    return Block(lv.version, a.variant, res)


def block_body(name: str, request_id: str, block: Block, latency_ms: float) -> bytes:
    """The JSON answer of a block, byte for byte what the general path writes for the same answers."""
    d = orjson.dumps
    head = b',"version":' + d(block.version) + b',"variant":' + d(block.variant) + \
        b',"rung":"model","request_id":' + d(request_id)[:-1] + b":"
    items = b",".join([b'{"prediction":%b%b%d","cached":false}' % (d(v, option=orjson.OPT_SERIALIZE_NUMPY),
                                                                     head, i) for i, v in enumerate(block.outputs)])
    return b'{"model":%b,"predictions":[%b],"request_id":%b,"latency_ms":%b}' % (
        d(name), items, d(request_id), d(latency_ms))
