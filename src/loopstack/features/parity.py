"""The skew alarm: does the online store serve the value the offline store would have trained on?

`check_parity` samples entities that have state in the online store and read times at which the
online store is exact (``t >= newest event - allowed_lateness`` of the view: the newest event + 1 µs,
the lowest exact time, now, and a few random times in between; plain fields only after the entity's
own newest event, where the online store serves them), computes each view's features
offline (``get_historical_features``: point-in-time, strictly before ``t``) and online
(``get_online_features(..., as_of=t)``) and compares them per feature: nulls equal nulls, floats
within ``rel_tol``/``abs_tol``, everything else (ints, strings, bools, timestamps to the µs) exactly.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Sequence

from loopstack.features.definitions import FeatureView
from loopstack.features.materialize import _select_views
from loopstack.timeutil import to_us, us_to_iso
from loopstack.timeutil import now_micros

if TYPE_CHECKING:
    from rich.table import Table

    from loopstack.project import Project

N_WORST = 5


@dataclass
class Mismatch:
    """One (entity, time) where offline and online disagree."""

    entity: Any
    as_of: int
    offline: Any
    online: Any
    severity: float  # |difference| for numbers, inf otherwise

    def describe(self) -> str:
        return f"key={self.entity!r} at {us_to_iso(self.as_of)}: offline={self.offline!r} online={self.online!r}"


@dataclass
class FeatureParity:
    """Per feature: values compared, mismatches, and the worst examples (largest difference first)."""

    feature: str
    checked: int = 0
    mismatches: int = 0
    not_exact: int = 0  # (entity, time) pairs not compared: a plain field read before the entity's newest event
    worst: list[Mismatch] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.mismatches / self.checked if self.checked else 0.0

    def add(self, m: Mismatch) -> None:
        self.mismatches += 1
        self.worst.append(m)
        self.worst.sort(key=lambda x: -x.severity)
        del self.worst[N_WORST:]


@dataclass
class ParityReport:
    """The result of `check_parity`: one FeatureParity per "view:feature", plus what was sampled."""

    features: dict[str, FeatureParity] = field(default_factory=dict)
    entities: dict[str, int] = field(default_factory=dict)     # view -> entities sampled
    times: dict[str, list[int]] = field(default_factory=dict)  # view -> read times (µs)
    skipped: dict[str, str] = field(default_factory=dict)      # view -> why it was not checked

    @property
    def mismatches(self) -> int:
        return sum(f.mismatches for f in self.features.values())

    @property
    def checked(self) -> int:
        return sum(f.checked for f in self.features.values())

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    @property
    def exit_code(self) -> int:
        """0 when every compared value matched, 1 otherwise (the CLI's exit code)."""
        return 0 if self.ok else 1

    def table(self) -> "Table":
        """A rich table: feature, checked, mismatches, rate, worst example."""
        from rich.table import Table
        t = Table("feature", "checked", "mismatches", "rate", "worst example",
                  title=f"offline/online parity: {self.mismatches} mismatch(es) in {self.checked} values")
        for name, f in sorted(self.features.items()):
            style = "red" if f.mismatches else "green"
            t.add_row(name, str(f.checked), f"[{style}]{f.mismatches}[/]", f"{f.rate:.2%}",
                      f.worst[0].describe() if f.worst else "")
        return t


# -- comparison (pure) -------------------------------------------------------------------------------
def normalize(v: Any) -> Any:
    """A value in comparable form: None for nulls (None/NaN/NaT/NA), µs for datetimes, Python scalars."""
    if v is None:
        return None
    if hasattr(v, "item") and getattr(v, "ndim", None) == 0:  # numpy scalar
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    if type(v).__name__ in ("NAType", "NaTType"):
        return None
    if isinstance(v, datetime) or hasattr(v, "to_pydatetime"):
        return to_us(v)
    return v


def values_match(offline: Any, online: Any, rel_tol: float = 1e-9, abs_tol: float = 1e-9) -> tuple[bool, float]:
    """(equal?, severity). Floats compare within tolerance; ints, strings, bools, times exactly."""
    a, b = normalize(offline), normalize(online)
    if a is None or b is None:
        return (a is None and b is None), math.inf
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool):
        if isinstance(a, int) and isinstance(b, int):
            return a == b, float(abs(a - b))
        if math.isinf(a) or math.isinf(b):
            return a == b, math.inf
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol), abs(float(a) - float(b))
    return a == b, math.inf


def parse_entity(view: FeatureView, canon: str) -> Any:
    """A join-key value from the canonical hash-key form (``"42"`` → 42, ``"s:abc"`` → "abc")."""
    if canon.startswith("s:"):
        return canon[2:]
    try:
        return int(canon)
    except ValueError:
        return canon


