"""A self-contained HTML evaluation report: inline SVG plots (no JavaScript, no CDN) and tables.

Plots: ROC curve, precision-recall curve (with the chosen threshold and the precision target
marked), reliability diagram (with the diagonal and bin counts), score histograms per class; then
the headline metrics and one table per slice column.
"""
from __future__ import annotations

import html
import math
from typing import Any, Sequence

W, H, L, R, T, B = 420, 320, 52, 14, 24, 44
BLUE, RED, GREY, GREEN = "#1f77b4", "#d62728", "#9a9a9a", "#2ca02c"


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}g}"
    return html.escape(str(v))


def _x(v: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return L + (v - lo) / ((hi - lo) or 1.0) * (W - L - R)


def _y(v: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return H - B - (v - lo) / ((hi - lo) or 1.0) * (H - T - B)


def _frame(kind: str, title: str, xlabel: str, ylabel: str, ymax: float = 1.0) -> list[str]:
    parts = [f'<svg class="plot" data-plot="{kind}" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}">',
             f'<text x="{W / 2}" y="15" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>',
             f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="#444"/>']
    for i in range(6):
        f = i / 5
        parts.append(f'<text x="{_x(f):.1f}" y="{H - B + 14}" text-anchor="middle" font-size="10">{f:.1f}</text>')
        yv = f * ymax
        label = f"{yv:.1f}" if ymax <= 1 else f"{yv:.0f}"
        parts.append(f'<text x="{L - 4}" y="{_y(f) + 3:.1f}" text-anchor="end" font-size="10">{label}</text>')
        parts.append(f'<line x1="{L}" x2="{W - R}" y1="{_y(f):.1f}" y2="{_y(f):.1f}" stroke="#eee"/>')
    parts.append(f'<text x="{(L + W - R) / 2}" y="{H - 8}" text-anchor="middle" font-size="11">'
                 f'{html.escape(xlabel)}</text>')
    parts.append(f'<text x="12" y="{(T + H - B) / 2}" text-anchor="middle" font-size="11" '
                 f'transform="rotate(-90 12 {(T + H - B) / 2})">{html.escape(ylabel)}</text>')
    return parts


def _poly(xs: Sequence[float], ys: Sequence[float], color: str, extra: str = "") -> str:
    pts = " ".join(f"{_x(a):.1f},{_y(b):.1f}" for a, b in zip(xs, ys) if a is not None and b is not None)
    return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}" {extra}/>'


def _thin(xs: list, ys: list, n: int = 800) -> tuple[list, list]:
    if len(xs) <= n:
        return xs, ys
    step = len(xs) / n
    idx = [int(i * step) for i in range(n - 1)] + [len(xs) - 1]
    return [xs[i] for i in idx], [ys[i] for i in idx]


def roc_svg(ev: Any) -> str:
    auc = ev.metrics.get("roc_auc")
    p = _frame("roc", f"ROC (AUC {_fmt(auc)})", "false positive rate", "true positive rate")
    p.append(_poly([0, 1], [0, 1], GREY, 'stroke-dasharray="4 4"'))
    p.append(_poly(*_thin(ev.roc["fpr"], ev.roc["tpr"]), BLUE))
    return "\n".join(p + ["</svg>"])


def pr_svg(ev: Any) -> str:
    p = _frame("pr", f"Precision-recall (AP {_fmt(ev.metrics.get('pr_auc'))})", "recall", "precision")
    rec, prec = [0.0] + list(ev.pr["recall"]), [1.0] + list(ev.pr["precision"])
    p.append(_poly(*_thin(rec, prec), BLUE))
    base = ev.metrics.get("positive_rate")
    if base is not None:
        p.append(_poly([0, 1], [base, base], GREY, 'stroke-dasharray="4 4"'))
    tgt = ev.precision_target
    p.append(_poly([0, 1], [tgt, tgt], GREEN, 'stroke-dasharray="2 3"'))
    at = ev.at_threshold
    if at:
        p.append(f'<circle cx="{_x(at["recall"]):.1f}" cy="{_y(at["precision"]):.1f}" r="5" fill="{RED}">'
                 f'<title>threshold {_fmt(at["threshold"])}</title></circle>')
    if ev.metrics.get("recall_at_target") is not None:
        p.append(f'<circle cx="{_x(ev.metrics["recall_at_target"]):.1f}" '
                 f'cy="{_y(ev.metrics["precision_at_target"]):.1f}" r="5" fill="{GREEN}">'
                 f'<title>precision target {tgt}: threshold {_fmt(ev.metrics["threshold_at_target"])}</title>'
                 '</circle>')
    return "\n".join(p + ["</svg>"])


def reliability_svg(ev: Any) -> str:
    cal = ev.calibration
    p = _frame("reliability", f"Reliability (ECE {_fmt(cal['ece'])})", "mean predicted probability",
               "fraction positive")
    p.append(_poly([0, 1], [0, 1], GREY, 'stroke-dasharray="4 4"'))
    full = [b for b in cal["bins"] if b["count"]]
    p.append(_poly([b["mean_score"] for b in full], [b["fraction_positive"] for b in full], BLUE))
    for b in full:
        p.append(f'<circle class="bin" cx="{_x(b["mean_score"]):.1f}" cy="{_y(b["fraction_positive"]):.1f}" r="4" '
                 f'fill="{BLUE}"><title>[{b["lower"]:.2f}, {b["upper"]:.2f}): n={b["count"]}</title></circle>')
    return "\n".join(p + ["</svg>"])


def histogram_svg(ev: Any) -> str:
    h = ev.histogram
    edges, neg, pos = h["edges"], h["negative"], h["positive"]
    # per-class densities (fraction of the class in each bin) so a rare class is visible
    nn, npos = max(sum(neg), 1), max(sum(pos), 1)
    dn, dp = [c / nn for c in neg], [c / npos for c in pos]
    top = max(dn + dp + [1e-9])
    p = _frame("histogram", "Score distribution per class", "score", "fraction of class", ymax=top)
    for dens, counts, color, off in ((dn, neg, BLUE, 0.0), (dp, pos, RED, 0.5)):
        for i, (d, c) in enumerate(zip(dens, counts)):
            if not c:
                continue
            w = (edges[i + 1] - edges[i]) / 2
            x0, y0 = _x(edges[i] + off * 2 * w), _y(d / top)
            p.append(f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{_x(w) - L:.1f}" height="{_y(0) - y0:.1f}" '
                     f'fill="{color}" fill-opacity="0.7"><title>n={c}</title></rect>')
    p.append(f'<text x="{W - R - 4}" y="{T + 14}" text-anchor="end" font-size="11" fill="{BLUE}">'
             f'negative (n={sum(neg)})</text>')
    p.append(f'<text x="{W - R - 4}" y="{T + 28}" text-anchor="end" font-size="11" fill="{RED}">'
             f'positive (n={sum(pos)})</text>')
    return "\n".join(p + ["</svg>"])


SLICE_COLUMNS = ("count", "positives", "positive_rate", "roc_auc", "pr_auc", "precision", "recall", "log_loss",
                 "ece", "recall_at_target")


def slice_tables(ev: Any) -> str:
    out = []
    for col, rows in ev.slices.items():
        head = "".join(f"<th>{c}</th>" for c in ("value", *SLICE_COLUMNS))
        body = "".join("<tr>" + f"<td>{html.escape(str(r['value']))}</td>"
                       + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in SLICE_COLUMNS) + "</tr>" for r in rows)
        out.append(f'<h3>Slice: {html.escape(col)}</h3><table class="slices" data-column="{html.escape(col)}">'
                   f"<tr>{head}</tr>{body}</table>")
    return "\n".join(out) or "<p>No slices requested (evaluate(..., slices=[column, ...])).</p>"


def render(ev: Any, title: str | None = None) -> str:
    """The report as one HTML string."""
    ds = ev.dataset or {}
    title = title or f"Evaluation of {ds.get('name') or 'model'} v{ds.get('version') or '?'} ({ev.part})"
    m = ev.metrics
    keys = ("count", "positives", "positive_rate", "roc_auc", "pr_auc", "log_loss", "brier", "ece")
    headline = "".join(f"<tr><th>{k}</th><td>{_fmt(m.get(k))}</td></tr>" for k in keys)
    at = ev.at_threshold
    headline += (f"<tr><th>at threshold {_fmt(ev.threshold)}</th><td>precision {_fmt(at.get('precision'))}, "
                 f"recall {_fmt(at.get('recall'))} (tp {at.get('tp')}, fp {at.get('fp')}, fn {at.get('fn')}, "
                 f"tn {at.get('tn')})</td></tr>")
    if m.get("threshold_at_target") is None:
        tgt = f"not reachable on this data (no threshold gives precision ≥ {_fmt(ev.precision_target)})"
    else:
        tgt = (f"threshold {_fmt(m['threshold_at_target'])}: precision {_fmt(m['precision_at_target'])}, "
               f"recall {_fmt(m['recall_at_target'])}")
    headline += f"<tr><th>precision target {_fmt(ev.precision_target)}</th><td>{tgt}</td></tr>"
    plots = "\n".join((roc_svg(ev), pr_svg(ev), reliability_svg(ev), histogram_svg(ev)))
    dataset = html.escape(f"{ds.get('name')} v{ds.get('version')} id {ds.get('dataset_id')} "
                          f"{ds.get('content_hash')}") if ds else ""
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 20px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; font-size: 13px; }}
th {{ background: #f4f4f4; text-align: left; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 12px; }}
svg {{ font-family: system-ui, sans-serif; background: #fff; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Dataset: {dataset}</p>
<table class="metrics">{headline}</table>
<div class="plots">
{plots}
</div>
<h2>Slices</h2>
{slice_tables(ev)}
</body></html>
"""
