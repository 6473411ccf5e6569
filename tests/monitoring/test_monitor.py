"""Integration: synthetic predictions + late labels in a local event log, a registered model with a
reference profile, the monitor, alerts (with a webhook on 127.0.0.1), the HTML report and diagnose."""
from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pandas as pd
import pytest

from loopstack.config import MonitoringConfig
from loopstack.features.definitions import Entity, EventSource, FeatureView, Field, Sum
from loopstack.features.online.service import Event
from loopstack.log.base import TopicConfig
from loopstack.monitoring.gather import run_diagnosis
from loopstack.monitoring.windows import Monitor, append_labels
from loopstack.project import Project
from loopstack.serving.prediction_log import SCHEMA
from tests.meta.helpers import use_metadata
from tests.registry.helpers import ThresholdModel

SIG = {"inputs": [{"ref": "comment:spam_7d", "version": 1, "column": "spam_7d", "dtype": "float64"},
                  {"ref": "comment:url_count", "version": 1, "column": "url_count", "dtype": "float64"},
                  {"ref": "comment:country", "version": 1, "column": "country", "dtype": "string"}]}
# the "lagged" model reads a view the project materializes online (and lets fall 3 h behind)
SIG_ONLINE = {"inputs": [{**SIG["inputs"][0], "ref": "author_stats:spam"}, *SIG["inputs"][1:]]}
AUTHOR = Entity("author", "author_id")
COMMENTS = EventSource("comments", "ts", [Field("author_id", "int64"), Field("is_spam", "int64")])
AUTHOR_STATS = FeatureView("author_stats", entity=AUTHOR, source=COMMENTS, ttl="7d",
                           features=[Sum("is_spam", window="7d", name="spam")])
HOUR = 3_600_000_000


def _features(rng, n, *, shift_urls=0.0, null_spam=0.0):
    spam = rng.gamma(2.0, 1.0, n)
    if null_spam:
        spam = np.where(rng.random(n) < null_spam, np.nan, spam)
    return pd.DataFrame({"spam_7d": spam, "url_count": rng.normal(2.0 + shift_urls, 1.0, n),
                         "country": rng.choice(["US", "DE", "FR"], n)})


def _scores(rng, n, shift=0.0):
    return np.clip(rng.beta(2, 5, n) + shift, 0, 1)


def _register(project, name, rng):
    ref = _features(rng, 4000)
    sig = SIG_ONLINE if name == "lagged" else SIG
    return project.models.register(name, ThresholdModel(), signature=sig, profile=ref,
                                   holdout_scores=_scores(rng, 4000))


def _predictions(model, version, t0, rng, n, **kw):
    feats = _features(rng, n, **{k: v for k, v in kw.items() if k != "score_shift"})
    scores = _scores(rng, n, kw.get("score_shift", 0.0))
    out = []
    for i in range(n):
        f = feats.iloc[i].to_dict()
        f["spam_7d"] = None if pd.isna(f["spam_7d"]) else f["spam_7d"]
        out.append({"kind": "prediction", "request_id": f"{model}-{t0}-{i}", "ts": t0 + i * (HOUR // n),
                    "model": model, "version": version, "variant": "control", "rung": "model", "status": "ok",
                    "latency_ms": float(rng.gamma(2, 10)), "output": float(scores[i]), "user_id": f"u{i % 50}",
                    "features": f})
    return out


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory, module_meta_url):
    """Five registered models and their predictions; metadata on SQLite and on PostgreSQL."""
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root = tmp_path_factory.mktemp("mon")
    use_metadata(root, module_meta_url)
    project = Project.init(root, example=False)
    rng = np.random.default_rng(0)
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    t0 = int(now.timestamp() * 1e6) - 4 * HOUR
    versions = {m: _register(project, m, rng).version for m in ("spam", "moved", "lagged", "nulls", "scores")}
    recs = []
    # spam: hours 0-1 like the reference, hour 2 with shifted url_count
    recs += _predictions("spam", 1, t0, rng, 400) + _predictions("spam", 1, t0 + HOUR, rng, 400)
    recs += _predictions("spam", 1, t0 + 2 * HOUR, rng, 400, shift_urls=3.0)
    for m in ("moved", "lagged"):
        recs += _predictions(m, 1, t0, rng, 300)
    recs += _predictions("nulls", 1, t0, rng, 300, null_spam=0.3)
    recs += _predictions("scores", 1, t0, rng, 300, score_shift=0.3)
    project.log.create_topic(TopicConfig("predictions", 1, SCHEMA, key_field="model"))   # as the server does
    project.log.append("predictions", recs)
    project.models.set_alias("moved", "champion", versions["moved"], reason="manual switch")
    project.apply([AUTHOR, COMMENTS, AUTHOR_STATS])
    stale = int(now.timestamp() * 1e6) - 3 * HOUR                   # newest applied event: 3 h old
    project.online.apply_events("author_stats", [Event(1, stale, (0,), {"is_spam": 1})])
    cfg = MonitoringConfig(label_delay="24h", min_samples=100, webhook_url=f"http://127.0.0.1:{server.server_port}/",
                           rules=({"metric": "psi", "feature": "*", "op": ">", "value": 0.2, "severity": "act"},
                                  {"metric": "recall", "op": "<", "value": 0.99},
                                  {"metric": "p99_latency_ms", "op": ">", "value": 10_000}))
    monitor = Monitor(project, cfg)
    # labels: those of hour 0 first (late), then a label whose prediction comes later
    labels = [{"request_id": r["request_id"], "label": int(r["output"] > 0.35), "ts": r["ts"] + HOUR}
              for r in recs if r["model"] == "spam"]
    append_labels(project.log, labels[:400])
    yield {"project": project, "monitor": monitor, "t0": t0, "labels": labels, "server": server}
    server.shutdown()


