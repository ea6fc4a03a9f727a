"""The run report: a real quickstart-shaped chain on a real local Ray writes a self-contained report.html.

Checks: no external URL anywhere in src/href (the page must open with no network), every chart of every
stage that ran is present as an inlined image, the funnel reconciles with the manifests, and
``pipeline report`` rebuilds the same chart set; a shorter chain gets only the charts its stages feed.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from xml.etree import ElementTree

import orjson
import pytest
import zstandard
from conftest import DATA_DIR, REPO_ROOT

from pipeline.cli import main
from pipeline.report import build_report, collect, expected_charts

CHAIN = """
name: report
seed: 3
output: out
inputs:
  docs: {paths: [docs.jsonl.zst], keep_fields: [locale]}
  udhr: {kind: artifact, path: udhr.jsonl.zst}
stages:
  - {name: ingest, type: ingest, inputs: [docs], shard_mb: 0.25}
  - {name: dedup, type: dedup, inputs: [ingest], near: {threshold: 0.8}}
  - name: balance
    type: balance
    inputs: [dedup]
    langid: {mode: missing}
    strategy: unimax
    unit: bytes
    budget: 300000
    max_epochs: 2
  - name: tok
    type: train_tokenizer
    inputs: [balance]
    vocab_size: 1000
    sample_mb: 0.15             # leaves held-out documents for the bytes-per-token chart
    parallel_text: udhr
    report: {reference_lang: eng, heldout_docs: 100}
  - {name: encode, type: encode, inputs: [balance], tokenizer: tok, add_eos: true}
  - name: clean
    type: clean
    inputs: [encode]
    tokenizer: tok
    repetition: {keep_repeats: 3}
    boilerplate: {min_docs: 5}
  - {name: pack, type: pack, inputs: [clean], method: best_fit, seq_len: 512, writers: []}
