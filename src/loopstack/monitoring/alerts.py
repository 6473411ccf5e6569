"""Alerts: fired rules stored in the metadata DB (once per window, rule and feature), printed, and POSTed
as JSON to a webhook if one is configured. A failing webhook is logged and recorded on the alert;
it never stops the monitor.
"""
from __future__ import annotations

import hashlib
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

import sqlalchemy as sa

from loopstack.meta.tx import lock_key
from loopstack.monitoring.rules import LAYERS, Firing
from loopstack.monitoring.schema import alerts as T

log = logging.getLogger("loopstack.monitoring")


@dataclass(frozen=True)
class Alert:
    """One stored alert."""

    id: int | None
    model: str
    version: int
    start_us: int
    width_s: int
    layer: str
    metric: str
    feature: str | None
    value: float
    threshold: float
    op: str
    severity: str
    message: str
    created_at: datetime
    delivery: str | None = None

    @property
    def window_start(self) -> datetime:
        return datetime.fromtimestamp(self.start_us / 1e6, tz=timezone.utc)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.model, "version": self.version,
                "window_start": self.window_start.isoformat(), "window_s": self.width_s, "layer": self.layer,
                "metric": self.metric, "feature": self.feature, "value": self.value, "threshold": self.threshold,
                "op": self.op, "severity": self.severity, "message": self.message,
                "created_at": self.created_at.isoformat(), "delivery": self.delivery}


def _dedupe(model: str, version: int, start_us: int, width_s: int, firing: Firing) -> str:
    raw = json.dumps([model, version, start_us, width_s, firing.key])
    return hashlib.sha256(raw.encode()).hexdigest()


def store_new(engine: sa.engine.Engine, model: str, version: int, start_us: int, width_s: int,
              firings: Iterable[Firing]) -> list[Alert]:
    """Insert the firings not stored before for this window; returns the new alerts."""
    out: list[Alert] = []
    with engine.begin() as conn:
        for f in firings:
            key = _dedupe(model, version, start_us, width_s, f)
            if conn.execute(sa.select(T.c.id).where(T.c.dedupe == key)).first() is not None:
                continue
            lock_key(conn, f"loopstack:alert:{key}")   # two checkers firing the same alert: one stores it
            if conn.execute(sa.select(T.c.id).where(T.c.dedupe == key)).first() is not None:
                continue
            when = datetime.now(timezone.utc)
            row = dict(model=model, version=version, start_us=start_us, width_s=width_s,
                       layer=LAYERS[f.rule.metric], metric=f.rule.metric, feature=f.feature, value=f.value,
                       threshold=f.rule.value, op=f.rule.op, severity=f.rule.severity,
                       message=f"{model} v{version}: {f.message}", rule_key=f.key, dedupe=key, created_at=when)
            res = conn.execute(T.insert().values(**row))
            out.append(_alert({**row, "id": res.inserted_primary_key[0], "delivery": None}))
    return out


def list_alerts(engine: sa.engine.Engine, model: str | None = None, limit: int = 100) -> list[Alert]:
    """Stored alerts, newest first."""
    q = sa.select(T)
    if model:
        q = q.where(T.c.model == model)
    with engine.connect() as conn:
        rows = conn.execute(q.order_by(T.c.id.desc()).limit(limit)).all()
    return [_alert(dict(r._mapping)) for r in rows]


def send_webhook(engine: sa.engine.Engine, url: str, alerts: list[Alert], timeout: float = 5.0) -> str:
    """POST ``{"alerts": [...]}`` to `url`; the outcome ("ok 200" or the error) is stored on each alert."""
    if not alerts:
        return "nothing to send"
    body = json.dumps({"source": "loopstack", "alerts": [a.to_dict() for a in alerts]}).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            outcome = f"ok {resp.status}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        outcome = f"failed: {type(exc).__name__}: {exc}"
        log.error("alert webhook %s failed (%s); %d alert(s) stay stored", url, outcome, len(alerts))
    with engine.begin() as conn:
        conn.execute(sa.update(T).where(T.c.id.in_([a.id for a in alerts])).values(delivery=outcome))
    return outcome


def _alert(r: dict) -> Alert:
    created = r["created_at"]
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return Alert(r.get("id"), r["model"], int(r["version"]), int(r["start_us"]), int(r["width_s"]), r["layer"],
                 r["metric"], r.get("feature"), float(r["value"]), float(r["threshold"]), r["op"], r["severity"],
                 r["message"], created, r.get("delivery"))