def test_monitor_layers_labels_alerts_and_report(setup, tmp_path):
    project, monitor, t0 = setup["project"], setup["monitor"], setup["t0"]
    res = monitor.run()
    assert res.predictions == 2400 and res.labels == 400 and res.joined == 400
    assert monitor.run().predictions == 0                        # resumable: nothing read twice
    # late labels of hours 1-2 arrive afterwards
    append_labels(project.log, setup["labels"][400:])
    assert monitor.run().joined == 800
    later = t0 + 25 * HOUR + HOUR // 2                           # hour 0 final (ends t0+1h, +24h delay)
    s0, s1, s2 = monitor.summaries("spam", now=later)
    assert s0.status == "complete" and s0.metrics["recall"] is not None and s0.metrics["precision"] is not None
    assert s1.status == "incomplete" and s1.metrics["recall"] is None and s1.metrics["labelled"] == 400
    assert s0.metrics["requests"] == 400 and s0.metrics["p99_latency_ms"] > s0.metrics["p50_latency_ms"] > 0
    assert s0.metrics["ece"] is not None
    # drift flagged for the shifted feature only, and only in the shifted hour
    assert s2.features["url_count"]["psi"] > 0.2 and s2.features["url_count"]["drifted"]
    assert s2.features["spam_7d"]["psi"] < 0.1 and s2.features["country"]["psi"] < 0.1
    assert all(s0.features[c]["psi"] < 0.1 for c in ("url_count", "spam_7d", "country"))
    # server /metrics: two scrapes in hour 2 give queue depth and the batches run in between
    lbl = '{{model="spam",version="1"}}'
    m = (f'# TYPE loopstack_serving_batch_size histogram\nloopstack_serving_batch_size_count{lbl} {{c}}\n'
         f'loopstack_serving_batch_size_sum{lbl} {{s}}\n# TYPE loopstack_serving_queue_depth gauge\n'
         f'loopstack_serving_queue_depth{lbl} {{q}}\n')
    monitor.scrape(text=m.format(c=10, s=40, q=2), now=t0 + 2 * HOUR + 60_000_000)
    monitor.scrape(text=m.format(c=30, s=240, q=6), now=t0 + 2 * HOUR + 120_000_000)
    s2 = monitor.window_summary("spam", 1, t0 + 2 * HOUR, now=later)
    assert s2.metrics["queue_depth_max"] == 6 and s2.metrics["mean_batch_size"] == 10.0
    day = monitor.summaries("spam", every="1d", now=later)
    assert sum(d.metrics["requests"] for d in day) == 1200
    # alerts: PSI on url_count (hour 2), recall on hour 0 only (1-2 incomplete), none for latency
    new = monitor.check("spam", now=later)
    kinds = {(a.metric, a.feature, a.start_us) for a in new}
    assert ("psi", "url_count", t0 + 2 * HOUR) in kinds
    assert {a.start_us for a in new if a.metric == "recall"} <= {t0}
    assert not any(a.metric == "p99_latency_ms" for a in new)
    assert monitor.check("spam", now=later) == []              # stored once
    stored = monitor.alerts("spam")
    assert len(stored) == len(new) and all(a.delivery == "ok 200" for a in stored)
    assert _Hook.received and any(a["metric"] == "psi" for a in _Hook.received[-1]["alerts"])
    # report
    from loopstack.monitoring.report import write_report
    path = write_report(monitor, "spam", tmp_path / "report.html", now=later)
    page = path.read_text()
    for marker in ('data-plot="distribution-url_count"', 'data-plot="psi-over-time"', 'data-plot="score-histogram"',
                   'data-plot="calibration"', 'data-plot="metric-requests"'):
        assert marker in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")
    # a label read before its prediction waits, then joins; old join rows are pruned
    append_labels(project.log, [{"request_id": "early", "label": 1, "ts": t0 + 3 * HOUR}])
    assert monitor.run().pending_labels == 1
    project.log.append("predictions", [{**_predictions("spam", 1, t0 + 3 * HOUR, np.random.default_rng(5), 1)[0],
                                        "request_id": "early", "output": 0.95}])
    res = monitor.run()
    assert res.joined == 1 and res.pending_labels == 0
    assert monitor.window_state("spam", 1, t0 + 3 * HOUR).tp == 1
    assert monitor.prune(now=t0 + 30 * 24 * HOUR) > 0


