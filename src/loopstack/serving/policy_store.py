"""Stored traffic settings per model (migration step 4 of meta/db.py): canary %, shadow sample,
experiment weights, holdback %, fallback version, static baseline.

The registry holds *which* version is in which rollout state; these settings say *how much*
traffic each state gets. `router.policy_from_states` combines the two into a TrafficPolicy. Every
change bumps the model's `revision`, which running servers poll (one indexed query) to apply the
new policy without a restart.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loopstack.meta.tx import lock_key, run_transaction
from loopstack.serving.errors import ServingConfigError
from loopstack.serving.router import SETTINGS_KEYS, check_steps
from loopstack.serving.router import validate_settings as router_validate

serving_metadata = sa.MetaData()

traffic_settings = sa.Table(
    "ls_serving_traffic", serving_metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("settings", sa.Text, nullable=False, default="{}"),
    sa.Column("revision", sa.Integer, nullable=False, default=0),
    sa.Column("updated_by", sa.String(255), nullable=False, default=""),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


def migrate_v4(conn: Connection) -> None:
    """Create the traffic settings table."""
    serving_metadata.create_all(conn, checkfirst=True)


KEYS = SETTINGS_KEYS
_VARIANT = re.compile(r"control|v[1-9][0-9]*")


def parse_weights(value: Any) -> Any:
    """Experiment weights from the CLI form "control=50,v3=50" (a mapping passes through)."""
    if not isinstance(value, str):
        return value
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, sep, w = part.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            weight = float(w)
        except ValueError:
            raise ServingConfigError(f"experiment weights {value!r}: write variant=weight pairs separated by "
                                     "commas, e.g. control=50,v3=50 (variants: control and v<version>)") from None
        if name.strip() in out:
            raise ServingConfigError(f"experiment weights {value!r}: variant {name.strip()!r} is given twice; "
                                     "give each variant one weight")
        out[name.strip()] = weight
    if not out:
        raise ServingConfigError(f"experiment weights {value!r}: give at least one variant=weight pair, e.g. "
                                 "control=50,v3=50 (to remove the weights: --unset experiment_weights)")
    return out


def _variant_names(weights: Mapping[str, Any]) -> None:
    """ServingConfigError unless every weight is for a variant an experiment can have: control or v<version>."""
    bad = sorted(str(k) for k in weights if not _VARIANT.fullmatch(str(k)))
    if bad:
        raise ServingConfigError(f"experiment weights for {bad}: a variant is 'control' (the production version) or "
                                 "'v<version>' of a version in state experiment, e.g. control=50,v3=50")


def validate_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Checked settings (pure): the router's rules, plus a JSON-serialisable, finite baseline."""
    raw = dict(settings)
    if "experiment_weights" in raw:
        raw["experiment_weights"] = parse_weights(raw["experiment_weights"])
    out = router_validate(raw)
    if "experiment_weights" in out:
        _variant_names(out["experiment_weights"])
    if "baseline" in out:
        try:
            json.dumps(out["baseline"], allow_nan=False)
        except (TypeError, ValueError):
            raise ServingConfigError(f"traffic setting baseline={out['baseline']!r} is not allowed: use a JSON "
                                     "value (a number, string, list or object; no NaN)") from None
    return out


class PolicyStore:
    """Read and change the stored traffic settings of models (`loopstack models traffic`)."""

    def __init__(self, meta: Any) -> None:
        self.engine = meta.engine

    def get(self, name: str) -> dict[str, Any]:
        """The stored settings of `name` ({} if never set)."""
        with self.engine.connect() as conn:
            text = conn.execute(sa.select(traffic_settings.c.settings)
                                .where(traffic_settings.c.name == name)).scalar()
        return json.loads(text) if text else {}

    def revision(self, name: str) -> int:
        """Grows with every change of `name`'s settings (0: never set)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(traffic_settings.c.revision)
                                .where(traffic_settings.c.name == name)).scalar() or 0

    def revisions(self) -> dict[str, int]:
        """Revision of every model with stored settings, in one query (what servers poll)."""
        t = traffic_settings
        with self.engine.connect() as conn:
            return {r.name: r.revision for r in conn.execute(sa.select(t.c.name, t.c.revision))}

    def update(self, name: str, changes: Mapping[str, Any], actor: str = "", replace: bool = False
               ) -> dict[str, Any]:
        """Merge `changes` into the stored settings (a None value removes the key; `replace`: start
        from {}), validated; returns the new settings."""
        t = traffic_settings
        removed = {k for k, v in changes.items() if v is None}
        checked = validate_settings({k: v for k, v in changes.items() if v is not None})
        check_steps(checked)   # new values only: a finer value stored before still loads (rounded up)
        unknown = sorted(removed - set(KEYS))
        if unknown:
            raise ServingConfigError(f"unknown traffic setting(s) {unknown}: use {', '.join(KEYS)}")
        now = datetime.now(timezone.utc)

        def write(conn: Connection) -> dict[str, Any]:
            lock_key(conn, f"loopstack:traffic:{name}")  # read-merge-write: concurrent changes never lose a key
            row = conn.execute(sa.select(t.c.settings, t.c.revision).where(t.c.name == name)).first()
            current = {} if row is None or replace else json.loads(row.settings)
            new = {k: v for k, v in {**current, **checked}.items() if k not in removed}
            text = json.dumps(new, sort_keys=True)
            if row is None:
                conn.execute(t.insert().values(name=name, settings=text, revision=1, updated_by=actor,
                                               updated_at=now))
            else:
                conn.execute(sa.update(t).where(t.c.name == name).values(
                    settings=text, revision=t.c.revision + 1, updated_by=actor, updated_at=now))
            return new
        return run_transaction(self.engine, write)
