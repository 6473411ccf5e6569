"""Prometheus metrics of the model server (prometheus_client, one registry per app).

Per-request counters and histograms are updated on the response path; batcher, breaker, runtime,
cache and prediction-log numbers are read from their ``stats()`` at scrape time by a collector, so
they cost nothing per request.
"""
from __future__ import annotations

from typing import Any, Callable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, disable_created_metrics,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

disable_created_metrics()   # no *_created series: they double the exposition and nobody alerts on them
P = "loopstack_serving_"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BREAKER_STATES = ("closed", "half_open", "open")


class ServingMetrics:
    """The counters the app updates, plus a collector for state owned by other objects."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(f"{P}requests", "Predictions answered, by model, version, variant, rung and status.",
                                ["model", "version", "variant", "rung", "status"], registry=r)
        self.latency = Histogram(f"{P}request_duration_seconds", "Time from request to answer, per model and "
                                 "variant (one observation per call: a batch request counts once).",
                                 ["model", "variant"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter(f"{P}errors", "Requests answered with an error, by model and error code.",
                              ["model", "error"], registry=r)
        self.rungs = Counter(f"{P}rung_used", "Answers per ladder rung (model, fallback, baseline).",
                             ["model", "rung"], registry=r)
        self.rung_failures = Counter(f"{P}rung_failures", "Rung attempts that failed and fell to the next rung.",
                                     ["model", "version", "rung", "reason"], registry=r)
        self.cache = Counter(f"{P}cache_lookups", "Result cache lookups by model and result (hit/miss).",
                             ["model", "result"], registry=r)
        self.shadow = Counter(f"{P}shadow_requests", "Shadow copies by outcome (ok, disagree, error, dropped).",
                              ["model", "version", "outcome"], registry=r)
        self.refused = Counter(f"{P}refused_loads", "Model versions refused at load (bad artifact, sha256).",
                               ["model", "version"], registry=r)
        self.swaps = Counter(f"{P}policy_changes", "Traffic policy / loaded version changes applied.", ["model"],
                             registry=r)
        self.http = Counter(f"{P}http_requests", "HTTP requests by route and status.", ["path", "status"], registry=r)
        self.source: Callable[[], dict] | None = None
        self._children: dict[tuple, Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, cached: the response path skips prometheus_client's lock and lookup.
        (Label sets are few: models x versions x variants x rungs x statuses.)"""
        key = (id(metric), labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def attach(self, source: Callable[[], dict]) -> None:
        """`source()` returns {"versions": [...], "cache": {...}, "prediction_log": {...}} at scrape time."""
        self.source = source
        self.registry.register(_StateCollector(self))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector:
    def __init__(self, metrics: ServingMetrics) -> None:
        self.m = metrics

    def describe(self) -> list:
        return []

    def collect(self) -> Any:
        if self.m.source is None:
            return
        state = self.m.source()
        lv = ["model", "version"]
        fired = CounterMetricFamily(f"{P}batches_fired", "Batches fired, by why they fired (full, waited_out, "
                                    "preferred).", labels=[*lv, "reason"])
        sizes = HistogramMetricFamily(f"{P}batch_size", "Requests per batch run on the model.", labels=lv)
        model_s = CounterMetricFamily(f"{P}model_seconds", "Seconds spent running batches on the model (divide "
                                      "by the batch_size count for the mean per batch).", labels=lv)
        depth = GaugeMetricFamily(f"{P}queue_depth", "Requests waiting in the model's batch queue.", labels=lv)
        rejected = CounterMetricFamily(f"{P}queue_rejected", "Requests refused with 429 (queue full).", labels=lv)
        expired = CounterMetricFamily(f"{P}deadline_expired", "Requests whose deadline passed in the queue.",
                                      labels=lv)
        breaker = GaugeMetricFamily(f"{P}breaker_state", "Circuit breaker state (1 for the current state).",
                                    labels=[*lv, "state"])
        opened = CounterMetricFamily(f"{P}breaker_opened", "Times the breaker opened.", labels=lv)
        restarts = CounterMetricFamily(f"{P}worker_restarts", "Model worker restarts (process runtime).", labels=lv)
        alive = GaugeMetricFamily(f"{P}worker_alive", "1 when the model runtime can run batches.", labels=lv)
        loaded = GaugeMetricFamily(f"{P}loaded_version", "Versions loaded, with their role in the policy.",
                                   labels=[*lv, "role"])
        for v in state.get("versions", []):
            labels = [v["model"], str(v["version"])]
            b = v["batcher"]
            for reason, n in b["fired"].items():
                fired.add_metric([*labels, reason], n)
            buckets, total, acc = [], 0.0, 0
            for edge in BATCH_BUCKETS:
                acc = sum(n for s, n in b["batch_sizes"].items() if s <= edge)
                buckets.append((str(edge), acc))
            count = sum(b["batch_sizes"].values())
            total = float(sum(s * n for s, n in b["batch_sizes"].items()))
            buckets.append(("+Inf", count))
            sizes.add_metric(labels, buckets, total)
            model_s.add_metric(labels, b.get("model_seconds", 0.0))
            depth.add_metric(labels, b["queue_depth"])
            rejected.add_metric(labels, b.get("rejected", 0))
            expired.add_metric(labels, b.get("expired", 0))
            for s in BREAKER_STATES:
                breaker.add_metric([*labels, s], 1.0 if v["breaker"]["state"] == s else 0.0)
            opened.add_metric(labels, v["breaker"].get("opened_count", 0))
            restarts.add_metric(labels, v["runtime"]["restarts"])
            alive.add_metric(labels, 1.0 if v["runtime"]["alive"] else 0.0)
            loaded.add_metric([*labels, ",".join(v["roles"]) or "none"], 1.0)
        yield from (fired, sizes, model_s, depth, rejected, expired, breaker, opened, restarts, alive, loaded)
        cache = state.get("cache") or {}
        if cache:
            yield _gauge(f"{P}cache_hit_rate", "Result cache hits / lookups since start.", cache["hit_rate"])
            yield _gauge(f"{P}cache_entries", "Entries in the result cache.", cache["size"])
        plog = state.get("prediction_log") or {}
        if plog:
            yield _gauge(f"{P}prediction_log_queue_depth", "Prediction records waiting for the writer.",
                         plog["queue_depth"])
            for key in ("written", "blocked", "dropped", "spilled", "append_errors"):
                c = CounterMetricFamily(f"{P}prediction_log_{key}", f"Prediction log records {key}.")
                c.add_metric([], plog[key])
                yield c


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g
