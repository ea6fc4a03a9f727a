"""Balance's part of the run report: language shares before, target and after balancing."""

from __future__ import annotations

from typing import Any

from pipeline.sdk import Location, ReportChart, ReportPart, svg_charts


def report_part(manifest: dict[str, Any], stage_dir: Location) -> ReportPart:
    st = manifest.get("stats", {})
    name = manifest["stage"]
    if not st.get("languages"):
        return ReportPart()
    return ReportPart(charts=[ReportChart("languages", f"{name}: language shares before, target and after balancing",
                                          lambda: _languages_chart(name, st))])


def _languages_chart(name: str, st: dict[str, Any]) -> str:
    table = st["languages"]
    langs = sorted(table, key=lambda x: -table[x].get("share_before", 0))[:40]
    series = [("before", [100 * table[x].get("share_before", 0) for x in langs]),
              ("target", [100 * table[x].get("share_target", 0) for x in langs])]
    if all("byte_share_after" in table[x] for x in langs) and st.get("unit") == "bytes":
        series.append(("after (sampled)", [100 * table[x]["byte_share_after"] for x in langs]))
    return svg_charts.grouped_bars(
        langs, series, f"{name}: language distribution before and after balancing ({st.get('strategy')})",
        ylabel=f"share of {st.get('unit', 'data')} (%)")