"""

URL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.I)


def sample_docs(n: int) -> list[dict]:
    raw = (REPO_ROOT / "yaml_specs" / "data" / "debian-sample.jsonl.zst").read_bytes()
    rows = [orjson.loads(x) for x in zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read().splitlines()]
    rows = [r for r in rows if len(r["text"]) < 4000][:n]
    # exact and near copies so dedup has clusters to draw
    dups = [{**r, "id": f"{r['id']}-copy"} for r in rows[:20]]
    near = [{**r, "id": f"{r['id']}-near", "text": r["text"] + " (mirror)"} for r in rows[20:30]]
    return rows + dups + near


def write_inputs(d, n: int = 700) -> None:
    (d / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        b"".join(orjson.dumps(r) + b"\n" for r in sample_docs(n))))
    shutil.copy(DATA_DIR / "udhr_articles_1-3.jsonl.zst", d / "udhr.jsonl.zst")


@pytest.fixture(scope="module")
def chain(ray_local, tmp_path_factory):
    from conftest import write_spec

    from pipeline.progress import QuietReporter
    from pipeline.runner import run_pipeline
    from pipeline.spec import load_spec

    d = tmp_path_factory.mktemp("report")
    write_inputs(d)
    run_pipeline(load_spec(write_spec(d, CHAIN)), reporter=QuietReporter())
    return d / "out"


def test_report_is_self_contained_with_every_chart(chain):
    page = (chain / "report.html").read_text()
    assert not URL.search(page), "report.html must not reference any external URL"
    # nothing the browser would fetch: no CSS url()/@import either (URLs quoted in corpus text are just text)
    assert not re.search(r"""url\(\s*["']?\s*(?:https?:)?//|@import""", page, re.I)
    assert page.count("<img ") == len(re.findall(r'src="data:image/svg\+xml;base64,', page))  # every chart SVG
    images = re.findall(r'data-chart="([^"]+)" src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', page)
    charts = dict(images)
    for name, b64 in images:  # well-formed SVG (pipeline.svg_charts), nothing fetched
        svg = base64.b64decode(b64).decode()
        ElementTree.fromstring(svg)
        assert "href" not in svg, name
    want = {"funnel", "stage_time", "lengths", "clusters:dedup", "languages:balance", "premiums:tok",
            "bytes_per_token:tok", "masked:clean", "packing:pack"}
    assert want <= set(charts), want - set(charts)
    assert expected_charts(collect(chain)) <= set(charts)
    assert "example masked spans" in page


def test_report_json_funnel_matches_manifests(chain):
    rep = json.loads((chain / "report.json").read_text())
    fun = {r["stage"]: r for r in rep["funnel"]}
    assert list(fun) == ["ingest", "dedup", "balance", "tok", "encode", "clean", "pack"]
    for name, row in fun.items():
        m = json.loads((chain / name / "manifest.json").read_text())
        assert (row["documents_in"], row["documents_out"]) == (m["rows_in"], m["rows_out"])
        assert row["status"] == m["status"]
    # 20 exact copies and 10 near copies were planted; dedup names why each left
    assert fun["dedup"]["reasons"].get("dropped: exact_duplicate", 0) >= 20
    assert fun["dedup"]["documents_out"] < fun["ingest"]["documents_out"]
    pack = json.loads((chain / "pack" / "manifest.json").read_text())["stats"]
    assert fun["pack"]["tokens_out"] == pack["tokens"] == fun["encode"]["tokens_out"]
    hist = next(s["length_histogram"] for s in rep["stages"] if s["stage"] == "ingest")
    assert sum(hist["counts"]) == hist["documents"] == fun["ingest"]["documents_out"]


def test_pipeline_report_command_rebuilds_the_same_charts(chain, tmp_path):
    before = json.loads((chain / "report.json").read_text())["charts"]
    copy = tmp_path / "copy"
    shutil.copytree(chain, copy)
    (copy / "report.html").unlink()
    assert main(["report", str(copy)]) == 0
    assert json.loads((copy / "report.json").read_text())["charts"] == before
    assert (copy / "report.html").stat().st_size > 10_000


def test_report_command_refuses_a_directory_without_manifests(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) != 0
    assert "no stage manifests" in capsys.readouterr().err


def test_short_chain_gets_only_its_charts(run_spec, tmp_path):
    write_inputs(tmp_path, n=200)
    _, out = run_spec("""
        name: short
        output: out
        inputs:
          docs: {paths: [docs.jsonl.zst]}
        stages:
          - {name: ingest, type: ingest, inputs: [docs]}
    """)
    summary = build_report(out)
    assert summary["charts"] == ["funnel", "lengths", "stage_time"]
    assert "data-chart=\"funnel\"" in (out / "report.html").read_text()


def test_a_chart_drawn_as_a_data_uri_is_kept_and_none_is_skipped():
    """``ReportChart.draw`` may return an SVG (inlined as a data URI), a data URI of its own (a stage
    that draws a PNG some other way), or None (no chart)."""
    from pipeline.report import _draw_stage
    from pipeline.sdk import ReportChart, ReportPart

    png = "data:image/png;base64,iVBORw0KGgo="
    part = ReportPart(charts=[ReportChart("svg", "an svg", lambda: '<svg xmlns="http://www.w3.org/2000/svg"/>'),
                              ReportChart("png", "a png", lambda: png), ReportChart("none", "none", lambda: None)])
    images: dict[str, str] = {}
    captions: dict[str, str] = {}
    _draw_stage("s", part, images, captions)
    assert images["png:s"] == png and images["svg:s"].startswith("data:image/svg+xml;base64,")
    assert set(images) == {"svg:s", "png:s"} and captions == {"svg:s": "an svg", "png:s": "a png"}


def test_run_wide_svg_charts_draw_their_values():
    """The hand-written SVG charts: a bar's length follows its value, labels are escaped, log steps
    span the bins."""
    from pipeline import svg_charts

    bars = ElementTree.fromstring(svg_charts.hbars(["a<b", "c"], [2.0, 4.0], "s", "time"))
    widths = [float(r.get("width")) for r in bars.iter("{http://www.w3.org/2000/svg}rect") if r.find(
        "{http://www.w3.org/2000/svg}title") is not None]
    assert widths[1] == 2 * widths[0] > 0
    assert any(t.text == "a<b" for t in bars.iter("{http://www.w3.org/2000/svg}text"))
    panels = ElementTree.fromstring(svg_charts.bar_panels([("docs", ["x", "y"], [10, 0]), ("MB", ["x"], [1.5])]))
    assert panels.get("width") == "600"
    steps = svg_charts.log_steps([("ingest", [1, 10, 100, 1000], [0.2, 0.5, 0.3])], "bytes", "share", "lengths")
    line = ElementTree.fromstring(steps).find("{http://www.w3.org/2000/svg}polyline")
    xs = [float(p.split(",")[0]) for p in line.get("points").split()]
    assert len(xs) == 6 and xs == sorted(xs) and xs[0] < xs[-1]
