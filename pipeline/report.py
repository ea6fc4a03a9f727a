"""Run report: ``<output>/report.json`` and a self-contained ``<output>/report.html`` built from the manifests.

Why: people judge a data run by looking at it (what each stage removed, how the language mix moved,
how the tokenizer treats each language, how full the packed sequences are). Everything here is read
back from what the run already wrote (``run.json``, each ``<stage>/manifest.json``, the tokenizer's
``report.json`` and, for text bytes and length histograms, the tallies the workers wrote into the
manifests as they wrote the parts, or else the ``text`` column of the datasets), so
``pipeline report OUTPUT_DIR`` rebuilds the same page at any time.

Every chart is a small hand-written SVG (:mod:`pipeline.svg_charts`: the run-wide ones here, the
stages' own drawn by their ``ReportChart.draw``), inlined as base64: the page makes no network request.
The engine draws what every run has (the stage table and funnel, the DAG, wall time, document
lengths); each stage type adds its own charts, funnel notes, token counts and example sections
through ``Stage.report`` (a :class:`~pipeline.stage_api.ReportPart`), so this module never names a
stage type and a new stage brings its charts with it.
"""

from __future__ import annotations

import argparse
import html
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import svg_charts
from pipeline.locations import Location, LocationError
from pipeline.manifest import read_json, read_manifest, write_json_atomic
from pipeline.parquet_io import parquet_rows, read_one, read_schema
from pipeline.text_tally import LENGTH_BINS, median_from_counts
from pipeline.text_tally import histogram as length_histogram

# Length histograms read the text column of at most this many parts per dataset (evenly spread):
# enough for a histogram, bounded for corpora of any size.
LENGTH_PARTS = 16


# ---------------------------------------------------------------------------------------------
# collect: read what the run wrote
# ---------------------------------------------------------------------------------------------
def collect(output: Location | Path) -> dict[str, Any]:
    """Every stage manifest under ``output`` (in run order when ``run.json`` has it) plus derived figures."""
    output = Location.of(output)
    order: list[str] = []
    run_info: dict[str, Any] = {}
    run_info = read_json(output / "run.json") or {}
    order = [s["name"] for s in run_info.get("stages", [])]
    names = order or sorted(p.name for p in output.iterdir() if (p / "manifest.json").exists())
    stages = []
    for name in names:
        m = read_manifest(output / name)
        if m is None:
            continue
        extra: dict[str, Any] = {}
        parts = (output / name / "data").glob("*.parquet")
        hist, text = tallied_text_figures(m, parts)
        if hist is None and text is None:
            hist, text = text_figures(parts)
        if hist is not None:
            extra["length_histogram"] = hist
        if text is not None:
            extra["text_bytes"] = text
        part = _stage_part(m, output / name)
        if part is not None:
            extra["report_part"] = part
        stages.append({**m, **extra})
    return {"output": str(output), "spec": run_info.get("spec"), "stages": stages}


def tallied_text_figures(manifest: dict[str, Any], parts: list[Location]) -> tuple[dict[str, Any] | None,
                                                                                  int | None]:
    """(histogram, text bytes) from the tally the workers wrote into the manifest as they wrote the
    parts (:mod:`pipeline.text_tally`): no text is read. Used only when the tally covers exactly the
    rows the parts hold (their footers' row counts), else (None, None) and the parts are read."""
    tally = manifest.get("stats", {}).get("text")
    if not isinstance(tally, dict) or not parts:
        return None, None
    counts = np.asarray(tally.get("length_counts", []), dtype=np.int64)
    if len(counts) != len(LENGTH_BINS) - 1 or int(counts.sum()) != sum(parquet_rows(p) for p in parts):
        return None, None
    return _histogram_figures(counts, int(counts.sum()), 0, len(parts), median_from_counts(counts)), int(tally["bytes"])


