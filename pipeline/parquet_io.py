"""Parquet parts: deterministic, atomically committed files, and streaming readers over them."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

#: one writer configuration for every part, so equal tables give equal bytes
WRITE_OPTIONS = {"compression": "zstd", "compression_level": 3, "write_statistics": True}
ROW_GROUP_ROWS = 8192

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
    """Streams tables into ``<dir>/<name>.parquet`` via a hidden temp file; ``commit`` renames it.

    Nothing is written when no row ever arrives and ``write_empty`` is false, so optional outputs
    (rejects) leave no empty files behind.
    """

    def __init__(self, directory: Path, name: str, schema: pa.Schema | None = None, write_empty: bool = True):
        self.final = directory / f"{name}.parquet"
        self.tmp = directory / f".{name}.parquet.tmp"
        self.schema = schema
        self.write_empty = write_empty
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if self.schema is None:
            self.schema = table.schema
        if table.schema != self.schema:
            table = table.cast(self.schema)
        if self._writer is None:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.tmp, self.schema, **WRITE_OPTIONS)
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
        os.replace(self.tmp, self.final)
        return self.final.stat().st_size

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.tmp.unlink(missing_ok=True)


def iter_batches(path: Path, batch_rows: int, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Stream a Parquet file as tables of at most ``batch_rows`` rows (bounded memory)."""
    pf = pq.ParquetFile(path)
    for rb in pf.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False):
        yield pa.Table.from_batches([rb])


def read_table(paths: Sequence[Path], columns: list[str] | None = None) -> pa.Table:
    """Read several parts into one table (for small outputs and tests)."""
    tables = [pq.read_table(p, columns=columns) for p in paths]
    if not tables:
        raise FileNotFoundError("no parquet parts")
    return pa.concat_tables(tables, promote_options="default")


def parquet_rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows
