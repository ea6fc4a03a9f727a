"""Ingest: raw files (JSON Lines, .zst/.gz, Parquet, plain text) to the normalised schema.

Output columns: ``id``, ``text``, ``lang``, ``source`` (strings) plus any ``keep_fields``.
Every input row is accounted for: kept, or rejected into ``__rejects/`` with its file, line and
reason (``malformed_json``, ``invalid_utf8``, ``not_an_object``, ``missing_text``,
``non_string_text``, ``empty_text``, ``blank_line``). ``on_error: fail`` stops at the first bad
row with a message naming file and line.

A file that cannot be read to its end is a *file-level reject*: ``truncated_file`` (a compressed
stream cut short), ``corrupt_file`` (a stream or Parquet file that does not decode),
``unreadable_file`` (the OS refused or failed the read: permissions, EIO) or ``empty_file`` (no
bytes). Every complete row before the failure is kept; the reject names the file, the line where
reading stopped and how many rows were read before it, and counts as one row in and one rejected
(so counts reconcile); the manifest lists such files under ``stats.file_rejects``. A UTF-8 byte
order mark at the start of a file is dropped.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit, urlunsplit

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from pipeline.context import StageContext
from pipeline.errors import InputDataError
from pipeline.executor import ShardOutput, ShardTask
from pipeline.locations import Location, is_uri
from pipeline.parquet_io import bulk_options, make_rejects
from pipeline.stage_api import Stage, StageConfig, register_stage
from stages.ingest.sources import BOM, LineRange, format_of, iter_line_ranges, iter_lines

if TYPE_CHECKING:
    from pipeline.spec import FilesInput

BATCH_ROWS = 4096


class IngestConfig(StageConfig):
    type: Literal["ingest"]
    on_error: Literal["quarantine", "fail"] = Field(
        default="quarantine", description="quarantine: bad rows go to __rejects/ and the run goes on; fail: stop."
    )
    shard_mb: float = Field(default=32, gt=0, le=65536, description="Target uncompressed MB per shard (one task each).")
    min_chars: int = Field(default=1, ge=1, description="Documents with fewer non-blank characters are dropped.")


def write_options(schema: pa.Schema) -> dict[str, Any]:
    """Parquet options of an ingest part. The text column is written without dictionary pages or
    min/max statistics (the writer built a dictionary of every text before giving up on it, and
    nobody filters on text bounds) at zstd level 1; ids without dictionary pages (they are unique).
    Measured on the Debian corpus's 15 parts (CPU seconds, one process): 0.79 s / 29.0 MB with the
    defaults -> 0.45 s / 36.3 MB, where decompressing for the next stage costs the same."""
    return bulk_options(schema, ["text"], unique=["id"])


def output_schema(keep_fields: list[str]) -> pa.Schema:
    fields = [("id", pa.string()), ("text", pa.string()), ("lang", pa.string()), ("source", pa.string())]
    return pa.schema(fields + [(k, pa.string()) for k in keep_fields])


class _Rows:
    """Column buffers for normalised rows, flushed as Arrow tables."""

    def __init__(self, keep_fields: list[str]):
        self.keep_fields = keep_fields
        self.schema = output_schema(keep_fields)
        self.clear()

    def clear(self) -> None:
        self.cols: dict[str, list[Any]] = {f.name: [] for f in self.schema}

    def __len__(self) -> int:
        return len(self.cols["id"])

    def add(self, id_: str, text: str, lang: str | None, source: str, extras: list[str | None]) -> None:
        c = self.cols
        c["id"].append(id_)
        c["text"].append(text)
        c["lang"].append(lang)
        c["source"].append(source)
        for k, v in zip(self.keep_fields, extras, strict=True):
            c[k].append(v)

    def table(self) -> pa.Table:
        t = pa.table(self.cols, schema=self.schema)
        self.clear()
        return t


def _as_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)


class IngestJob:
    """Reads one shard (a line range of a file, row groups of a Parquet file, or a group of text files).

    A whole compressed stream that was not spilled (its range marked ``roll``) is read once and
    written as rolling parts, a new one each time the part holds ``part_bytes`` of input (checked
    at each write, so give or take one read of the stream): a shard per range would decompress the
    stream up to its range, and one part per file would grow with the file."""

    def __init__(self, inputs: dict[str, FilesInput], base_dir: str, on_error: str, min_chars: int,
                 id_names: dict[str, str] | None = None, part_bytes: int = 32 << 20):
        self.inputs, self.base_dir, self.on_error, self.min_chars = inputs, base_dir, on_error, min_chars
        self.id_names = id_names or {}  # file as rejects name it -> as derived ids name it
        self.part_bytes = part_bytes  # input bytes per part of a rolling shard (a whole compressed file)

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        p = task.payload
        inp = self.inputs[p["input"]]
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.bytes_in = self.bytes_out = 0
        self.rows = _Rows(inp.keep_fields)
        self.rejects: list[dict] = []
        self.file_rejects: dict[str, dict[str, Any]] = {}
        out.data.schema = self.rows.schema
        out.data.options.update(write_options(self.rows.schema))
        self.rolling = p["kind"] == "lines" and p.get("roll", False)
        self.part_start = self.written = 0  # input bytes where the current part began, and at the last write
        if self.rolling:
            out.start_rolling()
        if p["kind"] == "lines":
            self._lines(p, inp, out)
        elif p["kind"] == "parquet":
            self._parquet(p, inp, out)
        elif p["kind"] == "file_error":  # the file could not even be planned (opened, its footer read)
            self._file_failure(p["rel"], None, p["reason"], p["detail"], 0)
        else:
            self._text_files(p, inp, out)
        self._flush(out, final=True)
        stats: dict[str, Any] = {"files": {p["rel"]: self.counts["in"]}}
        if self.file_rejects:
            stats["file_rejects"] = self.file_rejects
        return {
            "rows_in": self.counts["in"], "rows_out": self.counts["out"], "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out, "rejected": dict(self.rejected),
            "dropped": {"too_short": self.counts["too_short"]} if self.counts["too_short"] else {},
            "stats": stats,
        }

    # -- helpers ------------------------------------------------------------------------------
    def _reject(self, rel: str, line: int, reason: str, detail: str = "", raw: bytes | str | None = None) -> None:
        if self.on_error == "fail":
            raise InputDataError(rel, line, reason, detail)
        if isinstance(raw, bytes):
            raw = raw[:4096].decode("utf-8", errors="backslashreplace")
        self.rejects.append({"file": rel, "line": line, "reason": reason, "detail": detail, "raw": raw})
        self.rejected[reason] += 1

    def _file_failure(self, rel: str, line: int | None, reason: str, detail: str, rows_read: int,
                      raw: bytes | None = None) -> None:
        """A file that could not be read (to its end): one reject for the file, counted as one row in."""
        self.counts["in"] += 1
        self.file_rejects[rel] = {"reason": reason, "line": line, "rows_read": rows_read, "detail": detail}
        self._reject(rel, line, reason, f"{detail}; {rows_read} row(s) read before it", raw or None)

    def _accept(self, rel: str, line: int, inp: FilesInput, name: str, id_: Any, text: Any,
                lang: Any, source: Any, extras: list[Any], raw: Any) -> None:
        if text is None:
            return self._reject(rel, line, "missing_text", f"no '{inp.fields.text}' field", raw)
        if not isinstance(text, str):
            return self._reject(rel, line, "non_string_text", f"'{inp.fields.text}' is {type(text).__name__}", raw)
        # a text that starts and ends with a non-space character is its own strip(): no copy of it
        stripped = len(text) if text and not text[0].isspace() and not text[-1].isspace() else len(text.strip())
        if stripped == 0:
            return self._reject(rel, line, "empty_text", "text is empty or blank", raw)
        if stripped < self.min_chars:
            self.counts["too_short"] += 1
            return None
        doc_id = _as_str(id_) if id_ is not None else f"{self.id_names.get(rel, rel)}:{line}"
        self.rows.add(doc_id, text, inp.lang or _as_str(lang), inp.source or _as_str(source) or name,
                      [_as_str(e) for e in extras])
        self.counts["out"] += 1  # bytes_out: the text column's UTF-8 bytes, counted per batch in _flush
        return None

    def _flush(self, out: ShardOutput, final: bool = False) -> None:
        if len(self.rows) >= BATCH_ROWS or (final and len(self.rows)):
            table = self.rows.table()
            # the UTF-8 bytes of the kept texts, from the Arrow column: a per-row str.encode copied
            # every non-ASCII document once more (0.2 s of 5.5 s of CPU on the Debian corpus)
            self.bytes_out += pc.sum(pc.binary_length(table.column("text"))).as_py() or 0
            if self.rolling and self.written - self.part_start >= self.part_bytes:
                out.roll()  # the part holds its share of the input: these rows start the next one
                self.part_start = self.written
            out.data.write(table)
            self.written = self.bytes_in
        if self.rejects and (final or len(self.rejects) >= BATCH_ROWS):
            out.rejects.write(make_rejects(self.rejects))
            self.rejects = []

    # -- formats ------------------------------------------------------------------------------
    def _lines(self, p: dict, inp: FilesInput, out: ShardOutput) -> None:
        path, rel = p["file"], p["rel"]
        rng = LineRange(*p["range"])
        is_json = p["format"] == "jsonl"
        empty = rng.start == 0  # the first range of a file yields nothing only when the file is empty
        for lines, first, failure in iter_lines(path, rng):
            empty = False
            if is_json and failure is None:
                self._json_lines(rel, first, lines, inp, p["input"])
                self._flush(out)
                continue
            for k, raw in enumerate(lines):
                line = first + k
                self.bytes_in += len(raw) + 1
                if failure is not None and k == len(lines) - 1:  # the partial line where reading stopped
                    self._file_failure(rel, line, failure.reason, str(failure), line - 1, raw)
                    continue
                self.counts["in"] += 1
                if is_json:
                    self._json_line(rel, line, raw, inp, p["input"])
                else:
                    try:
                        text = raw.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        self._reject(rel, line, "invalid_utf8", str(exc), raw)
                        continue
                    self._accept(rel, line, inp, p["input"], None, text, None, None,
                                 [None] * len(inp.keep_fields), raw)
            self._flush(out)
        if empty:
            self._file_failure(rel, None, "empty_file", "the file holds no data", 0)

    def _json_lines(self, rel: str, first: int, lines: list[bytes], inp: FilesInput, name: str) -> None:
        """A batch of JSON lines: the common row (an object whose text is a string starting and
        ending with a non-blank character, string or absent id, lang and source) is appended to the
        column buffers here, inline; any other line takes :meth:`_json_line`, the general path
        (rejects, derived values), so the rows and rejects are exactly those of the general path.
        Why: per-row method calls, not JSON parsing, were most of ingest's time (in-process CPU
        profile of the Debian corpus: ``_accept``/``_json_line``/``_Rows.add``/``_as_str`` about 3x
        ``orjson.loads``)."""
        self.counts["in"] += len(lines)
        self.bytes_in += sum(map(len, lines)) + len(lines)
        f, cols, loads = inp.fields, self.rows.cols, orjson.loads
        add_id, add_text, add_lang, add_source = (cols[c].append for c in ("id", "text", "lang", "source"))
        extras = [cols[k].append for k in inp.keep_fields]
        derived = self.id_names.get(rel, rel)
        min_chars, kept = self.min_chars, 0
        for k, raw in enumerate(lines):
            try:
                obj = loads(raw)
            except orjson.JSONDecodeError:
                obj = None
            if type(obj) is dict:
                text = obj.get(f.text)
                id_ = obj.get(f.id) if f.id else None
                lang = obj.get(f.lang) if f.lang and not inp.lang else None
                source = obj.get(f.source) if f.source and not inp.source else None
                if (type(text) is str and text and len(text) >= min_chars and not text[0].isspace()
                        and not text[-1].isspace() and (id_ is None or type(id_) is str)
                        and (lang is None or type(lang) is str) and (source is None or type(source) is str)):
                    add_id(f"{derived}:{first + k}" if id_ is None else id_)
                    add_text(text)
                    add_lang(inp.lang or lang)
                    add_source(inp.source or source or name)
                    for append, key in zip(extras, inp.keep_fields, strict=True):
                        append(_as_str(obj.get(key)))
                    kept += 1
                    continue
            self._json_line(rel, first + k, raw, inp, name)
        self.counts["out"] += kept

    def _json_line(self, rel: str, line: int, raw: bytes, inp: FilesInput, name: str) -> None:
        if not raw or raw.isspace():  # what `not raw.strip()` says (ASCII whitespace), without copying the line
            return self._reject(rel, line, "blank_line", "empty line", raw)
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as uexc:
                return self._reject(rel, line, "invalid_utf8", str(uexc), raw)
            return self._reject(rel, line, "malformed_json", str(exc), raw)
        if not isinstance(obj, dict):
            return self._reject(rel, line, "not_an_object", f"a JSON {type(obj).__name__}", raw)
        f = inp.fields
        return self._accept(
            rel, line, inp, name,
            obj.get(f.id) if f.id else None,
            obj.get(f.text),
            obj.get(f.lang) if f.lang else None,
            obj.get(f.source) if f.source else None,
            [obj.get(k) for k in inp.keep_fields],
            raw,
        )

    def _text_files(self, p: dict, inp: FilesInput, out: ShardOutput) -> None:
        for src, rel in p["files"]:
            try:
                data = src.read_bytes().removeprefix(BOM)
            except OSError as exc:
                self._file_failure(rel, None, "unreadable_file", f"cannot read: {_one_line(exc)}", 0)
                continue
            self.counts["in"] += 1
            self.bytes_in += len(data)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = data[: exc.start].count(b"\n") + 1
                self._reject(rel, line, "invalid_utf8", str(exc), data)
                continue
            self._accept(rel, 1, inp, p["input"], self.id_names.get(rel, rel), text, None, None,
                         [None] * len(inp.keep_fields), None)
            self._flush(out)

    def _parquet(self, p: dict, inp: FilesInput, out: ShardOutput) -> None:
        f, rel = inp.fields, p["rel"]
        row = p["first_row"]
        try:
            pf = _parquet_file(p["file"])
            names = set(pf.schema_arrow.names)
            wanted = [c for c in {f.id, f.text, f.lang, f.source, *inp.keep_fields} if c and c in names]
            batches = _parquet_batches(pf, p["row_groups"], wanted)
        except (OSError, pa.ArrowException) as exc:
            return self._file_failure(rel, row + 1, *_failure_of(exc), row)
        while True:
            try:
                rb = next(batches)
            except StopIteration:
                break
            except (OSError, pa.ArrowException) as exc:  # a corrupt page or row group part-way
                self._file_failure(rel, row + 1, *_failure_of(exc), row)
                break
            cols = {c: rb.column(c).to_pylist() for c in wanted}
            n = rb.num_rows
            self.bytes_in += rb.nbytes
            none = [None] * n
            ids, texts = cols.get(f.id or "", none), cols.get(f.text, none)
            langs, sources = cols.get(f.lang or "", none), cols.get(f.source or "", none)
            extras = [cols.get(k, none) for k in inp.keep_fields]
            for i in range(n):
                self.counts["in"] += 1
                self._accept(p["rel"], row + i + 1, inp, p["input"], ids[i], texts[i], langs[i], sources[i],
                             [e[i] for e in extras], None)
            row += n
            self._flush(out)
        return None


def _parquet_batches(pf: pq.ParquetFile, groups: list[int], columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Batches of some row groups. A batch may span row groups, so when a read fails the groups not
    yet read are read again one at a time: every group before a damaged one is still handed out,
    then the damaged group's error is raised."""
    done = 0
    try:
        for rb in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=groups, columns=columns, use_threads=False):
            done += rb.num_rows
            yield rb
        return
    except (OSError, pa.ArrowException):
        pass
    skip = done  # rows already handed out
    for g in groups:
        n = pf.metadata.row_group(g).num_rows
        if skip >= n:
            skip -= n
            continue
        for rb in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[g], columns=columns, use_threads=False):
            if skip >= rb.num_rows:
                skip -= rb.num_rows
                continue
            yield rb.slice(skip) if skip else rb
            skip = 0


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _failure_of(exc: BaseException) -> tuple[str, str]:
    """(reason, detail) of a file that failed to open or decode: the OS's refusal, or bad content.

    pyarrow raises OSError for undecodable pages too ("Couldn't deserialize thrift"); only an
    error the operating system numbered (EACCES, EIO, ...) is a refusal to read.
    """
    if isinstance(exc, OSError) and exc.errno is not None:
        return "unreadable_file", _one_line(exc)
    return "corrupt_file", _one_line(exc)


