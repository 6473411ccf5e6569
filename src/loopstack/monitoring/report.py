"""`loopstack monitor report`: one self-contained HTML file (inline SVG, no JavaScript, no CDN) with
reference vs current distributions per feature, PSI over time, score histograms, the calibration
curve and metric time series; plus a short terminal summary (rich)."""
from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from loopstack.monitoring.summary import WindowSummary, curve
from loopstack.monitoring.summaries import CategoricalSummary, NumericSummary
from loopstack.monitoring.window_state import SCORE_HIST_BINS, WindowState
from loopstack.pages import write_page
from loopstack.training.report_html import COLORS, svg_chart

W, H, PL, PR, PT, PB = 560, 240, 56, 12, 12, 48


def _esc(x: Any) -> str:
    return html.escape(str(x))


def bars(plot: str, labels: list[str], series: dict[str, list[float]]) -> str:
    """Grouped bars (one group per label, one bar per series) of shares, as inline SVG."""
    vals = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    top = max(vals, default=1.0) or 1.0
    pw, ph = W - PL - PR, H - PT - PB
    gw = pw / max(len(labels), 1)
    bw = gw * 0.8 / max(len(series), 1)
    out = [f'<svg data-plot="{_esc(plot)}" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}"><rect x="{PL}" y="{PT}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    for i in range(5):
        y = PT + ph * (1 - i / 4)
        out.append(f'<text x="{PL - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{top * i / 4:.3g}</text>')
    for j, (name, s) in enumerate(series.items()):
        color = COLORS[j % len(COLORS)]
        for i, v in enumerate(s):
            if v is None or not math.isfinite(v):
                continue
            h = ph * v / top
            x = PL + i * gw + gw * 0.1 + j * bw
            out.append(f'<rect x="{x:.1f}" y="{PT + ph - h:.1f}" width="{bw:.1f}" height="{h:.1f}" fill="{color}">'
                       f'<title>{_esc(name)} {_esc(labels[i])}: {v:.4f}</title></rect>')
    step = max(1, len(labels) // 12)
    for i in range(0, len(labels), step):
        x = PL + i * gw + gw / 2
        out.append(f'<text x="{x:.1f}" y="{H - PB + 14}" font-size="9" text-anchor="middle">{_esc(labels[i])}</text>')
    legend = " ".join(f'<tspan fill="{COLORS[j % len(COLORS)]}">&#9632; {_esc(n)}</tspan>' for j, n in
                      enumerate(series))
    out.append(f'<text x="{PL}" y="{H - 8}" font-size="11">{legend}</text></svg>')
    return "".join(out)


def _shares(counts: np.ndarray) -> list[float]:
    t = float(np.sum(counts))
    return [float(c) / t if t else 0.0 for c in counts]


def distribution(feature: str, ref: Any, cur: Any) -> str:
    """Reference vs current shares over the reference's bins (with under/overflow) or categories."""
    if isinstance(ref, NumericSummary) and isinstance(cur, NumericSummary):
        e = ref.edges
        labels = [f"<{e[0]:.3g}"] + [f"{e[i]:.3g}" for i in range(len(e) - 1)] + [f">{e[-1]:.3g}"]
        r, c = ref.counts, cur.counts
    elif isinstance(ref, CategoricalSummary) and isinstance(cur, CategoricalSummary):
        labels = [str(x) for x in ref.categories] + ["other/unseen"]
        pos = {k: i for i, k in enumerate(cur.categories)}
        cc = [cur.counts[pos[k]] if k in pos else 0 for k in ref.categories]
        r = np.append(ref.counts, ref.other_count)
        c = np.append(cc, cur.n - sum(cc))
    else:
        return ""
    return bars(f"distribution-{feature}", labels, {"reference": _shares(r), "current": _shares(c)})


def _chart(plot: str, metric: str, series: dict, x_label: str) -> str:
    """A line chart (training.report_html.svg_chart) tagged with `plot` and our x-axis label."""
    svg = svg_chart(metric, series, {k: k for k in series})
    svg = svg.replace("<svg ", f'<svg data-plot="{_esc(plot)}" ', 1)
    return svg.replace(">step</text>", f">{_esc(x_label)}</text>")


def _hours(s: WindowSummary, t0: int) -> float:
    return (s.start_us - t0) / 3.6e9


def write_report(monitor: Any, model: str, path: str | Path, *, version: int | None = None, every: Any = None,
                 now: Any = None) -> Path:
    """Write the HTML report of `model` (all versions, or one) to `path`; returns the path."""
    sums = monitor.summaries(model, version, every=every, now=now)
    path = Path(path)
    page = render(model, sums, monitor)
    from loopstack.monitoring.columns import MonitoringError
    return write_page(path, page, "the report", "pass -o/--out a file path in an existing, writable folder",
                      MonitoringError)


def render(model: str, sums: list[WindowSummary], monitor: Any) -> str:
    parts: list[str] = []
    if not sums:
        body = "<p>no windows yet: run <code>loopstack monitor run</code> after predictions were logged</p>"
        return _page(model, body)
    t0 = min(s.start_us for s in sums)
    start = datetime.fromtimestamp(t0 / 1e6, timezone.utc)
    versions = sorted({s.version for s in sums})
    latest = {v: [s for s in sums if s.version == v][-1] for v in versions}
    # table of windows
    rows = []
    for s in sums:
        m = s.metrics
        drifted = ", ".join(f for f, d in s.features.items() if d.get("drifted")) or "-"
        rows.append("<tr>" + "".join(f"<td>{_esc(x)}</td>" for x in (
            datetime.fromtimestamp(s.start_us / 1e6, timezone.utc).strftime("%m-%d %H:%M"), f"v{s.version}",
            m["requests"], _f(m["error_rate"]), _f(m["p99_latency_ms"]), drifted, _f(m.get("score_psi")),
            _f(m.get("mean_score")), _f(m["precision"]), _f(m["recall"]), s.status)) + "</tr>")
    parts.append("<h2>Windows</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in (
        "window (UTC)", "version", "requests", "error rate", "p99 ms", "drifted features", "score PSI",
        "mean score", "precision", "recall", "labels")) + "</tr>" + "".join(rows) + "</table>")
    # metric time series (x: hours since the first window)
    parts.append(f"<h2>Metrics over time</h2><p>x axis: hours since {start:%Y-%m-%d %H:%M} UTC</p>")
    for metric in ("requests", "error_rate", "p99_latency_ms", "mean_score", "score_psi", "precision", "recall",
                   "flagged_rate"):
        series = {f"v{v}": [(_hours(s, t0), s.metrics.get(metric)) for s in sums if s.version == v
                            and s.metrics.get(metric) is not None] for v in versions}
        chart = _chart(f"metric-{metric}", metric, series, "hours since the first window")
        parts.append(f"<section><h3>{metric}</h3>{chart}</section>")
    # PSI over time per feature
    feats = sorted({f for s in sums for f in s.features})
    series = {f: [(_hours(s, t0), s.features[f].get("psi")) for s in sums
                  if f in s.features and s.features[f].get("psi") is not None] for f in feats}
    chart = _chart("psi-over-time", "psi", series, "hours since the first window")
    parts.append("<h2>Feature drift (PSI) over time</h2><p>bands: &lt; 0.1 stable, 0.1-0.2 watch, &gt; 0.2 act</p>"
                 + chart)
    for v in versions:
        s = latest[v]
        ref = monitor.reference(model, v)
        st: WindowState = s.state
        parts.append(f"<h2>v{v}, latest window {datetime.fromtimestamp(s.start_us / 1e6, timezone.utc):%m-%d %H:%M}"
                     f" UTC</h2>" + "".join(f"<p class=note>{_esc(n)}</p>" for n in s.notes))
        if ref is not None and st.features is not None:
            for f, summ in ref.features.items():
                band = s.features.get(f, {}).get("band", "no data")
                parts.append(f"<section><h3>{_esc(f)} (band: {_esc(band)})</h3>"
                             f"{distribution(f, summ, st.features.features[f])}</section>")
        labels = [f"{i / SCORE_HIST_BINS:.2f}" for i in range(SCORE_HIST_BINS)]
        series_h = {"current": _shares(st.score_hist)}
        if ref is not None and ref.scores is not None and st.scores is not None:
            parts.append("<section><h3>scores: reference vs current (reference bins)</h3>"
                         + distribution("score", ref.scores, st.scores) + "</section>")
        parts.append("<section><h3>score histogram</h3>" + bars("score-histogram", labels, series_h) + "</section>")
        cal = curve(st)
        if cal["count"]:
            pts = {"observed": list(zip(cal["mean_predicted"], cal["observed_rate"])),
                   "perfect": [(0.0, 0.0), (1.0, 1.0)]}
            chart = _chart("calibration", "observed rate", pts, "mean predicted score")
            parts.append("<section><h3>calibration (labelled so far; diagonal = perfect)</h3>" + chart
                         + "</section>")
    return _page(model, "".join(parts))


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _page(model: str, body: str) -> str:
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>loopstack monitoring: {_esc(model)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ddd;padding:3px 7px;font-size:12px}}section{{display:inline-block;margin:0.5em}}
.note{{color:#a60}}</style></head>
<body><h1>Monitoring report: {_esc(model)}</h1>{body}</body></html>
"""


def terminal_summary(console: Any, model: str, sums: list[WindowSummary], last: int = 12) -> None:
    """A rich table of the last windows."""
    from rich.table import Table
    t = Table(title=f"monitoring: {model}")
    for c in ("window (UTC)", "v", "requests", "err", "p99 ms", "drifted", "score PSI", "precision", "recall",
              "labels"):
        t.add_column(c)
    for s in sums[-last:]:
        m = s.metrics
        drifted = ", ".join(f for f, d in s.features.items() if d.get("drifted"))
        t.add_row(datetime.fromtimestamp(s.start_us / 1e6, timezone.utc).strftime("%m-%d %H:%M"), str(s.version),
                  str(m["requests"]), _f(m["error_rate"]), _f(m["p99_latency_ms"]),
                  f"[red]{drifted}[/]" if drifted else "-", _f(m.get("score_psi")), _f(m["precision"]),
                  _f(m["recall"]), s.status if s.complete else "[yellow]incomplete[/]")
    console.print(t)