def text_figures(parts: list[Location]) -> tuple[dict[str, Any] | None, int | None]:
    """(length histogram, text bytes) from one read of each part's ``text`` column: the fallback when
    the manifest has no tally covering the parts (:func:`tallied_text_figures`).

    Why one pass: the two read the same column of the same parts (the histogram up to
    LENGTH_PARTS of them), which decompressed every stage's text twice; after an ingest -> dedup
    run of the Debian corpus that was about 1 s of the report's time on 2 cores."""
    if not parts or "text" not in read_schema(parts[0]).names:
        return None, None
    import pyarrow.compute as pc

    pick = set(_histogram_parts(len(parts)))
    total, lengths = 0, []
    for i, p in enumerate(parts):  # one part, one column in memory at a time
        n = pc.binary_length(read_one(p, columns=["text"]).column("text"))
        total += int(pc.sum(n).as_py() or 0)
        if i in pick:
            lengths.append(n.to_numpy(zero_copy_only=False))
    return _histogram(lengths, len(pick), len(parts)), total


def _histogram_parts(count: int) -> list[int]:
    """Which of ``count`` parts the length histogram reads: all, or LENGTH_PARTS evenly spread."""
    if count <= LENGTH_PARTS:
        return list(range(count))
    return np.linspace(0, count - 1, LENGTH_PARTS).astype(int).tolist()


def _histogram(lengths: list[np.ndarray], parts_read: int, parts: int) -> dict[str, Any]:
    arr = np.concatenate(lengths) if lengths else np.zeros(0)
    return _histogram_figures(length_histogram(arr), int(arr.size), parts_read, parts,
                              float(np.median(arr)) if arr.size else 0.0)


def _histogram_figures(counts: np.ndarray, documents: int, parts_read: int, parts: int,
                       median: float) -> dict[str, Any]:
    """The report's length histogram, whether tallied by the workers or read back from the parts."""
    return {"bins": [round(float(x), 1) for x in LENGTH_BINS], "counts": counts.tolist(),
            "documents": documents, "parts_read": parts_read, "parts": parts, "median_bytes": median}


def _stage_part(manifest: dict[str, Any], stage_dir: Location) -> Any:
    """The stage type's own part of the report (``Stage.report``: charts, funnel notes, tokens), if any."""
    from pipeline.registry import discover_stages

    cls = discover_stages().get(manifest.get("type", ""))
    if cls is None or not hasattr(cls, "report"):
        return None
    try:
        part = cls.report(manifest, stage_dir)
    except Exception:  # a stage's report hook must not take the whole report down
        return None
    return part if (part.charts or part.notes or part.sections or part.tokens_out is not None or part.details) else None


