"""The run report's charts as small hand-written SVGs: the run-wide ones (funnel, time per stage,
document lengths) and the primitives the stages draw their own charts with (``ReportChart.draw``).

Why hand-written: every run draws these, and through matplotlib they cost its import (0.5-1.2 s of
CPU) and 0.2-0.4 s per chart (savefig), part of it after the last stage: a cProfile of a no-op
re-run of the six-stage benchmark spec spent 3.88 s of its 3.9 s report in the charts. Here they are
a few string joins (milliseconds), the same pictures: bars (linear or log axis, grouped, side by side),
horizontal and stacked bars, lines and step lines on a log axis. Inline SVG in a data URI: no network
request.
"""
from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Sequence

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


# ---------------------------------------------------------------------------------------------
# primitives of the stages' own charts
# ---------------------------------------------------------------------------------------------
#: px per character of an 11 px sans-serif label (to leave room under slanted labels)
CHAR_W = 6.5
#: longest label drawn under a bar; the full label stays in the bar's tooltip
LABEL_CHARS = 22
#: px per character of a 12 px title (a chart is at least as wide as its title)
TITLE_CHAR_W = 7.0


def _value(v: float) -> str:
    """A tooltip's exact-ish value: 1,234 or 12.3457."""
    return f"{v:,}" if isinstance(v, int) else f"{float(v):,.4f}".rstrip("0").rstrip(".")


