"""Packing cores without Ray: best-fit decreasing against a brute-force best fit, concat windows and the
packed columns against per-sequence references (the loops the array cores replaced)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pyarrow as pa
import pytest

from stages.pack.columns import Documents, packed_schema, sequence_table
from stages.pack.packing import (
    Layout,
    Segment,
    best_fit_bins,
    best_fit_decreasing,
    best_fit_layout,
    concat_chunk,
    concat_layout,
    split_chunks,
    split_long,
    truncate_chunks,
)


def brute_force_bfd(chunks: list[Segment], seq_len: int) -> list[list[tuple[int, int]]]:
    """Best-fit decreasing by scanning every bin (O(N * bins)): the reference."""
    order = sorted(range(len(chunks)), key=lambda i: (-chunks[i].length, i))
    bins: list[list[int]] = []
    free: list[int] = []
    opened: list[int] = []  # bin ids in the order they last reached their current free capacity
    when: list[int] = []
    for stamp, i in enumerate(order, start=1):
        n = chunks[i].length
        fits = [b for b in range(len(bins)) if free[b] >= n]
        if fits:
            b = min(fits, key=lambda b: (free[b], when[b]))
        else:
            b = len(bins)
            bins.append([])
            free.append(seq_len)
            when.append(0)
            opened.append(b)
        bins[b].append(i)
        free[b] -= n
        when[b] = stamp
    return [sorted((chunks[i].doc, chunks[i].start) for i in b) for b in bins]


@pytest.mark.parametrize("seed", range(5))
def test_segment_tree_best_fit_matches_brute_force(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(1, 50), rng.randint(100, 600), rng.randint(900, 1500)]) for _ in range(400)]
    chunks = split_long(lengths, 512)
    bins = best_fit_decreasing(chunks, 512)
    ours = [[(s.doc, s.start) for s in b] for b in bins]
    assert ours == brute_force_bfd(chunks, 512)
    assert all(sum(s.length for s in b) <= 512 for b in bins)
    placed = sorted((s.doc, s.start) for b in bins for s in b)
    assert placed == sorted((c.doc, c.start) for c in chunks)
    # only documents longer than the context are split
    pieces = {}
    for c in chunks:
        pieces[c.doc] = pieces.get(c.doc, 0) + 1
    assert all((n > 1) == (lengths[d] > 512) for d, n in pieces.items())


def test_best_fit_takes_the_smallest_fitting_room():
    # 70, 60, 50 open bins 0-2 (30, 40, 50 free); 40 fits bins 1 and 2, bin 1 has less room; 30 -> bin 0;
    # 10 -> bin 2 (the only room left, 50), and the next 10 again bin 2 (40 left)
    assert best_fit_bins(np.array([70, 60, 50, 40, 30, 10, 10]), 100).tolist() == [0, 1, 2, 1, 0, 2, 2]
    # equal room: the bin that reached it first
    assert best_fit_bins(np.array([60, 60, 40, 40]), 100).tolist() == [0, 1, 0, 1]
    # full chunks each fill a bin of their own; empty chunks (truncate mode) each open a bin
    assert best_fit_bins(np.array([0, 100, 5, 100, 0]), 100).tolist() == [3, 0, 2, 1, 4]


def test_split_chunks_cut_long_documents_only():
    doc, start, length = split_chunks(np.array([5, 0, 12, 4]), 4)
    assert list(zip(doc.tolist(), start.tolist(), length.tolist(), strict=True)) == [
        (0, 0, 4), (0, 4, 1), (2, 0, 4), (2, 4, 4), (2, 8, 4), (3, 0, 4)]


def reference_concat(lengths: list[int], window: int, stride: int) -> list[list[tuple[int, int, int]]]:
    """Concat-and-chunk by walking the stream (what :func:`concat_layout` computes with arrays)."""
    total = sum(lengths)
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    out, pos = [], 0
    while pos < total:
        end = min(pos + window, total)
        out.append([(d, max(pos, starts[d]) - starts[d], min(end, starts[d + 1]) - max(pos, starts[d]))
                    for d in range(len(lengths)) if min(end, starts[d + 1]) > max(pos, starts[d])])
        if end == total:
            break
        pos += stride
    return out


@pytest.mark.parametrize("seed", range(4))
def test_concat_layout_matches_the_stream_walk(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([0, rng.randint(1, 9), rng.randint(10, 40)]) for _ in range(60)]
    for window, stride in ((16, 16), (17, 16), (5, 4), (1000, 1000)):
        ours = [[(s.doc, s.start, s.length) for s in segs] for segs in concat_chunk(lengths, window, stride)]
        assert ours == reference_concat(lengths, window, stride)
    assert concat_layout(np.zeros(3, np.int64), 8, 8).sequences == 0


def reference_row(segs: list[Segment], docs: list[np.ndarray], masks: list[np.ndarray | None], width: int,
                  pad_id: int) -> dict[str, list]:
    """One packed row built segment by segment (the per-sequence loop :func:`sequence_table` replaced)."""
    tokens = np.full(width, pad_id, dtype=docs[0].dtype)
    mask = np.zeros(width, dtype=np.uint8)
    pos = np.zeros(width, dtype=np.int32)
    p = 0
    for s in segs:
        tokens[p:p + s.length] = docs[s.doc][s.start:s.start + s.length]
        m = masks[s.doc]
        mask[p:p + s.length] = 1 if m is None else m[s.start:s.start + s.length]
        pos[p:p + s.length] = np.arange(s.length)
        p += s.length
    lens = [s.length for s in segs]
    return {"input_ids": tokens.tolist(), "loss_mask": mask.tolist(), "position_ids": pos.tolist(),
            "doc_lens": lens, "cu_seqlens": np.concatenate([[0], np.cumsum(lens)]).astype(int).tolist(),
            "doc_ids": [f"d{s.doc}" for s in segs]}


def _segments(lay: Layout) -> list[list[Segment]]:
    return [[Segment(int(lay.doc[j]), int(lay.start[j]), int(lay.length[j]))
             for j in range(lay.offsets[k], lay.offsets[k + 1])] for k in range(lay.sequences)]


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("method", ["best_fit", "truncate", "concat"])
def test_sequence_table_matches_per_sequence_rows(method, with_mask):
    rng = np.random.default_rng(7)
    lengths = rng.choice([0, 3, 17, 40, 70], size=50)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.integers(1, 60000, size=int(offsets[-1])).astype(np.uint16)
    masks = rng.integers(0, 2, size=len(values)).astype(np.uint8) if with_mask else None
    docs = Documents(values, offsets, masks, pa.array([f"d{i}" for i in range(len(lengths))]))
    width = 33 if method == "concat" else 32
    if method == "concat":
        lay = concat_layout(lengths, width, 32)
    elif method == "truncate":
        lay = best_fit_layout(*truncate_chunks(lengths, 32), 32)
    else:
        lay = best_fit_layout(*split_chunks(lengths, 32), 32)
    assert lay.sequences > 5
    table = sequence_table(lay.slice(1, lay.sequences), docs, width, 5, packed_schema(pa.uint16()))
    split = [values[a:b] for a, b in itertools.pairwise(offsets)]
    msplit = [None if masks is None else masks[a:b] for a, b in itertools.pairwise(offsets)]
    assert table.to_pylist() == [reference_row(segs, split, msplit, width, 5) for segs in _segments(lay)[1:]]
    assert table.schema == packed_schema(pa.uint16())


def test_best_fit_layout_is_best_fit_decreasing():
    lengths = np.array([700, 20, 0, 1300, 512, 90, 90, 3000])
    chunks = split_long(lengths.tolist(), 512)
    expected = [[(s.doc, s.start, s.length) for s in b] for b in best_fit_decreasing(chunks, 512)]
    assert [[(s.doc, s.start, s.length) for s in b] for b in _segments(best_fit_layout(*split_chunks(lengths, 512),
                                                                                        512))] == expected


def test_concat_windows_cover_the_stream():
    lengths = [5, 3, 10, 1]
    seqs = list(concat_chunk(lengths, window=4, stride=4))
    assert [sum(s.length for s in segs) for segs in seqs] == [4, 4, 4, 4, 3]
    assert [(s.doc, s.start, s.length) for s in seqs[1]] == [(0, 4, 1), (1, 0, 3)]
    shifted = list(concat_chunk(lengths, window=5, stride=4))  # one token of overlap for shifted labels
    assert [sum(s.length for s in segs) for segs in shifted] == [5, 5, 5, 5, 3]
    assert shifted[1][0] == Segment(0, 4, 1)
