"""The tokenizer stage's part of the run report, drawn from its ``report.json``: token premiums on
parallel text and bytes per token per language on held-out documents."""

from __future__ import annotations

from typing import Any

from pipeline.sdk import Location, ReportChart, ReportPart, read_json


def report_part(manifest: dict[str, Any], stage_dir: Location) -> ReportPart:
    quality = read_json(stage_dir / "report.json")
    if not quality:
        return ReportPart()
    name = manifest["stage"]
    part = ReportPart(details={"tokenizer_report": quality})
    premiums = quality.get("token_premium", {}).get("premiums", {})
    if any(premiums.values()):
        part.charts.append(ReportChart("premiums", f"{name}: token premiums on parallel text",
                                       lambda plt: _premiums_chart(plt, name, premiums)))
    per = {k: v for k, v in quality.get("per_language", {}).items() if isinstance(v, dict) and v.get("bytes_per_token")}
    if per:
        part.charts.append(ReportChart("bytes_per_token", f"{name}: bytes per token per language (held-out documents)",
                                       lambda plt: _bytes_per_token_chart(plt, name, per)))
    return part


def _premiums_chart(plt: Any, name: str, premiums: dict[str, float]) -> Any:
    items = sorted(((k, v) for k, v in premiums.items() if v), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(range(len(items)), [v for _, v in items], color="#55a868")
    ax.axhline(1.0, color="grey", lw=0.8)
    for i in {0, len(items) // 2, len(items) - 1}:
        ax.annotate(items[i][0], (i, items[i][1]), fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("token premium vs reference")
    ax.set_xlabel(f"{len(items)} languages, sorted")
    ax.set_title(f"{name}: token premiums on parallel text")
    return fig


def _bytes_per_token_chart(plt: Any, name: str, per: dict[str, dict[str, Any]]) -> Any:
    langs = sorted(per, key=lambda k: -per[k]["bytes_per_token"])[:40]
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.bar(langs, [per[k]["bytes_per_token"] for k in langs], color="#8172b3")
    ax.set_ylabel("bytes per token")
    ax.tick_params(axis="x", rotation=90)
    ax.set_title(f"{name}: bytes per token per language (held-out documents)")
    return fig
