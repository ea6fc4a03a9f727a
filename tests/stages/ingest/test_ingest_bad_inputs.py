"""The bad-input matrix on a real local Ray: every broken file is a counted reject or a one-line error.

Files that even root cannot read: tests run as root, which bypasses ``chmod 000``. A write-only
sysfs attribute is refused with EACCES to every caller (the kernel has nothing to read), and
reading ``/proc/self/mem`` at offset 0 fails with EIO (the page is not mapped); a symlink to either
is a real unreadable file for the reading process, whatever its privileges.
"""

from __future__ import annotations

import glob
import gzip
import json
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import write_spec

from pipeline.context import StageContext
from pipeline.errors import SpecError, StageFailed, TokenmillError
from pipeline.executor import ShardTask
from pipeline.locations import Location
from pipeline.parquet_io import read_table
from pipeline.progress import QuietReporter
from pipeline.runner import make_plan, run_pipeline
from pipeline.spec import load_spec
from stages.ingest.sources import LineRange, TruncatedInput, iter_lines
from stages.ingest.stage import IngestConfig


def spec_for(paths: list[str], extra_input: str = "", stage_extra: str = "", more_inputs: str = "") -> str:
    return f"""
    name: t
    output: out
    inputs:
      docs:
        paths: {json.dumps(paths)}
        {extra_input}
      {more_inputs}
    stages:
      - name: ingest
        type: ingest
        inputs: [docs{", txt" if more_inputs else ""}]
        {stage_extra}
    """


def jsonl(docs: list[dict]) -> bytes:
    return b"".join(orjson.dumps(d) + b"\n" for d in docs)


def rows(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "text": f"row {i} of {prefix} " + "x" * (i % 50)} for i in range(n)]


def manifest(out: Path) -> dict:
    return json.loads((out / "ingest" / "manifest.json").read_text())


def rejects(out: Path) -> list[dict]:
    parts = sorted((out / "ingest" / "__rejects").glob("part-*.parquet"))
    return read_table(parts).to_pylist() if parts else []


def kept_ids(out: Path) -> list[str]:
    return read_table(sorted((out / "ingest" / "data").glob("part-*.parquet"))).column("id").to_pylist()


def reconciles(m: dict) -> bool:
    return m["rows_in"] == m["rows_out"] + m["rejected"] + sum(m["dropped"].values())


def denied_target() -> Path | None:
    """A file this process may not open for reading (see the module docstring)."""
    for pattern in ("/sys/class/zram-control/hot_remove", "/sys/devices/*/*/rescan", "/sys/bus/*/rescan",
                    "/sys/kernel/*/*/*_write"):
        for cand in sorted(glob.glob(pattern)):
            try:
                with open(cand, "rb"):
                    pass
            except PermissionError:
                return Path(cand)
            except OSError:
                continue
    return None


def write_damaged_parquet(path: Path) -> None:
    """Four row groups of 100 rows; the third one's first page header is overwritten."""
    docs = [{"id": f"pq{i}", "text": f"parquet row {i} " * (1 + i % 7)} for i in range(400)]
    pq.write_table(pa.Table.from_pylist(docs), path, row_group_size=100, compression="none")
    col = pq.ParquetFile(path).metadata.row_group(2).column(1)
    start = col.dictionary_page_offset or col.data_page_offset
    data = bytearray(path.read_bytes())
    data[start: start + 40] = b"\xff" * 40
    path.write_bytes(bytes(data))


