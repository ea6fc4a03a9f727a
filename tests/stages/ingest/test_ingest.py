"""Ingest on a real local Ray: every format, bad rows quarantined with reasons, counts reconcile, resume."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import DATA_DIR, write_spec

from pipeline.errors import TokenmillError
from pipeline.executor import ShardTask, run_shards
from pipeline.parquet_io import read_table
from pipeline.progress import QuietReporter
from pipeline.runner import make_plan, run_pipeline
from pipeline.spec import load_spec

DOCS = [{"id": f"d{i}", "text": f"Text of document {i}. " * (1 + i % 5), "lang": ["en", "de"][i % 2]}
        for i in range(300)]


def spec_for(path: str, extra_input: str = "", stage_extra: str = "") -> str:
    return f"""
    name: t
    output: out
    inputs:
      docs:
        paths: [{path}]
        {extra_input}
    stages:
      - name: ingest
        type: ingest
        inputs: [docs]
        {stage_extra}
    """


def data(out: Path, stage: str = "ingest") -> pa.Table:
    return read_table(sorted((out / stage / "data").glob("part-*.parquet")))


def rejects(out: Path, stage: str = "ingest") -> pa.Table:
    return read_table(sorted((out / stage / "__rejects").glob("part-*.parquet")))


def manifest(out: Path, stage: str = "ingest") -> dict:
    return json.loads((out / stage / "manifest.json").read_text())


def test_bad_rows_are_quarantined_with_reasons_and_counts_reconcile(run_spec, tmp_path):
    shutil.copy(DATA_DIR / "bad_rows.jsonl", tmp_path)
    _, out = run_spec(spec_for("bad_rows.jsonl"))
    kept, rej, m = data(out), rejects(out), manifest(out)
    assert kept.column("id").to_pylist() == [f"doc-{i}" for i in range(6)]
    assert sorted(zip(rej.column("line").to_pylist(), rej.column("reason").to_pylist(), strict=True)) == [
        (2, "malformed_json"), (4, "invalid_utf8"), (6, "empty_text"), (8, "missing_text")]
    assert set(rej.column("file").to_pylist()) == {"bad_rows.jsonl"}
    assert m["rows_in"] == 10 and m["rows_out"] == 6 and m["rejected"] == 4
    assert m["rows_in"] == m["rows_out"] + m["rejected"] + sum(m["dropped"].values())
    assert m["rejected_by_reason"] == {"empty_text": 1, "invalid_utf8": 1, "malformed_json": 1, "missing_text": 1}


def test_on_error_fail_names_file_and_line(ray_local, tmp_path):
    shutil.copy(DATA_DIR / "bad_rows.jsonl", tmp_path)
    spec = load_spec(write_spec(tmp_path, spec_for("bad_rows.jsonl", stage_extra="on_error: fail")))
    with pytest.raises(TokenmillError, match=r"bad_rows\.jsonl:2: malformed_json"):
        run_pipeline(spec, reporter=QuietReporter())
    assert not (tmp_path / "out" / "ingest" / "manifest.json").exists()


def test_cli_run_on_error_fail_has_no_traceback(tmp_path):
    shutil.copy(DATA_DIR / "bad_rows.jsonl", tmp_path)
    write_spec(tmp_path, spec_for("bad_rows.jsonl", stage_extra="on_error: fail"))
    res = subprocess.run([sys.executable, "-m", "pipeline", "run", "spec.yaml", "--quiet"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "bad_rows.jsonl:2: malformed_json" in res.stderr


def write_formats(d: Path) -> None:
    lines = b"".join(orjson.dumps(doc) + b"\n" for doc in DOCS)
    (d / "a.jsonl").write_bytes(lines)
    (d / "a.jsonl.gz").write_bytes(gzip.compress(lines))
    (d / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.Table.from_pylist(DOCS), d / "a.parquet", row_group_size=64)


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.gz", "a.jsonl.zst", "a.parquet"])
def test_every_format_gives_the_same_rows(run_spec, tmp_path, name):
    write_formats(tmp_path)
    # a tiny shard size splits each file into several shards; rows must come back complete and in order
    _, out = run_spec(spec_for(name, stage_extra="shard_mb: 0.004"))
    t = data(out)
    assert len(list((out / "ingest" / "data").glob("*.parquet"))) > 1
    assert t.column("id").to_pylist() == [d["id"] for d in DOCS]
    assert t.column("text").to_pylist() == [d["text"] for d in DOCS]
    assert t.column("lang").to_pylist() == [d["lang"] for d in DOCS]
    assert set(t.column("source").to_pylist()) == {"docs"}
    assert manifest(out)["rows_in"] == len(DOCS)


def test_plain_text_per_file_and_per_line_with_derived_ids(run_spec, tmp_path):
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "one.txt").write_text("first file\nsecond line\n")
    (tmp_path / "txt" / "two.txt").write_text("another file")
    (tmp_path / "txt" / "bad.txt").write_bytes(b"ok line\n\xff\xfe broken\n")
    _, out = run_spec(spec_for("txt/*.txt", extra_input="lang: en"))
    t = data(out)
    # derived ids are relative to the input's own folder (txt/), rejects name the file as the spec does
    assert t.column("id").to_pylist() == ["one.txt", "two.txt"]
    assert t.column("lang").to_pylist() == ["en", "en"]
    r = rejects(out).to_pylist()
    assert [(x["file"], x["line"], x["reason"]) for x in r] == [("txt/bad.txt", 2, "invalid_utf8")]

    _, out = run_spec(spec_for("txt/*.txt", extra_input="text_unit: line"), directory=tmp_path)
    t = data(out)
    assert t.column("id").to_pylist() == ["bad.txt:1", "one.txt:1", "one.txt:2", "two.txt:1"]
    assert [(x["line"], x["reason"]) for x in rejects(out).to_pylist()] == [(2, "invalid_utf8")]


def test_truncated_compressed_file_keeps_prior_rows_and_rejects_the_cut(run_spec, tmp_path):
    docs = [{"id": f"z{i}", "text": f"{i} " + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[i % 26] * (i % 200)} for i in range(6000)]
    lines = b"".join(orjson.dumps(doc) + b"\n" for doc in docs)  # several zstd blocks
    full = zstandard.ZstdCompressor(write_content_size=False).compress(lines)
    (tmp_path / "cut.jsonl.zst").write_bytes(full[: len(full) * 3 // 4])
    _, out = run_spec(spec_for("cut.jsonl.zst"))
    m = manifest(out)
    assert m["rejected_by_reason"].get("truncated_file") == 1
    assert 0 < m["rows_out"] < len(docs)
    assert m["rows_in"] == m["rows_out"] + m["rejected"]
    assert data(out).column("id").to_pylist() == [d["id"] for d in docs[: m["rows_out"]]]


def test_rerun_skips_and_force_reproduces_identical_bytes(run_spec, tmp_path):
    write_formats(tmp_path)
    text = spec_for("a.jsonl.zst", stage_extra="shard_mb: 0.004") + """
      - name: short
        type: filter
        inputs: [ingest]
        min_chars: 60
    """
    plan, out = run_spec(text)
    assert [s.action for s in plan.stages] == ["run", "run"]
    first = {p: p.read_bytes() for p in sorted(out.rglob("*.parquet"))}
    fm = manifest(out, "short")
    assert fm["dropped"] == {"too_short": sum(len(d["text"]) < 60 for d in DOCS)}

    plan, _ = run_spec(text)
    assert [s.action for s in plan.stages] == ["skip", "skip"]
    assert make_plan(load_spec(tmp_path / "spec.yaml"), out).stages[0].reason == "up to date"

    plan, _ = run_spec(text, force=["ingest"])
    assert [s.action for s in plan.stages] == ["run", "run"]
    assert {p: p.read_bytes() for p in sorted(out.rglob("*.parquet"))} == first

    # a config change re-runs only the changed stage and what is downstream of it
    plan, _ = run_spec(text.replace("min_chars: 60", "min_chars: 70"))
    assert [s.action for s in plan.stages] == ["skip", "run"]


class _CountingJob:
    """Writes one row per shard; the row records which run wrote it."""

    def __init__(self, tag: str):
        self.tag = tag

    def setup(self) -> None:
        return None

    def run(self, task, out):
        out.data.write(pa.table({"key": [task.key], "run": [self.tag]}))
        return {"rows_in": 1, "rows_out": 1}


def test_committed_shards_are_not_redone(ray_local, tmp_path):
    tasks = [ShardTask(f"{i:03d}", None) for i in range(4)]
    run_shards(_CountingJob("first"), tasks[:2], tmp_path)  # an "interrupted" run: two shards committed
    stats = run_shards(_CountingJob("second"), tasks, tmp_path)
    assert len(stats) == 4
    runs = {p.stem: pq.read_table(p).column("run")[0].as_py() for p in (tmp_path / "data").glob("*.parquet")}
    assert runs == {"part-000": "first", "part-001": "first", "part-002": "second", "part-003": "second"}


def test_inspect_and_plan_show_the_output(run_spec, tmp_path, capsys):
    from pipeline.cli import main

    shutil.copy(DATA_DIR / "bad_rows.jsonl", tmp_path)
    _, out = run_spec(spec_for("bad_rows.jsonl"))
    capsys.readouterr()
    assert main(["inspect", str(out / "ingest")]) == 0
    shown = capsys.readouterr().out
    assert "1 part(s), 6 rows" in shown
    assert "text: string" in shown and "doc-0" in shown
    assert "rejected: malformed_json" in shown and "bad_rows.jsonl:2 malformed_json" in shown
    assert main(["plan", str(tmp_path / "spec.yaml")]) == 0
    assert "up to date" in capsys.readouterr().out


def test_parts_write_text_without_dictionary_or_statistics(run_spec, tmp_path):
    """The text column is written plainly (no dictionary pages, no min/max of whole documents); the
    short columns keep their statistics, lang and source their dictionary."""
    (tmp_path / "a.jsonl").write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in DOCS))
    _, out = run_spec(spec_for("a.jsonl"))
    (part,) = sorted((out / "ingest" / "data").glob("part-*.parquet"))
    meta = pq.ParquetFile(part).metadata.row_group(0)
    cols = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert not cols["text"].is_stats_set and cols["id"].is_stats_set
    assert not any("DICTIONARY" in e for e in cols["text"].encodings + cols["id"].encodings)
    assert any("DICTIONARY" in e for e in cols["lang"].encodings)
    assert {c.compression for c in cols.values()} == {"ZSTD"}
    assert data(out).column("text").to_pylist() == [d["text"] for d in DOCS]


def test_compressed_files_planned_on_the_workers_write_rolling_parts(run_spec, tmp_path):
    """Compressed files planned on the workers (more than one), not spilled: each is read once by
    one shard, which starts a new part once the part holds ``shard_mb`` of input (checked after each
    read of the stream, :data:`stages.ingest.sources.CHUNK`), so parts stay bounded however large
    the file; the rows are the files' lines in order, and a forced re-run writes the same bytes."""
    from stages.ingest.sources import CHUNK

    docs = [{"id": f"d{i:05d}", "text": f"Document {i} says " + "words " * (30 + i % 40)} for i in range(60_000)]
    lines = [orjson.dumps(d) + b"\n" for d in docs]
    halves = [lines[:30_000], lines[30_000:]]  # about 9 MB each
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=1).compress(b"".join(halves[0])))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b"".join(halves[1]), compresslevel=1))
    text = spec_for("'*.jsonl.*'", stage_extra="shard_mb: 2")
    _, out = run_spec(text)
    folder = out / "ingest" / "data"
    parts = sorted(p.name for p in folder.glob("part-*.parquet"))
    target = 2 << 20
    for fi, half in enumerate(halves):
        mine = [p for p in parts if p.startswith(f"part-{fi:06d}-0000-")]
        assert len(mine) >= 2 and mine == [f"part-{fi:06d}-0000-{n:04d}.parquet" for n in range(len(mine))]
        row = 0
        for k, name in enumerate(mine):  # the input behind each part: its share, give or take one read
            rows = pq.read_metadata(folder / name).num_rows
            size = sum(map(len, half[row:row + rows]))
            row += rows
            assert size <= target + CHUNK + 1000 and (size >= target or k == len(mine) - 1)
        assert row == len(half)
    assert len(parts) == sum(p.startswith(("part-000000-", "part-000001-")) for p in parts)
    assert data(out).column("id").to_pylist() == [d["id"] for d in docs]  # every line, in order
    m = manifest(out)
    assert m["rows_in"] == m["rows_out"] == len(docs) and m["stats"]["shards"] == 2
    first = {p: (folder / p).read_bytes() for p in parts}
    _, out = run_spec(text, force=["ingest"])
    assert {p.name: p.read_bytes() for p in sorted((out / "ingest" / "data").glob("part-*.parquet"))} == first