def _parquet_file(src: Location) -> pq.ParquetFile:
    return pq.ParquetFile(src.path, filesystem=src.fs)  # fs None: the local filesystem


def _plan_one(args: tuple[str, FilesInput, Location, str, int]) -> list[dict]:
    return list(_plan_file(*args))


def _plan_file(name: str, inp: FilesInput, path: Location, rel: str, target: int,
               spill_dir: Path | None = None) -> Iterator[dict]:
    """The file's shards, a line-based file's each yielded as soon as its range is cut."""
    fmt = format_of(path, inp.format)
    if fmt == "parquet":
        try:
            meta = _parquet_file(path).metadata
        except (OSError, pa.ArrowException) as exc:  # a file-level reject, reported by its shard
            reason, detail = _failure_of(exc)
            yield {"kind": "file_error", "input": name, "file": path, "rel": rel, "reason": reason, "detail": detail}
            return
        shards, group, size, first, row = [], [], 0, 0, 0
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            if group and size + rg.total_byte_size > target:
                shards.append({"kind": "parquet", "row_groups": group, "first_row": first})
                group, size, first = [], 0, row
            group.append(g)
            size += rg.total_byte_size
            row += rg.num_rows
        shards.append({"kind": "parquet", "row_groups": group, "first_row": first})
        yield from ({**s, "input": name, "file": path, "rel": rel} for s in shards)
        return
    if fmt == "text" and inp.text_unit == "file":
        yield {"kind": "text_files", "input": name, "files": [(path, rel)], "rel": rel}
        return
    for r in iter_line_ranges(path, target, spill_dir):
        yield {"kind": "lines", "format": fmt, "input": name, "file": path, "rel": rel,
               "range": (r.start, r.end, r.first_line, r.spill), **({"roll": True} if r.roll else {})}


