"""Line-range planning and decompression, without Ray: every line lands in exactly one range."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import zstandard

from stages.ingest.sources import LineRange, TruncatedInput, iter_lines, open_uncompressed, plan_line_ranges

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
    path = write(tmp_path, kind)
    ranges = plan_line_ranges(path, target_bytes=10_000)
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
