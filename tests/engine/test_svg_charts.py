"""The SVG primitives the stages draw their report charts with (:mod:`pipeline.svg_charts`), and each
stage's charts drawn from a small manifest: well-formed SVG whose bars and points follow the values,
with escaped labels. No Ray, no run: the drawing is pure string work."""

from __future__ import annotations

import math
from pathlib import Path
from xml.etree import ElementTree

import pytest

from pipeline import svg_charts
from pipeline.locations import Location

NS = "{http://www.w3.org/2000/svg}"


def _bars(svg: str) -> list[ElementTree.Element]:
    """The data bars: rects that carry a tooltip (backgrounds, swatches and grid have none)."""
    return [r for r in ElementTree.fromstring(svg).iter(f"{NS}rect") if r.find(f"{NS}title") is not None]


def _texts(svg: str) -> list[str]:
    return [t.text or "" for t in ElementTree.fromstring(svg).iter(f"{NS}text")]


def test_bars_draw_one_bar_per_value_taller_for_larger_values():
    svg = svg_charts.bars(["a", "b", "c"], [1.0, 4.0, 2.0], "title", ylabel="share (%)")
    heights = [float(r.get("height")) for r in _bars(svg)]
    assert len(heights) == 3
    assert heights[1] > heights[2] > heights[0] > 0
    assert heights[1] == pytest.approx(2 * heights[2], abs=0.2)  # linear from 0
    assert {"title", "share (%)", "a", "b", "c"} <= set(_texts(svg))


def test_log_bars_are_taller_for_larger_values_by_decades_not_ratios():
    svg = svg_charts.bars(["2", "3", "10"], [1000, 10, 1], "clusters", log=True)
    h1000, h10, h1 = (float(r.get("height")) for r in _bars(svg))
    assert h1000 > h10 > h1 > 0  # the smallest value still shows on a log axis
    assert h1000 - h10 == pytest.approx(2 * (h10 - h1), abs=0.3)  # equal steps per decade
    assert {"1", "10", "100", "1k"} <= set(_texts(svg))


def test_a_chart_is_as_wide_as_its_title():
    title = "tokenizer: bytes per token per language (held-out documents)"
    for svg in (svg_charts.bars(["a", "b"], [1, 2], title),
                svg_charts.bar_row([("p", ["a"], [1], 0), ("q", ["b"], [2], 0)], title)):
        assert float(ElementTree.fromstring(svg).get("width")) >= svg_charts.TITLE_CHAR_W * len(title)


def test_labels_are_escaped_and_long_ones_shortened():
    long = "x" * 40
    svg = svg_charts.bars(["a<b&c", long], [1, 2], "t <&> \"q\"")
    texts = _texts(svg)
    assert "a<b&c" in texts and "t <&> \"q\"" in texts
    assert long not in texts and any(t.startswith("xxxx") and t.endswith("\u2026") for t in texts)
    assert any(long in (r.find(f"{NS}title").text or "") for r in _bars(svg))  # the full label in the tooltip


def test_grouped_bars_have_a_bar_per_label_and_series_and_a_legend():
    svg = svg_charts.grouped_bars(["en", "fr"], [("before", [50, 30]), ("target", [40, 40]), ("after", [41, 39])],
                                  "shares", ylabel="%")
    bars = _bars(svg)
    assert len(bars) == 6
    assert len({r.get("fill") for r in bars}) == 3  # a colour per series
    assert {"before", "target", "after"} <= set(_texts(svg))
    xs = [float(r.get("x")) for r in bars]
    assert xs[0] < xs[2] < xs[4] < xs[1]  # en's three bars side by side, then fr's


def test_bar_row_puts_panels_side_by_side_under_one_title():
    svg = svg_charts.bar_row([("by scorer", ["all", "rep"], [30, 10], 45),
                              ("by language", ["en", "fr", "de"], [5, 20, 10], 90)], "masked", ylabel="%")
    bars = _bars(svg)
    assert len(bars) == 5
    assert max(float(r.get("x")) for r in bars[:2]) < min(float(r.get("x")) for r in bars[2:])
    assert {"masked", "by scorer", "by language"} <= set(_texts(svg))


def test_stacked_hbar_parts_end_to_end_in_proportion():
    svg = svg_charts.stacked_hbar("slots", [("tokens (900)", 900, "#4c72b0"), ("padding (100)", 100, "#c44e52")],
                                  "fill")
    tokens, pad = _bars(svg)
    assert float(tokens.get("x")) + float(tokens.get("width")) == pytest.approx(float(pad.get("x")), abs=0.2)
    assert float(tokens.get("width")) == pytest.approx(9 * float(pad.get("width")), abs=0.5)
    assert {"tokens (900)", "padding (100)", "slots"} <= set(_texts(svg))


