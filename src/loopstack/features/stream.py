"""Streaming materialization: consume event topics and keep the online store current within a second.

`StreamProcessor` reads each selected view's source topic with consumers of one consumer group,
one per partition (assigned explicitly, polled with equal shares so partitions keep pace), turns
records into `service.Event`s — event time from the source's timestamp field, order
``(append_ts, partition, offset)``, the offline engine's tie-break — and applies them per view, in
event-time order, with ``OnlineFeatures.apply_events``.

Delivery is at-least-once with idempotent updates. Each apply writes, in the same atomic write as the
state, the progress mark ``stream:<view>:<topic>:<partition>`` = last offset applied; only then is the
consumer group committed. After a crash anywhere (even between the apply and the commit) the
processor reads the marks back, starts each partition at the smallest position any view still needs,
and skips records at or before each view's mark, so nothing is lost and nothing is counted twice.

Events too late to be served (event time before the view's retention horizon: newest event minus
allowed lateness minus the longest window) are counted and appended, with the reason, to the side
topic ``<topic>.late`` *before* the batch is applied, so a crash can duplicate but never lose them.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Sequence

from loopstack.errors import DefinitionError
from loopstack.features.definitions import EventSource, FeatureView
from loopstack.timeutil import to_us, us_to_iso
from loopstack.timeutil import ensure_utc

if TYPE_CHECKING:
    from loopstack.log.base import Record
    from loopstack.project import Project

LATE_SUFFIX = ".late"
CRASH_ENV = "LOOPSTACK_TEST_CRASH_AFTER_APPLY"  # tests: os._exit after the N-th apply, before the commit


def stream_mark(view: str, topic: str, partition: int) -> str:
    """Name of the progress mark holding the last offset of `topic`/`partition` applied to `view`."""
    return f"stream:{view}:{topic}:{partition}"


def _coerce(source: EventSource, name: str, v: Any) -> Any:
    f = source.field(name)
    if v is None or f is None:
        return v
    try:
        if f.dtype == "timestamp":
            return ensure_utc(datetime.fromisoformat(v) if isinstance(v, str) else v)
        if f.dtype.startswith("float"):
            return float(v)
        if f.dtype.startswith("int"):
            return int(v)
    except (TypeError, ValueError):
        return v
    return v


def record_event(view: FeatureView, record: "Record", columns: Sequence[str]):
    """A log record as a `service.Event` of `view`, or None when it has no key or no event time
    (the offline engine ignores such events too)."""
    return _Converter(view, columns)(record)


_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)


class _Converter:
    """`record_event` for one view, with the schema lookups done once (the streaming hot path)."""

    def __init__(self, view: FeatureView, columns: Sequence[str]) -> None:
        from loopstack.features.online.service import Event
        self.event = Event
        src = view.source
        self.src, self.key, self.ts = src, view.entity.join_key, src.timestamp
        self.typed = {c: f.dtype for c in [self.key, *columns] if (f := src.field(c)) is not None}
        self.columns = list(columns)

    def _value(self, name: str, v: Any) -> Any:
        dtype = self.typed.get(name)
        if v is None or dtype is None:
            return v
        try:
            if dtype == "timestamp":
                return ensure_utc(datetime.fromisoformat(v) if isinstance(v, str) else v)
            if dtype.startswith("float"):
                return v if type(v) is float else float(v)
            if dtype.startswith("int"):
                return v if type(v) is int else int(v)
        except (TypeError, ValueError):
            return v
        return v

    def __call__(self, record: "Record"):
        value = record.value
        key = value.get(self.key)
        raw_ts = value.get(self.ts)
        if key is None or raw_ts is None:
            return None
        try:
            if isinstance(raw_ts, int) and not isinstance(raw_ts, bool):
                ts = raw_ts
            elif isinstance(raw_ts, str):  # the common case: ISO text from JSON
                dt = datetime.fromisoformat(raw_ts.strip())
                ts = (ensure_utc(dt) - _EPOCH_UTC) // _US
            else:
                ts = to_us(raw_ts)
        except Exception:  # noqa: BLE001 - unparseable time: the engine would not read it either
            return None
        val = self._value
        values = {c: val(c, value.get(c)) for c in self.columns}
        return self.event(val(self.key, key), ts, (record.timestamp, record.partition, record.offset), values)


@dataclass
class StreamStats:
    """Running totals of a StreamProcessor (per view where it matters)."""

    records: int = 0                                       # records polled
    applied: dict[str, int] = field(default_factory=dict)  # view -> events that changed state
    duplicates: dict[str, int] = field(default_factory=dict)  # view -> records skipped (already applied)
    late: dict[str, int] = field(default_factory=dict)     # view -> events sent to the side topic
    ignored: dict[str, int] = field(default_factory=dict)  # view -> records without key or event time
    batches: int = 0

    def add(self, counter: dict[str, int], view: str, n: int) -> None:
        if n:
            counter[view] = counter.get(view, 0) + n


class StreamProcessor:
    """Consumes the source topics of feature views into the online store (at-least-once, idempotent)."""

    def __init__(self, project: "Project", views: Sequence[str] | None = None, group: str = "loopstack-stream",
                 start: str = "earliest", poll_interval: float = 0.05) -> None:
        if start not in ("earliest", "latest"):
            raise DefinitionError(f"start={start!r}: use 'earliest' or 'latest'")
        known = project.registry.views()
        if views:
            views = list(dict.fromkeys(views))   # `-v a -v a`: consumed once, not counted as duplicates
            unknown = [v for v in views if v not in known]
            if unknown:
                raise DefinitionError(f"unknown feature view(s) {unknown}; applied views are {sorted(known)}")
            batch = [v for v in views if known[v].source.is_batch]
            if batch:
                raise DefinitionError(f"view(s) {batch} read batch files, not a log topic: use `loopstack "
                                      "materialize` for them")
            selected = [known[v] for v in views]
        else:
            selected = [known[n] for n in sorted(known) if not known[n].source.is_batch]
        if not selected:
            raise DefinitionError("no feature view reads a log topic: nothing to stream (apply views whose "
                                  "EventSource has a topic)")
        self.project, self.group, self.start, self.poll_interval = project, group, start, poll_interval
        self.views = {v.name: v for v in selected}
        self.by_topic: dict[str, list[FeatureView]] = {}
        for v in selected:
            self.by_topic.setdefault(v.source.topic, []).append(v)
        self.columns = {v.name: _columns(v) for v in selected}
        self._convert = {v.name: _Converter(v, self.columns[v.name]) for v in selected}
        self.stats = StreamStats()
        self.online = project.online  # fixed for the run (the property re-reads the registry each time)
        self._consumers: dict[str, dict[int, Any]] = {}
        self._marks: dict[str, int] = {}
        self._applies = 0
        self._horizon: int | None = None
        self._stop = False
        crash = os.environ.get(CRASH_ENV)
        self._crash_after = int(crash) if crash else None

    # -- lifecycle -------------------------------------------------------------------------------
    def _open(self) -> None:
        if self._consumers:
            return
        log = self.project.log
        self._marks = {k: int(v) for k, v in self.project.online_store.progress("stream:").items()}
        for topic, views in self.by_topic.items():
            log.create_topic(_late_config(topic), exist_ok=True)
            n = log.topic(topic).partitions
            starts = log.start_offsets(topic)
            self._consumers[topic] = {}
            for p in range(n):  # one consumer per partition, so every partition advances at the same pace
                consumer = log.consumer(topic, self.group, partitions=[p], start=self.start)
                need = []
                for v in views:
                    mark = self._marks.get(stream_mark(v.name, topic, p))
                    if mark is not None:
                        need.append(mark + 1)
                    else:  # a view that never saw this partition: from the start, or where the group is
                        need.append(starts[p] if self.start == "earliest" else consumer.position()[p])
                consumer.seek(p, max(min(need), starts[p]))
                self._consumers[topic][p] = consumer

    def close(self) -> None:
        """Close the consumers (positions are already committed after every step)."""
        for parts in self._consumers.values():
            for c in parts.values():
                c.close()
        self._consumers = {}

    def __enter__(self) -> "StreamProcessor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- work ------------------------------------------------------------------------------------
    def step(self, max_records: int = 1000) -> int:
        """Poll each topic once (no waiting), apply what came to every view, commit; returns records polled."""
        self._open()
        total = 0
        for topic, parts in self._consumers.items():
            share = max(1, max_records // len(parts))
            polled = {p: c.poll(share, timeout=0.0) for p, c in parts.items()}
            recs = [r for rs in polled.values() for r in rs]
            if not recs:
                continue
            total += len(recs)
            self.stats.records += len(recs)
            for view in self.by_topic[topic]:
                self._apply(view, topic, recs)
            self._applies += 1
            if self._crash_after is not None and self._applies >= self._crash_after:
                os._exit(17)  # test hook: die after the state is written, before the commit
            self.project.log.commit_offsets(topic, self.group, {p: parts[p].position()[p]
                                                                for p, rs in polled.items() if rs})
            self.stats.batches += 1
        return total

    def _apply(self, view: FeatureView, topic: str, recs: list["Record"]) -> None:
        events, by_pos, new_marks = [], {}, {}
        for r in recs:
            name = stream_mark(view.name, topic, r.partition)
            if r.offset <= self._marks.get(name, -1):
                self.stats.add(self.stats.duplicates, view.name, 1)
                continue
            new_marks[name] = max(new_marks.get(name, -1), r.offset)
            ev = self._convert[view.name](r)
            if ev is None:
                self.stats.add(self.stats.ignored, view.name, 1)
                continue
            events.append(ev)
            by_pos[(r.partition, r.offset)] = r
        if not new_marks:
            return
        events.sort(key=lambda e: (e.ts, e.order))  # partitions interleaved by event time
        progress = {k: str(v) for k, v in new_marks.items()}
        if events:
            # Side-output first, then apply: a crash in between re-sends them (at-least-once; dedupe by
            # view, partition, offset), but a late event is never lost from the side topic.
            early = self._predict_late(view, events)
            if early:
                self._side_output(view, topic, early, by_pos)
            res = self.online.apply_events(view.name, events, progress=progress)
            self.stats.add(self.stats.applied, view.name, res.applied)
            sent = {e.order for e in early}
            missed = [e for e in res.too_late if e.order not in sent]
            if missed:  # the service judged more late than predicted: still never dropped
                self._side_output(view, topic, missed, by_pos, res.horizon)
        else:
            from loopstack.features.online.base import WriteBatch
            self.project.online_store.write(WriteBatch(progress=progress))
        self._marks.update(new_marks)

    def _predict_late(self, view: FeatureView, events: list) -> list:
        """The events `apply_events` will report too late: ts before the view's retention horizon as it
        stood before this batch (newest applied event ts minus allowed lateness minus the longest window)."""
        from loopstack.features.online.state import meta_key
        plan = self.online.plan(view.name)
        if not plan.sigs:
            return []
        mk = meta_key(view.name)
        meta = self.project.online_store.read([mk]).get(mk, {})
        if "max_ts" not in meta:
            return []  # nothing applied yet: no event can be late
        horizon = plan.horizon(int(meta["max_ts"]))
        self._horizon = horizon
        return [e for e in events if e.ts < horizon]

    def _side_output(self, view: FeatureView, topic: str, late: list, by_pos: dict,
                     horizon: int | None = None) -> None:
        horizon = self._horizon if horizon is None else horizon
        rows = []
        for ev in late:
            rec = by_pos.get(tuple(ev.order[1:3]))
            reason = (f"too late: event time {us_to_iso(ev.ts)} is before the retention horizon "
                      f"{us_to_iso(horizon)} of view {view.name!r} (newest event - allowed_lateness "
                      f"{view.allowed_lateness or '0s'} - longest window); its windows are no longer served "
                      "online (plain fields still took it if it was newer)")
            rows.append({"view": view.name, "reason": reason, "topic": topic, "partition": ev.order[1],
                         "offset": ev.order[2], "event_ts": us_to_iso(ev.ts), "horizon": us_to_iso(horizon),
                         "record": rec.value if rec is not None else dict(ev.values)})
        self.project.log.append(topic + LATE_SUFFIX, rows)
        self.stats.add(self.stats.late, view.name, len(rows))

    def stop(self) -> None:
        """Ask `run` (possibly in another thread) to return after the current step."""
        self._stop = True

    def run(self, stop_after: float | None = None, idle_timeout: float | None = None, max_records: int = 2_500,
            on_step: Callable[[int, StreamStats], None] | None = None) -> StreamStats:
        """Step until stopped: after `stop_after` seconds, after `idle_timeout` seconds without records,
        on `stop()` or on KeyboardInterrupt. Sleeps `poll_interval` (50 ms) when idle, so events show up online
        well within a second. A step takes what has arrived, up to `max_records`: small batches when
        keeping up, larger ones (fewer commits and fsyncs per event) when behind. The cap of 2,500 bounds
        how long one batch holds back the events behind it: at 5,000 events/s it took p99 visibility from
        1.2 s (cap 10,000) to 0.56 s on SQLite (docs/benchmarks.md, B3 streaming)."""
        for name, secs in (("stop_after", stop_after), ("idle_timeout", idle_timeout)):
            if secs is not None and not secs >= 0:   # NaN never compares true: it would run forever
                raise DefinitionError(f"{name} must be a number of seconds >= 0, got {secs}; leave it out to run "
                                      "until stopped")
        started = last_data = time.monotonic()
        try:
            while not self._stop:
                n = self.step(max_records)
                now = time.monotonic()
                if on_step is not None:
                    on_step(n, self.stats)
                if n:
                    last_data = now
                if stop_after is not None and now - started >= stop_after:
                    break
                if idle_timeout is not None and now - last_data >= idle_timeout:
                    break
                if not n:
                    time.sleep(self.poll_interval)
        except KeyboardInterrupt:
            pass
        return self.stats


def _columns(view: FeatureView) -> list[str]:
    from loopstack.features.materialize import _value_columns
    return _value_columns(view)


def _late_config(topic: str):
    from loopstack.log.base import TopicConfig
    return TopicConfig(topic + LATE_SUFFIX, 1)