# -- sampling --------------------------------------------------------------------------------------
def _entities(project: "Project", view: FeatureView, sample: int, rng: random.Random) -> dict[Any, int | None]:
    """Sampled entities of `view` with state online -> ts of the newest event applied for each."""
    from loopstack.features.online.state import LATEST, decode_latest
    prefix = f"{view.name}|"
    keys = sorted({k for k in project.online_store.scan(prefix) if k.startswith(prefix)})
    chosen = sorted(keys if len(keys) <= sample else rng.sample(keys, sample))
    fields = project.online_store.read(chosen, [LATEST])
    out: dict[Any, int | None] = {}
    for k in chosen:
        blob = fields.get(k, {}).get(LATEST)
        seen = decode_latest(blob)[1] if blob else None
        out[parse_entity(view, k[len(prefix):])] = seen[0] if seen else None
    return out


def _read_times(project: "Project", view: FeatureView, now: int, n_random: int, rng: random.Random
                ) -> list[int] | None:
    info = project.online.freshness().get(view.name) or {}
    newest = info.get("newest_event_ts")
    if newest is None:
        return None
    lo = info.get("exact_from")
    lo = newest - int(view.lateness_delta.total_seconds() * 1_000_000) if lo is None else lo
    hi = max(now, newest + 1)
    times = {lo, newest + 1, hi} | {rng.randint(lo, hi) for _ in range(n_random)}
    return sorted(times)


def _check_args(sample: int, rel_tol: float, abs_tol: float, n_random_times: int) -> None:
    """A clear error for a sample or tolerance that cannot check anything (instead of a ValueError later)."""
    from loopstack.errors import RetrievalError
    if sample < 1:
        raise RetrievalError(f"sample must be >= 1 entity per view, got {sample} (a smaller sample checks nothing)")
    for name, tol in (("rel_tol", rel_tol), ("abs_tol", abs_tol)):
        if not tol >= 0:
            raise RetrievalError(f"{name} must be a non-negative number, got {tol}")
    if n_random_times < 0:
        raise RetrievalError(f"n_random_times must be >= 0, got {n_random_times}")


def check_parity(project: "Project", sample: int = 200, views: Sequence[str] | None = None, seed: int = 0,
                 rel_tol: float = 1e-9, abs_tol: float = 1e-9, times: Sequence[Any] | None = None,
                 n_random_times: int = 3, now: Any = None) -> ParityReport:
    """Compare offline point-in-time values with online values for sampled entities and read times.

    `sample`: entities per view (from those in the online store). `times`: explicit read times
    (datetimes, ISO strings or µs) instead of the sampled ones — only times at or after a view's
    watermark minus its allowed lateness are exact online. `now` (default: the clock) is the latest
    sampled time. Returns a ParityReport; ``report.exit_code`` is 1 on any mismatch.
    """
    import pandas as pd
    _check_args(sample, rel_tol, abs_tol, n_random_times)
    rng = random.Random(seed)
    now_us = to_us(now) if now is not None else now_micros()
    report = ParityReport()
    for view in _select_views(project, views):
        refs = [f"{view.name}:{f.name}" for f in view.features]
        for ref in refs:
            report.features.setdefault(ref, FeatureParity(ref))
        ents = _entities(project, view, sample, rng)
        if not ents:
            report.skipped[view.name] = "no entity has state in the online store (materialize or stream first)"
            continue
        ts = sorted({to_us(t) for t in times}) if times else _read_times(project, view, now_us, n_random_times, rng)
        if not ts:
            report.skipped[view.name] = "the online store has no watermark for this view"
            continue
        report.entities[view.name], report.times[view.name] = len(ents), ts
        key = view.entity.join_key
        df = pd.DataFrame({key: [e for _ in ts for e in ents],
                           "event_timestamp": pd.to_datetime([t for t in ts for _ in ents], unit="us", utc=True)})
        off = project.get_historical_features(df, refs, output="arrow")
        offline_cols = {ref: off[ref.split(":", 1)[1]].to_pylist() for ref in refs}
        plain = {f"{view.name}:{f.name}" for f in view.features if f.is_plain}
        for j, t in enumerate(ts):
            resp = project.online.get_online_features(refs, [{key: e} for e in ents], as_of=t)
            for ref, col in zip(refs, resp.features):
                fp = report.features[ref]
                for i, (e, newest) in enumerate(ents.items()):
                    if ref in plain and newest is not None and t <= newest:
                        fp.not_exact += 1  # plain fields are served for times after the entity's newest event
                        continue
                    a, b = offline_cols[ref][j * len(ents) + i], resp.rows[i].get(col)
                    fp.checked += 1
                    ok, severity = values_match(a, b, rel_tol, abs_tol)
                    if not ok:
                        fp.add(Mismatch(e, t, normalize(a), normalize(b), severity))
    return report