def test_webhook_failure_is_logged_not_raised(setup):
    project = setup["project"]
    cfg = MonitoringConfig(webhook_url="http://127.0.0.1:9/none", rules=({"metric": "requests", "op": ">",
                                                                          "value": 0},))
    m = Monitor(project, cfg)            # same consumer: other rules and webhook, same windows
    m.run()
    new = m.check("lagged")
    assert new and all(a.delivery.startswith("failed") for a in new)


@pytest.mark.parametrize("model, step", [("moved", "deploy"), ("lagged", "feature_lag"),
                                         ("nulls", "data_quality"), ("scores", "score_shift"),
                                         ("spam", "data_quality")])   # url_count shifted past its range
def test_diagnose_stops_at_the_right_step(setup, model, step):
    monitor = setup["monitor"]
    monitor.run()
    facts, d = run_diagnosis(monitor, model)          # real registry audit and online-store freshness
    assert d.stopped_at == step, d.to_dict()
    assert ("author_stats" in facts.freshness) == (model == "lagged")   # only the views the model reads
    assert [s.name for s in d.steps][-1] == step and all(not s.found for s in d.steps[:-1])


def test_cli_commands(setup, tmp_path):
    from typer.testing import CliRunner

    from loopstack.cli import app
    root = str(setup["project"].root)
    runner = CliRunner()
    r = runner.invoke(app, ["monitor", "run", "-p", root])
    assert r.exit_code == 0, r.output
    for args in (["status", "spam"], ["alerts", "--json"], ["diagnose", "scores"],
                 ["report", "spam", "-o", str(tmp_path / "r.html")]):
        r = runner.invoke(app, ["monitor", *args, "-p", root])
        assert r.exit_code == 0, (args, r.output)
    assert (tmp_path / "r.html").exists()
    assert "score-distribution shift? yes" in runner.invoke(app, ["monitor", "diagnose", "scores", "-p", root]).output


def test_monitor_with_a_short_label_delay(meta_url, tmp_path):
    from loopstack.config import parse_config
    Project.init(tmp_path, example=False)
    cfg = parse_config({"metadata": {"backend": "postgresql" if meta_url.startswith("postgresql") else "sqlite",
                                     "url": meta_url},
                        "monitoring": {"label_delay": "1h", "rules": [{"metric": "recall", "op": "<",
                                                                        "value": 1.01}]}}, env={})
    project = Project(tmp_path, config=cfg)
    rng = np.random.default_rng(9)
    v = _register(project, "spam", rng).version
    t0 = 1_790_000_000_000_000 - 1_790_000_000_000_000 % HOUR
    recs = _predictions("spam", v, t0, rng, 200)
    project.log.create_topic(TopicConfig("predictions", 1, SCHEMA, key_field="model"))
    project.log.append("predictions", recs)
    append_labels(project.log, [{"request_id": r["request_id"], "label": 1, "ts": r["ts"]} for r in recs])
    monitor = Monitor(project)
    res = monitor.run(now=t0 + 3 * HOUR)
    assert (res.predictions, res.joined) == (200, 200)
    (s,) = monitor.summaries("spam", now=t0 + 3 * HOUR)
    assert s.complete and s.metrics["labelled"] == 200 and s.metrics["recall"] is not None
    assert [a.metric for a in monitor.check("spam", now=t0 + 3 * HOUR)] == ["recall"]
    project.meta.close()
