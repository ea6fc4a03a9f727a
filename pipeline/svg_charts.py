"""The run report's three run-wide charts (funnel, time per stage, document lengths) as small SVGs.

Why hand-written: every run draws these three, and through matplotlib they cost its import (0.5-0.7 s)
and 0.6 s of drawing at the end of every run, after the last stage (a two-stage ingest -> encode run
has no other chart, so its report waited on matplotlib alone). Here they are a few string joins
(milliseconds), the same picture: bars, horizontal bars, step lines on a log axis. The stages' own
charts stay matplotlib figures (``ReportChart.draw``). Inline SVG in a data URI: no network request.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence

FONT = 'font-family="sans-serif"'
PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode()


def _fmt(v: float) -> str:
    """A tick or bar label: 1.2k, 3.4M, 12, 0.5."""
    a = abs(v)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= limit:
            return f"{v / limit:.3g}{suffix}"
    return f"{v:.3g}"


def _ticks(top: float, count: int = 4) -> list[float]:
    """Round tick values from 0 to at least ``top``."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{html.escape(label)}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" {FONT} font-size="11">'
            f'<rect width="{width}" height="{height}" fill="#fff"/>{"".join(body)}</svg>')


def bar_panels(panels: Sequence[tuple[str, Sequence[str], Sequence[float]]], color: str = PALETTE[0]) -> str:
    """Vertical bar charts side by side, one per (title, labels, values); labels slanted under the bars."""
    pw, ph, left, top, bottom = 300, 240, 50, 24, 80
    body: list[str] = []
    for k, (title, labels, values) in enumerate(panels):
        x0 = k * pw + left
        plot_w, plot_h = pw - left - 15, ph - top - bottom
        ticks = _ticks(max([float(v) for v in values] or [0.0]))
        scale = plot_h / ticks[-1] if ticks[-1] else 0.0
        body.append(f'<text x="{x0 + plot_w / 2:.1f}" y="14" text-anchor="middle" font-size="12">'
                    f'{html.escape(title)}</text>')
        for t in ticks:
            y = top + plot_h - t * scale
            body.append(f'<line x1="{x0}" x2="{x0 + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                        f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{_fmt(t)}</text>')
        slot = plot_w / max(1, len(values))
        for i, (name, v) in enumerate(zip(labels, values, strict=True)):
            h = float(v) * scale
            x = x0 + i * slot + slot * 0.15
            cx = x0 + (i + 0.5) * slot
            body.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
                        f'fill="{color}"><title>{html.escape(name)}: {v:,}</title></rect>'
                        f'<text transform="translate({cx:.1f},{top + plot_h + 10}) rotate(-45)" text-anchor="end">'
                        f'{html.escape(name)}</text>')
        body.append(f'<line x1="{x0}" x2="{x0}" y1="{top}" y2="{top + plot_h}" stroke="#555"/>')
    return _svg(max(1, len(panels)) * pw, ph, body, "; ".join(t for t, _, _ in panels))


def hbars(labels: Sequence[str], values: Sequence[float], xlabel: str, title: str,
          color: str = PALETTE[5]) -> str:
    """Horizontal bars, one row per label, top to bottom in the given order."""
    left, top, row, width = 140, 26, 22, 620
    plot_w = width - left - 20
    ticks = _ticks(max([float(v) for v in values] or [0.0]))
    scale = plot_w / ticks[-1] if ticks[-1] else 0.0
    height = top + row * max(1, len(values)) + 40
    body = [f'<text x="{left + plot_w / 2:.1f}" y="16" text-anchor="middle" font-size="12">{html.escape(title)}</text>']
    bottom = top + row * max(1, len(values))
    for t in ticks:
        x = left + t * scale
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}" stroke="#ddd"/>'
                    f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle" fill="#555">{_fmt(t)}</text>')
    for i, (name, v) in enumerate(zip(labels, values, strict=True)):
        y = top + i * row
        body.append(f'<text x="{left - 6}" y="{y + row / 2 + 4:.1f}" text-anchor="end">{html.escape(name)}</text>'
                    f'<rect x="{left}" y="{y + 3}" width="{float(v) * scale:.1f}" height="{row - 6}" fill="{color}">'
                    f'<title>{html.escape(name)}: {v:,}</title></rect>')
    body.append(f'<text x="{left + plot_w / 2:.1f}" y="{bottom + 32}" text-anchor="middle">'
                f'{html.escape(xlabel)}</text>')
    return _svg(width, height, body, title)


def log_steps(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], xlabel: str, ylabel: str,
              title: str) -> str:
    """Step lines over a log x axis, one per (label, bin edges, share per bin), with a legend."""
    width, height, left, top, plot_w, plot_h = 720, 270, 60, 26, 620, 190
    edges = [e for _, es, _ in series for e in es if e > 0]
    lo, hi = (math.floor(math.log10(min(edges))), math.ceil(math.log10(max(edges)))) if edges else (0, 1)
    hi = max(hi, lo + 1)
    ymax = _ticks(max([float(s) for _, _, ss in series for s in ss] or [0.0]))

    def x(v: float) -> float:
        return left + (math.log10(max(v, 10.0 ** lo)) - lo) / (hi - lo) * plot_w

    def y(v: float) -> float:
        return top + plot_h - (v / ymax[-1] * plot_h if ymax[-1] else 0.0)

    body = [f'<text x="{left + plot_w / 2}" y="16" text-anchor="middle" font-size="12">{html.escape(title)}</text>']
    for t in ymax:
        body.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#ddd"/>'
                    f'<text x="{left - 4}" y="{y(t) + 4:.1f}" text-anchor="end" fill="#555">{t:.3g}</text>')
    for p in range(lo, hi + 1):
        body.append(f'<line x1="{x(10.0 ** p):.1f}" x2="{x(10.0 ** p):.1f}" y1="{top}" y2="{top + plot_h}" '
                    f'stroke="#eee"/><text x="{x(10.0 ** p):.1f}" y="{top + plot_h + 14}" text-anchor="middle" '
                    f'fill="#555">{_fmt(10.0 ** p)}</text>')
    for k, (name, es, shares) in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        points = []
        for a, b, s in zip(es[:-1], es[1:], shares, strict=False):
            points += [f"{x(a):.1f},{y(s):.1f}", f"{x(b):.1f},{y(s):.1f}"]
        body.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{color}" stroke-width="1.5"/>'
                    f'<rect x="{left + plot_w - 230}" y="{top + 6 + 14 * k}" width="10" height="3" fill="{color}"/>'
                    f'<text x="{left + plot_w - 215}" y="{top + 11 + 14 * k}" font-size="10">'
                    f'{html.escape(name)}</text>')
    body.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">{html.escape(xlabel)}</text>'
                f'<text transform="translate(14,{top + plot_h / 2}) rotate(-90)" text-anchor="middle">'
                f'{html.escape(ylabel)}</text>')
    return _svg(width, height, body, title)
