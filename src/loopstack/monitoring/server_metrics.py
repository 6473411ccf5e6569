"""System layer from the model server's Prometheus ``/metrics``: queue depth and batch sizes.

`parse_server_metrics(text)` (pure) reads, per (model, version), the gauge
``loopstack_serving_queue_depth`` and the histogram ``loopstack_serving_batch_size`` (its running
``_count`` and ``_sum``). `batch_delta` turns two scrapes of the running totals into the batches run
in between (a lower total means the server restarted: the new total is the delta).
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("loopstack.monitoring")

PREFIX = "loopstack_serving_"


def parse_server_metrics(text: str) -> dict[tuple[str, int], dict[str, float]]:
    """(model, version) -> {"queue_depth", "batch_count", "batch_sum"} from Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families
    out: dict[tuple[str, int], dict[str, float]] = {}
    names = {f"{PREFIX}queue_depth": "queue_depth", f"{PREFIX}batch_size_count": "batch_count",
             f"{PREFIX}batch_size_sum": "batch_sum"}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = names.get(s.name)
            if key is None or "model" not in s.labels or "version" not in s.labels:
                continue
            try:
                mv = (s.labels["model"], int(s.labels["version"]))
            except ValueError:
                continue
            out.setdefault(mv, {})[key] = float(s.value)
    return out


def batch_delta(previous: tuple[int, int] | None, current: tuple[int, int]) -> tuple[int, int]:
    """(batches, requests) run between two scrapes of the running (count, sum)."""
    if previous is None:
        return 0, 0                       # the first scrape only sets the baseline
    if current[0] < previous[0] or current[1] < previous[1]:
        return current                    # server restarted: counters began again at 0
    return current[0] - previous[0], current[1] - previous[1]


def record_scrape(monitor: Any, url: str | None, *, text: str | None = None, now: Any = None) -> int:
    """`Monitor.scrape`: fetch (unless `text` is given), parse, and add one sample per (model, version)
    to its current window; the running batch totals are kept with the monitor's offsets."""
    import sqlalchemy as sa

    from loopstack.monitoring import schema as S
    from loopstack.timeutil import now_micros, to_us
    if text is None:
        try:
            text = fetch(url or "")
        except Exception as exc:  # noqa: BLE001 - a monitor never dies of an unreachable server
            log.error("scraping %s failed (%s: %s); system metrics come from the log only", url,
                      type(exc).__name__, exc)
            return 0
    start = monitor._start(now_micros() if now is None else to_us(now))
    off, consumer = S.offsets, f"{monitor.consumer}:scrape:{url or 'text'}"[:200]
    parsed = parse_server_metrics(text)
    with monitor.engine.begin() as conn:
        for (model, version), vals in sorted(parsed.items()):   # windows locked in one order
            topic = f"batch:{model}:{version}"[:255]
            prev = {r.partition: r.next_offset for r in conn.execute(
                sa.select(off.c.partition, off.c.next_offset).where(off.c.consumer == consumer,
                                                                     off.c.topic == topic))}
            cur = (int(vals.get("batch_count", 0)), int(vals.get("batch_sum", 0)))
            runs, reqs = batch_delta((prev[0], prev[1]) if len(prev) == 2 else None, cur)
            state = monitor._load(conn, model, version, start)
            state.add_server_sample(vals.get("queue_depth"), runs, reqs)
            monitor._store(conn, model, version, start, state)
            for part, value in enumerate(cur):
                monitor._save_offset(conn, topic, part, value, consumer)
    return len(parsed)


def fetch(url: str, timeout: float = 5.0) -> str:
    """The text of ``<url>/metrics`` (or of `url` if it already ends in /metrics)."""
    import urllib.request
    target = url if url.rstrip("/").endswith("/metrics") else url.rstrip("/") + "/metrics"
    with urllib.request.urlopen(target, timeout=timeout) as resp:   # noqa: S310 - a configured server URL
        return resp.read().decode()


__all__ = ["parse_server_metrics", "batch_delta", "fetch", "record_scrape"]