def _short(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[:LABEL_CHARS - 1] + "\u2026"


def _linear_axis(values: Sequence[float]) -> tuple[list[float], Callable[[float], float]]:
    """Ticks from 0 and value -> fraction of the plot height (0 at the bottom)."""
    ticks = _ticks(max([float(v) for v in values] or [0.0]))
    top = ticks[-1] or 1.0
    return ticks, lambda v: max(0.0, float(v)) / top


def _log_axis(lo: float, hi: float) -> tuple[list[float], Callable[[float], float]]:
    """A log10 axis from 10^lo to 10^hi: ticks at 1, 2, 5 x 10^p (only 10^p over more than three
    decades) and value -> fraction of the plot height (a value <= 0 sits at the bottom)."""
    mults = (1,) if hi - lo > 3 else (1, 2, 5)
    ticks = [m * 10.0 ** p for p in range(math.floor(lo), math.ceil(hi) + 1) for m in mults
             if lo - 1e-9 <= math.log10(m * 10.0 ** p) <= hi + 1e-9]
    return ticks, lambda v: min(1.0, max(0.0, (math.log10(v) - lo) / (hi - lo))) if v > 0 else 0.0


def _bar_log_axis(values: Sequence[float]) -> tuple[list[float], Callable[[float], float]]:
    """A log axis for bars: from a third of a decade under the smallest positive value (so the
    smallest bar shows) to the decade at or above the largest."""
    pos = [float(v) for v in values if v > 0] or [1.0]
    lo = math.log10(min(pos)) - 0.3
    return _log_axis(lo, max(math.ceil(math.log10(max(pos))), lo + 1))


def _y_axis(body: list[str], x0: float, top: float, w: float, h: float, ticks: Sequence[float],
            frac: Callable[[float], float], ylabel: str) -> None:
    """Grid lines with tick labels, the axis line and its rotated label, left of a plot at (x0, top)."""
    for t in ticks:
        y = top + h - frac(t) * h
        body.append(f'<line x1="{x0:.1f}" x2="{x0 + w:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                    f'<text x="{x0 - 4:.1f}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{_fmt(t)}</text>')
    body.append(f'<line x1="{x0:.1f}" x2="{x0:.1f}" y1="{top}" y2="{top + h}" stroke="#555"/>')
    if ylabel:
        body.append(f'<text transform="translate({x0 - 42:.1f},{top + h / 2:.1f}) rotate(-90)" '
                    f'text-anchor="middle">{html.escape(ylabel)}</text>')


def _title(body: list[str], cx: float, y: float, text: str, size: int = 12) -> None:
    body.append(f'<text x="{cx:.1f}" y="{y}" text-anchor="middle" font-size="{size}">{html.escape(text)}</text>')


def _legend(body: list[str], x: float, y: float, entries: Sequence[tuple[str, str]]) -> None:
    """Colour swatches and names, one per line, from (x, y) down."""
    for k, (name, color) in enumerate(entries):
        body.append(f'<rect x="{x:.1f}" y="{y + 14 * k:.1f}" width="10" height="10" fill="{color}"/>'
                    f'<text x="{x + 14:.1f}" y="{y + 9 + 14 * k:.1f}" font-size="10">{html.escape(name)}</text>')


def _label_room(labels: Sequence[str], rotate: int) -> float:
    """Height the labels under the bars take, slanted by ``rotate`` degrees."""
    longest = max((len(_short(x)) for x in labels), default=0)
    return 14 + CHAR_W * longest * math.sin(math.radians(rotate))


def _x_labels(body: list[str], centers: Sequence[float], y: float, labels: Sequence[str], rotate: int) -> None:
    for cx, name in zip(centers, labels, strict=True):
        body.append(f'<text transform="translate({cx + 3:.1f},{y:.1f}) rotate(-{rotate})" text-anchor="end">'
                    f'{html.escape(_short(name))}</text>')


def _bar_panel(body: list[str], x0: float, top: float, w: float, h: float, labels: Sequence[str],
               series: Sequence[tuple[str, Sequence[float], str]], log: bool, ylabel: str, rotate: int) -> None:
    """One plot's bars at (x0, top), size w x h: per label one bar of each series (name, values, color)
    side by side, on a linear axis from 0 or a log axis; labels under the bars."""
    every = [v for _, vs, _ in series for v in vs]
    ticks, frac = _bar_log_axis(every) if log else _linear_axis(every)
    _y_axis(body, x0, top, w, h, ticks, frac, ylabel)
    slot = w / max(1, len(labels))
    bar_w = slot * 0.8 / max(1, len(series))
    for k, (sname, values, color) in enumerate(series):
        for i, (name, v) in enumerate(zip(labels, values, strict=True)):
            bh = frac(float(v)) * h
            x = x0 + i * slot + slot * 0.1 + k * bar_w
            who = f"{name}, {sname}" if sname else name
            body.append(f'<rect x="{x:.1f}" y="{top + h - bh:.1f}" width="{bar_w:.1f}" height="{bh:.1f}" '
                        f'fill="{color}"><title>{html.escape(who)}: {_value(v)}</title></rect>')
    _x_labels(body, [x0 + (i + 0.5) * slot for i in range(len(labels))], top + h + 10, labels, rotate)


def grouped_bars(labels: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], title: str,
                 ylabel: str = "", xlabel: str = "", log: bool = False, rotate: int = 90,
                 colors: Sequence[str] = PALETTE) -> str:
    """Bars per label, one per (series name, values) side by side (one series: plain bars), on a
    linear or log y axis, with a legend when there is more than one series."""
    left, top, h = 60, 26, 190
    w = max(300.0, len(labels) * max(16.0, 8.0 * len(series) + 6), TITLE_CHAR_W * len(title) - left)
    room = _label_room(labels, rotate) + (18 if xlabel else 0)
    body: list[str] = []
    _title(body, left + w / 2, 16, title)
    coloured = [(name, values, colors[k % len(colors)]) for k, (name, values) in enumerate(series)]
    _bar_panel(body, left, top, w, h, labels, coloured, log, ylabel, rotate)
    if len(series) > 1:
        _legend(body, left + w - 110, top + 6, [(name, c) for name, _, c in coloured])
    if xlabel:
        body.append(f'<text x="{left + w / 2:.1f}" y="{top + h + room - 4:.1f}" text-anchor="middle">'
                    f'{html.escape(xlabel)}</text>')
    return _svg(int(left + w + 20), int(top + h + room + 6), body, title)


def bars(labels: Sequence[str], values: Sequence[float], title: str, ylabel: str = "", xlabel: str = "",
         log: bool = False, rotate: int = 90, color: str = PALETTE[0]) -> str:
    """One bar per label, on a linear or log y axis."""
    return grouped_bars(labels, [("", values)], title, ylabel, xlabel, log, rotate, (color,))


def bar_row(panels: Sequence[tuple[str, Sequence[str], Sequence[float], int]], title: str, ylabel: str = "",
            color: str = PALETTE[0]) -> str:
    """Bar plots side by side under one title, one per (title, labels, values, label slant in degrees),
    each as wide as its bars need; the y label on the first."""
    top, h, gap = 44, 170, 70
    widths = [max(120.0, 18.0 * len(labels)) for _, labels, _, _ in panels]
    room = max((_label_room(labels, rot) for _, labels, _, rot in panels), default=14)
    body: list[str] = []
    x0 = 60.0
    for k, ((sub, labels, values, rot), w) in enumerate(zip(panels, widths, strict=True)):
        _title(body, x0 + w / 2, 36, sub, 11)
        _bar_panel(body, x0, top, w, h, labels, [("", values, color)], False, ylabel if k == 0 else "", rot)
        x0 += w + gap
    width = max(x0 - gap + 20, TITLE_CHAR_W * len(title) + 20)
    _title(body, width / 2, 16, title)
    return _svg(int(width), int(top + h + room + 6), body, title)


def stacked_hbar(label: str, parts: Sequence[tuple[str, float, str]], title: str) -> str:
    """One horizontal bar made of (legend name, value, color) parts end to end, with a legend."""
    left, top, w, row = 60, 30, 440, 60
    total = sum(float(v) for _, v, _ in parts)
    ticks = _ticks(total)
    scale = w / ticks[-1] if ticks[-1] else 0.0
    body: list[str] = []
    _title(body, left + w / 2, 16, title)
    for t in ticks:
        x = left + t * scale
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + row}" stroke="#ddd"/>'
                    f'<text x="{x:.1f}" y="{top + row + 14}" text-anchor="middle" fill="#555">{_fmt(t)}</text>')
    body.append(f'<text x="{left - 6}" y="{top + row / 2 + 4}" text-anchor="end">{html.escape(label)}</text>')
    x = float(left)
    for name, v, color in parts:
        body.append(f'<rect x="{x:.1f}" y="{top + 12}" width="{float(v) * scale:.1f}" height="{row - 24}" '
                    f'fill="{color}"><title>{html.escape(name)}</title></rect>')
        x += float(v) * scale
    _legend(body, left + w - 150, top + row + 22, [(name, color) for name, _, color in parts])
    return _svg(left + w + 30, top + row + 30 + 14 * len(parts), body, title)


