"""Packing's part of the run report: fill and padding, and where documents were cut."""

from __future__ import annotations

from typing import Any

from pipeline.sdk import Location, ReportChart, ReportPart, svg_charts


def report_part(manifest: dict[str, Any], stage_dir: Location) -> ReportPart:
    st = manifest.get("stats", {})
    name = manifest["stage"]
    notes = {k: st[k] for k in ("documents_split", "documents_truncated", "tokens_truncated", "padding_tokens")
             if st.get(k)}
    charts = []
    if st.get("sequences"):
        charts.append(ReportChart("packing", f"{name}: packing fill and padding",
                                  lambda: _packing_chart(name, st)))
    return ReportPart(tokens_out=st.get("tokens"), notes=notes, charts=charts)


def _packing_chart(name: str, st: dict[str, Any]) -> str:
    real, pad = st.get("tokens", 0), st.get("padding_tokens", 0)
    fill = 100 * (1 - st.get("padding_share", 0))
    return svg_charts.stacked_hbar(
        "slots", [(f"tokens ({real:,})", real, "#4c72b0"), (f"padding ({pad:,})", pad, "#c44e52")],
        f"{name}: {st.get('method', '')} @ {st.get('seq_len', '?')}: fill {fill:.2f}%, "
        f"{st.get('avg_documents_per_sequence', 0):.2f} docs/sequence")
