"""Raw input formats: JSON Lines (plain, .zst, .gz), Parquet and plain text, split into line-aligned shards.

Line-based files are split into byte ranges of the *uncompressed* stream, aligned to line starts
and carrying the line number they start at, so one huge file uses every core and every row still
knows its file and line. Compressed streams cannot seek: a shard of a compressed file decompresses
and discards the bytes before its range, which costs little next to JSON parsing; the number of
shards per compressed file is capped to bound that waste.
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import zstandard

from pipeline.locations import Location

Source = Location | Path | str

CHUNK = 4 << 20
_NONZERO = re.compile(b"[^\\0]")
BOM = b"\xef\xbb\xbf"  # UTF-8 byte order mark


class InputFailure(Exception):
    """A file that stops being readable part-way (or at once): every byte before it is still handed out.

    ``reason`` is the reject reason ingest records for the file (a file-level reject).
    """

    reason = "unreadable_file"


class TruncatedInput(InputFailure):
    """A compressed stream ended before its end-of-frame marker."""

    reason = "truncated_file"


class CorruptInput(InputFailure):
    """A compressed stream (or a Parquet file) that cannot be decoded."""

    reason = "corrupt_file"


class UnreadableInput(InputFailure):
    """The operating system refused or failed a read (permission denied, EIO, a directory, ...)."""

    reason = "unreadable_file"


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


class _FrameReader(io.RawIOBase):
    """Decompresses concatenated zstd frames or gzip members, streaming.

    Every byte decoded before a cut, a corrupt frame or a failed read is handed out first; the
    next read raises the :class:`InputFailure` (``TruncatedInput`` when the file ends inside a
    frame). Input is fed to the decoder in small slices so that a corrupt frame costs at most one
    slice of what was decoded before it (a raising ``decompress`` call returns nothing).
    """

    FEED = 64 << 10

    def __init__(self, raw: BinaryIO, kind: str):
        self.raw, self.kind = raw, kind
        self.dobj: Any = None  # the decoder of the frame/member being read; None between frames
        self.failure: InputFailure | None = None
        self.buffer = bytearray()
        self.dctx = zstandard.ZstdDecompressor() if kind == "zstd" else None
        self._discard = 0  # decoded bytes still to drop (skip)

    def _decoder(self) -> Any:
        if self.dctx is not None:
            return self.dctx.decompressobj()
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # a gzip member

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while self.failure is None and (size < 0 or len(self.buffer) < size):
            if not self._fill():
                break
        if not self.buffer and self.failure is not None:
            raise self.failure
        n = len(self.buffer) if size < 0 else min(size, len(self.buffer))
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def skip(self, size: int) -> int:
        """Drop the next ``size`` decoded bytes; returns how many were dropped (fewer when the stream
        ends or fails first: ``failure`` then says why, as ``read`` would raise it).

        Why not ``read`` and throw the bytes away: a shard of a compressed file decodes everything
        before its range, and ``read`` copied each decoded piece into the buffer and out again. On
        the Debian corpus (one .zst file, 13 shards) the shards skip 6 times the file's size.
        """
        done = min(size, len(self.buffer))
        del self.buffer[:done]
        self._discard = size - done
        try:
            while self.failure is None and self._discard and self._fill():  # decoded bytes dropped in _feed
                pass
        finally:
            left, self._discard = self._discard, 0
        return size - left

    def _fill(self) -> bool:
        """Decode the next chunk of the file into the buffer; False at the end of the stream (or a
        failure, kept for the next read)."""
        try:
            data = self.raw.read(CHUNK)
        except OSError as exc:
            self.failure = UnreadableInput(f"read failed: {exc}")
            return False
        if not data:
            if self.dobj is not None:
                self.failure = TruncatedInput(f"{self.kind} stream ends early, inside a frame")
            return False
        try:
            self._feed(data)
        except (zstandard.ZstdError, zlib.error) as exc:
            self.failure = CorruptInput(f"{self.kind} stream is corrupt: {exc}")
        return True

    def _feed(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            if self.dobj is None:
                if self.kind == "gzip":  # gzip files may be padded with zeros after the last member
                    nonzero = _NONZERO.search(data, pos)
                    if nonzero is None:
                        return
                    pos = nonzero.start()
                self.dobj = self._decoder()
            piece = data[pos: pos + self.FEED]
            out = self.dobj.decompress(piece)
            if self._discard:  # skip: drop what is decoded before the wanted bytes
                drop = min(self._discard, len(out))
                self._discard -= drop
                if drop < len(out):
                    self.buffer += memoryview(out)[drop:]
            else:
                self.buffer += out
            pos += len(piece)
            if self.dobj.eof:  # the next frame starts in what this one did not use
                pos -= len(self.dobj.unused_data)
                self.dobj = None

    def close(self) -> None:
        self.raw.close()
        super().close()


def open_uncompressed(path: Source) -> BinaryIO:
    """The file's uncompressed bytes as a stream (seekable only when the file is not compressed)."""
    src = Location.of(path)
    comp = compression_of(src)
    if comp is not None:
        return _FrameReader(src.open(), comp)  # type: ignore[return-value]
    return src.open()