def write_bad_files(d: Path) -> dict[str, list[dict]]:
    """One file of each kind of bad input (plus a good one); returns the docs each file holds."""
    good = rows("ok", 5)
    (d / "good.jsonl").write_bytes(jsonl(good))
    cut = rows("gz", 28)
    full = gzip.compress(jsonl(cut))
    (d / "cut.jsonl.gz").write_bytes(full[:-10])  # the trailer and the end of the last row are gone
    big = rows("zs", 6000)
    flipped = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(jsonl(big)))
    flipped[len(flipped) // 2] ^= 0xFF
    (d / "flip.jsonl.zst").write_bytes(bytes(flipped))
    (d / "fake.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")
    write_damaged_parquet(d / "mid.parquet")
    (d / "empty.jsonl").write_bytes(b"")
    (d / "eio.jsonl").symlink_to("/proc/self/mem")
    bom = rows("bom", 3)
    (d / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + jsonl(bom))
    (d / "bom.jsonl.gz").write_bytes(gzip.compress(b"\xef\xbb\xbf" + jsonl(rows("bomgz", 2))))
    (d / "crlf.jsonl").write_bytes(jsonl(rows("crlf", 3)).replace(b"\n", b"\r\n"))
    (d / "nul.jsonl").write_bytes(b'{"id": "nul-escaped", "text": "a\\u0000b"}\n'
                                  b'{"id": "nul-raw", "text": "a\x00b"}\n')
    (d / "surrogate.jsonl").write_bytes(b'{"id": "lone", "text": "a\\ud800b"}\n'
                                        b'{"id": "pair", "text": "a\\ud83d\\ude00b"}\n')
    return {"good": good, "cut": cut, "bom": bom}


def test_bad_input_matrix_is_quarantined_counted_and_reconciled(run_spec, tmp_path):
    docs = write_bad_files(tmp_path)
    denied = denied_target()
    if denied is not None:
        (tmp_path / "denied.jsonl").symlink_to(denied)
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "bom.txt").write_bytes(b"\xef\xbb\xbfa text file with a byte order mark\n")
    (tmp_path / "txt" / "eio.txt").symlink_to("/proc/self/mem")
    txt = """txt:
        paths: [txt/*.txt]"""
    _, out = run_spec(spec_for(["*.jsonl", "*.jsonl.gz", "*.jsonl.zst", "*.parquet"], more_inputs=txt))
    m, rej = manifest(out), rejects(out)
    by_file: dict[str, list[tuple]] = {}
    for r in rej:
        by_file.setdefault(r["file"], []).append((r["line"], r["reason"]))

    ids = kept_ids(out)
    # truncated .gz: every complete row before the cut is kept, the cut is named at its real line
    assert [i for i in ids if i.startswith("gz")] == [d["id"] for d in docs["cut"][:27]]
    assert by_file["cut.jsonl.gz"] == [(28, "truncated_file")]
    # a bit-flipped .zst, a fake Parquet, EIO, a zero-byte file: one file-level reject each
    assert [reason for _, reason in by_file["flip.jsonl.zst"]][-1] == "corrupt_file"
    assert by_file["fake.parquet"] == [(None, "corrupt_file")]
    # a Parquet file damaged part-way: the row groups before the damage are kept
    assert [i for i in ids if i.startswith("pq")] == [f"pq{i}" for i in range(200)]
    assert by_file["mid.parquet"] == [(201, "corrupt_file")]
    assert by_file["eio.jsonl"] == [(1, "unreadable_file")]
    assert by_file["empty.jsonl"] == [(None, "empty_file")]
    assert by_file["txt/eio.txt"] == [(None, "unreadable_file")]
    if denied is not None:
        assert by_file["denied.jsonl"] == [(1, "unreadable_file")]
    # a BOM costs no row (plain, compressed, plain text); CRLF line ends are not part of the text
    assert [i for i in ids if i.startswith("bom")] == ["bom0", "bom1", "bom2", "bomgz0", "bomgz1", "bom.txt"]
    assert [i for i in ids if i.startswith("crlf")] == ["crlf0", "crlf1", "crlf2"]
    table = read_table(sorted((out / "ingest" / "data").glob("part-*.parquet")))
    texts = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True))
    assert not any(t.endswith("\r") or t.startswith("\ufeff") for t in texts.values())
    assert texts["bom.txt"] == "a text file with a byte order mark\n"  # ids: relative to the input's folder
    # NUL: escaped is text, a raw control byte is malformed JSON; a lone surrogate is malformed JSON
    assert texts["nul-escaped"] == "a\x00b" and "nul-raw" not in texts
    assert by_file["nul.jsonl"] == [(2, "malformed_json")]
    assert texts["pair"] == "a\U0001f600b" and "lone" not in texts
    assert by_file["surrogate.jsonl"] == [(1, "malformed_json")]
    assert "good.jsonl" not in by_file and all(f"ok{i}" in texts for i in range(5))

    # counts reconcile, and the manifest names every file-level reject with how far it was read
    assert reconciles(m)
    assert m["rejected"] == len(rej)
    fr = m["stats"]["file_rejects"]
    expected = {"cut.jsonl.gz", "flip.jsonl.zst", "fake.parquet", "mid.parquet", "eio.jsonl", "empty.jsonl",
                "txt/eio.txt"}
    if denied is not None:
        expected.add("denied.jsonl")
    assert set(fr) == expected
    assert fr["cut.jsonl.gz"]["rows_read"] == 27 and fr["cut.jsonl.gz"]["reason"] == "truncated_file"
    assert fr["fake.parquet"] == {"reason": "corrupt_file", "line": None, "rows_read": 0,
                                  "detail": fr["fake.parquet"]["detail"]}
    assert "parquet" in fr["fake.parquet"]["detail"].lower()
    assert fr["mid.parquet"]["rows_read"] == 200
    assert "Input/output error" in fr["eio.jsonl"]["detail"]


