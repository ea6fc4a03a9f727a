"""Raw input formats: JSON Lines (plain, .zst, .gz), Parquet and plain text, split into line-aligned shards.

Line-based files are split into byte ranges of the *uncompressed* stream, aligned to line starts
and carrying the line number they start at, so one huge file uses every core and every row still
knows its file and line. Compressed streams cannot seek: a shard of a compressed file decompresses
and discards the bytes before its range, which costs little next to JSON parsing; the number of
shards per compressed file is capped to bound that waste.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import zstandard

from pipeline.locations import Location

Source = Location | Path | str

CHUNK = 4 << 20
MAX_COMPRESSED_SHARDS = 16


class TruncatedInput(Exception):
    """A compressed stream ended before its end-of-frame marker."""


def compression_of(path: Source) -> str | None:
    suffix = PurePosixPath(Location.of(path).name).suffix.lower()
    return {".zst": "zstd", ".zstd": "zstd", ".gz": "gzip"}.get(suffix)


def format_of(path: Source, declared: str) -> str:
    if declared != "auto":
        return declared
    name = Location.of(path).name.lower()
    for ext in (".zst", ".zstd", ".gz"):
        name = name.removesuffix(ext)
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "text"


class _ZstdReader(io.RawIOBase):
    """Decompresses concatenated zstd frames; raises :class:`TruncatedInput` if the last one is cut."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.dctx = zstandard.ZstdDecompressor()
        self.dobj = self.dctx.decompressobj()
        self.in_frame = False
        self.truncated = False
        self.buffer = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.buffer) < size:
            data = b"" if self.truncated else self.raw.read(CHUNK)
            if not data:
                if self.in_frame or self.truncated:
                    self.truncated = True
                    if not self.buffer:  # hand out what was decoded first, then report the cut
                        raise TruncatedInput("compressed stream ends inside a zstd frame")
                break
            while data:
                self.in_frame = True
                self.buffer += self.dobj.decompress(data)
                if self.dobj.eof:
                    data = self.dobj.unused_data
                    self.dobj = self.dctx.decompressobj()
                    self.in_frame = False
                else:
                    data = b""
        if size < 0:
            out, self.buffer = self.buffer, b""
        else:
            out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out

    def close(self) -> None:
        self.raw.close()
        super().close()


class _GzipReader(io.RawIOBase):
    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.f = gzip.GzipFile(fileobj=raw, mode="rb")

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self.f.read(size)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise TruncatedInput(f"gzip stream is truncated or corrupt: {exc}") from None

    def close(self) -> None:
        self.f.close()
        self.raw.close()
        super().close()


def open_uncompressed(path: Source) -> BinaryIO:
    """The file's uncompressed bytes as a stream (seekable only when the file is not compressed)."""
    src = Location.of(path)
    comp = compression_of(src)
    if comp == "zstd":
        return _ZstdReader(src.open())  # type: ignore[return-value]
    if comp == "gzip":
        return _GzipReader(src.open())  # type: ignore[return-value]
    return src.open()


@dataclass(frozen=True)
class LineRange:
    """Lines of one file whose first byte lies in [start, end) of the uncompressed stream."""

    start: int
    end: int  # -1: to the end of the stream
    first_line: int  # 1-based number of the first line in the range


def plan_line_ranges(path: Source, target_bytes: int) -> list[LineRange]:
    """Split a line-based file into ranges of about ``target_bytes``, aligned to line starts."""
    path = Location.of(path)
    comp = compression_of(path)
    if comp is None:
        size = path.size()
        if size <= target_bytes:
            return [LineRange(0, -1, 1)]
    else:
        target_bytes = max(target_bytes, path.size() * 8 // MAX_COMPRESSED_SHARDS)
    ranges: list[LineRange] = []
    start, start_line = 0, 1
    offset, line = 0, 1  # position of the chunk being scanned, and its first line number
    stream = open_uncompressed(path)
    try:
        while True:
            try:
                chunk = stream.read(CHUNK)
            except TruncatedInput:
                break
            if not chunk:
                break
            pos = 0
            while offset + len(chunk) - start > target_bytes:
                want = max(pos, start + target_bytes - offset)
                nl = chunk.find(b"\n", want)
                if nl < 0:
                    break
                line += chunk.count(b"\n", pos, nl + 1)
                pos = nl + 1
                ranges.append(LineRange(start, offset + pos, start_line))
                start, start_line = offset + pos, line
            line += chunk.count(b"\n", pos)
            offset += len(chunk)
    finally:
        stream.close()
    ranges.append(LineRange(start, -1, start_line))
    return ranges


def iter_lines(path: Source, rng: LineRange) -> Iterator[tuple[list[bytes], int, bool]]:
    """Yield (lines, first line number, truncated) batches of a range, without line terminators.

    ``truncated`` is true on the last batch when the compressed stream ended early; that batch's
    last line is then the partial one.
    """
    stream = open_uncompressed(path)
    try:
        if rng.start:
            if compression_of(path) is None:
                stream.seek(rng.start)
            else:
                remaining = rng.start
                while remaining:
                    skipped = stream.read(min(remaining, CHUNK))
                    if not skipped:
                        return
                    remaining -= len(skipped)
        pos = rng.start
        line_no = rng.first_line
        rest = b""
        truncated = False
        while True:
            want = CHUNK if rng.end < 0 else min(CHUNK, rng.end - pos)
            if want <= 0:
                break
            try:
                chunk = stream.read(want)
            except TruncatedInput:
                truncated = True
                chunk = b""
            if not chunk:
                break
            pos += len(chunk)
            data = rest + chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            lines = data[:cut].split(b"\n")
            rest = data[cut + 1:]
            yield [ln.removesuffix(b"\r") for ln in lines], line_no, False
            line_no += len(lines)
        if rest or truncated:
            yield ([rest.removesuffix(b"\r")] if rest or truncated else []), line_no, truncated
    finally:
        stream.close()
