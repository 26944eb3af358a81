"""A monitoring report three ways: a rich table, JSON, and a static HTML page.

The HTML page needs no server and no network: styles inline, plots as inline SVG (null rate
and PSI per feature, then baseline vs current histograms of every feature).
"""

from __future__ import annotations

import html
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from featurepipe.monitoring.check import FeatureResult, Report, ThresholdSet

BASE_COLOR = "#8da0cb"
CUR_COLOR = "#fc8d62"
ALARM_COLOR = "#d62728"


def _num(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _p(v: float | None) -> str:
    return "-" if v is None else f"{v:.2g}"


def tables(report: Report) -> list[Table]:
    """One rich table per view: every checked feature, alarms in red."""
    out: list[Table] = []
    for v in report.views:
        t = Table(
            title=f"view {v.view}: {v.rows:,} current rows ({v.origin}) vs baseline "
            f"{v.baseline_fingerprint} ({v.baseline_rows:,} rows)"
        )
        for c in ("feature", "type", "null rate", "PSI", "KS D (p)", "JS", "new/out", "alarms"):
            t.add_column(c, overflow="fold")
        for f in v.features:
            alarms = ", ".join(f.alarms)
            style = "red" if f.alarms else ""
            note = "; ".join(f.notes)
            t.add_row(
                escape(f.feature),
                f.dtype,
                f"{_pct(f.baseline_null_rate)} -> {_pct(f.null_rate)}",
                _num(f.psi),
                "-" if f.ks_statistic is None else f"{_num(f.ks_statistic)} ({_p(f.ks_pvalue)})",
                _num(f.js),
                _pct(f.new_category if f.kind == "categorical" else f.out_of_range),
                f"[{style}]{escape(alarms)}[/]" if alarms else escape(note) or "ok",
                style=None,
            )
        out.append(t)
    return out


def summary(report: Report) -> str:
    if report.ok:
        checked = sum(1 for v in report.views for f in v.features if f.kind != "skipped")
        return f"no alarm: {checked} feature(s) checked"
    return "ALARM: " + "; ".join(
        f"{f.view}:{f.feature} ({', '.join(f.alarms)})" for f in report.alarms
    )


def to_json(report: Report, thresholds: ThresholdSet) -> dict[str, Any]:
    out = report.as_dict()
    out["thresholds"] = {
        "default": thresholds.default.__dict__,
        "features": {k: t.__dict__ for k, t in thresholds.features.items()},
    }
    return out


# -- HTML --------------------------------------------------------------------------------------
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td.l{text-align:left}tr.alarm td{background:#fde0e0}
.ok{color:#2a7}.bad{color:#d62728;font-weight:bold}.card{display:inline-block;vertical-align:top;
margin:.5em;padding:.5em;border:1px solid #ddd;border-radius:4px}.card.alarm{border-color:#d62728}
svg text{font-size:10px;fill:#333}.legend span{display:inline-block;width:1em;height:1em;
margin:0 .3em 0 1em;vertical-align:middle}
"""


def _bars(
    labels: list[str],
    series: list[tuple[str, list[float]]],
    *,
    width: int = 560,
    bar_h: int = 14,
    limit: float | None = None,
    fmt: Any = _pct,
    marked: set[str] | None = None,
) -> str:
    """Horizontal grouped bars: one group per label, one bar per series (inline SVG)."""
    left, right = 190, 70
    group_h = bar_h * len(series) + 6
    height = group_h * len(labels) + 20
    top = max([v for _, vals in series for v in vals if math.isfinite(v)] + [limit or 0, 1e-12])
    scale = (width - left - right) / top
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img">'
    ]
    for i, label in enumerate(labels):
        y0 = 10 + i * group_h
        color = ALARM_COLOR if marked and label in marked else "#333"
        parts.append(
            f'<text x="{left - 6}" y="{y0 + group_h / 2}" text-anchor="end" '
            f'dominant-baseline="middle" style="fill:{color}">{html.escape(label[:32])}</text>'
        )
        for k, (name, vals) in enumerate(series):
            v = vals[i] if i < len(vals) and math.isfinite(vals[i]) else 0.0
            fill = (BASE_COLOR, CUR_COLOR)[k % 2]
            y = y0 + k * bar_h
            w = max(v * scale, 0.0)
            parts.append(
                f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{fill}">'
                f"<title>{html.escape(name)} {html.escape(label)}: {fmt(v)}</title></rect>"
                f'<text x="{left + w + 4:.1f}" y="{y + bar_h / 2}" '
                f'dominant-baseline="middle">{fmt(v)}</text>'
            )
    if limit is not None:
        x = left + limit * scale
        parts.append(
            f'<line x1="{x:.1f}" y1="4" x2="{x:.1f}" y2="{height - 4}" stroke="{ALARM_COLOR}" '
            f'stroke-dasharray="4 3"><title>threshold {limit:g}</title></line>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _feature_card(f: FeatureResult) -> str:
    cls = "card alarm" if f.alarms else "card"
    head = f"<b>{html.escape(f.feature)}</b> ({html.escape(f.dtype)})"
    status = (
        f'<span class="bad">alarm: {html.escape(", ".join(f.alarms))}</span>'
        if f.alarms
        else '<span class="ok">ok</span>'
    )
    body = ""
    if f.bins:
        body = _bars(
            f.bins,
            [("baseline", f.baseline_shares), ("current", f.current_shares)],
            width=460,
            bar_h=8,
        )
    notes = "".join(f"<div>{html.escape(n)}</div>" for n in f.notes)
    return f'<div class="{cls}"><div>{head} {status}</div>{body}{notes}</div>'


def to_html(report: Report, thresholds: ThresholdSet) -> str:
    """The report as one self-contained HTML page."""
    t = thresholds.default
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<title>featurepipe monitor</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>featurepipe monitor</h1>",
        f"<p>{datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')} &mdash; ",
        f'<span class="{"ok" if report.ok else "bad"}">{html.escape(summary(report))}</span></p>',
        "<p>Default thresholds: "
        + ", ".join(f"{html.escape(k)} {v}" for k, v in t.__dict__.items())
        + '. <span class="legend"><span style="background:'
        + BASE_COLOR
        + '"></span>baseline<span style="background:'
        + CUR_COLOR
        + '"></span>current</span></p>',
    ]
    for v in report.views:
        out.append(f"<h2>view {html.escape(v.view)}</h2>")
        out.append(
            f"<p>current: {v.rows:,} rows ({html.escape(v.origin)}), version "
            f"{html.escape(str(v.fingerprint))}; baseline: version "
            f"{html.escape(v.baseline_fingerprint)}, {v.baseline_rows:,} rows "
            f"({html.escape(v.baseline_origin)})</p>"
        )
        for n in v.notes:
            out.append(f"<p class='bad'>{html.escape(n)}</p>")
        out.append(
            "<table><tr><th>feature</th><th>type</th><th>baseline null rate</th>"
            "<th>null rate</th><th>PSI</th><th>KS D</th><th>KS p</th><th>JS</th>"
            "<th>new categories</th><th>out of range</th><th>alarms</th></tr>"
        )
        for f in v.features:
            row = "alarm" if f.alarms else ""
            out.append(
                f"<tr class='{row}'><td class='l'>{html.escape(f.feature)}</td>"
                f"<td class='l'>{html.escape(f.dtype)}</td>"
                f"<td>{_pct(f.baseline_null_rate)}</td><td>{_pct(f.null_rate)}</td>"
                f"<td>{_num(f.psi)}</td><td>{_num(f.ks_statistic)}</td>"
                f"<td>{_p(f.ks_pvalue)}</td><td>{_num(f.js)}</td>"
                f"<td>{_pct(f.new_category)}</td><td>{_pct(f.out_of_range)}</td>"
                f"<td class='l'>{html.escape(', '.join(f.alarms) or '; '.join(f.notes))}</td></tr>"
            )
        out.append("</table>")
        checked = [f for f in v.features if f.null_rate is not None]
        alarmed = {f.feature for f in v.features if f.alarms}
        if checked:
            out.append("<h3>null rate per feature</h3>")
            out.append(
                _bars(
                    [f.feature for f in checked],
                    [
                        ("baseline", [f.baseline_null_rate or 0.0 for f in checked]),
                        ("current", [f.null_rate or 0.0 for f in checked]),
                    ],
                    marked=alarmed,
                )
            )
        with_psi = [f for f in v.features if f.psi is not None]
        if with_psi:
            out.append(f"<h3>PSI per feature (threshold {t.psi:g})</h3>")
            out.append(
                _bars(
                    [f.feature for f in with_psi],
                    [("PSI", [f.psi or 0.0 for f in with_psi])],
                    limit=t.psi,
                    fmt=_num,
                    marked=alarmed,
                )
            )
        out.append("<h3>baseline vs current, per feature</h3><div>")
        ordered = sorted(v.features, key=lambda f: (not f.alarms, f.feature))
        out.extend(_feature_card(f) for f in ordered)
        out.append("</div>")
    out.append(
        "<script type='application/json' id='report'>"
        + json.dumps(report.as_dict(), default=str).replace("</", "<\\/")
        + "</script></body></html>"
    )
    return "".join(out)


def write_html(report: Report, thresholds: ThresholdSet, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(to_html(report, thresholds), encoding="utf-8")
    return p