@dataclass(frozen=True)
class LineRange:
    """Lines of one file whose first byte lies in [start, end) of the uncompressed stream."""

    start: int
    end: int  # -1: to the end of the stream
    first_line: int  # 1-based number of the first line in the range
    #: a plain file holding exactly this range's uncompressed bytes (see :func:`plan_line_ranges`),
    #: read instead of decompressing the file up to ``start``
    spill: str | None = None
    #: the whole of a compressed stream that is not spilled, of any size: its shard writes a new
    #: part every ``target_bytes`` of input (:meth:`pipeline.executor.ShardOutput.roll`)
    roll: bool = False


def plan_line_ranges(path: Source, target_bytes: int, spill_dir: Path | None = None) -> list[LineRange]:
    """Split a line-based file into ranges of about ``target_bytes``, aligned to line starts (all of
    :func:`iter_line_ranges`)."""
    return list(iter_line_ranges(path, target_bytes, spill_dir))


def iter_line_ranges(path: Source, target_bytes: int, spill_dir: Path | None = None) -> Iterator[LineRange]:
    """Split a line-based file into ranges of about ``target_bytes``, aligned to line starts, each
    yielded as soon as it is cut (its spilled bytes written and closed), so its shard can start
    while the rest of the file is still being read.

    A file that fails part-way (cut, corrupt, unreadable) is planned up to the failure; its last
    range runs to the end, so the shard that reads it meets the failure and reports it.

    ``spill_dir`` (compressed files only): the plan decompresses the whole stream anyway, so it also
    writes each range's bytes to a plain file there, and each shard reads its range from that file
    instead of decompressing the stream's prefix before it. Why: a shard of a single-frame ``.zst``
    cannot seek, so N shards decompressed (N+1)/2 streams' worth on top of the plan's (measured on
    the Debian corpus, 9 shards: 1.42 CPU-s of reading for the shards instead of 0.52; at 4x, 16
    shards, ~5 CPU-s). The cost is disk: the file's uncompressed size, in the stage's scratch folder
    until the stage commits. In a file that fails part-way the last range is not spilled (its shard
    reads the file itself, up to the failure, and reports it); the ranges before it are complete
    lines and keep their spilled bytes.
    """
    path = Location.of(path)
    comp = compression_of(path)
    try:
        if comp is None:
            size = path.size()
            if size <= target_bytes:
                yield LineRange(0, -1, 1)
                return
        elif spill_dir is None:
            # unspilled, a shard of a range would decompress the stream up to it (N shards: about
            # (N + 1) / 2 streams' worth); one shard reads the stream once and writes rolling parts
            yield LineRange(0, -1, 1, roll=True)
            return
        stream = open_uncompressed(path)
    except OSError:
        yield LineRange(0, -1, 1)
        return
    spill = _RangeSpill(spill_dir) if spill_dir is not None and comp is not None else None
    start, start_line = 0, 1
    offset, line = 0, 1  # position of the chunk being scanned, and its first line number
    failed = scanned = False
    try:
        while True:
            try:
                chunk = stream.read(CHUNK)
            except (InputFailure, OSError):
                failed = True
                break
            if not chunk:
                break
            pos = written = 0
            cut: list[LineRange] = []
            while offset + len(chunk) - start > target_bytes:
                want = max(pos, start + target_bytes - offset)
                nl = chunk.find(b"\n", want)
                if nl < 0:
                    break
                line += chunk.count(b"\n", pos, nl + 1)
                pos = nl + 1
                cut.append(LineRange(start, offset + pos, start_line,
                                     spill.cut(chunk[written:pos]) if spill else None))
                written = pos
                start, start_line = offset + pos, line
            if spill is not None:
                spill.write(chunk[written:])
            line += chunk.count(b"\n", pos)
            offset += len(chunk)
            yield from cut
        scanned = True
    finally:
        stream.close()
        if spill is not None and not scanned:
            spill.out.close()  # a scan stopped early (the pass failed) leaves no open file
    if spill is not None and failed:
        spill.drop_current()
        spill = None
    yield LineRange(start, -1, start_line, spill.finish() if spill else None)