def test_line_on_a_log_axis_with_notes_and_a_reference():
    values = [0.5, 1.0, 2.0, 8.0]
    svg = svg_charts.line(values, "premiums", "4 languages, sorted", "premium", notes={0: "lo", 3: "hi"},
                          reference=1.0, log=True)
    root = ElementTree.fromstring(svg)
    points = [tuple(map(float, p.split(","))) for p in root.find(f"{NS}polyline").get("points").split()]
    assert len(points) == 4 and [x for x, _ in points] == sorted(x for x, _ in points)
    ys = [y for _, y in points]
    assert ys == sorted(ys, reverse=True)  # larger values higher up (smaller y)
    assert (ys[2] - ys[3]) == pytest.approx(2 * (ys[1] - ys[2]), abs=0.2)  # log: 2->8 is two doublings
    ref = [float(ln.get("y1")) for ln in root.iter(f"{NS}line") if ln.get("stroke") == "grey"]
    assert ref == [pytest.approx(ys[1], abs=0.1)]  # the reference line passes through the value 1.0
    assert {"lo", "hi", "premium", "4 languages, sorted"} <= set(_texts(svg))
    assert len(list(root.iter(f"{NS}circle"))) == 2


def test_log_axis_ticks_span_the_range():
    ticks, frac = svg_charts._log_axis(-0.3, 1.0)
    assert ticks == [1.0, 2.0, 5.0, 10.0]
    assert frac(10.0) == pytest.approx(1.0) and frac(10 ** -0.3) == pytest.approx(0.0)
    assert frac(0.0) == 0.0 and frac(-1.0) == 0.0
    many, _ = svg_charts._log_axis(0.0, 5.0)
    assert many == [10.0 ** p for p in range(6)] and all(math.log10(t).is_integer() for t in many)


# each stage's charts, from a small manifest (the stats its run writes)
def _draw_all(part) -> dict[str, str]:
    return {c.key: c.draw() for c in part.charts}


def test_stage_charts_draw_svg_with_their_titles(tmp_path):
    from stages.balance.report import report_part as balance
    from stages.clean.report import report_part as clean
    from stages.dedup.report import report_part as dedup
    from stages.pack.report import report_part as pack

    here = Location.of(tmp_path)
    langs = {"en": {"share_before": 0.7, "share_target": 0.5, "byte_share_after": 0.52},
             "fr": {"share_before": 0.3, "share_target": 0.5, "byte_share_after": 0.48}}
    drawn = {
        **_draw_all(balance({"stage": "bal", "stats": {"languages": langs, "unit": "bytes", "strategy": "unimax"}},
                            here)),
        **_draw_all(dedup({"stage": "dd", "stats": {
            "cluster_size_histogram": {"2": 500, "3": 20, "9": 1},
            "removed_by_source": {"web": {"removed": 9, "share": 0.09}, "<books>": {"removed": 1, "share": 0.5}},
        }}, here)),
        **_draw_all(pack({"stage": "pk", "stats": {"sequences": 10, "tokens": 900, "padding_tokens": 100,
                                                   "padding_share": 0.1, "method": "best_fit", "seq_len": 100}},
                         here)),
        **_draw_all(clean({"stage": "cl", "stats": {"masked_share": 0.2, "masked_share_by_scorer": {"rep": 0.1},
                                                    "masked_share_by_lang": {"en": 0.3}}}, here)),
    }
    assert set(drawn) == {"languages", "clusters", "removed_by_source", "packing", "masked"}
    assert len(_bars(drawn["languages"])) == 6  # before, target, after per language
    assert len(_bars(drawn["clusters"])) == 3
    assert "<books>" in _texts(drawn["removed_by_source"])
    assert "pk: best_fit @ 100: fill 90.00%, 0.00 docs/sequence" in _texts(drawn["packing"])
    assert len(_bars(drawn["masked"])) == 3  # all, rep | en


def test_tokenizer_charts_draw_premiums_and_bytes_per_token(tmp_path):
    import json

    from stages.tokenizer.charts import report_part

    quality = {"token_premium": {"premiums": {"eng": 1.0, "fra": 1.2, "mya": 6.0, "zho": 0.8}},
               "per_language": {"en": {"bytes_per_token": 4.1}, "zh": {"bytes_per_token": 2.2}}}
    (tmp_path / "report.json").write_text(json.dumps(quality))
    drawn = _draw_all(report_part({"stage": "tok"}, Location.of(tmp_path)))
    assert set(drawn) == {"premiums", "bytes_per_token"}
    assert {"zho", "fra", "mya"} <= set(_texts(drawn["premiums"]))  # lowest, median, highest named
    assert len(_bars(drawn["bytes_per_token"])) == 2


def test_the_report_path_imports_no_plotting_library():
    """matplotlib is no dependency any more: the report and every stage's chart module must not need it."""
    import subprocess
    import sys

    code = ("import sys, pipeline.report, stages.balance.report, stages.dedup.report, stages.pack.report, "
            "stages.clean.report, stages.tokenizer.charts; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('matplotlib', 'PIL')))")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
