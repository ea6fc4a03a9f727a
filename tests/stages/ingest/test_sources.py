"""Line-range planning and decompression, without Ray: every line lands in exactly one range."""

from __future__ import annotations

import dataclasses
import gzip
import random
from pathlib import Path

import pytest
import zstandard

from stages.ingest.sources import (
    LineRange,
    TruncatedInput,
    iter_line_ranges,
    iter_lines,
    open_uncompressed,
    plan_line_ranges,
)

LINES = [f"line {i} " + "x" * (i % 37) for i in range(5000)]
DATA = ("\n".join(LINES) + "\n").encode()


def write(tmp_path: Path, kind: str, data: bytes = DATA) -> Path:
    if kind == "plain":
        path = tmp_path / "f.jsonl"
        path.write_bytes(data)
    elif kind == "zstd":
        path = tmp_path / "f.jsonl.zst"
        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        path = tmp_path / "f.jsonl.gz"
        path.write_bytes(gzip.compress(data))
    return path


@pytest.mark.parametrize("kind", ["plain", "zstd", "gzip"])
def test_ranges_cover_every_line_once_with_line_numbers(tmp_path, kind):
    """Ranges read in the stream itself (a compressed file's as its plan cuts them when spilling;
    the last range of a file cut part-way is read so)."""
    path = write(tmp_path, kind)
    ranges = [dataclasses.replace(r, spill=None)
              for r in plan_line_ranges(path, target_bytes=10_000, spill_dir=tmp_path / "spill")]
    assert len(ranges) > 1
    seen: list[tuple[int, bytes]] = []
    for rng in ranges:
        for lines, first, failure in iter_lines(path, rng):
            assert failure is None
            seen += [(first + k, ln) for k, ln in enumerate(lines)]
    assert [n for n, _ in seen] == list(range(1, len(LINES) + 1))
    assert [ln.decode() for _, ln in seen] == LINES


def test_last_line_without_newline_is_kept(tmp_path):
    path = write(tmp_path, "plain", b"a\nb\nc")
    (rng,) = plan_line_ranges(path, 1 << 20)
    out = [ln for lines, _, _ in iter_lines(path, rng) for ln in lines]
    assert out == [b"a", b"b", b"c"]