def line(values: Sequence[float], title: str, xlabel: str, ylabel: str, notes: dict[int, str] | None = None,
         reference: float | None = None, log: bool = False, color: str = PALETTE[2]) -> str:
    """A line over the values' positions 0..n-1 on a linear or log y axis, with text ``notes`` at
    some positions (index -> label) and a grey horizontal ``reference`` line."""
    left, top, w, h = 70, 26, 760, 200
    ys = [float(v) for v in values] + ([reference] if reference is not None else [])
    if log:
        pos = [v for v in ys if v > 0] or [1.0]
        lo, hi = math.log10(min(pos)), math.log10(max(pos))
        pad = max(0.05, (hi - lo) * 0.05)
        ticks, frac = _log_axis(lo - pad, hi + pad)
    else:
        ticks, frac = _linear_axis(ys)
    body: list[str] = []
    _title(body, left + w / 2, 16, title)
    _y_axis(body, left, top, w, h, ticks, frac, ylabel)

    def at(i: int, v: float) -> tuple[float, float]:
        return left + (i / max(1, len(values) - 1)) * w, top + h - frac(v) * h

    if reference is not None:
        y = at(0, reference)[1]
        body.append(f'<line x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="grey" stroke-width="0.8"/>')
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in (at(i, float(v)) for i, v in enumerate(values)))
    body.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.5"/>')
    _notes(body, [at(i, float(v)) for i, v in enumerate(values)], notes or {}, color)
    body.append(f'<text x="{left + w / 2}" y="{top + h + 30}" text-anchor="middle">{html.escape(xlabel)}</text>')
    return _svg(left + w + 20, top + h + 42, body, title)


def _notes(body: list[str], points: Sequence[tuple[float, float]], notes: dict[int, str], color: str) -> None:
    """A dot and a label at some of a line's points (index -> label); the last one's label ends at it."""
    for i, text in sorted(notes.items()):
        x, y = points[i]
        last = i == len(points) - 1 and len(points) > 1
        anchor = "end" if last else "start"
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"/>'
                    f'<text x="{x - 4 if last else x + 4:.1f}" y="{y - 5:.1f}" text-anchor="{anchor}" '
                    f'font-size="9">{html.escape(text)}</text>')
