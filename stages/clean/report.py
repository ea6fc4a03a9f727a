"""Token cleaning's part of the run report: share masked by scorer and language, example spans."""

from __future__ import annotations

from typing import Any

from pipeline.sdk import Location, ReportChart, ReportPart, ReportSection


def report_part(manifest: dict[str, Any], stage_dir: Location) -> ReportPart:
    st = manifest.get("stats", {})
    name = manifest["stage"]
    part = ReportPart(tokens_out=st.get("tokens"))
    if st.get("masked_tokens"):
        part.notes["masked tokens (kept as context)"] = st["masked_tokens"]
    if "masked_share" in st:
        part.charts.append(ReportChart(
            "masked", f"{name}: share of tokens masked from the loss, by scorer and by language",
            lambda plt: _masked_chart(plt, name, st)))
    samples = st.get("masked_samples") or []
    if samples:
        part.sections.append(ReportSection(
            "masked-spans", f"{name}: example masked spans",
            [(str(x.get("context") or x.get("text", ""))[:300], ", ".join(x.get("rules", []))) for x in samples[:12]]))
    return part


def _masked_chart(plt: Any, name: str, st: dict[str, Any]) -> Any:
    by_scorer = st.get("masked_share_by_scorer") or {}
    by_lang = dict(list((st.get("masked_share_by_lang") or {}).items())[:30])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), gridspec_kw={"width_ratios": [1, 3]})
    axes[0].bar(["all", *by_scorer], [100 * st["masked_share"], *(100 * v for v in by_scorer.values())],
                color="#c44e52")
    axes[0].set_ylabel("tokens masked (%)")
    axes[0].tick_params(axis="x", rotation=45)
    axes[0].set_title("by scorer")
    axes[1].bar(list(by_lang), [100 * v for v in by_lang.values()], color="#c44e52")
    axes[1].tick_params(axis="x", rotation=90)
    axes[1].set_title("by language")
    fig.suptitle(f"{name}: share of tokens masked from the loss", y=1.04)
    return fig