def test_truncated_zstd_is_detected(tmp_path):
    full = zstandard.ZstdCompressor().compress(DATA)
    path = tmp_path / "t.jsonl.zst"
    path.write_bytes(full[: len(full) * 2 // 3])
    with pytest.raises(TruncatedInput):
        open_uncompressed(path).read()
    batches = list(iter_lines(path, LineRange(0, -1, 1)))
    assert isinstance(batches[-1][2], TruncatedInput)  # the last batch carries the cut


def test_truncated_gzip_is_detected(tmp_path):
    full = gzip.compress(DATA)
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(full[: len(full) // 2])
    batches = list(iter_lines(path, LineRange(0, -1, 1)))
    assert batches and isinstance(batches[-1][2], TruncatedInput)


@pytest.mark.parametrize("kind", ["zstd", "gzip", "frames"])
def test_skip_discards_exactly_what_read_would_return(tmp_path, kind):
    """A shard of a compressed file skips the bytes before its range (``_FrameReader.skip``): what
    follows is the stream from that offset, in one frame or across concatenated frames."""
    if kind == "frames":
        path = tmp_path / "f.jsonl.zst"
        path.write_bytes(b"".join(zstandard.ZstdCompressor().compress(DATA[i:i + 7000])
                                  for i in range(0, len(DATA), 7000)))
    else:
        path = write(tmp_path, kind)
    for offset in (0, 1, 6999, 7000, 65_537, len(DATA) - 1):
        stream = open_uncompressed(path)
        assert stream.skip(offset) == offset
        assert stream.read() == DATA[offset:]
    stream = open_uncompressed(path)
    assert stream.skip(len(DATA) + 10) == len(DATA)  # the end of the stream: fewer than asked


def test_skip_over_a_cut_raises_the_cut(tmp_path):
    full = zstandard.ZstdCompressor().compress(DATA)
    path = tmp_path / "t.jsonl.zst"
    path.write_bytes(full[: len(full) // 2])
    stream = open_uncompressed(path)
    assert stream.skip(len(DATA)) < len(DATA)  # stopped at the cut, which it names as read would raise it
    assert isinstance(stream.failure, TruncatedInput)
    (last,) = [b for b in iter_lines(path, LineRange(len(DATA) - 10, -1, 4990))]  # a range after the cut
    assert isinstance(last[2], TruncatedInput)


def _read_all(path: Path, ranges: list[LineRange]) -> list[tuple[list[tuple[int, bytes]], str | None]]:
    """Each range's (line number, line) pairs and the failure it ended with."""
    out = []
    for rng in ranges:
        got, failure = [], None
        for lines, first, fail in iter_lines(path, rng):
            got += [(first + k, ln) for k, ln in enumerate(lines)]
            failure = type(fail).__name__ if fail is not None else failure
        out.append((got, failure))
    return out


@pytest.mark.parametrize("kind", ["zstd", "gzip"])
def test_spilled_ranges_read_exactly_what_the_compressed_file_gives(tmp_path, kind):
    """Ranges spilled to plain files by the plan: the same ranges, lines, line numbers and byte order
    mark handling as reading the compressed file itself (a BOM opens the file and one line in the
    middle starts with U+FEFF, which is text there, not a mark)."""
    middle = DATA.index(b"\n", len(DATA) // 2) + 1  # a line start
    data = b"\xef\xbb\xbf" + DATA[:middle] + b"\xef\xbb\xbfmid-file feff line\n" + DATA[middle:]
    path = write(tmp_path, kind, data)
    spilled = plan_line_ranges(path, target_bytes=10_000, spill_dir=tmp_path / "spill")
    plain = [dataclasses.replace(r, spill=None) for r in spilled]  # the same ranges, read in the stream
    assert len(plain) > 3
    assert all(r.spill and Path(r.spill).is_file() for r in spilled)
    assert sum(Path(r.spill).stat().st_size for r in spilled) == len(data)
    assert _read_all(path, spilled) == _read_all(path, plain)
    lines = [ln for got, _ in _read_all(path, spilled) for _, ln in got]
    assert lines[0] == b"line 0 " and b"\xef\xbb\xbfmid-file feff line" in lines


def test_a_cut_file_spills_its_complete_ranges_and_the_last_meets_the_cut(tmp_path):
    """A truncated stream: the ranges before the cut keep their spilled bytes (complete lines); the
    last is not spilled (no file left for it), so its shard reads the file itself and meets the cut;
    every range reads what the unspilled plan reads."""
    rng = random.Random(0)  # text that compresses little: whole zstd blocks decode before the cut
    full = zstandard.ZstdCompressor().compress(b"".join(b"%x\n" % rng.getrandbits(512) for _ in range(5000)))
    path = tmp_path / "t.jsonl.zst"
    path.write_bytes(full[: len(full) * 2 // 3])
    ranges = plan_line_ranges(path, target_bytes=10_000, spill_dir=tmp_path / "spill")
    assert len(ranges) > 1 and all(r.spill and Path(r.spill).is_file() for r in ranges[:-1])
    assert ranges[-1].spill is None
    assert sorted(p.name for p in (tmp_path / "spill").iterdir()) == sorted(Path(r.spill).name for r in ranges[:-1])
    read = _read_all(path, ranges)
    assert read[-1][1] == "TruncatedInput" and all(failure is None for _, failure in read[:-1])
    assert read == _read_all(path, [dataclasses.replace(r, spill=None) for r in ranges])


def test_spilled_ranges_keep_the_target_size_and_an_unspilled_stream_is_one_rolling_shard(tmp_path):
    """Spilled, a compressed file is cut every ``target_bytes`` however large it is (the parts, and
    the memory of every stage that reads one, stay the same size as the corpus grows). Not spilled,
    it is one range, the whole stream, marked ``roll``: its shard reads the stream once and writes a
    part every ``target_bytes`` (a shard per range would decompress the stream up to its range)."""
    rng = random.Random(2)
    data = b"".join(b"%x\n" % rng.getrandbits(256) for _ in range(40_000))  # ~2.6 MB
    path = tmp_path / "big.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor(level=1).compress(data))
    spilled = plan_line_ranges(path, target_bytes=50_000, spill_dir=tmp_path / "spill")
    assert len(spilled) >= len(data) // 50_000 > 32 and not any(r.roll for r in spilled)
    assert max(r.end - r.start for r in spilled[:-1]) < 50_000 + 100  # a line past the target at most
    assert plan_line_ranges(path, target_bytes=50_000) == [LineRange(0, -1, 1, roll=True)]
    plain = tmp_path / "big.jsonl"
    plain.write_bytes(data)
    assert not any(r.roll for r in plan_line_ranges(plain, target_bytes=50_000))  # a plain file is seekable


def test_ranges_are_yielded_as_the_scan_cuts_them(tmp_path):
    """A range is handed out once its spilled file is complete, while the scan has read only the
    chunk that cut it (ingest's tasks start before the plan ends); the whole plan is the same."""
    rng = random.Random(1)
    data = b"".join(b"%x\n" % rng.getrandbits(256) for _ in range(180_000))  # ~12 MB: three scan chunks
    path = tmp_path / "big.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor(level=1).compress(data))
    ranges = iter_line_ranges(path, target_bytes=1 << 20, spill_dir=tmp_path / "spill")
    first = next(ranges)
    assert first.start == 0 and 0 < first.end < len(data) // 2
    assert Path(first.spill).read_bytes() == data[:first.end]
    files_then = len(list((tmp_path / "spill").iterdir()))
    rest = list(ranges)
    assert files_then < len(rest) + 1 == len(list((tmp_path / "spill").iterdir()))
    whole = plan_line_ranges(path, 1 << 20, spill_dir=tmp_path / "whole")
    assert [(r.start, r.end) for r in [first, *rest]] == [(r.start, r.end) for r in whole]
