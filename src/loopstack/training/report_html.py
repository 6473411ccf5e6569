"""Run comparison: a params/metrics table and a self-contained HTML page with one SVG chart per metric.

The charts are inline SVG generated here (no JavaScript, no CDN): one polyline per run, one vertex
per logged point (long histories are thinned to at most `max_points` per line, said in the caption).
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopstack.pages import write_page

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 300, 64, 16, 16, 40


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def _thin(points: list[tuple[int, float]], max_points: int) -> list[tuple[int, float]]:
    if len(points) <= max_points:
        return points
    stride = len(points) / max_points
    return [points[int(i * stride)] for i in range(max_points - 1)] + [points[-1]]


def svg_chart(metric: str, series: dict[str, list[tuple[int, float]]], labels: dict[str, str],
              max_points: int = 2000) -> str:
    """One <svg> with a polyline per run: x = step, y = value; NaN points are left out."""
    clean = {r: [(s, v) for s, v in pts if v is not None and math.isfinite(v)] for r, pts in series.items()}
    allp = [p for pts in clean.values() for p in pts]
    if not allp:
        return f'<svg class="chart" data-metric="{html.escape(metric)}" width="{W}" height="40"><text x="8" y="24">' \
               f'no finite values</text></svg>'
    xs, ys = [p[0] for p in allp], [p[1] for p in allp]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) * 0.05 or 1), y1 + (abs(y1) * 0.05 or 1)
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def sx(x: float) -> float:
        return PAD_L + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return PAD_T + (1 - (y - y0) / (y1 - y0)) * ph

    out = [f'<svg class="chart" data-metric="{html.escape(metric)}" xmlns="http://www.w3.org/2000/svg" '
           f'width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{html.escape(metric)}">',
           f'<rect x="{PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    for i in range(5):  # grid and tick labels
        yv = y0 + (y1 - y0) * i / 4
        xv = x0 + (x1 - x0) * i / 4
        out.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{sy(yv):.1f}" y2="{sy(yv):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{PAD_L - 4}" y="{sy(yv) + 4:.1f}" font-size="10" text-anchor="end">{_fmt(yv)}</text>')
        out.append(f'<text x="{sx(xv):.1f}" y="{H - PAD_B + 14}" font-size="10" text-anchor="middle">'
                   f'{_fmt(round(xv, 2))}</text>')
    out.append(f'<text x="{PAD_L + pw / 2}" y="{H - 6}" font-size="11" text-anchor="middle">step</text>')
    for n, (run_id, pts) in enumerate(clean.items()):
        total, pts = len(pts), _thin(pts, max_points)
        color = COLORS[n % len(COLORS)]
        coords = " ".join(f"{sx(s):.2f},{sy(v):.2f}" for s, v in pts)
        shown = f"{len(pts)} of {total} points, thinned" if total > len(pts) else f"{total} points"
        title = html.escape(f"{labels.get(run_id, run_id)} ({shown})")
        out.append(f'<polyline data-run="{html.escape(run_id)}" data-points="{len(pts)}" fill="none" '
                   f'stroke="{color}" stroke-width="1.5" points="{coords}"><title>{title}</title></polyline>')
        if len(pts) <= 50:
            out.extend(f'<circle cx="{sx(s):.2f}" cy="{sy(v):.2f}" r="2.5" fill="{color}"/>' for s, v in pts)
    out.append("</svg>")
    return "".join(out)


@dataclass
class Comparison:
    """Runs side by side: `rows()` for a table, `histories[metric][run_id]` = [(step, value)], `to_html()`."""

    runs: list  # list[RunInfo]
    histories: dict[str, dict[str, list[tuple[int, float]]]]

    def labels(self) -> dict[str, str]:
        return {r.run_id: f"{r.name} ({r.run_id[:8]})" for r in self.runs}

    def rows(self) -> list[tuple[str, list[str], bool]]:
        """(row label, one value per run, whether the values differ) for attributes, params, metrics."""
        out = [("status", [r.status for r in self.runs]),
               ("duration_s", [_fmt(r.duration_s) for r in self.runs]),
               ("git_commit", [f"{(r.git_commit or '')[:10]}{' (dirty)' if r.git_dirty else ''}" for r in self.runs]),
               ("datasets", [", ".join(f"{d['name']}@{d['version']}" for d in r.datasets) for r in self.runs])]
        for key in sorted({k for r in self.runs for k in r.params}):
            out.append((f"params.{key}", [r.params.get(key, "") for r in self.runs]))
        for key in sorted({k for r in self.runs for k in r.metrics}):
            out.append((f"metrics.{key}", [_fmt(r.metrics.get(key)) for r in self.runs]))
        return [(label, vals, len(set(vals)) > 1) for label, vals in out]

    def to_html(self, path: str | Path | None = None, title: str = "loopstack run comparison") -> str:
        labels = self.labels()
        head = "".join(f"<th>{html.escape(labels[r.run_id])}</th>" for r in self.runs)
        body = "".join(
            f'<tr class="{"diff" if diff else ""}"><td>{html.escape(label)}</td>'
            + "".join(f"<td>{html.escape(v)}</td>" for v in vals) + "</tr>"
            for label, vals, diff in self.rows())
        legend = "".join(f'<span style="color:{COLORS[i % len(COLORS)]}">'
                         f'&#9632; {html.escape(labels[r.run_id])}</span> '
                         for i, r in enumerate(self.runs))
        charts = "".join(
            f'<section><h3>{html.escape(metric)}</h3>{svg_chart(metric, series, labels)}</section>'
            for metric, series in sorted(self.histories.items()))
        page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ddd;padding:4px 8px;font-size:13px}}tr.diff td{{background:#fff6d6}}
section{{margin-top:1.5em}}</style></head>
<body><h1>{html.escape(title)}</h1>
<table><tr><th></th>{head}</tr>{body}</table>
<h2>Metric curves</h2><p>{legend}</p>{charts or "<p>no metrics logged</p>"}
</body></html>
"""
        if path is not None:
            write_page(path, page, "the comparison page", "give a path in an existing, writable folder")
        return page
