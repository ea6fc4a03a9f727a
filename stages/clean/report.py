"""Token cleaning's part of the run report: share masked by scorer and language, example spans."""

from __future__ import annotations

from typing import Any

from pipeline.sdk import Location, ReportChart, ReportPart, ReportSection, svg_charts


def report_part(manifest: dict[str, Any], stage_dir: Location) -> ReportPart:
    st = manifest.get("stats", {})
    name = manifest["stage"]
    part = ReportPart(tokens_out=st.get("tokens"))
    if st.get("masked_tokens"):
        part.notes["masked tokens (kept as context)"] = st["masked_tokens"]
    if "masked_share" in st:
        part.charts.append(ReportChart(
            "masked", f"{name}: share of tokens masked from the loss, by scorer and by language",
            lambda: _masked_chart(name, st)))
    samples = st.get("masked_samples") or []
    if samples:
        part.sections.append(ReportSection(
            "masked-spans", f"{name}: example masked spans",
            [(str(x.get("context") or x.get("text", ""))[:300], ", ".join(x.get("rules", []))) for x in samples[:12]]))
    return part


def _masked_chart(name: str, st: dict[str, Any]) -> str:
    by_scorer = st.get("masked_share_by_scorer") or {}
    by_lang = dict(list((st.get("masked_share_by_lang") or {}).items())[:30])
    return svg_charts.bar_row(
        [("by scorer", ["all", *by_scorer], [100 * st["masked_share"], *(100 * v for v in by_scorer.values())], 45),
         ("by language", list(by_lang), [100 * v for v in by_lang.values()], 90)],
        f"{name}: share of tokens masked from the loss", ylabel="tokens masked (%)", color="#c44e52")