#: up to this many files are planned on the driver, not as a pass on the workers
DRIVER_PLAN_FILES = 1


def _file_tasks(fi: int, shards: Iterable[dict]) -> Iterator[ShardTask]:
    """The tasks of file ``fi``'s shards, in order: each as its shard arrives; the file's one-file
    text shard last (merged with its neighbours' by :func:`_group_text_files`)."""
    text_group: list[dict] = []
    for si, shard in enumerate(shards):
        if shard["kind"] == "text_files":  # small text files are grouped into one shard
            text_group.append(shard)
            continue
        yield ShardTask(f"{fi:06d}-{si:04d}", shard)
    if text_group:
        yield ShardTask(f"{fi:06d}-0000", text_group[0])


def _plan_tasks(ctx: StageContext, files: list[tuple[str, FilesInput, Location, str]], target: int,
                ) -> Iterable[ShardTask]:
    """The shard tasks. Planning reads each file's footer or scans it for line offsets: a pass of
    its own on the workers, where files are many. One file is planned here on the driver, where it
    runs while the embedded Ray is still starting (the pass of one task waited for Ray's start and
    for a worker's first task: 1.7 s for one 476 MB .zst, of which 1.3 s of scanning) and resumes
    nothing worth keeping (a resumed run scans the file again); its tasks are then handed out as the
    scan cuts each range (an iterator the pass submits from as it runs), so the workers start on the
    first range instead of waiting for the last: on the 4x Debian .zst (476 MB, 9 ranges) the plan
    took ~2.3 s of the driver's CPU before the first task; ingest alone ran 7.9-8.3 s instead of
    8.7 s in alternating runs (a small gain: Ray's workers were still starting for most of it)."""
    if len(files) <= DRIVER_PLAN_FILES:
        return _driver_tasks(ctx, files, target)
    planned = ctx.map_function("plan", _plan_one, [(*f, target) for f in files])
    return _group_text_files([t for fi, shards in enumerate(planned) for t in _file_tasks(fi, shards)], target)


