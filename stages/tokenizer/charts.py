"""The tokenizer stage's part of the run report, drawn from its ``report.json``: token premiums on
parallel text and bytes per token per language on held-out documents."""

from __future__ import annotations

from typing import Any

from pipeline.sdk import Location, ReportChart, ReportPart, read_json, svg_charts


def report_part(manifest: dict[str, Any], stage_dir: Location) -> ReportPart:
    quality = read_json(stage_dir / "report.json")
    if not quality:
        return ReportPart()
    name = manifest["stage"]
    part = ReportPart(details={"tokenizer_report": quality})
    premiums = quality.get("token_premium", {}).get("premiums", {})
    if any(premiums.values()):
        part.charts.append(ReportChart("premiums", f"{name}: token premiums on parallel text",
                                       lambda: _premiums_chart(name, premiums)))
    per = {k: v for k, v in quality.get("per_language", {}).items() if isinstance(v, dict) and v.get("bytes_per_token")}
    if per:
        part.charts.append(ReportChart("bytes_per_token", f"{name}: bytes per token per language (held-out documents)",
                                       lambda: _bytes_per_token_chart(name, per)))
    return part


def _premiums_chart(name: str, premiums: dict[str, float]) -> str:
    """Premiums sorted, on a log axis, the cheapest, median and dearest language named, 1.0 marked."""
    items = sorted(((k, v) for k, v in premiums.items() if v), key=lambda kv: kv[1])
    notes = {i: items[i][0] for i in {0, len(items) // 2, len(items) - 1}}
    return svg_charts.line([v for _, v in items], f"{name}: token premiums on parallel text",
                           f"{len(items)} languages, sorted", "token premium vs reference", notes=notes,
                           reference=1.0, log=True, color="#55a868")


def _bytes_per_token_chart(name: str, per: dict[str, dict[str, Any]]) -> str:
    langs = sorted(per, key=lambda k: -per[k]["bytes_per_token"])[:40]
    return svg_charts.bars(langs, [per[k]["bytes_per_token"] for k in langs],
                           f"{name}: bytes per token per language (held-out documents)",
                           ylabel="bytes per token", color="#8172b3")