@pytest.mark.parametrize(("name", "where"), [
    ("cut.jsonl.gz", "cut.jsonl.gz:28: truncated_file"),
    ("flip.jsonl.zst", "flip.jsonl.zst:"),
    ("fake.parquet", "fake.parquet: corrupt_file"),
    ("eio.jsonl", "eio.jsonl:1: unreadable_file"),
    ("empty.jsonl", "empty.jsonl: empty_file"),
])
def test_on_error_fail_is_one_line_naming_the_file(ray_local, tmp_path, name, where):
    write_bad_files(tmp_path)
    spec = load_spec(write_spec(tmp_path, spec_for([name], stage_extra="on_error: fail")))
    with pytest.raises(TokenmillError) as info:
        run_pipeline(spec, reporter=QuietReporter())
    msg = str(info.value)
    assert where in msg and "\n" not in msg and "Traceback" not in msg
    assert not (tmp_path / "out" / "ingest" / "manifest.json").exists()


def test_truncated_gzip_hands_out_every_row_before_the_cut(tmp_path):
    docs = rows("gz", 1272)
    full = gzip.compress(jsonl(docs))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(full[: len(full) * 2 // 3])
    got: list[bytes] = []
    failures = []
    for lines, first, failure in iter_lines(path, LineRange(0, -1, 1)):
        assert first == len(got) + 1
        got += lines
        failures.append(failure)
    assert not any(failures[:-1]) and failures[-1]  # the last batch carries the cut
    complete = [orjson.loads(x)["id"] for x in got[:-1]]
    assert complete == [d["id"] for d in docs[: len(complete)]]
    assert len(complete) > 1272 // 2  # two thirds of the bytes hold well over half the rows
    assert isinstance(failures[-1], TruncatedInput)
    assert jsonl(docs).startswith(b"\n".join(got))  # the partial last line is exactly what was decoded


@pytest.mark.parametrize("compress", [False, True])
def test_a_bom_is_not_part_of_the_first_line(tmp_path, compress):
    data = b"\xef\xbb\xbf" + jsonl(rows("bom", 3))
    path = tmp_path / ("b.jsonl.gz" if compress else "b.jsonl")
    path.write_bytes(gzip.compress(data) if compress else data)
    got = [ln for lines, _, _ in iter_lines(path, LineRange(0, -1, 1)) for ln in lines]
    assert [orjson.loads(x)["id"] for x in got] == ["bom0", "bom1", "bom2"]


def test_missing_paths_are_errors_naming_them(tmp_path, capsys):
    from pipeline.cli import main

    (tmp_path / "good.jsonl").write_bytes(jsonl(rows("ok", 3)))
    (tmp_path / "adir").mkdir()
    cases = {
        "typo.jsonl": "inputs.docs.paths: 'typo.jsonl' matches no file",
        "nothing/*.jsonl": "inputs.docs.paths: 'nothing/*.jsonl' matches no file",
        "adir": "inputs.docs.paths: 'adir' is a directory, not a file",
    }
    for bad, message in cases.items():
        spec = load_spec(write_spec(tmp_path, spec_for(["good.jsonl", bad])))
        with pytest.raises(SpecError, match=message.replace("*", r"\*").replace(".", r"\.")):
            make_plan(spec, tmp_path / "out")
        capsys.readouterr()
        assert main(["plan", str(tmp_path / "spec.yaml")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    # a directory is an error even with allow_empty, which only lets a glob match nothing
    spec = load_spec(write_spec(tmp_path, spec_for(["good.jsonl", "adir"], extra_input="allow_empty: true")))
    with pytest.raises(SpecError, match="is a directory"):
        make_plan(spec, tmp_path / "out")
    assert not (tmp_path / "out" / "ingest").exists()


def test_allow_empty_lets_a_glob_match_nothing(run_spec, tmp_path):
    (tmp_path / "good.jsonl").write_bytes(jsonl(rows("ok", 3)))
    more = """txt:
        paths: [later/*.txt]
        allow_empty: true"""
    _, out = run_spec(spec_for(["good.jsonl", "maybe/*.jsonl"], extra_input="allow_empty: true", more_inputs=more))
    assert kept_ids(out) == ["ok0", "ok1", "ok2"]
    assert manifest(out)["stats"]["files"] == 1


def test_keep_fields_may_not_name_a_normalised_column(tmp_path):
    (tmp_path / "good.jsonl").write_bytes(jsonl(rows("ok", 3)))
    for column in ("lang", "id", "text", "source"):
        path = write_spec(tmp_path, spec_for(["good.jsonl"], extra_input=f"keep_fields: [url, {column}]"))
        with pytest.raises(SpecError, match=rf"inputs\.docs\.keep_fields: .*'{column}' is a normalised column"):
            load_spec(path)


class _DiskFullJob:
    """Writes its shard to /dev/full: a real ENOSPC, as from a worker whose disk filled up."""

    def setup(self) -> None:
        return None

    def run(self, task, out):
        with open("/dev/full", "wb") as f:
            f.write(b"x" * 65536)
            f.flush()
        return {"rows_in": 0}


def _context(tmp_path: Path) -> StageContext:
    cfg = IngestConfig(name="writer", type="ingest")
    return StageContext(name="writer", config=cfg, seed=0, work_dir=Location.of(tmp_path / "work"),
                        output_root=Location.of(tmp_path))


def test_a_full_disk_in_a_worker_is_one_line_naming_the_stage(ray_local, tmp_path, monkeypatch):
    tasks = [ShardTask("000", None)]
    monkeypatch.delenv("TOKENMILL_DEBUG", raising=False)
    with pytest.raises(StageFailed) as info:
        _context(tmp_path).map_shards(_DiskFullJob(), tasks)
    msg = str(info.value)
    assert msg.startswith("stage 'writer' failed: shard 000: OSError: [Errno 28] No space left on device")
    assert "\n" not in msg and "Traceback" not in msg
    # TOKENMILL_DEBUG=1 keeps the worker's traceback
    monkeypatch.setenv("TOKENMILL_DEBUG", "1")
    with pytest.raises(StageFailed) as info:
        _context(tmp_path).map_shards(_DiskFullJob(), tasks)
    assert "Traceback" in str(info.value) and "_DiskFullJob" not in str(info.value).splitlines()[0]


class _ReadJob:
    """Reads its shard's file (the payload), as a map stage reads its input part."""

    def setup(self) -> None:
        return None

    def run(self, task, out):
        out.data.write(pa.table({"n": [len(Path(task.payload).read_bytes())]}))
        return {"rows_in": 1}


def test_an_unreadable_input_part_is_an_environment_error(ray_local, tmp_path):
    part = tmp_path / "part-000.parquet"
    part.symlink_to("/proc/self/mem")  # EIO on read
    with pytest.raises(StageFailed) as info:
        _context(tmp_path).map_shards(_ReadJob(), [ShardTask("000", str(part))])
    msg = str(info.value)
    assert "stage 'writer' failed: shard 000: OSError: [Errno 5] Input/output error" in msg and "\n" not in msg
