"""Balance's part of the run report: language shares before, target and after balancing."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.sdk import Location, ReportChart, ReportPart


def report_part(manifest: dict[str, Any], stage_dir: Location) -> ReportPart:
    st = manifest.get("stats", {})
    name = manifest["stage"]
    if not st.get("languages"):
        return ReportPart()
    return ReportPart(charts=[ReportChart("languages", f"{name}: language shares before, target and after balancing",
                                          lambda plt: _languages_chart(plt, name, st))])


def _languages_chart(plt: Any, name: str, st: dict[str, Any]) -> Any:
    table = st["languages"]
    langs = sorted(table, key=lambda x: -table[x].get("share_before", 0))[:40]
    xs = np.arange(len(langs))
    fig, ax = plt.subplots(figsize=(11, 3.5))
    ax.bar(xs - 0.27, [100 * table[x].get("share_before", 0) for x in langs], width=0.27, label="before")
    ax.bar(xs, [100 * table[x].get("share_target", 0) for x in langs], width=0.27, label="target")
    if all("byte_share_after" in table[x] for x in langs) and st.get("unit") == "bytes":
        ax.bar(xs + 0.27, [100 * table[x]["byte_share_after"] for x in langs], width=0.27, label="after (sampled)")
    ax.set_xticks(xs, langs, rotation=90)
    ax.set_ylabel(f"share of {st.get('unit', 'data')} (%)")
    ax.set_title(f"{name}: language distribution before and after balancing ({st.get('strategy')})")
    ax.legend()
    return fig
