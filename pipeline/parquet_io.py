"""Parquet parts: deterministic, atomically committed files, and streaming readers over them."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.locations import Location
from pipeline.text_tally import TextTally

#: a Parquet file: a :class:`Location`, or a local path
Source = Location | Path | str

#: one writer configuration for every part, so equal tables give equal bytes
WRITE_OPTIONS = {"compression": "zstd", "compression_level": 3, "write_statistics": True}
ROW_GROUP_ROWS = 8192



def bulk_options(schema: pa.Schema, bulk: Sequence[str], unique: Sequence[str] = ()) -> dict:
    """:class:`PartWriter` options for a part whose ``bulk`` columns (texts, token lists) are most of
    its bytes and nobody filters on them: those without dictionary pages or min/max statistics (a
    dictionary of whole documents is built, then given up on) at zstd level 1, and a list column's
    values byte-stream-split (zstd then sees the all-zero high bytes of small integers as runs).
    ``unique`` columns (ids) keep their statistics but skip dictionary pages. The other columns keep
    :data:`WRITE_OPTIONS`. The stages that use it say what it saved them."""
    small = [f.name for f in schema if f.name not in bulk]
    level = WRITE_OPTIONS["compression_level"]
    options: dict = {"use_dictionary": [n for n in small if n not in unique], "write_statistics": small,
                     "compression_level": {**{n: level for n in small},
                                           **{f.name: 1 for f in schema if f.name in bulk}}}
    lists = [f.name for f in schema if f.name in bulk and pa.types.is_list(f.type)]
    if lists:
        options["column_encoding"] = {f"{n}.list.element": "BYTE_STREAM_SPLIT" for n in lists}
    return options


REJECT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("file", pa.string()),
        ("line", pa.int64()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("raw", pa.string()),
    ]
)


def make_rejects(rows: Sequence[dict]) -> pa.Table:
    """A rejects table from dicts with any of: id, file, line, reason, detail, raw (raw capped at 2 KB)."""
    cols: dict[str, list] = {f.name: [] for f in REJECT_SCHEMA}
    for row in rows:
        for name in cols:
            value = row.get(name)
            if name == "raw" and isinstance(value, str) and len(value) > 2048:
                value = value[:2048] + "…"
            cols[name].append(value)
    return pa.table(cols, schema=REJECT_SCHEMA)


class PartWriter:
    """Streams tables into ``<dir>/<name>.parquet``, which appears only once complete.

    Locally it is written under a hidden temp name and renamed by ``commit``; on an object store
    the upload completes on ``commit`` (an object is never visible half-written).
    Nothing is written when no row ever arrives and ``write_empty`` is false, so optional outputs
    (rejects) leave no empty files behind. ``options`` override :data:`WRITE_OPTIONS` for this file
    (per-column ``use_dictionary`` / ``write_statistics`` lists: a stage that writes large columns
    nobody filters on can skip work that costs more than compressing them); settable until the
    first write.
    """

    def __init__(self, directory: Location | Path, name: str, schema: pa.Schema | None = None,
                 write_empty: bool = True, options: dict | None = None, tally: bool = False):
        self.final = Location.of(directory) / f"{name}.parquet"
        self.tmp = self.final if not self.final.is_local else self.final.parent / f".{name}.parquet.tmp"
        self.schema = schema
        self.write_empty = write_empty
        self.options = {**WRITE_OPTIONS, **(options or {})}
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        # a dataset part's text figures for the run report (pipeline.text_tally), counted as written
        self.tally = TextTally() if tally else None

    def write(self, table: pa.Table) -> None:
        if self.schema is None:
            self.schema = table.schema
        if table.schema != self.schema:
            table = table.cast(self.schema)
        if self._writer is None:
            self.final.parent.mkdir()
            self._writer = pq.ParquetWriter(self.tmp.path, self.schema, filesystem=self.tmp.fs, **self.options)
        if self.tally is not None:
            self.tally.add(table)
        if table.num_rows:
            self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            self.rows += table.num_rows

    def commit(self) -> int:
        """Close and rename into place; returns the file's size in bytes (0 when nothing was written)."""
        if self._writer is None:
            if not self.write_empty or self.schema is None:
                return 0
            self.write(self.schema.empty_table())
        assert self._writer is not None
        self._writer.close()
        if self.tmp is not self.final:
            os.replace(self.tmp.path, self.final.path)
        return self.final.size()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self.tmp.unlink()  # on an object store closing completed the upload: take it back


def parquet_file(source: Source) -> pq.ParquetFile:
    loc = Location.of(source)
    return pq.ParquetFile(loc.path, filesystem=loc.fs)


def iter_batches(source: Source, batch_rows: int, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Stream a Parquet file as tables of at most ``batch_rows`` rows (bounded memory)."""
    pf = parquet_file(source)
    for rb in pf.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False):
        yield pa.Table.from_batches([rb])


def read_schema(source: Source) -> pa.Schema:
    return parquet_file(source).schema_arrow


def as_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A column as one Array: a chunked column's chunks combined (its only chunk as it is, no copy)."""
    if isinstance(column, pa.ChunkedArray):
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return column


def read_one(source: Source, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file as a table. ``ParquetFile.read`` rather than ``pq.read_table``: the latter
    goes through ``pyarrow.dataset``, whose first import cost each Ray worker 0.3-0.8 s (measured with
    py-spy in the encode stage's workers) for what a single file does not need."""
    return parquet_file(source).read(columns=columns)


#: a stage's scratch tables (the shuffles between its passes, read back once or twice, then removed):
#: LZ4, no statistics, no dictionary pages unless asked. Measured on dedup's signature table of the
#: Debian corpus (111,010 rows, 100 MB of node, 128 min-hashes and shingle hashes; CPU seconds, one
#: process): written in 0.33 s instead of 0.50 s and read in 0.25 s instead of 1.40 s (decoding the
#: dictionary pages of random hashes was most of the read), at the same size (hashes do not compress)
SCRATCH_OPTIONS = {"compression": "lz4", "write_statistics": False}


def write_scratch(table: pa.Table, dest: Location | Path, use_dictionary: bool | list[str] = False) -> None:
    """Write a scratch table as one Parquet file (:data:`SCRATCH_OPTIONS`); ``use_dictionary``: the
    columns whose few values repeat, if any."""
    write_one(table, dest, use_dictionary, **SCRATCH_OPTIONS)


def write_one(table: pa.Table, dest: Location | Path, use_dictionary: bool | list[str] = True, **options: Any) -> None:
    """Write a whole table as one Parquet file (same options as the parts, unless ``options`` say
    otherwise). ``use_dictionary``: False (or the columns that repeat) for columns of random hashes,
    where dictionary pages only cost time."""
    loc = Location.of(dest)
    loc.parent.mkdir()
    pq.write_table(table, loc.path, filesystem=loc.fs, use_dictionary=use_dictionary, **options)


def read_table(paths: Sequence[Source], columns: list[str] | None = None) -> pa.Table:
    """Read several parts into one table (for small outputs and tests)."""
    tables = [read_one(p, columns=columns) for p in paths]
    if not tables:
        raise FileNotFoundError("no parquet parts")
    return pa.concat_tables(tables, promote_options="default")


def parquet_rows(source: Source) -> int:
    return parquet_file(source).metadata.num_rows
