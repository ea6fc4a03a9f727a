"""Run report: ``<output>/report.json`` and a self-contained ``<output>/report.html`` built from the manifests.

Charts are drawn with matplotlib (Agg) and inlined as base64 PNG, so the page needs no network.
Each section appears only when the stage that feeds it ran: the funnel and the stage table from
every manifest, language shares from ``balance``, cluster sizes from ``dedup``, token premiums and
bytes per token from ``train_tokenizer``, fill and padding from ``pack``.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from pipeline.manifest import read_manifest, write_json_atomic


def collect(output: Path) -> dict[str, Any]:
    """Every stage manifest under ``output``, in run order when ``run.json`` has it."""
    order: list[str] = []
    run = output / "run.json"
    if run.exists():
        order = [s["name"] for s in json.loads(run.read_text())["stages"]]
    names = order or sorted(p.name for p in output.iterdir() if (p / "manifest.json").exists())
    stages = []
    for name in names:
        m = read_manifest(output / name)
        if m is None:
            continue
        extra: dict[str, Any] = {}
        if m["type"] == "train_tokenizer" and (output / name / "report.json").exists():
            extra["tokenizer_report"] = json.loads((output / name / "report.json").read_text())
        stages.append({**m, **extra})
    return {"output": str(output), "stages": stages}


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def charts(data: dict[str, Any]) -> dict[str, str]:
    """Chart name -> inlined PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    stages = data["stages"]
    if stages:
        fig, ax = plt.subplots(figsize=(8, 3))
        ax.bar([s["stage"] for s in stages], [s.get("rows_out", 0) for s in stages], color="#4c72b0")
        ax.set_ylabel("rows out")
        ax.set_title("funnel: rows after each stage")
        ax.tick_params(axis="x", rotation=30)
        out["funnel"] = _png(fig)
    for s in stages:
        st = s.get("stats", {})
        if s["type"] == "balance" and st.get("languages"):
            langs = list(st["languages"])[:30]
            before = [100 * st["languages"][x]["share_before"] for x in langs]
            after = [100 * st["languages"][x]["share_target"] for x in langs]
            fig, ax = plt.subplots(figsize=(10, 3.5))
            xs = range(len(langs))
            ax.bar([x - 0.2 for x in xs], before, width=0.4, label="before")
            ax.bar([x + 0.2 for x in xs], after, width=0.4, label="after")
            ax.set_xticks(list(xs), langs, rotation=90)
            ax.set_ylabel(f"share of {st.get('unit')} (%)")
            ax.set_title(f"{s['stage']}: language shares ({st.get('strategy')})")
            ax.legend()
            out[f"languages:{s['stage']}"] = _png(fig)
        if s["type"] == "dedup" and st.get("cluster_size_histogram"):
            hist = st["cluster_size_histogram"]
            fig, ax = plt.subplots(figsize=(6, 3))
            ax.bar(list(hist), list(hist.values()), color="#dd8452")
            ax.set_xlabel("cluster size")
            ax.set_ylabel("clusters")
            ax.set_title(f"{s['stage']}: duplicate clusters")
            out[f"clusters:{s['stage']}"] = _png(fig)
        if s["type"] == "train_tokenizer" and s.get("tokenizer_report"):
            rep = s["tokenizer_report"]
            prem = rep.get("token_premium", {}).get("premiums", {})
            if prem:
                items = sorted(((k, v) for k, v in prem.items() if v), key=lambda kv: kv[1])
                fig, ax = plt.subplots(figsize=(10, 3.5))
                ax.plot(range(len(items)), [v for _, v in items], color="#55a868")
                ax.axhline(1.0, color="grey", lw=0.8)
                ax.set_ylabel("token premium vs reference")
                ax.set_xlabel(f"{len(items)} languages, sorted")
                ax.set_title(f"{s['stage']}: token premiums on parallel text")
                out[f"premiums:{s['stage']}"] = _png(fig)
            per = rep.get("per_language", {})
            if per:
                langs = sorted(per, key=lambda k: -per[k]["bytes_per_token"])[:30]
                fig, ax = plt.subplots(figsize=(10, 3))
                ax.bar(langs, [per[k]["bytes_per_token"] for k in langs], color="#8172b3")
                ax.set_ylabel("bytes per token")
                ax.tick_params(axis="x", rotation=90)
                ax.set_title(f"{s['stage']}: compression per language (held out)")
                out[f"bytes_per_token:{s['stage']}"] = _png(fig)
        if s["type"] == "pack" and st.get("sequences"):
            fig, ax = plt.subplots(figsize=(5, 3))
            real, pad = st["tokens"], st["padding_tokens"]
            ax.bar(["tokens", "padding"], [real, pad], color=["#4c72b0", "#c44e52"])
            ax.set_title(f"{s['stage']}: {st['method']} @ {st['seq_len']}, padding {100 * st['padding_share']:.2f}%")
            out[f"packing:{s['stage']}"] = _png(fig)
    return out


def render_html(data: dict[str, Any], images: dict[str, str]) -> str:
    rows = []
    for s in data["stages"]:
        secs = s.get("wall_time_s") or 0
        mbps = (s.get("bytes_in", 0) / 1e6 / secs) if secs else 0
        dropped = ", ".join(f"{k}: {v:,}" for k, v in {**s.get("dropped", {}), **s.get("rejected_by_reason", {})}
                            .items()) or "-"
        rows.append(f"<tr><td>{html.escape(s['stage'])}</td><td>{html.escape(s['type'])}</td>"
                    f"<td>{s.get('status')}</td><td>{s.get('rows_in', 0):,}</td><td>{s.get('rows_out', 0):,}</td>"
                    f"<td>{html.escape(dropped)}</td><td>{secs:.1f}</td><td>{mbps:.1f}</td></tr>")
    figs = "\n".join(f'<figure><img alt="{html.escape(k)}" data-chart="{html.escape(k)}" src="{v}">'
                     f"<figcaption>{html.escape(k)}</figcaption></figure>" for k, v in images.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tokenmill run report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,td:nth-child(2){{text-align:left}}
figure{{margin:1.5em 0}}img{{max-width:100%}}</style></head>
<body><h1>tokenmill run report</h1><p>{html.escape(data['output'])}</p>
<h2>Stages</h2><table><tr><th>stage</th><th>type</th><th>status</th><th>rows in</th><th>rows out</th>
<th>dropped / rejected</th><th>seconds</th><th>MB/s in</th></tr>{''.join(rows)}</table>
<h2>Charts</h2>{figs}</body></html>
"""


def build_report(output: Path) -> dict[str, Any]:
    """Write report.json and report.html under ``output``; returns the report data."""
    data = collect(output)
    images = charts(data)
    summary = {"output": data["output"], "charts": sorted(images), "stages": [
        {k: s.get(k) for k in ("stage", "type", "status", "rows_in", "rows_out", "rejected", "dropped",
                               "bytes_in", "bytes_out", "wall_time_s", "stats")} for s in data["stages"]]}
    write_json_atomic(output / "report.json", summary)
    (output / "report.html").write_text(render_html(data, images), encoding="utf-8")
    return summary


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="a pipeline output directory")


def report_command(args: argparse.Namespace, console: Any) -> int:
    from pipeline.errors import TokenmillError

    out = Path(args.output)
    if not out.is_dir():
        raise TokenmillError(f"{out}: not a directory")
    summary = build_report(out)
    console.print(f"wrote {out / 'report.html'} ({len(summary['charts'])} charts) and {out / 'report.json'}")
    return 0
