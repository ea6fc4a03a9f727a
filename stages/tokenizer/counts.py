"""The training sample as (pre-token, count) pairs: on the driver, or map/reduce on Ray workers.

BPE needs only the distinct pre-tokens and their counts (:mod:`stages.tokenizer.fast_trainer`), so a
large sample is never held by one process. Map (one task per input part): stream the part's sampled
documents, pre-tokenize and count them, and write the counts as Parquet ``(word, count)`` files
hash-partitioned by word (xxh64), one file per partition. Reduce (one task per partition): sum the
counts of that partition's files with a pyarrow group-by and write one part sorted by word. A word
lives in exactly one partition, so the reduced parts together are the sample's counts; the driver
streams them, one partition at a time, into the trainer's input. Memory: a map task holds the
distinct words of one part, a reduce task those of one partition (a 1/P share of the sample's), and
the files live in the stage's scratch folder, removed when the stage commits.

The same figures as the driver path come back (documents, bytes, bytes per language, whether a
document holds a NUL, which gigatoken would take for a document boundary), and the counts are the
same whatever the part layout or the number of partitions (a test checks the merges).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from pipeline.locations import Location
from pipeline.parquet_io import iter_batches, read_table, write_scratch
from stages.tokenizer.fast_trainer import SEPARATOR, count_pretokens
from stages.tokenizer.sample import HashSample, iter_sample_tables

SCHEMA = pa.schema([("word", pa.binary()), ("count", pa.int64())])
#: one reduce partition per this many bytes of sample text (distinct words grow slower than text)
PARTITION_BYTES = 256e6
MAX_PARTITIONS = 64


@dataclass
class SampleFigures:
    """What the stage's manifest reports about the training sample."""

    documents: int = 0
    bytes: int = 0
    per_lang: Counter[str] = field(default_factory=Counter)
    has_nul: bool = False

    def add(self, table: pa.Table) -> None:
        nb = pc.fill_null(pc.binary_length(table.column("text")), 0).to_numpy(zero_copy_only=False)
        self.documents += table.num_rows
        self.bytes += int(nb.sum())
        for lang, n in zip(table.column("lang").to_pylist(), nb.tolist(), strict=True):
            self.per_lang[lang or "und"] += n
        if not self.has_nul:
            self.has_nul = bool(pc.any(pc.match_substring(table.column("text"), "\x00")).as_py())

    def merge(self, other: SampleFigures) -> None:
        self.documents += other.documents
        self.bytes += other.bytes
        self.per_lang.update(other.per_lang)
        self.has_nul |= other.has_nul


def _docs(tables: Iterator[pa.Table], figures: SampleFigures) -> Iterator[bytes]:
    for t in tables:
        figures.add(t)
        for text in t.column("text").to_pylist():
            if text:
                yield text.encode("utf-8")


def count_sample(files: list[Location], sample: HashSample, max_chars: int,
                 ) -> tuple[Counter[bytes], SampleFigures]:
    """The sample's pre-token counts and figures, in this process (small samples)."""
    figures = SampleFigures()
    counts = count_pretokens(_docs(iter_sample_tables(files, sample, max_chars), figures))
    return counts, figures


def write_sample(files: list[Location], sample: HashSample, max_chars: int, path: Path) -> SampleFigures:
    """Stream the sampled texts into ``path``, each followed by the separator (gigatoken's document
    boundary), straight from the Arrow buffers: no Python string is made per document."""
    figures = SampleFigures()
    sep = pa.scalar(SEPARATOR.decode(), pa.string())
    with open(path, "wb", buffering=1 << 20) as f:
        for t in iter_sample_tables(files, sample, max_chars):
            figures.add(t)
            for chunk in t.column("text").chunks:
                # text + "" joined by the separator: each text followed by it, nulls left out
                joined = pc.binary_join_element_wise(chunk, pa.scalar("", pa.string()), sep)
                offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32 if joined.type == pa.string()
                                        else np.int64)[joined.offset:joined.offset + len(joined) + 1]
                f.write(memoryview(joined.buffers()[2])[offsets[0]:offsets[-1]])
    return figures


def n_partitions(sample_bytes: int) -> int:
    return max(1, min(MAX_PARTITIONS, math.ceil(sample_bytes / PARTITION_BYTES)))


def partition_of(words: list[bytes], n: int) -> np.ndarray:
    return np.fromiter((xxhash.xxh64_intdigest(w) % n for w in words), dtype=np.int64, count=len(words))


def _count_part(payload: tuple[Location, HashSample, int, Location, int, str]) -> SampleFigures:
    """Map task: count one input part's sampled documents; write one counts file per partition."""
    part, sample, max_chars, folder, n, key = payload
    counts, figures = count_sample([part], sample, max_chars)
    words = sorted(counts)
    where = partition_of(words, n)
    table = pa.table({"word": pa.array(words, pa.binary()),
                      "count": pa.array([counts[w] for w in words], pa.int64())}, schema=SCHEMA)
    for p in range(n):
        write_scratch(table.filter(pa.array(where == p)), folder / f"p{p:03d}" / f"{key}.parquet")
    return figures


def _reduce_partition(payload: tuple[list[Location], Location]) -> int:
    """Reduce task: sum one partition's counts; write them sorted by word; returns distinct words."""
    parts, dest = payload
    table = read_table(parts).group_by("word").aggregate([("count", "sum")])
    table = pa.table({"word": table.column("word"), "count": table.column("count_sum")}, schema=SCHEMA)
    table = table.sort_by("word")
    write_scratch(table, dest)
    return table.num_rows


def count_sample_on_ray(ctx: Any, files: list[Location], sample: HashSample, max_chars: int, sample_bytes: int,
                        ) -> tuple[list[Location], SampleFigures]:
    """Map/reduce the counts on Ray (``ctx``: the stage's context); returns the reduced parts and figures."""
    n = n_partitions(sample_bytes)
    root = ctx.scratch_dir / "pretoken_counts"
    payloads = [(f, sample, max_chars, root / "map", n, f"{i:05d}") for i, f in enumerate(files)]
    figures = SampleFigures()
    for fig in ctx.map_function("count", _count_part, payloads):
        figures.merge(fig)
    reduced = [root / "reduced" / f"part-{p:03d}.parquet" for p in range(n)]
    ctx.map_function("reduce", _reduce_partition,
                     [((root / "map" / f"p{p:03d}").glob("*.parquet"), dest) for p, dest in enumerate(reduced)])
    return reduced, figures


def read_counts(parts: list[Location]) -> tuple[list[bytes], list[int]]:
    """The reduced counts as (words, counts), partition by partition."""
    words: list[bytes] = []
    counts: list[int] = []
    for p in parts:
        for batch in iter_batches(p, 1 << 16):
            words += batch.column("word").to_pylist()
            counts += batch.column("count").to_pylist()
    return words, counts


__all__ = ["SEPARATOR", "SampleFigures", "count_sample", "count_sample_on_ray", "read_counts", "write_sample"]
