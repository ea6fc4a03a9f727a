"""Dedup's part of the run report: cluster sizes and what was removed per source and per language
(a user must see when dedup wipes out most of one source)."""

from __future__ import annotations

from typing import Any

from pipeline.sdk import Location, ReportChart, ReportPart, svg_charts

#: at most this many sources or languages per removal chart (the largest removals)
TOP = 30
COLOR = "#dd8452"


def report_part(manifest: dict[str, Any], stage_dir: Location) -> ReportPart:
    st = manifest.get("stats", {})
    name = manifest["stage"]
    charts = []
    if hist := st.get("cluster_size_histogram"):
        charts.append(ReportChart("clusters", f"{name}: near-duplicate cluster sizes",
                                  lambda: _clusters_chart(name, hist)))
    for column in ("source", "lang"):
        table = st.get(f"removed_by_{column}") or {}
        if any(g.get("removed") for g in table.values()):
            charts.append(ReportChart(f"removed_by_{column}", f"{name}: share of documents removed per {column}",
                                      lambda c=column, t=table: _removed_chart(name, c, t)))
    notes = {f"removed: {k}": v for k, v in (("exact copies", st.get("removed_exact")),
                                             ("near duplicates", st.get("removed_near"))) if v}
    return ReportPart(charts=charts, notes=notes)


def _clusters_chart(name: str, hist: dict[str, int]) -> str:
    """Clusters per size on a log axis: a few big clusters beside thousands of pairs."""
    return svg_charts.bars([str(k) for k in hist], list(hist.values()), f"{name}: near-duplicate cluster sizes",
                           ylabel="clusters", xlabel="cluster size (documents)", log=True, rotate=0, color=COLOR)


def _removed_chart(name: str, column: str, table: dict[str, dict[str, Any]]) -> str:
    top = sorted(table, key=lambda v: -table[v].get("removed", 0))[:TOP]
    return svg_charts.bars(top, [100 * table[v]["share"] for v in top],
                           f"{name}: removed per {column} (largest {len(top)})",
                           ylabel="documents removed (%)", color=COLOR)
