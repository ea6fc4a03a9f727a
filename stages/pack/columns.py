"""The packed Parquet columns of a :class:`~stages.pack.packing.Layout`, built with numpy and Arrow
from flat buffers: one gather for the tokens of a block of sequences, offsets by arithmetic, no
Python object per sequence or segment (building lists of per-sequence arrays for ``pa.table`` cost
more than the packing itself, and imported pandas)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.parquet_io import as_array
from stages.pack.packing import Layout


def packed_schema(value_type: pa.DataType) -> pa.Schema:
    return pa.schema([
        ("input_ids", pa.list_(value_type)), ("loss_mask", pa.list_(pa.uint8())),
        ("position_ids", pa.list_(pa.int32())), ("doc_lens", pa.list_(pa.int32())),
        ("cu_seqlens", pa.list_(pa.int32())), ("doc_ids", pa.list_(pa.string())),
    ])


@dataclass(frozen=True)
class Documents:
    """A buffer of documents: flat tokens (and loss mask) with [n + 1] offsets, and their ids."""

    values: np.ndarray
    offsets: np.ndarray
    masks: np.ndarray | None
    ids: pa.Array

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def flat_lists(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (flat numpy values, int64 offsets from 0), zero-copy where Arrow allows."""
    arr = as_array(column)
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
    return values, offsets - offsets[0]


def documents(batch: pa.Table, dtype: np.dtype) -> Documents:
    """The documents of an encoded table (``id``, ``input_ids`` and, when present, ``loss_mask``)."""
    values, offsets = flat_lists(batch.column("input_ids"))
    masks = (flat_lists(batch.column("loss_mask"))[0].astype(np.uint8, copy=False)
             if "loss_mask" in batch.column_names else None)
    return Documents(values.astype(dtype, copy=False), offsets, masks, batch.column("id").combine_chunks())


def _list(offsets: np.ndarray, values: pa.Array | np.ndarray, type_: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values, type=type_)


def padded_rows(real: np.ndarray, fill: np.ndarray, width: int, pad: int) -> np.ndarray:
    """[n, width] rows: row k holds the next ``fill[k]`` values of ``real``, then ``pad``.

    Most packed rows are full, and a run of full rows is one contiguous copy: only the rows with
    padding are copied one by one (a boolean scatter of every slot cost 3x more)."""
    n = len(fill)
    out = np.full((n, width), pad, dtype=real.dtype)
    flat = out.reshape(-1)
    first = np.concatenate([[0], np.cumsum(fill)]).astype(np.int64)  # each row's first value in ``real``
    row = 0
    for short in [*np.flatnonzero(fill < width).tolist(), n]:
        flat[row * width:short * width] = real[first[row]:first[short]]  # full rows row..short-1
        if short < n:
            flat[short * width:short * width + fill[short]] = real[first[short]:first[short + 1]]
        row = short + 1
    return out


def sequence_table(lay: Layout, docs: Documents, width: int, pad_id: int, schema: pa.Schema) -> pa.Table:
    """The packed rows of every sequence of ``lay`` (segments of ``docs``), ``width`` tokens each:
    tokens then padding, loss mask 1 on tokens (the input's mask where it has one) and 0 on
    padding, positions restarting at 0 on each segment, and per sequence its segments' lengths,
    ``cu_seqlens`` ([0, cumulative ends]) and document ids."""
    n, m = lay.sequences, len(lay.length)
    seg_counts = np.diff(lay.offsets)
    seq_of_seg = np.repeat(np.arange(n, dtype=np.int64), seg_counts)
    seg_cum = np.concatenate([[0], np.cumsum(lay.length)]).astype(np.int64)  # segment starts in the real tokens
    real = int(seg_cum[-1])
    rel = np.arange(real, dtype=np.int64) - np.repeat(seg_cum[:-1], lay.length)  # token index within its segment
    src = np.repeat(docs.offsets[lay.doc] + lay.start, lay.length) + rel
    fill = seg_cum[lay.offsets[1:]] - seg_cum[lay.offsets[:-1]]  # tokens per sequence
    tokens = padded_rows(docs.values[src], fill, width, pad_id)
    mask = padded_rows(np.ones(real, np.uint8) if docs.masks is None else docs.masks[src], fill, width, 0)
    positions = padded_rows(rel.astype(np.int32), fill, width, 0)
    ends = seg_cum[1:] - seg_cum[lay.offsets[:-1]][seq_of_seg]  # each segment's end within its sequence
    cu = np.zeros(m + n, dtype=np.int32)
    cu[np.arange(m) + seq_of_seg + 1] = ends
    rows = np.arange(n + 1, dtype=np.int64) * width
    types = [f.type for f in schema]
    return pa.Table.from_arrays([
        _list(rows, pa.array(tokens.reshape(-1)), types[0]),
        _list(rows, pa.array(mask.reshape(-1)), types[1]),
        _list(rows, pa.array(positions.reshape(-1)), types[2]),
        _list(lay.offsets, pa.array(lay.length.astype(np.int32)), types[3]),
        _list(lay.offsets + np.arange(n + 1), pa.array(cu), types[4]),
        _list(lay.offsets, docs.ids.take(pa.array(lay.doc)), types[5]),
    ], schema=schema)