class _RangeSpill:
    """Writes consecutive ranges' bytes to numbered plain files (:func:`plan_line_ranges`)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.files = folder, [folder / "range-000000.bin"]
        self.out: BinaryIO = open(self.files[0], "wb")  # noqa: SIM115 (closed by cut, finish and drop_current)

    def write(self, data: bytes) -> None:
        self.out.write(data)

    def cut(self, data: bytes) -> str:
        """Append ``data`` to the current range and close it; returns its file; the next range begins."""
        done = self.finish(data)
        self.files.append(self.folder / f"range-{len(self.files):06d}.bin")
        self.out = open(self.files[-1], "wb")  # noqa: SIM115
        return done

    def finish(self, data: bytes = b"") -> str:
        """Append ``data`` to the current (last) range and close it; returns its file."""
        self.out.write(data)
        self.out.close()
        return str(self.files[-1])

    def drop_current(self) -> None:
        """Close and remove the range being written (the ranges cut before it stay)."""
        self.out.close()
        self.files[-1].unlink(missing_ok=True)


def iter_lines(path: Source, rng: LineRange) -> Iterator[tuple[list[bytes], int, InputFailure | None]]:
    """Yield (lines, first line number, failure) batches of a range, without line terminators.

    ``failure`` is set on the last batch when the file could not be read to its end (a cut or
    corrupt compressed stream, a failed read or open); that batch's last line is then the partial
    line the failure left (possibly empty), and every complete line before it has been yielded.
    A UTF-8 byte order mark at the start of the file is not part of its first line.
    """
    line_no = rng.first_line
    try:
        stream = open(rng.spill, "rb") if rng.spill else open_uncompressed(path)  # noqa: SIM115
    except OSError as exc:
        yield [b""], line_no, UnreadableInput(f"cannot open: {exc}")
        return
    try:
        failure: InputFailure | None = None
        pos = rng.start
        if rng.start and not rng.spill:  # a spilled range's file holds exactly its bytes
            try:
                if compression_of(path) is None:
                    stream.seek(rng.start)
                elif stream.skip(rng.start) < rng.start:  # type: ignore[attr-defined]
                    if stream.failure is not None:  # type: ignore[attr-defined]
                        raise stream.failure  # type: ignore[attr-defined]
                    raise TruncatedInput("stream ends before this shard's start (did the file change?)")
            except InputFailure as exc:
                failure = exc
            except OSError as exc:
                failure = UnreadableInput(f"read failed: {exc}")
        rest = b""
        while failure is None:
            want = CHUNK if rng.end < 0 else min(CHUNK, rng.end - pos)
            if want <= 0:
                break
            try:
                chunk = stream.read(want)
            except InputFailure as exc:
                failure, chunk = exc, b""
            except OSError as exc:
                failure, chunk = UnreadableInput(f"read failed: {exc}"), b""
            if not chunk:
                break
            if pos == 0 and chunk.startswith(BOM):  # pos counts the file's bytes, BOM included
                pos, chunk = len(chunk), chunk[len(BOM):]
            else:
                pos += len(chunk)
            data = rest + chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            lines = data[:cut].split(b"\n")
            rest = data[cut + 1:]
            yield [ln.removesuffix(b"\r") for ln in lines], line_no, None
            line_no += len(lines)
        if rest or failure is not None:
            yield [rest.removesuffix(b"\r")], line_no, failure
    finally:
        stream.close()
