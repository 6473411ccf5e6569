"""Shadow traffic: after the user got the production answer, the same request goes to the shadow
version; both outputs (and whether they disagree) go to the prediction log. A failing shadow never
affects users."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from loopstack.serving.batcher import QueueFull

if TYPE_CHECKING:
    from loopstack.serving.answers import Answer, Request
    from loopstack.serving.models import ModelHandle, Snapshot
    from loopstack.serving.predict import PredictService


async def send_shadow(svc: "PredictService", handle: "ModelHandle", snap: "Snapshot", req: "Request",
                      ans: "Answer") -> None:
    """Send the request to the shadow version after the user got the answer; log both outputs."""
    version = ans.assignment.shadow_version
    sv = snap.versions.get(version)
    if sv is None or not sv.acquire():
        svc.metrics.shadow.labels(handle.name, str(version), "dropped").inc()
        return
    t = time.monotonic()
    error = None
    value: Any = None
    try:
        vec = ans.vector
        if sv.builder.signature != snap.versions[ans.version].builder.signature:
            vec = sv.builder.build(svc.fleet.project.online, [(req.entities, req.fields)])[0]
        budget = svc.cfg.model_budget_ms / 1000
        value = await sv.batcher.submit_async(vec, deadline=t + budget, timeout=budget)
    except QueueFull:
        svc.metrics.shadow.labels(handle.name, str(version), "dropped").inc()
        return
    except Exception as exc:  # noqa: BLE001 - a failing shadow never affects users; it is logged
        error = f"{type(exc).__name__}: {exc}"
    finally:
        sv.release()
    disagree = error is None and _disagree(ans.prediction, value, svc.cfg.disagreement)
    outcome = "error" if error else "disagree" if disagree else "ok"
    svc.metrics.shadow.labels(handle.name, str(version), outcome).inc()
    if svc.plog is None:
        return
    rec = {"kind": "shadow", "request_id": ans.request_id, "ts": int(time.time() * 1e6), "model": handle.name,
           "version": version, "variant": "shadow", "rung": "model", "status": "error" if error else "ok",
           "latency_ms": round((time.monotonic() - t) * 1000, 3), "output": value,
           "production_version": ans.version, "production_output": ans.prediction, "disagree": disagree,
           "user_id": None if req.user_id is None else str(req.user_id)}
    if error is not None:
        rec["error"] = error
    if error is not None or disagree:
        rec["features"] = dict(zip(sv.builder.columns, vec if error is None or vec else []))
    await svc.plog.put_async(rec)


def _disagree(a: Any, b: Any, tol: float) -> bool:
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(float(a) - float(b)) > tol
    return a != b