def _driver_tasks(ctx: StageContext, files: list[tuple[str, FilesInput, Location, str]], target: int,
                  ) -> Iterator[ShardTask]:
    """The tasks of the files planned on the driver (at most :data:`DRIVER_PLAN_FILES`: one, whose
    text shard has no neighbour to merge with), each as the scan cuts it. A compressed file's ranges
    are spilled uncompressed where the workers write their parts: a local output folder (shared by
    the nodes of a cluster that writes there); not to an object store."""
    for fi, f in enumerate(files):
        yield from _file_tasks(fi, _plan_file(*f, target, _spill_dir(ctx, fi)))


def _spill_dir(ctx: StageContext, fi: int) -> Path | None:
    """Where the driver-planned file ``fi``'s compressed ranges are spilled uncompressed
    (:func:`iter_line_ranges`): the stage's scratch folder when it is local (shared by the nodes of
    a cluster that writes there), else None. Spilled ranges also keep every shard at ``shard_mb``,
    whatever the file's size. Files planned on the workers are not spilled: the plan pass runs
    before their shards, so the scratch folder would hold the whole corpus uncompressed at once;
    a compressed one is one shard writing rolling parts instead (:class:`IngestJob`)."""
    scratch = ctx.scratch_dir
    return scratch.local / "ranges" / f"{fi:06d}" if scratch.is_local else None