def edges(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(upstream, stage) pairs from each manifest's ``inputs`` (stages and raw inputs), in run order."""
    return [(up, s["stage"]) for s in data["stages"] for up in s.get("inputs", {})]


def tokens_of(stage: dict[str, Any]) -> int | None:
    """Tokens a stage's output holds, where its report part says so (token stages)."""
    part = stage.get("report_part")
    if part is not None and part.tokens_out is not None:
        return part.tokens_out
    return None


def funnel(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Documents, bytes and tokens after each stage, with every reason rows left (dropped or rejected)."""
    rows = []
    by_name = {s["stage"]: s for s in data["stages"]}
    for s in data["stages"]:
        ups = [by_name[u] for u in s.get("inputs", {}) if u in by_name]
        up_text = [u["text_bytes"] for u in ups if u.get("text_bytes") is not None]
        up_tokens = [t for u in ups if (t := tokens_of(u)) is not None]
        text_in = sum(up_text) if up_text else None
        text_out = s.get("text_bytes")
        reasons = {**{f"dropped: {k}": v for k, v in s.get("dropped", {}).items()},
                   **{f"rejected: {k}": v for k, v in s.get("rejected_by_reason", {}).items()},
                   **{f"added: {k}": v for k, v in s.get("added", {}).items()}}
        if s.get("report_part") is not None:
            reasons.update(s["report_part"].notes)
        secs = s.get("wall_time_s") or 0.0
        rate_mb = text_in if text_in is not None else text_out
        tokens_in = sum(up_tokens) if up_tokens else None
        rows.append({"stage": s["stage"], "type": s["type"], "status": s.get("status"),
                     "documents_in": s.get("rows_in", 0), "documents_out": s.get("rows_out", 0),
                     # engine figures (raw file bytes for readers of files, Arrow sizes elsewhere): kept in the JSON
                     "bytes_in": s.get("bytes_in", 0), "bytes_out": s.get("bytes_out", 0),
                     # the report's one MB definition: UTF-8 bytes of the text column (10^6 bytes per MB)
                     "text_mb_in": round(text_in / 1e6, 6) if text_in is not None else None,
                     "text_mb_out": round(text_out / 1e6, 6) if text_out is not None else None,
                     "tokens_in": tokens_in, "tokens_out": tokens_of(s), "reasons": reasons, "wall_time_s": secs,
                     "mb_per_s": round(rate_mb / 1e6 / secs, 3) if secs and rate_mb is not None else None,
                     "tokens_per_s": round((tokens_of(s) or tokens_in or 0) / secs, 1)
                     if secs and (tokens_of(s) or tokens_in) else None,
                     "docs_per_s": round(s.get("rows_in", 0) / secs, 1) if secs else None})
    return rows


# ---------------------------------------------------------------------------------------------
# charts: SVG, inlined
# ---------------------------------------------------------------------------------------------
def charts(data: dict[str, Any]) -> dict[str, str]:
    """Chart name -> inlined image data URI, one per section whose stage ran: the run-wide charts as
    SVG (:mod:`pipeline.svg_charts`), the stages' own as their ``ReportChart.draw`` returns them.

    All drawn here, at the end of the run, in the driver: the eleven charts of the quickstart's seven
    stages take 6 ms of CPU. (While they were matplotlib PNGs, 2.4 s plus its import, a
    low-priority process drew them as each stage committed; it cost 0.8-0.9 s of CPU of its own,
    more than the whole report in the driver now, 0.3-0.4 s.)"""
    out: dict[str, str] = {}
    stages = data["stages"]
    if not stages:
        return out
    # the funnel follows datasets only: a tokenizer stage reads documents but emits no dataset
    has_data = {s["stage"] for s in stages if any(f["path"].startswith("data/") for f in s.get("files", []))}
    fun = [r for r in funnel(data) if r["stage"] in has_data] or funnel(data)
    names = [r["stage"] for r in fun]
    panels = [("documents", names, [r["documents_out"] for r in fun])]
    text_rows = [r for r in fun if r["text_mb_out"] is not None]
    if text_rows:
        panels.append(("text MB (UTF-8 bytes of text)", [r["stage"] for r in text_rows],
                       [r["text_mb_out"] for r in text_rows]))
    tok_rows = [r for r in fun if r["tokens_out"]]
    if tok_rows:
        panels.append(("tokens", [r["stage"] for r in tok_rows], [r["tokens_out"] for r in tok_rows]))
    out["funnel"] = svg_charts.data_uri(svg_charts.bar_panels(
        [(f"funnel: {label} after each stage", xs, vals) for label, xs, vals in panels]))

    every = funnel(data)
    out["stage_time"] = svg_charts.data_uri(svg_charts.hbars(
        [r["stage"] for r in every], [r["wall_time_s"] or 0.0 for r in every], "wall time (s)", "time per stage"))

    hists = [(s["stage"], s["length_histogram"]) for s in stages if s.get("length_histogram", {}).get("documents")]
    if hists:
        series = [(f"{name} ({h['documents']:,} docs)", h["bins"],
                   [c / max(1, h["documents"]) for c in h["counts"]]) for name, h in hists]
        out["lengths"] = svg_charts.data_uri(svg_charts.log_steps(
            series, "document length (UTF-8 bytes)", "share of documents", "document lengths"))

    for s in stages:
        _draw_stage(s["stage"], s.get("report_part"), out, data.setdefault("captions", {}))
    return out


def _draw_stage(name: str, part: Any, images: dict[str, str], captions: dict[str, str]) -> None:
    """A stage's own charts (``ReportChart.draw``: an SVG or a data URI) into ``images``, their captions
    into ``captions``, keyed ``<chart key>:<stage>``."""
    for chart in part.charts if part is not None else []:
        image = chart.draw()
        if image is not None:
            key = f"{chart.key}:{name}"
            images[key] = image if image.startswith("data:") else svg_charts.data_uri(image)
            captions[key] = chart.caption


def expected_charts(data: dict[str, Any]) -> set[str]:
    """Chart names the stages that ran should produce (what tests check the page against)."""
    names = {"funnel", "stage_time"} if data["stages"] else set()
    for s in data["stages"]:
        if s.get("length_histogram", {}).get("documents"):
            names.add("lengths")
        part = s.get("report_part")
        names.update(f"{c.key}:{s['stage']}" for c in (part.charts if part is not None else []))
    return names


# ---------------------------------------------------------------------------------------------
# html
# ---------------------------------------------------------------------------------------------
def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}"
    return f"{v:,}" if isinstance(v, int) else html.escape(str(v))


def _mb(v: float | None) -> str:
    return "-" if v is None else f"{v:,.2f}"


_CAPTIONS = {
    "funnel": "Documents, text MB and tokens after each stage",
    "stage_time": "Wall time per stage",
    "lengths": "Document lengths (UTF-8 bytes), per dataset stage",
}


def caption(key: str) -> str:
    """A built-in chart's human-readable caption; a stage's charts carry their own (``ReportChart.caption``)."""
    kind, _, stage = key.partition(":")
    text = _CAPTIONS.get(kind)
    return (text.format(stage) if stage else text) if text else key


def dag_svg(data: dict[str, Any]) -> str:
    """The run's DAG as a self-contained inline SVG (HTML5 inline SVG needs no namespace URL): one
    column per depth, so parallel branches sit side by side; raw inputs are dashed boxes, artifact
    edges (a tokenizer) dashed lines."""
    esc = html.escape
    stages = {s["stage"]: s for s in data["stages"]}
    es = edges(data)
    nodes: list[str] = []
    for up, down in es:
        for n in (up, down):
            if n not in nodes:
                nodes.append(n)
    for n in stages:
        if n not in nodes:
            nodes.append(n)
    depth: dict[str, int] = {}

    def d(n: str, seen: frozenset[str] = frozenset()) -> int:
        if n not in depth:
            ups = [u for u, v in es if v == n and u not in seen]
            depth[n] = 1 + max((d(u, seen | {n}) for u in ups), default=-1)
        return depth[n]

    for n in nodes:
        d(n)
    with_data = {n for n, s in stages.items() if any(f["path"].startswith("data/") for f in s.get("files", []))}
    # rows: a stage stays on its first dataset parent's row (a chain is a straight line, and an edge
    # that skips columns runs along an empty row); artifact stages (a tokenizer) drop one row below
    row: dict[str, int] = {}
    used: dict[int, set[int]] = {}
    for n in sorted(nodes, key=lambda x: (depth[x], nodes.index(x))):
        parents = [u for u, v in es if v == n]
        data_parents = [u for u in parents if u in with_data or u not in stages]
        first = (data_parents or parents or [None])[0]
        r = row[first] if first is not None else 0
        if n in stages and n not in with_data:
            r += 1
        while r in used.setdefault(depth[n], set()):
            r += 1
        row[n] = r
        used[depth[n]].add(r)
    w, h, gx, gy = 150, 40, 60, 18
    pos = {n: (10 + depth[n] * (w + gx), 10 + row[n] * (h + gy)) for n in nodes}
    width = 20 + (max(depth.values(), default=0) + 1) * (w + gx) - gx
    height = 20 + (max(row.values(), default=0) + 1) * (h + gy) - gy
    parts = [f'<svg id="dag" role="img" aria-label="pipeline DAG" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>']
    for up, down in es:
        (x1, y1), (x2, y2) = pos[up], pos[down]
        sx, sy, tx, ty = x1 + w, y1 + h / 2, x2, y2 + h / 2
        dash = ' stroke-dasharray="5,3"' if up in stages and up not in with_data else ""
        parts.append(f'<path class="edge" data-from="{esc(up)}" data-to="{esc(down)}" d="M{sx},{sy} '
                     f'C{sx + gx / 2},{sy} {tx - gx / 2},{ty} {tx},{ty}" fill="none" stroke="#555"{dash} '
                     'marker-end="url(#arrow)"/>')
    for n in nodes:
        x, y = pos[n]
        s = stages.get(n)
        label = s["type"] if s else "input"
        style = ('fill="#eef3fb" stroke="#4c72b0"' if s else 'fill="#fff" stroke="#999" stroke-dasharray="4,3"')
        parts.append(f'<g class="node" data-stage="{esc(n)}"><rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" '
                     f'{style}/><text x="{x + w / 2}" y="{y + 17}" text-anchor="middle" font-size="13" '
                     f'font-weight="bold">{esc(n)}</text><text x="{x + w / 2}" y="{y + 32}" text-anchor="middle" '
                     f'font-size="10" fill="#555">{esc(label)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(data: dict[str, Any], images: dict[str, str]) -> str:
    esc = html.escape
    fun = funnel(data)
    rows = "".join(
        f"<tr><td>{esc(r['stage'])}</td><td>{esc(r['type'])}</td><td>{esc(str(r['status']))}</td>"
        f"<td>{_num(r['documents_in'])}</td><td>{_num(r['documents_out'])}</td>"
        f"<td>{_mb(r['text_mb_in'])}</td><td>{_mb(r['text_mb_out'])}</td>"
        f"<td>{_num(r['tokens_in'])}</td><td>{_num(r['tokens_out'])}</td>"
        f"<td>{_num(r['wall_time_s'])}</td><td>{_num(r['mb_per_s'])}</td><td>{_num(r['tokens_per_s'])}</td>"
        f"<td>{_num(r['docs_per_s'])}</td>"
        f"<td class=l>{esc('; '.join(f'{k}: {v:,}' for k, v in r['reasons'].items()) or '-')}</td></tr>"
        for r in fun)
    dag = dag_svg(data)
    sections = []
    for key, uri in images.items():
        cap = esc(data.get("captions", {}).get(key) or caption(key))
        sections.append(f'<figure id="{esc(key)}"><img alt="{cap}" data-chart="{esc(key)}" src="{uri}">'
                        f"<figcaption>{cap}</figcaption></figure>")
    for s in data["stages"]:
        part = s.get("report_part")
        for sec in part.sections if part is not None else []:
            items = "".join(f"<li><code>{esc(text)}</code> <small>{esc(note)}</small></li>" for text, note in sec.items)
            sections.append(f'<h3 id="{esc(sec.key)}:{esc(s["stage"])}">{esc(sec.title)}</h3><ul>{items}</ul>')
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tokenmill run report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}td:first-child,td:nth-child(2),td.l{{text-align:left}}
figure{{margin:1.5em 0}}img{{max-width:100%}}code{{background:#f4f4f4}}</style></head>
<body><h1>tokenmill run report</h1><p>{esc(data['output'])}</p>
<h2>DAG</h2>{dag}
<h2>Stages and funnel</h2><table><tr><th>stage</th><th>type</th><th>status</th><th>docs in</th><th>docs out</th>
<th>text MB in (UTF-8)</th><th>text MB out (UTF-8)</th><th>tokens in</th><th>tokens out</th><th>seconds</th>
<th>text MB/s (UTF-8)</th><th>tokens/s</th><th>docs/s</th><th>where rows went</th></tr>{rows}</table>
<p><small>MB everywhere in this report: 10<sup>6</sup> UTF-8 bytes of the <code>text</code> column of a
stage's dataset (text stages); token stages are measured in tokens. "-": the stage has no such figure (it
reads raw files, or writes no text).</small></p>
<h2>Charts</h2>{''.join(sections)}</body></html>
"""


def build_report(output: Location | Path) -> dict[str, Any]:
    """Write report.json and report.html under ``output``; returns the report data."""
    output = Location.of(output)
    data = collect(output)
    images = charts(data)
    summary = {"output": data["output"], "charts": sorted(images), "funnel": funnel(data), "stages": [
        {**{k: s.get(k) for k in ("stage", "type", "status", "rows_in", "rows_out", "rejected", "dropped",
                                  "bytes_in", "bytes_out", "wall_time_s", "stats")},
         "length_histogram": s.get("length_histogram"),
         **({"details": s["report_part"].details} if s.get("report_part") is not None and s["report_part"].details
            else {})} for s in data["stages"]]}
    write_json_atomic(output / "report.json", summary)
    (output / "report.html").write_text(render_html(data, images))
    return summary


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="a pipeline output directory")


def report_command(args: argparse.Namespace, console: Any) -> int:
    from pipeline.errors import TokenmillError

    try:
        out = Location.parse(args.output, Path.cwd())
    except LocationError as exc:
        raise TokenmillError(str(exc)) from None
    if not out.is_dir():
        raise TokenmillError(f"{out}: not a directory")
    if not any((d / "manifest.json").exists() for d in out.iterdir()):
        raise TokenmillError(f"{out}: no stage manifests found (is this a pipeline output directory?)")
    summary = build_report(out)
    console.print(f"wrote {out / 'report.html'} ({len(summary['charts'])} charts) and {out / 'report.json'}")
    return 0
