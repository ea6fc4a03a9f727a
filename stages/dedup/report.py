"""Dedup's part of the run report: cluster sizes and what was removed per source and per language
(a user must see when dedup wipes out most of one source)."""

from __future__ import annotations

from typing import Any

from pipeline.sdk import Location, ReportChart, ReportPart

#: at most this many sources or languages per removal chart (the largest removals)
TOP = 30


def report_part(manifest: dict[str, Any], stage_dir: Location) -> ReportPart:
    st = manifest.get("stats", {})
    name = manifest["stage"]
    charts = []
    if hist := st.get("cluster_size_histogram"):
        charts.append(ReportChart("clusters", f"{name}: near-duplicate cluster sizes",
                                  lambda plt: _clusters_chart(plt, name, hist)))
    for column in ("source", "lang"):
        table = st.get(f"removed_by_{column}") or {}
        if any(g.get("removed") for g in table.values()):
            charts.append(ReportChart(f"removed_by_{column}", f"{name}: share of documents removed per {column}",
                                      lambda plt, c=column, t=table: _removed_chart(plt, name, c, t)))
    notes = {f"removed: {k}": v for k, v in (("exact copies", st.get("removed_exact")),
                                             ("near duplicates", st.get("removed_near"))) if v}
    return ReportPart(charts=charts, notes=notes)


def _clusters_chart(plt: Any, name: str, hist: dict[str, int]) -> Any:
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar([str(k) for k in hist], list(hist.values()), color="#dd8452")
    ax.set_yscale("log")
    ax.set_xlabel("cluster size (documents)")
    ax.set_ylabel("clusters")
    ax.set_title(f"{name}: near-duplicate cluster sizes")
    return fig


def _removed_chart(plt: Any, name: str, column: str, table: dict[str, dict[str, Any]]) -> Any:
    top = sorted(table, key=lambda v: -table[v].get("removed", 0))[:TOP]
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(top) + 2), 3))
    ax.bar(top, [100 * table[v]["share"] for v in top], color="#dd8452")
    ax.set_ylabel("documents removed (%)")
    ax.tick_params(axis="x", rotation=90)
    ax.set_title(f"{name}: removed per {column} (largest {len(top)})")
    return fig