@register_stage
class IngestStage(Stage[IngestConfig]):
    """Read raw inputs into normalised Parquet parts, one task per shard."""

    config_model = IngestConfig
    reads_raw_inputs: ClassVar[bool] = True

    def run(self, ctx: StageContext) -> None:
        cfg = self.config
        target = int(cfg.shard_mb * (1 << 20))
        files: list[tuple[str, FilesInput, Location, str]] = []
        base = ctx.raw_inputs[0].base_dir if ctx.raw_inputs else Path.cwd()
        id_names: dict[str, str] = {}
        for raw in ctx.raw_inputs:
            root = id_root(raw.spec.paths, raw.base_dir)
            for src in raw.files():
                rel = src.relative_to(raw.base_dir)
                files.append((raw.name, raw.spec, src, rel))
                if root is not None and src.scheme == root[1] and root[0]:
                    id_names[rel] = posixpath.relpath(src.path, root[0])
        tasks = _plan_tasks(ctx, files, target)
        job = IngestJob({r.name: r.spec for r in ctx.raw_inputs}, str(base), cfg.on_error, cfg.min_chars, id_names,
                        part_bytes=target)
        results = ctx.map_shards(job, tasks)
        per_file: dict[str, int] = {}
        file_rejects: dict[str, dict[str, Any]] = {}
        for r in results:
            for k, v in r.get("stats", {}).get("files", {}).items():
                per_file[k] = per_file.get(k, 0) + v
            file_rejects.update(r.get("stats", {}).get("file_rejects", {}))
        ctx.manifest.stats.update({"files": len(files), "shards": len(results), "rows_per_file": per_file,
                                   "file_rejects": dict(sorted(file_rejects.items()))})


