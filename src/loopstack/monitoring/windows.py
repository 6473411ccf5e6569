"""`Monitor`: reads the ``predictions`` and ``labels`` topics incrementally into per-window state.

    monitor = Monitor(project)             # config from loopstack.yaml's monitoring section
    monitor.run()                          # consume what is new (resumes at its own offsets)
    monitor.summaries("spam", every="1d")  # four-layer numbers per window (hours rolled up to days)
    monitor.check("spam")                  # evaluate the alert rules: new alerts (stored, webhook)

Per (model, version, window start) it keeps a mergeable `WindowState`. Feature samples are profiled
on the layout of the version's reference profile from the registry; nothing re-reads training
data. Labels (topic ``labels``: ``{request_id, label, ts}``) join their prediction by
``monitoring.label_key``; a label read before its prediction waits in a table until it arrives.
Window states and the monitor's offsets are written in one transaction, so a crash never counts a
record twice or drops one.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Iterable

import sqlalchemy as sa

from loopstack.monitoring import schema as S
from loopstack.monitoring.alerts import Alert, list_alerts, send_webhook, store_new
from loopstack.monitoring.labels import LABEL_SCHEMA, LABELS, append_labels, label_value, labels_topic  # noqa: F401
from loopstack.monitoring.drift import Thresholds
from loopstack.monitoring.profiles import Profile
from loopstack.monitoring.rules import evaluate
from loopstack.monitoring.summary import WindowSummary, summarize
from loopstack.monitoring.window_state import WindowState, parse_score, segment_keys
from loopstack.timeutil import now_micros, parse_duration, to_micros, to_us

log = logging.getLogger("loopstack.monitoring")
PREDICTIONS = "predictions"
CHUNK = 5000


@dataclass
class RunResult:
    """What one `Monitor.run` consumed."""

    predictions: int = 0
    labels: int = 0
    joined: int = 0
    pending_labels: int = 0
    windows: set = field(default_factory=set)

    def __str__(self) -> str:
        return (f"{self.predictions} predictions and {self.labels} labels read, {self.joined} labels joined, "
                f"{self.pending_labels} waiting for their prediction, {len(self.windows)} windows updated")


class Monitor:
    """The monitoring edge of a project (see module doc). ``consumer`` names its offsets."""

    def __init__(self, project: Any, config: Any = None, *, consumer: str = "monitor") -> None:
        self.project, self.consumer = project, consumer
        self.config = config if config is not None else project.config.monitoring
        self.width_s = int(parse_duration(self.config.window).total_seconds())
        self.label_delay_us = to_micros(parse_duration(self.config.label_delay))
        self.engine = project.meta.engine
        self._refs: dict[tuple[str, int], Profile | None] = {}

    # -- consuming ----------------------------------------------------------------------------
    def run(self, now: Any = None, progress: bool = False) -> RunResult:
        """Consume every new prediction and label record; returns what was read."""
        log_ = self.project.log
        topics = {t.name for t in log_.topics()}
        result = RunResult()
        if LABELS not in topics:
            log_.create_topic(labels_topic())
        bar = _progress(progress)
        todo = [t for t in (PREDICTIONS, LABELS) if t in topics or t == LABELS]
        total = sum(sum(log_.end_offsets(t).values()) - sum(self._offsets(t, log_).values()) for t in todo)
        task = bar.add_task("monitor: reading predictions and labels", total=max(total, 0)) if bar else None
        try:
            for topic in todo:
                for part, recs in self._read_new(topic):
                    if topic == PREDICTIONS:
                        self._ingest_predictions(recs, part, result)
                    else:
                        self._ingest_labels(recs, part, result)
                    if bar:
                        bar.advance(task, len(recs))
            self._retry_pending(result)
            self.prune(now)
        finally:
            if bar:
                bar.stop()
        with self.engine.connect() as conn:
            result.pending_labels = conn.execute(sa.select(sa.func.count()).select_from(S.labels)).scalar() or 0
        return result

    def _offsets(self, topic: str, log_: Any = None) -> dict[int, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(S.offsets.c.partition, S.offsets.c.next_offset).where(
                S.offsets.c.consumer == self.consumer, S.offsets.c.topic == topic)).all()
        got = {r.partition: r.next_offset for r in rows}
        starts = (log_ or self.project.log).start_offsets(topic)
        return {p: max(got.get(p, s), s) for p, s in starts.items()}

    def _read_new(self, topic: str) -> Iterable[tuple[int, list]]:
        log_ = self.project.log
        ends = log_.end_offsets(topic)
        for p, off in sorted(self._offsets(topic).items()):
            while off < ends.get(p, 0):
                recs = log_.read(topic, p, off, CHUNK)
                if not recs:
                    break
                off = recs[-1].offset + 1
                yield p, recs

    def _save_offset(self, conn: Any, topic: str, part: int, next_offset: int, consumer: str | None = None) -> None:
        o, consumer = S.offsets, consumer or self.consumer
        key = (o.c.consumer == consumer) & (o.c.topic == topic) & (o.c.partition == part)
        if conn.execute(sa.update(o).where(key).values(next_offset=next_offset)).rowcount == 0:
            conn.execute(o.insert().values(consumer=consumer, topic=topic, partition=part, next_offset=next_offset))

    def reference(self, model: str, version: int) -> Profile | None:
        """The version's reference profile from the registry (None if it has none)."""
        k = (model, version)
        if k not in self._refs:
            try:
                self._refs[k] = Profile.from_dict(self.project.models.profile(f"models:/{model}/{version}"))
            except Exception as exc:  # noqa: BLE001 - unknown model/version or no profile: monitor without it
                log.info("no reference profile for %s v%s (%s): data/score drift skipped", model, version, exc)
                self._refs[k] = None
        return self._refs[k]

    def _start(self, ts_us: int) -> int:
        w = self.width_s * 1_000_000
        return ts_us - ts_us % w

    def _ingest_predictions(self, recs: list, part: int, result: RunResult) -> None:
        groups: dict[tuple, list] = defaultdict(list)
        for r in recs:
            v = r.value
            if v.get("kind", "prediction") not in ("prediction", "shadow") or not v.get("model"):
                continue
            ts = _ts(v.get("ts"), r.timestamp)
            groups[(str(v["model"]), int(v.get("version") or 0), self._start(ts))].append((v, ts))
        key_field = self.config.label_key
        with self.engine.begin() as conn:
            for (model, version, start), items in sorted(groups.items()):   # one lock order: no deadlock
                ref = self.reference(model, version)
                cats = [c for c, s in ref.features.items() if s.kind == "categorical"] if ref else []
                values = [v for v, _ in items]
                scores = [parse_score(v.get("output")) for v in values]
                state = self._load(conn, model, version, start)
                state.add_predictions(values, scores, [segment_keys(v, cats) for v in values])
                self._store(conn, model, version, start, state)
                rows, seen = [], set()
                for (v, ts), s in zip(items, scores):
                    k = v.get(key_field)
                    if s is None or k is None or str(k) in seen:
                        continue
                    seen.add(str(k))
                    rows.append(dict(model=model, version=version, key=str(k), start_us=start, width_s=self.width_s,
                                     ts=ts, score=s, segments="[]", labelled=False))
                if rows:
                    P = S.predictions
                    have = set(conn.execute(sa.select(P.c.key).where(P.c.model == model, P.c.version == version,
                                                                     P.c.key.in_([x["key"] for x in rows]))).scalars())
                    rows = [x for x in rows if x["key"] not in have]
                    if rows:
                        conn.execute(P.insert(), rows)
                result.windows.add((model, version, start))
            result.predictions += len(recs)
            self._save_offset(conn, PREDICTIONS, part, recs[-1].offset + 1)

    def _ingest_labels(self, recs: list, part: int, result: RunResult) -> None:
        key_field = self.config.label_key
        labels: dict[str, tuple[int, int]] = {}
        for r in recs:
            k, y = r.value.get(key_field), label_value(r.value.get("label"))
            if k is None or y is None:     # -1 or 2 is not read as a positive
                log.warning("label record at %s:%s lacks %r or a 'label' of 0/1 (has %r); skipped", r.partition,
                            r.offset, key_field, r.value.get("label"))
                continue
            labels[str(k)] = (y, _ts(r.value.get("ts"), r.timestamp))
        with self.engine.begin() as conn:
            missing = self._join(conn, labels, result)
            for k in missing:
                y, ts = labels[k]
                L = S.labels
                if conn.execute(sa.update(L).where(L.c.key == k).values(label=y, ts=ts)).rowcount == 0:
                    conn.execute(L.insert().values(key=k, label=y, ts=ts))
            result.labels += len(recs)
            self._save_offset(conn, LABELS, part, recs[-1].offset + 1)

    def _join(self, conn: Any, labels: dict[str, tuple[int, int]], result: RunResult) -> set[str]:
        """Add labels to their predictions' windows; returns the keys with no prediction yet."""
        P = S.predictions
        found: set[str] = set()
        by_window: dict[tuple, list] = defaultdict(list)
        keys = list(labels)
        for i in range(0, len(keys), 900):
            q = sa.select(P).where(P.c.key.in_(keys[i:i + 900]), P.c.labelled.is_(False))
            for row in conn.execute(q):
                found.add(row.key)
                by_window[(row.model, row.version, row.start_us, row.width_s)].append((row.key, row.score))
        for (model, version, start, width), items in sorted(by_window.items()):
            state = self._load(conn, model, version, start, width)
            state.add_labels([s for _, s in items], [labels[k][0] for k, _ in items], self.config.threshold)
            self._store(conn, model, version, start, state, width)
            conn.execute(sa.update(P).where(P.c.model == model, P.c.version == version,
                                            P.c.key.in_([k for k, _ in items])).values(labelled=True))
            result.joined += len(items)
            result.windows.add((model, version, start))
        return set(labels) - found

    def _retry_pending(self, result: RunResult) -> None:
        with self.engine.begin() as conn:
            pending = {r.key: (r.label, r.ts) for r in conn.execute(sa.select(S.labels))}
            if not pending:
                return
            missing = self._join(conn, pending, result)
            done = [k for k in pending if k not in missing]
            for i in range(0, len(done), 900):
                conn.execute(sa.delete(S.labels).where(S.labels.c.key.in_(done[i:i + 900])))

    def scrape(self, url: str | None = None, *, text: str | None = None, now: Any = None) -> int:
        """Add one sample of the server's ``/metrics`` (queue depth, batches run since the last scrape)
        to the current window of each (model, version) it serves; returns how many it updated. A failing
        scrape is logged and skipped (0). See `monitoring.server_metrics`."""
        from loopstack.monitoring.server_metrics import record_scrape
        return record_scrape(self, url, text=text, now=now)

    def prune(self, now: Any = None) -> int:
        """Forget join rows (and waiting labels) older than ``join_retention`` past their window: a label
        arriving later cannot be joined any more (counted in the log). Window states are kept."""
        now_us = now_micros() if now is None else to_us(now)
        cutoff = now_us - to_micros(parse_duration(self.config.join_retention)) - self.width_s * 1_000_000
        with self.engine.begin() as conn:
            n = conn.execute(sa.delete(S.predictions).where(S.predictions.c.ts < cutoff)).rowcount
            late = conn.execute(sa.delete(S.labels).where(S.labels.c.ts < cutoff)).rowcount
        if late:
            log.warning("%d label(s) older than join_retention %s never found their prediction; dropped from the "
                        "join queue", late, self.config.join_retention)
        return n

    # -- window state ---------------------------------------------------------------------------
    def _load(self, conn: Any, model: str, version: int, start: int, width: int | None = None) -> WindowState:
        W = S.windows
        # FOR UPDATE (PostgreSQL): a concurrent writer of this window (run, scrape) waits for our commit
        text = conn.execute(sa.select(W.c.state).where(W.c.model == model, W.c.version == version,
                                                       W.c.start_us == start,
                                                       W.c.width_s == (width or self.width_s))
                            .with_for_update()).scalar()
        return WindowState.from_dict(json.loads(text)) if text else WindowState(self.reference(model, version))

    def _store(self, conn: Any, model: str, version: int, start: int, state: WindowState,
               width: int | None = None) -> None:
        W = S.windows
        key = ((W.c.model == model) & (W.c.version == version) & (W.c.start_us == start)
               & (W.c.width_s == (width or self.width_s)))
        text, now = json.dumps(state.to_dict(), allow_nan=False), datetime.now(timezone.utc)
        if conn.execute(sa.update(W).where(key).values(state=text, updated_at=now)).rowcount == 0:
            conn.execute(W.insert().values(model=model, version=version, start_us=start,
                                           width_s=width or self.width_s, state=text, updated_at=now))

    def windows(self, model: str, version: int | None = None, since: Any = None) -> list[tuple[int, int]]:
        """(version, window start µs) of the stored base windows of a model (starting at or after
        `since`, µs or datetime), oldest first."""
        W = S.windows
        q = sa.select(W.c.version, W.c.start_us).where(W.c.model == model, W.c.width_s == self.width_s)
        if version is not None:
            q = q.where(W.c.version == version)
        if since is not None:
            q = q.where(W.c.start_us >= to_us(since))
        with self.engine.connect() as conn:
            return [(r.version, r.start_us) for r in conn.execute(q.order_by(W.c.start_us, W.c.version))]

    def models(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(S.windows.c.model).distinct().order_by(S.windows.c.model)).scalars())

    def _every_s(self, every: Any) -> int:
        """Width in seconds of a roll-up (`every`, default the base window): a positive multiple of it."""
        if every is None:
            return self.width_s
        seconds = parse_duration(every).total_seconds()
        if seconds <= 0 or seconds != int(seconds) or int(seconds) % self.width_s:
            from loopstack.monitoring.columns import MonitoringError
            raise MonitoringError(f"every={every!r} is not a multiple of the base window {self.config.window}; "
                                  "choose a positive multiple (e.g. 1h windows roll up to 1d)")
        return int(seconds)

    def window_state(self, model: str, version: int, start: Any, every: Any = None) -> WindowState | None:
        """The state of the window starting at `start` (µs or datetime) of width `every` (default: the
        base window; wider ones are merged from base windows)."""
        width = self._every_s(every)
        s0 = to_us(start)
        W = S.windows
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(W.c.state).where(
                W.c.model == model, W.c.version == version, W.c.width_s == self.width_s,
                W.c.start_us >= s0, W.c.start_us < s0 + width * 1_000_000).order_by(W.c.start_us)).scalars().all()
        states = [WindowState.from_dict(json.loads(t)) for t in rows]
        return WindowState.merge_all(states) if states else None

    def window_summary(self, model: str, version: int, window: Any, *, every: Any = None,
                       now: Any = None) -> WindowSummary | None:
        """The four-layer summary of one window (None if nothing was seen in it)."""
        width = self._every_s(every)
        state = self.window_state(model, version, window, every)
        if state is None:
            return None
        return summarize(model, version, to_us(window), width, state, self.reference(model, version),
                         now_us=now_micros() if now is None else to_us(now), label_delay_us=self.label_delay_us,
                         threshold=self.config.threshold, min_samples=self.config.min_samples,
                         thresholds=Thresholds())

    def summaries(self, model: str, version: int | None = None, *, every: Any = None, now: Any = None,
                  since: Any = None) -> list[WindowSummary]:
        """Summaries of the windows of a model (optionally one version, from `since`), oldest first."""
        width = self._every_s(every)
        starts = sorted({(v, s - s % (width * 1_000_000)) for v, s in self.windows(model, version, since)},
                        key=lambda x: (x[1], x[0]))
        out = [self.window_summary(model, v, s, every=every, now=now) for v, s in starts]
        return [s for s in out if s is not None]

    def latest_summary(self, model: str, version: int | None = None, *, complete: bool = False,
                       now: Any = None) -> WindowSummary | None:
        """The newest window of a model/version (with ``complete=True``: the newest whose labels are final)."""
        for start_v in reversed(self.windows(model, version)):
            s = self.window_summary(model, start_v[0], start_v[1], now=now)
            if s is not None and (s.complete or not complete):
                return s
        return None

    # -- alerts ---------------------------------------------------------------------------------
    def check(self, model: str, *, now: Any = None, notify: bool = True, since: Any = None) -> list[Alert]:
        """Evaluate the alert rules on the windows of `model` (default: those that started within
        ``label_delay`` + 1 day of now, the ones that can still change); store and return the *new*
        alerts (a rule fires once per window and feature), and POST them to the webhook if configured."""
        rules = self.config.effective_rules()
        now_us = now_micros() if now is None else to_us(now)
        if since is None:
            since = now_us - self.label_delay_us - 86_400_000_000 - self.width_s * 1_000_000
        new: list[Alert] = []
        for s in self.summaries(model, now=now_us, since=since):
            firings = evaluate(rules, s.metrics, s.features)
            new += store_new(self.engine, model, s.version, s.start_us, s.width_s, firings)
        if new and notify and self.config.webhook_url:
            outcome = send_webhook(self.engine, self.config.webhook_url, new)
            new = [replace(a, delivery=outcome) for a in new]
        return new

    def alerts(self, model: str | None = None, limit: int = 100) -> list[Alert]:
        """Stored alerts, newest first."""
        return list_alerts(self.engine, model, limit)

    def lag(self) -> dict[str, int]:
        """Records not yet consumed, per topic."""
        log_ = self.project.log
        names = {t.name for t in log_.topics()}
        return {t: sum(log_.end_offsets(t).values()) - sum(self._offsets(t).values())
                for t in (PREDICTIONS, LABELS) if t in names}


def _ts(value: Any, fallback: int) -> int:
    """A record's event time in µs (int µs or the log's ISO text); the append time if it has none."""
    if value is None or value == "":
        return int(fallback)
    try:
        return to_us(value)
    except Exception:  # noqa: BLE001 - unparseable: fall back to the append time, logged
        log.warning("record time %r is not understood; using its append time", value)
        return int(fallback)


def _progress(enabled: bool) -> Any:
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bar.start()
    return bar