def id_root(patterns: list[str], base_dir: Path) -> tuple[str, str] | None:
    """The folder an input's derived ids (``<file>:<line>`` for rows without an id) are relative to:
    the deepest folder holding every path and glob of the input (each taken up to its first
    wildcard), as (path, scheme) in its filesystem's namespace. Ids then stay the same when the spec
    file moves, the project is copied, or the corpus moves to an object store, and stay unique, since
    distinct files below one folder have distinct relative paths. None when the input mixes
    filesystems (ids then name files as the rejects do)."""
    roots: list[str] = []
    schemes: set[str] = set()
    for pattern in patterns:
        if is_uri(pattern):
            parts = urlsplit(pattern)
            wildcard = re.search(r"[*?\[]", parts.path)
            static = posixpath.dirname(parts.path[: wildcard.start()] if wildcard else parts.path)
            loc = Location.parse(urlunsplit((parts.scheme, parts.netloc, static or "/", parts.query, "")), base_dir)
            roots.append(loc.path)
            schemes.add(loc.scheme)
            continue
        path = Path(pattern).expanduser()
        full = str(path if path.is_absolute() else base_dir / path)
        wildcard = re.search(r"[*?\[]", full)
        roots.append(os.path.dirname(full[: wildcard.start()] if wildcard else full))
        schemes.add("")
    if not roots or len(schemes) > 1:
        return None
    return posixpath.commonpath(roots), schemes.pop()


def _group_text_files(tasks: list[ShardTask], target: int) -> list[ShardTask]:
    """Merge consecutive one-file text shards until a shard holds about ``target`` bytes."""
    out: list[ShardTask] = []
    for task in tasks:
        p = task.payload
        if p["kind"] != "text_files":
            out.append(task)
            continue
        size = sum(f.size() for f, _ in p["files"])
        prev = out[-1].payload if out else None
        if prev and prev["kind"] == "text_files" and prev["input"] == p["input"] and prev["_size"] + size <= target:
            prev["files"] = prev["files"] + p["files"]
            prev["_size"] += size
        else:
            out.append(ShardTask(task.key, {**p, "_size": size}))
    return out


